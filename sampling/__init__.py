"""sampling: TTT as approximate sampling (Golowich, Moitra, Rohatgi 2026).

Sample from μ* on the leaves of a depth-n tree given an oracle μ̂ of
approximate subtree masses. Entry points:

* `load_instance(path_or_dict)`, `make_instance(S, n, target, pattern,
  alpha, seed, **params)` -- `sampling.trees`;
* `sample(instance, method, key, num_samples, **params)` ->
  `(samples int32[N, n], stats)`, stats per chain (numpy): `accepted`,
  `oracle_calls`, `moves` (+ method-specific counters);
* `exact_output_law(instance, method, **params)` -> float64[S^n] --
  `sampling.exact`.

Methods and parameters (the same names in both):
  'top_down'                                      §2a
  'rejection'  alpha, max_proposals               §2b
  'sir'        proposals                          §2b (sample only)
  'js'         steps, leaf_loop, readout ('r1' | 'r2' | 'r3': records,
               spacing)                           §2c
  'lifted'     steps, leaf_loop                   §2d (our reconstruction)
  'vgb'        steps, leaf_loop, form ('sj'|'mh') §2e
  'ttt_elim'   family, delta, imh_steps, internal §2f (our design)
"""

from __future__ import annotations

import numbers

import jax
import numpy as np

from sampling import bounded, exact, montecarlo, oracles, trees, walks
from sampling import mesh as sharding
from sampling.trees import Instance, InstanceError, load_instance, make_instance

METHODS = ("top_down", "rejection", "sir", "js", "lifted", "vgb", "ttt_elim")

__all__ = ["Instance", "InstanceError", "METHODS", "bounded", "exact",
           "exact_output_law", "load_instance", "make_chain", "make_instance",
           "montecarlo", "oracles", "sample", "trees", "unique_queries",
           "walks"]

_CACHE: dict = {}

# The run-time parameters each method takes (`sample`, `make_chain`,
# `exact_output_law`); `trace`, `records`, `spacing` are the walks' tracing
# and R3 read-out settings.
_WALK = ("steps", "leaf_loop", "trace")
PARAMS = {
    "top_down": (),
    "rejection": ("alpha", "max_proposals"),
    "sir": ("proposals",),
    "js": _WALK + ("readout", "records", "spacing"),
    "lifted": _WALK,
    "vgb": _WALK + ("form", "readout", "records", "spacing"),
    "ttt_elim": ("family", "delta", "imh_steps", "internal"),
}


def _int(name: str, v, low: int) -> None:
  if isinstance(v, bool) or not isinstance(v, numbers.Integral):
    raise TypeError(f"{name} must be an integer >= {low}, got {v!r}")
  if v < low:
    raise ValueError(f"{name} must be an integer >= {low}, got {v}")


def _real(name: str, v, low: float, what: str) -> None:
  if isinstance(v, bool) or not isinstance(v, numbers.Real):
    raise TypeError(f"{name} must be a number {what}, got {v!r}")
  if not np.isfinite(v) or v < low:
    raise ValueError(f"{name} must be a finite number {what}, got {v}")


def check_params(method: str, params: dict) -> None:
  """Raises ValueError / TypeError naming a bad parameter of `method` and
  the accepted range (unknown names included: a typo is never ignored)."""
  if method not in PARAMS:
    raise ValueError(f"unknown method {method!r}; known: {METHODS}")
  unknown = sorted(set(params) - set(PARAMS[method]))
  if unknown:
    raise TypeError(f"{method} takes no parameter {unknown}; it takes "
                    f"{list(PARAMS[method])}")
  p = params
  if "steps" in p:
    _int("steps", p["steps"], 1)
  if p.get("leaf_loop") is not None:
    low = 1.0 if method == "lifted" else 0.0
    _real("leaf_loop", p["leaf_loop"], low,
          f">= {low:g}" + (" (the lifted walk's λ)" if low else ""))
  if p.get("alpha") is not None:
    _real("alpha", p["alpha"], 1.0, ">= 1 (the oracle's error bound)")
  for name, low in (("max_proposals", 1), ("proposals", 1), ("trace", 0),
                    ("records", 1), ("spacing", 0), ("imh_steps", 0)):
    if name in p:
      _int(name, p[name], low)
  if "delta" in p and not 0 <= p["delta"] < 1:
    raise ValueError(f"delta must be in [0, 1), got {p['delta']}")
  if p.get("readout", "r1") not in ("r1", "r2", "r3"):
    raise ValueError(f"readout must be 'r1', 'r2' or 'r3', got "
                     f"{p['readout']!r}")
  if p.get("form", "sj") not in ("sj", "mh"):
    raise ValueError(f"form must be 'sj' or 'mh', got {p['form']!r}")


def exact_output_law(instance: Instance, method: str, **params
                     ) -> np.ndarray:
  """The exact output law float64[S^n] of `method` (see
  `sampling.exact.exact_output_law`), its parameters checked first; a
  ValueError, never an array that does not sum to 1, when there is none
  (e.g. a walk with fewer steps than the depth)."""
  if method == "sir":
    raise ValueError("sir has no exact law here (sample it)")
  check_params(method, params)
  return exact.exact_output_law(instance, method, **params)


