"""Monte-Carlo TV at depths beyond enumeration (METHOD_SAMPLING §4.3).

For n ∈ {16, 32, 64} the output law of a sampler cannot be tabulated, but
the target's subtree masses M(v) are known exactly for every synthetic
family, so:

* `exact_samples`: exact samples from μ* (top-down on the true masses M).
* `topdown_tv`: the unbiased estimate TV(q, μ*) = E_{x∼q}[(1 − μ*(x)/q(x))⁺]
  for the top-down law q (both densities are computed along x's path).
* `tv_lower_bound`: for any sampler (walks, VGB, TTT), the TV of
  low-dimensional statistics of its samples against exact samples -- each a
  lower bound on the full TV: (i) every position's symbol frequencies
  (`pos<i>`), (ii) the count of symbol 1 (`ones`) or, for DFA targets, the
  final automaton state (`dfa_state`), (iii) the joint law of the first j ≤ 8
  symbols (`first<j>`), (iv) quantile bins of log μ*(x) (`log_mu`), (v)
  quantile bins of log(q(x)/μ*(x)) for the top-down law q (`log_q_over_mu`).
  Each is debiased by subtracting the same statistic's TV between two
  independent exact-sample sets of the same size; bootstrap percentile
  intervals resample all three sets. The maximum over statistics is the
  reported lower bound.

All per-sample quantities come from one jitted pass over the path
(`score_samples`), vmapped over samples and sharded like `sampling.sample`.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from sampling import oracles, trees


def make_exact_chain(inst: trees.Instance):
  """One exact sample from μ*: (key) -> (x int32[n], stats).

  Top-down on the true subtree masses M (the oracle is not queried).
  """

  def chain(key):
    pre = trees.root(inst)

    def level(carry, d):
      pre, key = carry
      key, k = jax.random.split(key)
      logm, logmu, ref = oracles.children(inst, pre, d)
      a = jax.random.categorical(k, logm)
      return (trees.push(inst, pre, d, a, logm, logmu, ref), key), None

    (pre, _), _ = jax.lax.scan(level, (pre, key), jnp.arange(inst.n))
    return pre.tokens, dict(accepted=jnp.bool_(True))

  return chain


def make_path_scorer(inst: trees.Instance):
  """(x int32[n]) -> (log μ*(x), log q(x), final DFA state), q = top-down.

  log q(x) = Σ_d log μ̂(x_{1:d+1}) − log Σ_a μ̂(x_{1:d}·a): the law of
  `walks.make_top_down` (leaves use the exact masses, as the oracle does).
  """
  log_z = trees.log_z(inst)

  def score(x):
    pre = trees.root(inst)

    def level(carry, d):
      pre, log_q = carry
      logm, logmu, ref = oracles.children(inst, pre, d)
      a = x[d]
      log_q = log_q + logmu[a] - jax.nn.logsumexp(logmu)
      return (trees.push(inst, pre, d, a, logm, logmu, ref), log_q), None

    (pre, log_q), _ = jax.lax.scan(level, (pre, jnp.float32(0.0)),
                                   jnp.arange(inst.n))
    return pre.logm[inst.n] - log_z, log_q, pre.state[inst.n]

  return score


_JIT: dict = {}


def _compiled(inst, kind):
  k = (id(inst), kind)
  if k not in _JIT or _JIT[k][0] is not inst:
    fn = make_exact_chain(inst) if kind == "exact" else make_path_scorer(inst)
    _JIT[k] = (inst, jax.jit(jax.vmap(fn)))
  return _JIT[k][1]


def exact_samples(inst: trees.Instance, key: jax.Array, num: int,
                  mesh=None) -> np.ndarray:
  """int32[num, n] exact samples from μ*."""
  from sampling import mesh as sharding

  mesh = sharding.make_mesh() if mesh is None else mesh
  keys, _ = sharding.pad_tasks(jax.random.split(key, num), mesh.size)
  xs, _ = sharding.gather(_compiled(inst, "exact")(
      sharding.shard_tasks(keys, mesh)))
  return xs[:num]


def score_samples(inst: trees.Instance, xs: np.ndarray, mesh=None) -> dict:
  """Per sample: `log_mu` (log μ*(x)), `log_q` (top-down log q(x)) and
  `state` (final DFA state; 0 for other targets), numpy [N]."""
  from sampling import mesh as sharding

  mesh = sharding.make_mesh() if mesh is None else mesh
  xs = np.asarray(xs, np.int32)
  padded, _ = sharding.pad_tasks(xs, mesh.size)
  out = sharding.gather(_compiled(inst, "score")(
      sharding.shard_tasks(padded, mesh)))
  n = len(xs)
  return dict(log_mu=out[0][:n].astype(np.float64),
              log_q=out[1][:n].astype(np.float64), state=out[2][:n])


def topdown_tv(inst: trees.Instance, xs: np.ndarray,
               scores: dict | None = None) -> dict:
  """Unbiased TV(q, μ*) from top-down samples `xs` (x ∼ q).

  Returns:
    dict(tv, stderr, ci95=(lo, hi)) -- the mean of (1 − μ*(x)/q(x))⁺.
  """
  scores = score_samples(inst, xs) if scores is None else scores
  terms = np.maximum(0.0, 1.0 - np.exp(scores["log_mu"] - scores["log_q"]))
  tv = float(terms.mean())
  se = float(terms.std(ddof=1) / math.sqrt(len(terms))) if len(terms) > 1 \
      else float("nan")
  return dict(tv=tv, stderr=se, ci95=(tv - 1.96 * se, tv + 1.96 * se))


@dataclasses.dataclass(frozen=True)
class StatsConfig:
  """How `tv_lower_bound` bins and bootstraps."""

  quantile_bins: int = 20  # bins of log μ* and log(q/μ*), from exact draws
  max_joint_cells: int = 4096  # first-j joint law: S^j ≤ this, j ≤ 8
  bootstrap: int = 100  # bootstrap resamples (0: no intervals)
  seed: int = 0


def _codes(inst: trees.Instance, xs: np.ndarray, scores: dict,
           edges: dict, cfg: StatsConfig) -> tuple[np.ndarray, list, list]:
  """(codes int64[N, m], names, cells per statistic)."""
  S, n = inst.S, inst.n
  cols, names, cells = [], [], []
  for i in range(n):
    cols.append(xs[:, i])
    names.append(f"pos{i}")
    cells.append(S)
  if inst.target == "dfa":
    cols.append(scores["state"])
    names.append("dfa_state")
    cells.append(int(np.asarray(inst.arrays["trans"]).shape[0]))
  else:
    cols.append((xs == 1).sum(1))
    names.append("ones")
    cells.append(n + 1)
  j = min(8, n, int(math.log(cfg.max_joint_cells) // math.log(S)))
  if j >= 2:
    cols.append((xs[:, :j] * S ** np.arange(j - 1, -1, -1)).sum(1))
    names.append(f"first{j}")
    cells.append(S ** j)
  for name, v in (("log_mu", scores["log_mu"]),
                  ("log_q_over_mu", scores["log_q"] - scores["log_mu"])):
    cols.append(np.searchsorted(edges[name], v, side="right"))
    names.append(name)
    cells.append(len(edges[name]) + 1)
  return np.stack(cols, 1).astype(np.int64), names, cells


def _tvs(codes: np.ndarray, ref: np.ndarray, offsets: np.ndarray,
         total: int) -> np.ndarray:
  """TV per statistic between the code sets `codes` and `ref`."""
  a = np.bincount((codes + offsets).ravel(), minlength=total) / len(codes)
  b = np.bincount((ref + offsets).ravel(), minlength=total) / len(ref)
  diff = np.abs(a - b)
  bounds = np.append(offsets, total)
  return 0.5 * np.add.reduceat(diff, bounds[:-1])


def tv_lower_bound(inst: trees.Instance, xs: np.ndarray, key: jax.Array,
                   accepted: np.ndarray | None = None,
                   config: StatsConfig | None = None) -> dict:
  """Debiased TV of low-dimensional statistics of `xs` against μ*.

  Args:
    inst: the instance (its exact masses give the reference samples).
    xs: int32[N, n] the sampler's outputs.
    key: PRNG key for the two exact-sample sets.
    accepted: optional bool[N]; only accepted samples count.
    config: `StatsConfig`.

  Returns:
    dict(tv: max over statistics of the debiased TV (a lower bound on
    TV(law of xs, μ*) up to Monte-Carlo error), argmax: the statistic
    attaining it, ci95: that statistic's bootstrap interval, samples: N
    used, per_statistic: {name: dict(tv, raw, noise, ci95)}).
  """
  cfg = config or StatsConfig()
  xs = np.asarray(xs)
  if accepted is not None:
    xs = xs[np.asarray(accepted, bool)]
  num = len(xs)
  if num < 2:
    raise ValueError(f"tv_lower_bound needs at least 2 samples, got {num}")
  ka, kb = jax.random.split(key)
  ref_a = exact_samples(inst, ka, num)
  ref_b = exact_samples(inst, kb, num)
  sc_a = score_samples(inst, ref_a)
  probs = np.linspace(0, 1, cfg.quantile_bins + 1)[1:-1]
  edges = dict(log_mu=np.quantile(sc_a["log_mu"], probs),
               log_q_over_mu=np.quantile(sc_a["log_q"] - sc_a["log_mu"],
                                         probs))
  ca, names, cells = _codes(inst, ref_a, sc_a, edges, cfg)
  cb = _codes(inst, ref_b, score_samples(inst, ref_b), edges, cfg)[0]
  cq = _codes(inst, xs, score_samples(inst, xs), edges, cfg)[0]
  offsets = np.concatenate([[0], np.cumsum(cells)[:-1]]).astype(np.int64)
  total = int(np.sum(cells))
  raw = _tvs(cq, ca, offsets, total)
  noise = _tvs(cb, ca, offsets, total)
  deb = raw - noise
  best = int(np.argmax(deb))
  boots = []
  rng = np.random.default_rng(cfg.seed)
  for _ in range(cfg.bootstrap):
    ia, ib, iq = (rng.integers(num, size=num) for _ in range(3))
    boots.append(_tvs(cq[iq], ca[ia], offsets, total)
                 - _tvs(cb[ib], ca[ia], offsets, total))
  if boots:
    lo, hi = np.percentile(np.stack(boots), [2.5, 97.5], axis=0)
  else:
    lo = hi = np.full(len(deb), np.nan)
  per = {name: dict(tv=float(deb[i]), raw=float(raw[i]),
                    noise=float(noise[i]), ci95=(float(lo[i]), float(hi[i])))
         for i, name in enumerate(names)}
  return dict(tv=float(deb[best]), ci95=per[names[best]]["ci95"],
              argmax=names[best], samples=num, per_statistic=per)
