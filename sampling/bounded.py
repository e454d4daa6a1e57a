"""The bounded-class ("test-time training") sampler TTT_ELIM, §2f.

**[our design]** -- GMR's algorithm was not available; this is the spec's
reading: use oracle queries to *identify* μ* inside a finite family
F = {ν_1..ν_K} (the "training"), then sample from the identified model at no
further query cost.

* `Family`: K normalised candidate laws over the leaves of a small tree
  (log probabilities float64[K, S^n]); `make_family(inst, kind, size, seed)`
  builds the classes of §6.6 around the instance's own target (so μ* ∈ F):
  'generic' (Dirichlet(1) candidates), 'nested' (uniform on nested sets,
  counting-style), 'needle' (a base law with private blocks reweighted).
* `eliminate(inst, family, delta)` (host side, exact): anchor a leaf with
  positive weight to fix each survivor's unknown normaliser Z_i, then query
  the leaf that minimises the worst-case number of survivors (generalised
  binary search over all leaves; leaf answers are exact, E0) until the
  survivors' TV diameter is ≤ δ. μ* is never eliminated, so the output is
  within δ of μ*; at most K queries for any n and α. `internal=True` adds
  the spec's interval tests at internal nodes (answers known up to α) to
  the pool.
* `make_sampler(...)`: draws from the identified ν̂ (0 queries per sample),
  optionally followed by `imh_steps` of independence Metropolis–Hastings
  with ν̂ as proposal (the robust add-on for μ* ∉ F: 1 query per step,
  stationary law exactly μ*).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sampling import tables, trees

KINDS = ("generic", "nested", "needle")


class Family(NamedTuple):
  """log_probs: float64[K, S^n] normalised candidate laws (−inf = 0)."""

  log_probs: np.ndarray


class Elimination(NamedTuple):
  """index: the chosen candidate; queries: oracle calls used;
  survivors: indices left; diameter: their TV diameter."""

  index: int
  queries: int
  survivors: list
  diameter: float


def _normalise(p):
  p = np.asarray(p, np.float64)
  with np.errstate(divide="ignore"):
    return np.log(p / p.sum())


def make_family(inst: trees.Instance, kind: str = "generic", size: int = 16,
                seed: int = 0) -> Family:
  """A family of `size` candidates containing the instance's target."""
  if kind not in KINDS:
    raise ValueError(f"family kind must be one of {KINDS}")
  table = tables.node_table(inst)
  mu = tables.target_law(table)
  leaves = mu.shape[0]
  rng = np.random.default_rng(seed)
  cands = []
  if kind == "generic":
    for _ in range(size - 1):
      cands.append(rng.dirichlet(np.ones(leaves)))
  elif kind == "nested":
    order = rng.permutation(leaves)
    for k in range(size - 1):
      m = max(1, int(round(leaves * (k + 1) / size)))
      p = np.zeros(leaves)
      p[order[:m]] = 1.0
      cands.append(p)
  else:  # needle: reweight one private block of the target per candidate
    blocks = np.array_split(rng.permutation(leaves), size - 1)
    for b in blocks:
      p = mu.copy()
      p[b] *= 3.0
      cands.append(p / p.sum())
  pos = int(rng.integers(size))
  cands.insert(pos, mu)
  return Family(np.stack([_normalise(c) for c in cands]))


def _tv_matrix(logp: np.ndarray) -> np.ndarray:
  p = np.exp(logp)
  return 0.5 * np.abs(p[:, None, :] - p[None, :, :]).sum(-1)


def _internal_logp(logp: np.ndarray, S: int, n: int) -> np.ndarray:
  """Each candidate's mass of every internal node: float64[K, internal],
  level order, root first (the node table's order)."""
  internal = trees.num_nodes(S, n) - S ** n
  return np.stack([trees._subtree_logm(row, S, n)[:internal] for row in logp])


def _worst_exact(col: np.ndarray, tol: float) -> int:
  """Survivors in the worst case after an exact (leaf) answer."""
  groups: dict = {}
  for v in col:
    key = "zero" if not np.isfinite(v) else round(float(v) / tol)
    groups[key] = groups.get(key, 0) + 1
  return max(groups.values())


def _worst_interval(col: np.ndarray, log_alpha: float) -> int:
  """Survivors in the worst case after an answer known up to a factor α:
  the most prediction intervals [c − log α, c + log α] sharing a point (or
  the candidates predicting 0)."""
  fin = np.sort(col[np.isfinite(col)])
  zero = int((~np.isfinite(col)).sum())
  if fin.size == 0:
    return zero
  reach = np.searchsorted(fin, fin + 2 * log_alpha + 1e-12, side="right")
  return max(zero, int((reach - np.arange(fin.size)).max()))