def make_chain(instance: Instance, method: str, *, steps: int = 256,
               leaf_loop: float | None = None, readout: str = "r1",
               form: str = "sj", alpha: float | None = None,
               max_proposals: int = 1000, proposals: int = 16,
               family=None, delta: float = 0.01, imh_steps: int = 0,
               internal: bool = False,
               trace: int = 0, records: int = 1, spacing: int = 0):
  """The one-chain function `chain(key) -> (x int32[n], stats)`."""
  given = dict(steps=steps, readout=readout, form=form,
               max_proposals=max_proposals, proposals=proposals,
               delta=delta, imh_steps=imh_steps, trace=trace,
               records=records, spacing=spacing, leaf_loop=leaf_loop,
               alpha=alpha)
  check_params(method, {k: v for k, v in given.items()
                        if k in PARAMS.get(method, ())})
  if method == "top_down":
    return walks.make_top_down(instance)
  if method == "rejection":
    return walks.make_rejection(instance, alpha, max_proposals)
  if method == "sir":
    return walks.make_sir(instance, proposals)
  if method == "js" or (method == "vgb" and form == "sj"):
    return walks.make_js(instance, steps, leaf_loop or 0.0, readout,
                         trace=trace, records=records, spacing=spacing)
  if method == "vgb":
    if form != "mh":
      raise ValueError("vgb form must be 'sj' or 'mh'")
    return walks.make_vgb_mh(instance, steps, leaf_loop or 0.0)
  if method == "lifted":
    return walks.make_lifted(instance, steps, leaf_loop, trace=trace)
  if method == "ttt_elim":
    fam = family if family is not None else bounded.make_family(instance)
    return bounded.make_sampler(instance, fam, delta, imh_steps,
                                internal)[0]
  raise ValueError(f"unknown method {method!r}; known: {METHODS}")


def sample(instance: Instance, method: str, key: jax.Array,
           num_samples: int, mesh=None, **params):
  """Runs `num_samples` independent chains in one compiled program.

  Chain i runs on key `jax.random.split(key, N)[i]`, whatever the devices:
  the chain axis is padded to the mesh size and sharded over `mesh` (default:
  every device, of every host), so several devices or hosts split the chains
  and every host gets all results back.

  Returns:
    (samples int32[N, n], stats dict of numpy arrays [N]). For walks a
    sample counts only where `stats['accepted']` (the read-out landed on a
    leaf); rejected chains hold wherever they stopped.
  """
  _int("num_samples", num_samples, 1)
  check_params(method, params)
  cache_key = (id(instance), method, tuple(sorted(
      (k, v if not isinstance(v, (list, dict, np.ndarray, tuple))
       else id(v)) for k, v in params.items())))
  fn = _CACHE.get(cache_key)
  if fn is None or fn[0] is not instance:
    chain = make_chain(instance, method, **params)
    fn = (instance, jax.jit(jax.vmap(chain)))
    _CACHE[cache_key] = fn
  mesh = sharding.make_mesh() if mesh is None else mesh
  r3 = params.get("readout") == "r3"
  # R3: num_samples / records chains, `records` correlated samples each
  # (a leading [records] axis on every output of the chain)
  records = params.get("records", 1) if r3 else 1
  chains = -(-num_samples // records)
  keys, _ = sharding.pad_tasks(jax.random.split(key, chains), mesh.size)
  xs, stats = sharding.gather(fn[1](sharding.shard_tasks(keys, mesh)))
  xs = xs[:chains].reshape(-1, instance.n)[:num_samples]
  stats = {k: v[:chains].reshape((chains * records,) + v.shape[
      1 + r3:])[:num_samples] for k, v in stats.items()}
  return xs, stats


def empirical_law(samples: np.ndarray, S: int,
                  accepted: np.ndarray | None = None) -> np.ndarray:
  """The empirical leaf law float64[S^n] of (accepted) samples."""
  x = np.asarray(samples)
  if accepted is not None:
    x = x[np.asarray(accepted, bool)]
  n = x.shape[1]
  idx = (x * (S ** np.arange(n - 1, -1, -1))).sum(1)
  counts = np.bincount(idx, minlength=S ** n).astype(np.float64)
  return counts / max(counts.sum(), 1.0)




def unique_queries(instance: Instance, method: str, key: jax.Array,
                   num_chains: int, max_queries: int = 100_000,
                   **params) -> dict:
  """Distinct nodes evaluated (memoised query complexity), counted exactly
  on the host for `num_chains` chains of 'js' / 'vgb' (form 'sj') /
  'lifted'.

  Each internal move at v evaluates μ̂(v) (v ≠ ∅) and μ̂ of v's S children;
  nodes are identified by (depth, rolling prefix hash).

  Returns:
    dict(per_chain int[N] distinct nodes per chain, union: distinct over
    all N chains, raw_calls int[N], truncated: chains whose trace overflowed
    `max_queries` (their counts are lower bounds)).
  """
  if method not in ("js", "vgb", "lifted"):
    raise ValueError("unique queries are traced for 'js', 'vgb' and "
                     "'lifted'")
  _, st = sample(instance, method, key, num_chains, trace=max_queries,
                 **params)
  union = set()
  per_chain = []
  for c in range(num_chains):
    m = int(min(st["trace_count"][c], max_queries))
    hs = st["trace_hash"][c, :m].astype(np.uint32)
    ds = st["trace_depth"][c, :m]
    seen = set(zip(ds[ds > 0].tolist(), hs[ds > 0].tolist(), strict=True))
    for a in range(instance.S):
      kids = trees.child_hash(hs, np.uint32(a))
      seen.update(zip((ds + 1).tolist(), kids.tolist(), strict=True))
    per_chain.append(len(seen))
    union |= seen
  return dict(per_chain=np.array(per_chain), union=len(union),
              raw_calls=st["oracle_calls"],
              truncated=st["trace_count"] > max_queries)
