"""Exact laws of the samplers on small trees (float64 numpy, CPU), and
lumped chains at any n.

Everything here works on a `sampling.tables.NodeTable` (every node of the
tree with log M, log μ̂ and log π_ref, evaluated by the samplers' own JAX
oracle; `node_table` is re-exported here):

* `topdown_law` (§2a recursion), `rejection_law` (accepted law of §2b);
* `sj_chain` / `lifted_chain` / `mh_chain`: the transition structure of the
  Jerrum–Sinclair walk (§2c), the balanced lifted walk (§2d) and the
  Metropolis–Hastings VGB walk (§2e), with `evolve` (p_{t+1} = p_t P,
  sparse, O(N) per step) and `stationary` (W / ΣW, checked by tests);
* `walk_law(...)`: the output law of a walk at horizon T conditioned on the
  read-out landing on a leaf, P(leaf) and expected moves -- for the lifted
  walk averaged over the read-out window ⌊T/2⌋..T;
* `lumped_cost(g, n, ...)`: Lemma S -- for depth-factor oracles μ̂(v) =
  g(|v|) M(v) the depth of SJ (and (depth, direction) of the lifted walk) is
  a Markov chain; expected moves per exact sample for any n (§4.2, §6.5).

It knows no method by name: a sampler's exact output law, float64[S^n]
(leaves by base-S integer), is its registry entry's `exact_law`, built from
these pieces (`sampling.METHODS`, `sampling.exact_output_law`).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from sampling.tables import (  # noqa: F401  (node_table: re-exported)
  NodeTable,
  node_table,
  target_law,
  tv,
)


def _children_index(table: NodeTable) -> np.ndarray:
  """int[N_internal, S] child indices of internal nodes."""
  S = table.S
  internal = np.arange(table.first_leaf)
  return 1 + internal[:, None] * S + np.arange(S)[None, :]


def topdown_law(table: NodeTable) -> np.ndarray:
  """q(x) = Π μ̂(x_{1:k}) / B(x_{1:k−1}) (§2a)."""
  S = table.S
  mu = np.exp(table.logmu - np.max(table.logmu))
  kids = _children_index(table)
  b = mu[kids].sum(1)
  q = np.zeros(len(mu))
  q[0] = 1.0
  for v in range(table.first_leaf):  # level order: parents first
    if b[v] > 0:
      q[kids[v]] = q[v] * mu[kids[v]] / b[v]
  del S
  return q[table.first_leaf:]


def rejection_law(table: NodeTable, alpha: float) -> tuple[np.ndarray,
                                                           float]:
  """(accepted law, P(accept)) of top-down + leaf rejection (§2b)."""
  n = table.n
  q = topdown_law(table)
  mu = np.exp(table.logmu - table.logmu[0])
  kids = _children_index(table)
  log_rho = np.zeros(len(mu))
  b = mu[kids].sum(1)
  with np.errstate(divide="ignore"):
    log_rho[:table.first_leaf] = np.log(b) - np.log(mu[:table.first_leaf])
  acc_log = np.zeros(len(mu))
  # Σ_{k=1}^{n−1} log ρ(x_{1:k}) along each path
  for v in range(1, len(mu)):
    par = table.parent[v]
    acc_log[v] = acc_log[par] + (log_rho[v] if table.depth[v] < n else 0.0)
  leaf_acc = np.exp(np.minimum(acc_log[table.first_leaf:]
                               - (2 * n - 3) * np.log(alpha), 0.0))
  joint = q * leaf_acc
  p_acc = float(joint.sum())
  return joint / p_acc, p_acc


# --- walks as exact chains ----------------------------------------------------


class Chain(NamedTuple):
  """A walk's transitions on N (or 2N) states (float64).

  stay[i], up[i] (to up_to[i]), down[i] (to i's down target); the state
  layout and the meaning of `down` depend on the walk (see builders).
  """

  stay: np.ndarray
  moves: dict  # name -> (src int[m], dst int[m], prob float[m])
  weights: np.ndarray  # the unnormalised stationary law W(state)


def _sj_weights(table: NodeTable, leaf_loop: float):
  mu = np.exp(table.logmu - table.logmu[0])
  kids = _children_index(table)
  n_nodes = len(mu)
  a = np.where(np.arange(n_nodes) == 0, 0.0, mu)
  b = np.zeros(n_nodes)
  b[:table.first_leaf] = mu[kids].sum(1)
  loop = np.zeros(n_nodes)
  loop[table.first_leaf:] = leaf_loop * mu[table.first_leaf:]
  return mu, kids, a, b, loop


def sj_chain(table: NodeTable, leaf_loop: float = 0.0,
             laziness: float = 0.5) -> Chain:
  """The lazy SJ walk (§2c); states = nodes."""
  mu, kids, a, b, loop = _sj_weights(table, leaf_loop)
  w = a + b + loop
  safe = np.where(w > 0, w, 1.0)
  move = 1.0 - laziness
  stay = laziness + move * loop / safe
  nodes = np.arange(len(mu))
  up = (nodes[1:], table.parent[1:], move * a[1:] / safe[1:])
  src = np.repeat(np.arange(table.first_leaf), table.S)
  dst = kids.ravel()
  down = (src, dst, move * mu[dst] / safe[src])
  stay = np.where(w > 0, stay, 1.0)
  return Chain(stay, dict(up=up, down=down), w)


def lifted_chain(table: NodeTable, leaf_loop: float = 1.0) -> Chain:
  """The balanced lifted walk (§2d); state i (↓) and N + i (↑)."""
  if leaf_loop < 1:
    raise ValueError("the lifted walk needs leaf_loop >= 1")
  mu, kids, a, b, _ = _sj_weights(table, 0.0)
  n_nodes = len(mu)
  leaf = np.arange(n_nodes) >= table.first_leaf
  m = np.maximum(a, b)
  safe = np.where(m > 0, m, 1.0)
  p_leaf = 2.0 / (1.0 + leaf_loop)
  stay = np.zeros(2 * n_nodes)
  stay[:n_nodes] = np.where(leaf, 1 - p_leaf, 0.0)
  stay[n_nodes:] = np.where(leaf, 1 - p_leaf, 0.0)
  internal = np.arange(table.first_leaf)
  src = np.repeat(internal, table.S)
  dst = kids.ravel()
  down = (src, dst, mu[dst] / safe[src])
  rev_dn_p = np.where(leaf, p_leaf, np.maximum(a - b, 0) / safe)
  rev_dn = (np.arange(n_nodes), n_nodes + np.arange(n_nodes), rev_dn_p)
  nodes = np.arange(1, n_nodes)
  up_p = np.where(leaf[1:], p_leaf, a[1:] / safe[1:])
  up = (n_nodes + nodes, n_nodes + table.parent[1:], up_p)
  rev_up_p = np.where(leaf, 0.0, np.maximum(b - a, 0) / safe)
  rev_up = (n_nodes + np.arange(n_nodes), np.arange(n_nodes), rev_up_p)
  w = np.where(leaf, (1 + leaf_loop) * mu, 2 * m)
  # stationary: W / (2 ΣW) on both copies
  return Chain(stay, dict(down=down, reverse_down=rev_dn, up=up,
                          reverse_up=rev_up), np.concatenate([w, w]))


def mh_chain(table: NodeTable, leaf_loop: float = 0.0,
             laziness: float = 0.5) -> Chain:
  """The Metropolis–Hastings VGB walk (§2e); states = nodes.

  After the lazy coin: w.p. ½ propose a child a ~ π_ref(·|v) (accept
  min(1, π(v·a) / (π_ref(a|v) π(v)))), w.p. ½ propose the parent (accept
  min(1, π_ref(v_last|parent) π(parent) / π(v))); π = μ̂ at internal nodes,
  (1 + λ) w at leaves.
  """
  n_nodes = len(table.logmu)
  leaf = np.arange(n_nodes) >= table.first_leaf
  logpi = table.logmu - table.logmu[0] + np.where(
      leaf, np.log1p(leaf_loop), 0.0)
  kids = _children_index(table)
  move = 1.0 - laziness
  src = np.repeat(np.arange(table.first_leaf), table.S)
  dst = kids.ravel()
  q = np.exp(table.logref[dst])
  with np.errstate(over="ignore", invalid="ignore"):
    acc_d = np.minimum(1.0, np.exp(logpi[dst] - table.logref[dst]
                                   - logpi[src]))
  acc_d = np.nan_to_num(acc_d)
  down = (src, dst, move * 0.5 * q * acc_d)
  nodes = np.arange(1, n_nodes)
  par = table.parent[1:]
  with np.errstate(over="ignore", invalid="ignore"):
    acc_u = np.minimum(1.0, np.exp(table.logref[nodes] + logpi[par]
                                   - logpi[nodes]))
  acc_u = np.nan_to_num(acc_u)
  up = (nodes, par, move * 0.5 * acc_u)
  out = np.zeros(n_nodes)
  np.add.at(out, down[0], down[2])
  np.add.at(out, up[0], up[2])
  return Chain(1.0 - out, dict(up=up, down=down), np.exp(logpi))


def evolve(chain: Chain, p: np.ndarray) -> np.ndarray:
  """One step: p P."""
  out = p * chain.stay
  for src, dst, prob in chain.moves.values():
    out += np.bincount(dst, weights=p[src] * prob, minlength=len(p))
  return out


def move_prob(chain: Chain) -> np.ndarray:
  """Probability that a step from each state is a move (not a stay)."""
  return 1.0 - chain.stay


def stationary(chain: Chain) -> np.ndarray:
  """The stationary law the construction guarantees: W / ΣW."""
  return chain.weights / chain.weights.sum()


class WalkLaw(NamedTuple):
  """law: float64[S^n] leaf law given a leaf read-out; p_leaf: P(leaf);
  moves: expected moves up to the read-out; tv: TV(law, μ*)."""

  law: np.ndarray
  p_leaf: float
  moves: float
  tv: float


def walk_law(table: NodeTable, chain: Chain, steps: int,
             window: bool = False) -> WalkLaw:
  """The read-out law at horizon T (`steps`), from the root.

  window=True averages over T* uniform on ⌊T/2⌋..T (the lifted read-out).
  """
  n_states = len(chain.stay)
  n_nodes = len(table.logmu)
  p = np.zeros(n_states)
  p[0] = 1.0
  mv = move_prob(chain)
  lo = steps // 2 if window else steps
  acc = np.zeros(n_states)
  moves_acc = 0.0
  moves = 0.0
  for t in range(steps + 1):
    if t >= lo:
      acc += p
      moves_acc += moves
    if t < steps:
      moves += float(p @ mv)
      p = evolve(chain, p)
  count = steps - lo + 1
  acc /= count
  nodes = acc[:n_nodes] + (acc[n_nodes:] if n_states > n_nodes else 0.0)
  leaves = nodes[table.first_leaf:]
  p_leaf = float(leaves.sum())
  law = leaves / p_leaf if p_leaf > 0 else leaves
  return WalkLaw(law, p_leaf, moves_acc / count, tv(law, target_law(table)))


# --- Lemma S: lumped chains for depth-factor oracles --------------------------


def depth_factors(pattern: str, n: int, alpha: float) -> np.ndarray:
  """g(0..n) for the depth-factor patterns ('exact', 'depth', 'slow')."""
  k = np.arange(n + 1)
  if pattern == "exact":
    s = np.zeros(n + 1)
  elif pattern == "depth":
    s = np.where(k % 2 == 0, 1.0, -1.0)
  elif pattern == "slow":
    s = np.sin(2 * np.pi * k / n)
  else:
    raise ValueError(f"{pattern!r} is not a depth-factor pattern")
  s[0] = s[n] = 0.0
  return alpha ** s


def lumped_cost(g: np.ndarray, walk: str = "js", leaf_loop: float = 0.0,
                max_steps: int | None = None) -> dict:
  """Expected moves per exact sample, min over the horizon T (Lemma S).

  Returns dict(moves_per_sample, best_steps, p_leaf) for SJ (laziness ½,
  R1 read-out) or the balanced lifted walk (window read-out). Under Lemma S
  the leaf-conditional law is exact at every T, so only the cost matters.
  """
  n = len(g) - 1
  max_steps = max_steps or int(60 * (n + 2) ** 2)
  if walk == "js":
    size = n + 1
    up = np.zeros(size)
    dn = np.zeros(size)
    for k in range(size):
      if k == n:
        up[k] = 0.5 / (1 + leaf_loop)
      elif k == 0:
        dn[k] = 0.5
      else:
        up[k] = 0.5 * g[k] / (g[k] + g[k + 1])
        dn[k] = 0.5 * g[k + 1] / (g[k] + g[k + 1])
    p = np.zeros(size)
    p[0] = 1.0
    moves = 0.0
    best = (np.inf, 0, 0.0)
    for t in range(1, max_steps + 1):
      moves += float(p @ (up + dn))
      new = p * (1 - up - dn)
      new[:-1] += p[1:] * up[1:]
      new[1:] += p[:-1] * dn[:-1]
      p = new
      if p[n] > 1e-12:
        cost = moves / p[n]
        if cost < best[0]:
          best = (cost, t, float(p[n]))
    return dict(moves_per_sample=best[0], best_steps=best[1],
                p_leaf=best[2])
  if walk != "lifted":
    raise ValueError("walk must be 'js' or 'lifted'")
  if leaf_loop < 1:
    raise ValueError("the lifted walk needs leaf_loop >= 1")
  # states: (k, down) = k, (k, up) = n + 1 + k
  size = 2 * (n + 1)
  trans = np.zeros((size, size))
  p_leaf_move = 2.0 / (1 + leaf_loop)
  for k in range(n + 1):
    dn, upst = k, n + 1 + k
    if k == n:
      trans[dn, upst] = p_leaf_move
      trans[dn, dn] = 1 - p_leaf_move
      trans[upst, n + 1 + k - 1] = p_leaf_move
      trans[upst, upst] = 1 - p_leaf_move
      continue
    a = 0.0 if k == 0 else g[k]
    b = g[k + 1]
    m = max(a, b)
    trans[dn, k + 1] = b / m
    trans[dn, upst] += max(a - b, 0) / m
    if k > 0:
      trans[upst, n + 1 + k - 1] = a / m
    trans[upst, dn] += max(b - a, 0) / m
  mv = 1.0 - np.diag(trans)
  p = np.zeros(size)
  p[0] = 1.0
  cum_p = np.zeros(max_steps + 2)  # cum_p[t + 1] = Σ_{s ≤ t} P(leaf at s)
  cum_m = np.zeros(max_steps + 2)
  moves = 0.0
  best = (np.inf, 0, 0.0)
  for t in range(max_steps + 1):
    cum_p[t + 1] = cum_p[t] + p[n] + p[2 * n + 1]
    cum_m[t + 1] = cum_m[t] + moves
    if t >= 2:
      lo = t // 2
      cnt = t - lo + 1
      pl = (cum_p[t + 1] - cum_p[lo]) / cnt
      mm = (cum_m[t + 1] - cum_m[lo]) / cnt
      if pl > 1e-12 and mm / pl < best[0]:
        best = (mm / pl, t, pl)
    moves += float(p @ mv)
    p = p @ trans
  return dict(moves_per_sample=best[0], best_steps=best[1], p_leaf=best[2])