def eliminate(inst: trees.Instance, family: Family, delta: float = 0.01,
              tol: float = 1e-6, internal: bool = False) -> Elimination:
  """Identifies μ* within the family (see module docstring).

  With `internal=True` the query pool also holds every internal node u,
  whose answer μ̂(u) only says that candidate i survives if
  |log μ̂(u) − log Z_i ν_i(u)| ≤ log α (the oracle's error bound); the
  greedy choice then weighs those interval tests against exact leaves.
  """
  table = tables.node_table(inst)
  leaf_logw = table.logmu[table.first_leaf:]  # exact at leaves (E0)
  logp = np.asarray(family.log_probs, np.float64)
  k, leaves = logp.shape
  if leaves != leaf_logw.shape[0]:
    raise ValueError(f"family laws have {leaves} leaves, the tree "
                     f"{leaf_logw.shape[0]}")
  if internal:
    node_logp = _internal_logp(logp, inst.S, inst.n)
    node_logw = table.logmu[:table.first_leaf]
    slack = inst.log_alpha + tol
  alive = np.arange(k)
  queries = 0
  while True:  # 1. the anchor
    mix = np.exp(logp[alive]).mean(0)
    x0 = int(np.argmax(mix))
    queries += 1
    w0 = leaf_logw[x0]
    pos = np.isfinite(logp[alive, x0])
    if np.isfinite(w0):
      alive = alive[pos]
      log_z = w0 - logp[alive, x0]
      break
    alive = alive[~pos]
    if alive.size == 0:
      raise ValueError("the family holds no candidate consistent with the "
                       "oracle (mu* not in F)")
  tvm = _tv_matrix(logp)
  while alive.size > 1:  # 2. generalised binary search
    sub = tvm[np.ix_(alive, alive)]
    if sub.max() <= delta:
      break
    pred = log_z[:, None] + logp[alive]  # [survivors, leaves]
    worst = np.array([_worst_exact(pred[:, u], tol) for u in range(leaves)])
    u = int(np.argmin(worst))
    queries += 1
    r, col = leaf_logw[u], pred[:, u]  # an exact answer at leaf u ...
    width = tol * max(1.0, abs(r)) if np.isfinite(r) else 0.0
    if internal:
      ipred = log_z[:, None] + node_logp[alive]  # [survivors, internal]
      iworst = np.array([_worst_interval(ipred[:, v], inst.log_alpha)
                         for v in range(ipred.shape[1])])
      v = int(np.argmin(iworst))
      if iworst[v] < worst[u]:  # ... or an interval test at node v
        r, col, width = node_logw[v], ipred[:, v], slack
    if np.isfinite(r):
      keep = np.isfinite(col) & (np.abs(col - r) <= width)
    else:
      keep = ~np.isfinite(col)
    alive, log_z = alive[keep], log_z[keep]
    if alive.size == 0:
      raise ValueError("every candidate was eliminated: mu* is not in F")
  sub = tvm[np.ix_(alive, alive)]
  return Elimination(int(alive[0]), queries, alive.tolist(),
                     float(sub.max()))


def exact_ttt_law(inst: trees.Instance, family: Family | None,
                  delta: float = 0.01, internal: bool = False) -> np.ndarray:
  """The output law of TTT_ELIM without the add-on: the chosen ν̂."""
  family = family if family is not None else make_family(inst)
  e = eliminate(inst, family, delta, internal=internal)
  return np.exp(family.log_probs[e.index])


def make_sampler(inst: trees.Instance, family: Family, delta: float = 0.01,
                 imh_steps: int = 0, internal: bool = False):
  """(chain(key) -> (x, stats), Elimination) for vmapping over chains.

  stats: accepted (the last IMH proposal was accepted; True without IMH),
  oracle_calls (the elimination's queries are reported separately, in the
  Elimination; per chain only the IMH queries), moves (accepted IMH moves).
  """
  e = eliminate(inst, family, delta, internal=internal)
  table = tables.node_table(inst)
  log_nu = jnp.asarray(family.log_probs[e.index], jnp.float32)
  log_w = jnp.asarray(table.logmu[table.first_leaf:], jnp.float32)
  S, n = inst.S, inst.n
  digits = S ** jnp.arange(n - 1, -1, -1)

  def to_tokens(index):
    return (index // digits) % S

  def chain(key):
    k0, k1 = jax.random.split(key)
    x = jax.random.categorical(k0, log_nu)

    def step(c, k):
      x, moves, acc = c
      ka, kb = jax.random.split(k)
      y = jax.random.categorical(ka, log_nu)
      ratio = log_w[y] + log_nu[x] - log_w[x] - log_nu[y]
      ok = jnp.log(jax.random.uniform(kb, minval=1e-12)) < jnp.minimum(
          jnp.nan_to_num(ratio, nan=-jnp.inf), 0.0)
      return (jnp.where(ok, y, x), moves + ok, ok), None

    (x, moves, acc), _ = jax.lax.scan(
        step, (x, jnp.int32(0), jnp.bool_(True)),
        jax.random.split(k1, imh_steps)) if imh_steps else (
            (x, jnp.int32(0), jnp.bool_(True)), None)
    return to_tokens(x).astype(jnp.int32), dict(
        accepted=acc, oracle_calls=jnp.int32(imh_steps), moves=moves)

  return chain, e
