"""sampling: TTT as approximate sampling (Golowich, Moitra, Rohatgi 2026).

Sample from μ* on the leaves of a depth-n tree given an oracle μ̂ of
approximate subtree masses. Entry points:

* `load_instance(path_or_dict)`, `make_instance(S, n, target, pattern,
  alpha, seed, **params)` -- `sampling.trees`;
* `sample(instance, method, key, num_samples, **params)` ->
  `(samples int32[N, n], stats)`, stats per chain (numpy): `accepted`,
  `oracle_calls`, `moves` (+ method-specific counters);
* `exact_output_law(instance, method, **params)` -> float64[S^n] (small
  trees: `sampling.tables`, `sampling.exact`).

`METHODS` is the sampler registry: a method's name maps to its `Sampler`
(the parameters it takes, its chain factory, its exact law), checked by
`check_params` before any work; `sample`, `make_chain` and
`exact_output_law` never branch on a name, so a new sampler is one entry
here. Methods and parameters (the same names in all three):
  'top_down'                                      §2a
  'rejection'  alpha, max_proposals               §2b
  'sir'        proposals                          §2b (sample only)
  'js'         steps, leaf_loop, readout ('r1' | 'r2' | 'r3': records,
               spacing)                           §2c
  'lifted'     steps, leaf_loop                   §2d (our reconstruction)
  'vgb'        steps, leaf_loop, form ('sj'|'mh') §2e (`VGB_FORMS`)
  'ttt_elim'   family, delta, imh_steps, internal §2f (our design)
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import NamedTuple

import jax
import numpy as np

from sampling import bounded, exact, montecarlo, oracles, tables, trees, walks
from sampling import mesh as sharding
from sampling.trees import Instance, InstanceError, load_instance, make_instance

__all__ = ["Instance", "InstanceError", "METHODS", "PARAMS", "Sampler",
           "bounded", "check_params", "exact", "exact_output_law",
           "load_instance", "make_chain", "make_instance", "montecarlo",
           "oracles", "sample", "tables", "trees", "unique_queries", "walks"]

_CACHE: dict = {}


class Sampler(NamedTuple):
  """A registry entry: one sampling method, one face.

  Attributes:
    params: the run-time parameters it takes (`sample`, `make_chain`,
      `exact_output_law`; `check_params` refuses any other).
    make_chain: (instance, p) -> `chain(key) -> (x int32[n], stats)`, one
      chain (vmapped by `sample`); p: every parameter, defaults filled in
      (`DEFAULTS`).
    exact_law: (instance, p) -> float64[S^n] its exact output law on a
      small tree (conditioned on an accepted read-out), or None: no exact
      law here (sample it).
    walk: it moves one level per step for `steps` steps, so it has no law
      when steps < the depth.
    leaf_loop_min: (the least leaf_loop, what it is) -- both in the error.
  """

  params: tuple[str, ...]
  make_chain: Callable[[Instance, dict], Callable]
  exact_law: Callable[[Instance, dict], np.ndarray] | None
  walk: bool = False
  leaf_loop_min: tuple[float, str] = (0.0, "")


# Every parameter's default (`make_chain`'s keywords, the exact laws').
DEFAULTS = dict(steps=256, leaf_loop=None, readout="r1", form="sj",
                alpha=None, max_proposals=1000, proposals=16, family=None,
                delta=0.01, imh_steps=0, internal=False, trace=0, records=1,
                spacing=0)


def _leaf_loop(p: dict) -> float:
  return p["leaf_loop"] or 0.0


def _walk_law(transitions, window: bool = False):
  """A walk's exact law: (instance, p) -> float64[S^n] from its exact chain
  `transitions(instance, table, p) -> exact.Chain` (window: the lifted
  read-out, T* uniform on ⌊T/2⌋..T)."""

  def law(inst: Instance, p: dict) -> np.ndarray:
    table = tables.node_table(inst)
    chain = transitions(inst, table, p)
    return exact.walk_law(table, chain, p["steps"], window).law

  return law


def _lifted_loop(inst: Instance, p: dict) -> float:
  """λ of the lifted walk's exact chain (default 2αn, at least 1)."""
  lam = 2 * inst.alpha * inst.n if p["leaf_loop"] is None else p["leaf_loop"]
  return max(lam, 1.0)


