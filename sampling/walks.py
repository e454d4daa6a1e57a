"""Samplers as vectorised random walks (one chain per vmapped lane).

Every sampler is written for ONE chain and `jax.vmap`ped over chains inside
one `jax.jit`; loops are `lax.scan` / `lax.while_loop`. Each returns
`(sample int32[n], stats)` per chain with at least `accepted` (bool),
`oracle_calls` (raw μ̂ evaluations: S per children call, 1 per single node)
and `moves` (non-idle transitions). Spec: `../shared/docs/METHOD_SAMPLING.md`.

* `top_down` (§2a): n children calls, categorical ∝ μ̂.
* `rejection` (§2b): top-down proposals accepted w.p.
  exp(Σ_{k=1}^{n−1} log ρ(x_{1:k}) − (2n−3) log α), up to `max_proposals`;
  the accepted law is μ* exactly under E0 + E1.
* `sir` (§2b): `proposals` top-down draws, one returned ∝ ω = w / q.
* `js` (§2c): the lazy (½) Jerrum–Sinclair walk with leaf loops λ, simulated
  as its jump chain with geometric holding times (the same law at a fixed
  horizon T counted in lazy steps: internal holds Geom(½), leaves
  Geom(1 / (2(1 + λ)))). Read-outs: 'r1' (X_T, accepted iff a leaf), 'r2'
  (run to the first leaf, biased unless Lemma S applies -- a baseline).
* `lifted` (§2d, our reconstruction): the balanced lifted walk; internal
  states never idle, leaves hold Geom(2 / (1 + λ)), λ ≥ 1; read-out at T*
  uniform on ⌊T/2⌋..T (the rule, `lifted_move`, is also what
  `ttt.decoders.vgb_lifted` runs over an answer's token tree).
* `vgb` (§2e): form 'sj' is the SJ walk (the exact reduction μ̂ = π_ref V̂;
  `ttt.decoders.vgb` runs the same rule, `sj_move`, over an
  answer's token tree with a language model);
  form 'mh' the Metropolis–Hastings walk for large action spaces (one
  proposal from π_ref per step, one query).

All arithmetic is in log space (float32).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from sampling import oracles, trees


def _geom(key, log_q):
  """Geometric(p ≥ 1 trial) with log(1 − p) = log_q: trials to success."""
  u = jax.random.uniform(key, minval=1e-12, maxval=1.0)
  return jnp.where(log_q < -30.0, 1,
                   jnp.floor(jnp.log(u) / jnp.minimum(log_q, -1e-12)) + 1
                   ).astype(jnp.int32)


def _log1m_exp(x):
  """log(1 − e^x) for x ≤ 0."""
  return jnp.where(x > -0.693, jnp.log(-jnp.expm1(x)),
                   jnp.log1p(-jnp.exp(x)))


def make_top_down(inst: trees.Instance):
  """One chain: (key) -> (x, stats) with stats log_omega, log_accept."""
  S, n = inst.S, inst.n

  def chain(key):
    pre = trees.root(inst)

    def level(carry, d):
      pre, key, log_rho_sum = carry
      key, k = jax.random.split(key)
      logm, logmu, ref = oracles.children(inst, pre, d)
      a = jax.random.categorical(k, logmu)
      lb = jax.nn.logsumexp(logmu)
      # ρ(v) = B(v) / μ̂(v) for internal v ≠ ∅ (depth 1..n−1)
      log_rho_sum = log_rho_sum + jnp.where(d > 0, lb - pre.logmu[d], 0.0)
      pre = trees.push(inst, pre, d, a, logm, logmu, ref)
      return (pre, key, log_rho_sum), lb

    (pre, _, log_rho_sum), lbs = jax.lax.scan(
        level, (pre, key, jnp.float32(0.0)), jnp.arange(n))
    stats = dict(accepted=jnp.bool_(True),
                 oracle_calls=jnp.int32(n * S), moves=jnp.int32(n),
                 log_omega=lbs[0] + log_rho_sum,
                 log_rho_sum=log_rho_sum)
    return pre.tokens, stats

  return chain


def make_rejection(inst: trees.Instance, alpha: float | None = None,
                   max_proposals: int = 1000):
  alpha = inst.alpha if alpha is None else float(alpha)
  n = inst.n
  td = make_top_down(inst)
  bound = (2 * n - 3) * math.log(alpha)

  def chain(key):
    def cond(c):
      return ~c[2] & (c[3] < max_proposals)

    def body(c):
      key, x, _, tries, calls = c
      key, k1, k2 = jax.random.split(key, 3)
      x, st = td(k1)
      acc = jnp.log(jax.random.uniform(k2)) < jnp.minimum(
          st["log_rho_sum"] - bound, 0.0)
      return key, x, acc, tries + 1, calls + st["oracle_calls"]

    init = (key, jnp.zeros(n, jnp.int32), jnp.bool_(False), jnp.int32(0),
            jnp.int32(0))
    _, x, acc, tries, calls = jax.lax.while_loop(cond, body, init)
    return x, dict(accepted=acc, oracle_calls=calls, moves=tries * n,
                   proposals=tries)

  return chain


def make_sir(inst: trees.Instance, proposals: int = 16):
  td = make_top_down(inst)

  def chain(key):
    k1, k2 = jax.random.split(key)
    xs, st = jax.vmap(td)(jax.random.split(k1, proposals))
    # ω = w / q; w at a leaf is exact: log w = log μ̂(x) = logsumexp term
    j = jax.random.categorical(k2, st["log_omega"])
    return xs[j], dict(accepted=jnp.bool_(True),
                       oracle_calls=st["oracle_calls"].sum(),
                       moves=st["moves"].sum(), proposals=jnp.int32(
                           proposals))

  return chain


class _Walk:
  """Shared state handling for the tree walks."""

  def __init__(self, inst: trees.Instance):
    self.inst = inst
    self.S, self.n = inst.S, inst.n

  def neighbours(self, pre, d):
    """(log μ̂(v) or −inf at the root, children values)."""
    logm, logmu, ref = oracles.children(self.inst, pre, jnp.minimum(
        d, self.n - 1))
    la = jnp.where(d > 0, pre.logmu[d], -jnp.inf)
    return la, logm, logmu, ref


def _record(c, trace, queried, h, d):
  """Appends (hash, depth) of a node whose neighbourhood was queried."""
  if not trace:
    return {}
  i = jnp.minimum(c["nq"], trace - 1)
  return dict(trace_h=c["trace_h"].at[i].set(
      jnp.where(queried, h, c["trace_h"][i])),
              trace_d=c["trace_d"].at[i].set(
                  jnp.where(queried, d, c["trace_d"][i])),
              nq=c["nq"] + queried)


def _trace_init(trace):
  if not trace:
    return {}
  return dict(trace_h=jnp.zeros(trace, jnp.uint32),
              trace_d=jnp.full(trace, -1, jnp.int32), nq=jnp.int32(0))


def _trace_out(out, trace):
  if not trace:
    return {}
  return dict(trace_hash=out["trace_h"], trace_depth=out["trace_d"],
              trace_count=out["nq"])


def sj_holds(laziness: float = 0.5, leaf_loop: float = 0.0):
  """log P(a lazy step stays) at internal nodes and at leaves (§2c: a
  leaf's loop λ·w(x) next to its parent edge a(x) = w(x) under E0)."""
  return (math.log(laziness),
          math.log(1.0 - (1.0 - laziness) / (1.0 + leaf_loop)))


def sj_move(key_hold, key_move, leaf, log_parent, log_children,
            log_holds):
  """One jump of the lazy SJ chain (§2c) at a node -- the transition rule
  every SJ-type walk here uses (the tree walks below and the VGB decoder of
  `ttt.decoders`).

  Args:
    key_hold, key_move: PRNG keys (holding time, move).
    leaf: bool[], the node is a leaf (it can only go up).
    log_parent: log a(v) = log μ̂(v) (−inf at the root).
    log_children: float[S] log μ̂(v·a) (−inf: no such child).
    log_holds: `sj_holds(...)`.

  Returns:
    (h int32[], lazy steps until the jump (the jump is at step h), go_up
    bool[], child int32[] (meaningful when not go_up)). The jump goes to the
    parent with probability a / (a + Σ children), else to child c ∝ μ̂(v·c).
  """
  h = _geom(key_hold, jnp.where(leaf, log_holds[1], log_holds[0]))
  choice = jax.random.categorical(
      key_move, jnp.concatenate([jnp.reshape(log_parent, (1,)),
                                 log_children]))
  return h, leaf | (choice == 0), jnp.maximum(choice - 1, 0)


def _sj_runner(inst, leaf_loop, laziness, trace=0, stop_at_leaf=False):
  """`run(carry, horizon)`: the SJ jump chain from `carry` until time
  `horizon` (or, with stop_at_leaf, the first leaf)."""
  w = _Walk(inst)
  n, S = w.n, w.S
  holds = sj_holds(laziness, leaf_loop)

  def run(c, horizon):
    def cond(c):
      return ~c["done"]

    def body(c):
      pre, d, t = c["pre"], c["d"], c["t"]
      key, kh, km = jax.random.split(c["key"], 3)
      leaf = d == n
      la, logm, logmu, ref = w.neighbours(pre, d)
      h, go_up, child = sj_move(kh, km, leaf, la, logmu, holds)
      over = t + h > horizon
      pushed = trees.push(inst, pre, jnp.minimum(d, n - 1), child, logm,
                          logmu, ref)
      move = ~over
      new_d = jnp.where(move, jnp.where(go_up, d - 1, d + 1), d)
      calls = jnp.where(move & ~leaf, S + (d > 0).astype(jnp.int32), 0)
      done = over | (move & stop_at_leaf & (new_d == n))
      return dict(
          pre=jax.tree.map(lambda p, q: jnp.where(move & ~go_up, q, p), pre,
                           pushed),
          d=new_d, t=jnp.where(over, horizon, t + h), key=key, done=done,
          moves=c["moves"] + move, calls=c["calls"] + calls,
          **_record(c, trace, calls > 0, pre.hash[d], d))

    return jax.lax.while_loop(cond, body, dict(c, done=jnp.bool_(False)))

  def init(key):
    return dict(pre=trees.root(inst), d=jnp.int32(0), t=jnp.int32(0),
                key=key, done=jnp.bool_(False), moves=jnp.int32(0),
                calls=jnp.int32(0), **_trace_init(trace))

  return run, init


def make_js(inst: trees.Instance, steps: int, leaf_loop: float = 0.0,
            readout: str = "r1", laziness: float = 0.5, trace: int = 0,
            records: int = 1, spacing: int = 0):
  """The SJ walk as a jump chain (see module docstring).

  readout 'r3': one long chain per lane, X recorded at times steps,
  steps + spacing, ..., (`records` of them; spacing defaults to steps);
  the chain's outputs then have a leading [records] axis (the holding times
  are memoryless, so stopping at a record time and going on is exact).
  trace > 0 records the (hash, depth) of the first `trace` nodes whose
  neighbourhood was queried (for `sampling.unique_queries`).
  """
  if readout not in ("r1", "r2", "r3"):
    raise ValueError("readout must be 'r1', 'r2' or 'r3'")
  n = inst.n
  run, init = _sj_runner(inst, leaf_loop, laziness,
                         trace if readout != "r3" else 0, readout == "r2")

  if readout == "r3":
    spacing = spacing or steps

    def chain_r3(key):
      def segment(c, j):
        c = run(c, steps + j * spacing)
        return c, (c["pre"].tokens, c["d"] == n, c["moves"], c["calls"])

      _, (xs, acc, moves, calls) = jax.lax.scan(segment, init(key),
                                                jnp.arange(records))
      return xs, dict(accepted=acc, oracle_calls=calls, moves=moves)

    return chain_r3

  def chain(key):
    out = run(init(key), steps)
    return out["pre"].tokens, dict(accepted=out["d"] == n,
                                   oracle_calls=out["calls"],
                                   moves=out["moves"], steps=out["t"],
                                   **_trace_out(out, trace))

  return chain


def lifted_hold(leaf_loop: float) -> float:
  """log P(a leaf state of the balanced lifted walk stays), λ ≥ 1 (§2d:
  each of a leaf's two states moves on w.p. 2 / (1 + λ))."""
  if leaf_loop < 1:
    raise ValueError("the lifted walk needs leaf_loop >= 1")
  return (math.log1p(-2.0 / (1.0 + leaf_loop)) if leaf_loop > 1
          else -math.inf)


def lifted_move(key_hold, key_turn, key_child, leaf, down, log_parent,
                log_children, log_hold_leaf):
  """One transition of the balanced lifted walk (§2d) at a state (v, d) --
  the rule `make_lifted` and the lifted VGB decoder of `ttt.decoders` run.

  With a = μ̂(v) (0 at the root), b = Σ_c μ̂(v·c) and m = max(a, b): heading
  down, go to child c w.p. μ̂(v·c) / m, else turn up; heading up, go to the
  parent w.p. a / m, else turn down. A leaf holds Geom(2 / (1 + λ)) steps,
  then turns up (heading down) or goes to its parent (heading up).

  Args:
    key_hold, key_turn, key_child: PRNG keys (leaf holding time, go on or
      turn, which child).
    leaf: bool[], the node is a leaf.
    down: bool[], the direction bit (True: heading down).
    log_parent: log a(v) = log μ̂(v) (−inf at the root).
    log_children: float[S] log μ̂(v·c) (−inf: no such child).
    log_hold_leaf: `lifted_hold(λ)`.

  Returns:
    (h int32[], steps until the transition (1 at internal nodes, which
    never idle), to_child bool[], to_parent bool[], turn bool[] (the
    direction bit flips, the node stays), child int32[] (meaningful where
    to_child)); exactly one of to_child, to_parent, turn holds.
  """
  h = jnp.where(leaf, _geom(key_hold, jnp.float32(log_hold_leaf)), 1)
  lb = jax.nn.logsumexp(log_children)
  lm = jnp.maximum(log_parent, lb)
  u = jnp.log(jax.random.uniform(key_turn, minval=1e-12))
  # internal: down w.p. b/m (else reverse); up w.p. a/m (else reverse)
  go_on = jnp.where(down, u < lb - lm, u < log_parent - lm)
  child = jax.random.categorical(key_child, log_children)
  to_child = ~leaf & down & go_on
  to_parent = (~leaf & ~down & go_on) | (leaf & ~down)
  turn = ~leaf & ~go_on | (leaf & down)
  return h, to_child, to_parent, turn, child


def make_lifted(inst: trees.Instance, steps: int,
                leaf_loop: float | None = None, trace: int = 0):
  """The balanced lifted walk with a randomised read-out time (trace: as
  in `make_js`)."""
  lam = 2 * inst.alpha * inst.n if leaf_loop is None else float(leaf_loop)
  log_hold_leaf = lifted_hold(lam)
  w = _Walk(inst)
  n, S = w.n, w.S

  def chain(key):
    key, kt = jax.random.split(key)
    t_star = jax.random.randint(kt, (), steps // 2, steps + 1)

    def cond(c):
      return ~c["done"]

    def body(c):
      pre, d, t, down = c["pre"], c["d"], c["t"], c["down"]
      key, kh, ku, kc = jax.random.split(c["key"], 4)
      leaf = d == n
      la, logm, logmu, ref = w.neighbours(pre, d)
      h, to_child, to_parent, flip, a = lifted_move(
          kh, ku, kc, leaf, down, la, logmu, log_hold_leaf)
      over = t + h > t_star
      pushed = trees.push(inst, pre, jnp.minimum(d, n - 1), a, logm, logmu,
                          ref)
      move = ~over
      new_pre = jax.tree.map(lambda p, q: jnp.where(move & to_child, q, p),
                             pre, pushed)
      new_d = jnp.where(move & to_child, d + 1,
                        jnp.where(move & to_parent, d - 1, d))
      new_down = jnp.where(move & flip, ~down, down)
      calls = jnp.where(move & ~leaf, S + (d > 0).astype(jnp.int32), 0)
      return dict(pre=new_pre, d=new_d, t=jnp.where(over, t_star, t + h),
                  down=new_down, key=key, done=over,
                  moves=c["moves"] + move, calls=c["calls"] + calls,
                  **_record(c, trace, calls > 0, pre.hash[d], d))

    init = dict(pre=trees.root(inst), d=jnp.int32(0), t=jnp.int32(0),
                down=jnp.bool_(True), key=key, done=jnp.bool_(False),
                moves=jnp.int32(0), calls=jnp.int32(0), **_trace_init(trace))
    out = jax.lax.while_loop(cond, body, init)
    return out["pre"].tokens, dict(accepted=out["d"] == n,
                                   oracle_calls=out["calls"],
                                   moves=out["moves"], steps=t_star,
                                   **_trace_out(out, trace))

  return chain


def make_vgb_mh(inst: trees.Instance, steps: int, leaf_loop: float = 0.0,
                laziness: float = 0.5):
  """VGB in Metropolis–Hastings form (§2e): one query per proposal."""
  w = _Walk(inst)
  n = w.n
  log_hold = math.log(laziness)
  log_loop = math.log1p(leaf_loop)

  def logpi(pre, d):
    return pre.logmu[d] + jnp.where(d == n, log_loop, 0.0)

  def chain(key):
    def cond(c):
      return ~c["done"]

    def body(c):
      pre, d, t = c["pre"], c["d"], c["t"]
      key, kh, kp, ka, kacc = jax.random.split(c["key"], 5)
      h = _geom(kh, jnp.float32(log_hold))
      over = t + h > steps
      # a fair coin picks child vs parent; a child proposal at a leaf or a
      # parent proposal at the root is a stay
      coin = jax.random.bernoulli(kp)
      propose_child = coin & (d < n)
      propose_parent = ~coin & (d > 0)
      _, logm, logmu, ref = w.neighbours(pre, d)
      a = jax.random.categorical(ka, ref)
      child_logpi = logmu[a] + jnp.where(d + 1 == n, log_loop, 0.0)
      cur = logpi(pre, d)
      acc_child = child_logpi - ref[a] - cur
      par = jnp.maximum(d - 1, 0)
      ref_last = pre.logref[d] - pre.logref[par]
      acc_parent = ref_last + pre.logmu[par] - cur
      u = jnp.log(jax.random.uniform(kacc, minval=1e-12))
      take_child = propose_child & (u < jnp.minimum(acc_child, 0.0))
      take_parent = propose_parent & (u < jnp.minimum(acc_parent, 0.0))
      pushed = trees.push(inst, pre, jnp.minimum(d, n - 1), a, logm, logmu,
                          ref)
      live = ~over
      new_pre = jax.tree.map(
          lambda p, q: jnp.where(live & take_child, q, p), pre, pushed)
      new_d = jnp.where(live & take_child, d + 1,
                        jnp.where(live & take_parent, d - 1, d))
      queried = live & (propose_child | propose_parent)
      return dict(pre=new_pre, d=new_d, t=jnp.where(over, steps, t + h),
                  key=key, done=over,
                  moves=c["moves"] + (live & (take_child | take_parent)),
                  calls=c["calls"] + queried)

    init = dict(pre=trees.root(inst), d=jnp.int32(0), t=jnp.int32(0),
                key=key, done=jnp.bool_(False), moves=jnp.int32(0),
                calls=jnp.int32(0))
    out = jax.lax.while_loop(cond, body, init)
    return out["pre"].tokens, dict(accepted=out["d"] == n,
                                   oracle_calls=out["calls"],
                                   moves=out["moves"], steps=out["t"])

  return chain