def _ttt_chain(inst: Instance, p: dict):
  fam = p["family"] if p["family"] is not None else bounded.make_family(inst)
  return bounded.make_sampler(inst, fam, p["delta"], p["imh_steps"],
                              p["internal"])[0]


_JS = Sampler(
    params=("steps", "leaf_loop", "trace", "readout", "records", "spacing"),
    make_chain=lambda inst, p: walks.make_js(
        inst, p["steps"], _leaf_loop(p), p["readout"], trace=p["trace"],
        records=p["records"], spacing=p["spacing"]),
    exact_law=_walk_law(lambda inst, t, p: exact.sj_chain(t, _leaf_loop(p))),
    walk=True)
_MH = Sampler(
    params=("steps", "leaf_loop"),
    make_chain=lambda inst, p: walks.make_vgb_mh(inst, p["steps"],
                                                 _leaf_loop(p)),
    exact_law=_walk_law(lambda inst, t, p: exact.mh_chain(t, _leaf_loop(p))),
    walk=True)
# VGB's `form`: 'sj' is the SJ walk (the exact reduction μ̂ = π_ref V̂),
# 'mh' the Metropolis–Hastings walk (§2e).
VGB_FORMS = {"sj": _JS, "mh": _MH}

METHODS: dict[str, Sampler] = {
    "top_down": Sampler(
        params=(),
        make_chain=lambda inst, p: walks.make_top_down(inst),
        exact_law=lambda inst, p: exact.topdown_law(
            tables.node_table(inst))),
    "rejection": Sampler(
        params=("alpha", "max_proposals"),
        make_chain=lambda inst, p: walks.make_rejection(
            inst, p["alpha"], p["max_proposals"]),
        exact_law=lambda inst, p: exact.rejection_law(
            tables.node_table(inst), p["alpha"] or inst.alpha)[0]),
    "sir": Sampler(
        params=("proposals",),
        make_chain=lambda inst, p: walks.make_sir(inst, p["proposals"]),
        exact_law=None),
    "js": _JS,
    "lifted": Sampler(
        params=("steps", "leaf_loop", "trace"),
        make_chain=lambda inst, p: walks.make_lifted(
            inst, p["steps"], p["leaf_loop"], trace=p["trace"]),
        exact_law=_walk_law(lambda inst, t, p: exact.lifted_chain(
            t, _lifted_loop(inst, p)), window=True),
        walk=True, leaf_loop_min=(1.0, " (the lifted walk's λ)")),
    "vgb": Sampler(
        params=("steps", "leaf_loop", "trace", "form", "readout", "records",
                "spacing"),
        make_chain=lambda inst, p: VGB_FORMS[p["form"]].make_chain(inst, p),
        exact_law=lambda inst, p: VGB_FORMS[p["form"]].exact_law(inst, p),
        walk=True),
    "ttt_elim": Sampler(
        params=("family", "delta", "imh_steps", "internal"),
        make_chain=_ttt_chain,
        exact_law=lambda inst, p: bounded.exact_ttt_law(
            inst, p["family"], p["delta"], p["internal"])),
}

# The run-time parameters each method takes (`sample`, `make_chain`,
# `exact_output_law`); `trace`, `records`, `spacing` are the walks' tracing
# and R3 read-out settings. A copy taken at import: `check_params` reads
# `METHODS` itself.
PARAMS = {name: s.params for name, s in METHODS.items()}


def sampler(method: str) -> Sampler:
  """The registry entry of `method` (ValueError naming the known)."""
  if method not in METHODS:
    raise ValueError(f"unknown method {method!r}; known: {tuple(METHODS)}")
  return METHODS[method]


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
  entry = sampler(method)
  unknown = sorted(set(params) - set(entry.params))
  if unknown:
    raise TypeError(f"{method} takes no parameter {unknown}; it takes "
                    f"{list(entry.params)}")
  p = params
  if "steps" in p:
    _int("steps", p["steps"], 1)
  if p.get("leaf_loop") is not None:
    low, what = entry.leaf_loop_min
    _real("leaf_loop", p["leaf_loop"], low, f">= {low:g}{what}")
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
  if p.get("form", "sj") not in VGB_FORMS:
    raise ValueError(f"form must be 'sj' or 'mh', got {p['form']!r}")


def exact_output_law(instance: Instance, method: str, **params
                     ) -> np.ndarray:
  """The exact output law of a sampler on a small tree, its parameters
  checked first.

  Args:
    instance: the instance (small: at most `tables.MAX_EXACT_NODES` nodes).
    method: a key of `METHODS` with an `exact_law`.
    **params: its run-time parameters, as `sample` takes them (defaults:
      `DEFAULTS`; e.g. leaf_loop 0 for js/vgb and 2αn for lifted, alpha the
      instance's for rejection).

  Returns:
    float64[S^n], leaves by base-S integer; for walks the law conditioned
    on the read-out landing on a leaf.

  Raises:
    ValueError: when there is no law to give, never an array that does
      not sum to 1: a method without one ('sir'), a walk whose horizon is
      shorter than the depth (it never reaches a leaf), or any output that
      is not a probability vector.
  """
  entry = sampler(method)
  if entry.exact_law is None:
    raise ValueError(f"{method} has no exact law here (sample it)")
  check_params(method, params)
  p = {**DEFAULTS, **params}
  steps = p["steps"]
  if entry.walk and steps < instance.n:
    raise ValueError(
        f"{method} with steps={steps} never reaches a leaf of a depth-"
        f"{instance.n} tree (a walk moves one level per step), so it has "
        f"no output law: give steps >= {instance.n} (the depth)")
  law = entry.exact_law(instance, p)
  total = float(np.sum(law))
  if not (np.all(np.isfinite(law)) and np.all(law >= 0)
          and abs(total - 1) <= 1e-6):
    raise ValueError(
        f"{method}'s output on this instance is not a law (it sums to "
        f"{total:.6g}, not 1): it never outputs a leaf with these "
        f"parameters (steps={steps}, leaf_loop={p['leaf_loop']}, "
        f"alpha={p['alpha']})")
  return law


def make_chain(instance: Instance, method: str, *, steps: int = 256,
               leaf_loop: float | None = None, readout: str = "r1",
               form: str = "sj", alpha: float | None = None,
               max_proposals: int = 1000, proposals: int = 16,
               family=None, delta: float = 0.01, imh_steps: int = 0,
               internal: bool = False,
               trace: int = 0, records: int = 1, spacing: int = 0):
  """The one-chain function `chain(key) -> (x int32[n], stats)` of
  `METHODS[method]` (parameters it does not take are ignored here;
  `sample` refuses them)."""
  entry = sampler(method)
  given = dict(steps=steps, readout=readout, form=form,
               max_proposals=max_proposals, proposals=proposals,
               delta=delta, imh_steps=imh_steps, trace=trace,
               records=records, spacing=spacing, leaf_loop=leaf_loop,
               alpha=alpha)
  check_params(method, {k: v for k, v in given.items()
                        if k in entry.params})
  return entry.make_chain(instance, dict(given, family=family,
                                         internal=internal))


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
  on the host for `num_chains` chains of the methods that take `trace`
  ('js', 'vgb' (form 'sj'), 'lifted').

  Each internal move at v evaluates μ̂(v) (v ≠ ∅) and μ̂ of v's S children;
  nodes are identified by (depth, rolling prefix hash).

  Returns:
    dict(per_chain int[N] distinct nodes per chain, union: distinct over
    all N chains, raw_calls int[N], truncated: chains whose trace overflowed
    `max_queries` (their counts are lower bounds)).
  """
  traced = [name for name, s in METHODS.items() if "trace" in s.params]
  if "trace" not in sampler(method).params:
    raise ValueError("unique queries are traced for "
                     f"{', '.join(map(repr, traced[:-1]))} and "
                     f"{traced[-1]!r}")
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
