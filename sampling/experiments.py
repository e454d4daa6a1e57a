"""The scaling experiments of §4.4: cost per sample vs n, TV vs queries.

`run(config, workdir)` computes, writes `results.json`, PNG plots (when
matplotlib is installed: `pip install -e '.[plots]'`) and `report.md` stating
each fitted log-log slope next to the expected one:

* Fig A (`fig_a_tv_vs_moves.png`): TV(output, μ*) vs moves per accepted
  sample for SJ with leaf loops and the lifted walk (exact tree chains over a
  horizon grid), one panel per n, with top-down and rejection as points.
* Fig B (`fig_b_cost_vs_n.png`): moves per exact sample vs n, log-log.
  Depth-factor oracles (exact, slow, depth) through the lumped chains of
  Lemma S at any n; locally inconsistent oracles (combo) through the exact
  tree chains at small n (min over T with TV ≤ δ); TTT_ELIM's queries
  (independent of n).
* Fig C (`fig_c_collapse.png`): SJ TV vs T / n² (the curves collapse).
* Fig D (`fig_d_leaf_mass.png`): P(leaf at T) with λ = 0 vs λ = 2αn.
* Fig E (`fig_e_mc_tv.png`, §4.3): at depths beyond enumeration (`mc_ns`),
  top-down's unbiased TV and the debiased TV of low-dimensional statistics
  (`sampling.montecarlo`, a lower bound on the TV) vs moves per accepted
  sample, for top-down, SJ + loops and the lifted walk.
* Top-down TV vs n on U + sibling (exact, binomial) -- rising to 1.
* A Monte-Carlo check: `sampling.sample` vs the exact law on the smallest
  tree, for every walk (the vectorised samplers are the same chains).

Several hosts: every host runs `run` with the same config; the Monte-Carlo
chains are sharded over all devices of all hosts (`sampling.sample`), the
exact chains are host numpy (repeated on each host, deterministic), and
process 0 writes the files.

Expected slopes (§4.4): SJ + loops → 2, lifted → 1 on consistent oracles
(exact, slow) and → 2 on locally inconsistent ones at constant α, TTT_ELIM
→ 0; top-down TV increases with n.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import tempfile
import time
from typing import Any

import jax
import numpy as np
from absl import logging

import sampling
from sampling import bounded, exact, montecarlo, tables, trees
from sampling import mesh as sharding

# The deepest binary tree the exact tools enumerate (`ns_tree`).
MAX_EXACT_DEPTH = max(n for n in range(trees.MAX_DEPTH + 1)
                      if trees.num_nodes(2, n) <= tables.MAX_EXACT_NODES)
# The longest walk the sweep runs: int32 step counters, with room for a
# holding time past the horizon.
MAX_STEPS = 1 << 30


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
  """Sweep settings (fields mirror `config.sampling`)."""

  ns_tree: tuple[int, ...] = (4, 6, 8)  # exact tree chains (binary)
  ns_lumped: tuple[int, ...] = (4, 8, 16, 32)  # Lemma S, any n
  ns_topdown: tuple[int, ...] = (4, 16, 64, 256)  # top-down TV (binomial)
  alpha: float = 2.0  # constant-α error level
  small_alpha: float = 1.1  # the (1 + ε) regime
  target: str = "product"  # target family for the tree chains
  p: float = 0.3  # its parameter (product / dfa base)
  pattern: str = "combo"  # locally inconsistent pattern for the trees
  delta: float = 0.05  # TV tolerance for cost-to-δ
  horizon_factor: float = 40.0  # T up to this × α² n²
  num_horizons: int = 40  # points on the T grid
  family_size: int = 16  # TTT_ELIM's |F|
  mc_chains: int = 20000  # Monte-Carlo check chains
  mc_ns: tuple[int, ...] = (16, 32)  # §4.3 Monte-Carlo TV depths (() = off)
  mc_samples: int = 20000  # samples per sampler and depth there
  mc_horizons: tuple[float, ...] = (1.0, 4.0)  # walk T = c α² n² there
  mc_bootstrap: int = 50  # bootstrap resamples of the statistics' TVs
  seed: int = 0

  def validate(self) -> None:
    """Refuses a field the sweep could not run with, naming the field, the
    value and the limit -- before any work (`parse` also builds every
    instance the sweep will)."""
    _ints("ns_tree", self.ns_tree, trees.MAX_DEPTH, empty=False)
    for n in self.ns_tree:
      nodes = trees.num_nodes(2, n)
      if nodes > tables.MAX_EXACT_NODES:
        raise trees.InstanceError(
            f"sampling.ns_tree: depth {n} is too large for the exact tools "
            f"(they enumerate the tree: {nodes} nodes, more than "
            f"{tables.MAX_EXACT_NODES}); give depths <= {MAX_EXACT_DEPTH}")
    _ints("ns_lumped", self.ns_lumped, None, empty=False)
    _ints("ns_topdown", self.ns_topdown, None, empty=False)
    _ints("mc_ns", self.mc_ns, trees.MAX_DEPTH, empty=True)
    for name in ("alpha", "small_alpha"):
      _number(name, getattr(self, name), 1.0, trees.F32_MAX,
              "(float32's range: the samplers compute in float32)")
    _number("delta", self.delta, 0.0, 1.0, "", open_high=True)
    _number("horizon_factor", self.horizon_factor, 0.0, math.inf, "",
            open_low=True)
    _number_list("mc_horizons", self.mc_horizons)
    for name, low in (("num_horizons", 1), ("family_size", 1),
                      ("mc_chains", 1), ("mc_bootstrap", 0)):
      _int(name, getattr(self, name), low)
    if self.mc_ns:
      _int("mc_samples", self.mc_samples, 2,
           "(with mc_ns; its statistics need 2 samples)")
    _int("seed", self.seed, 0, high=trees.MAX_SEED)
    self._check_horizons()

  def _check_horizons(self) -> None:
    """Every walk horizon T = c α² n² the sweep derives must be a step
    count the walks can hold (1..MAX_STEPS)."""
    a2 = float(self.alpha) ** 2
    horizons = [("horizon_factor", self.horizon_factor, n)
                for n in self.ns_tree]
    horizons.append(("the Monte-Carlo check's factor", 4, self.ns_tree[0]))
    horizons += [("mc_horizons", c, n) for n in self.mc_ns
                 for c in self.mc_horizons]
    for what, c, n in horizons:
      t = c * a2 * n * n  # the sweep runs int(t) steps
      if not 1 <= t < MAX_STEPS + 1:
        raise trees.InstanceError(
            f"sampling.alpha = {self.alpha:g} with {what} {c:g} gives walks "
            f"of T = {c:g} * alpha^2 * n^2 = {t:.3g} steps at n = {n}; T "
            f"must be in 1..{MAX_STEPS} (the walks count steps in int32)")


def _int(name: str, v, low: int, what: str = "", high: int | None = None
         ) -> None:
  span = f">= {low}" if high is None else f"in {low}..{high}"
  if not trees._is_int(v) or v < low or (high is not None and v > high):
    raise trees.InstanceError(
        f"sampling.{name} must be an integer {span}{' ' + what if what else ''}"
        f", got {v!r}")


def _number(name: str, v, low: float, high: float, what: str,
            open_low: bool = False, open_high: bool = False) -> None:
  """Refuses `v` unless it is a finite number in the interval."""
  ok = trees._is_real(v) and math.isfinite(v) and (
      v > low if open_low else v >= low) and (
      v < high if open_high else v <= high)
  if not ok:
    lo = "(" if open_low else "["
    hi = ")" if open_high else "]"
    top = "inf" if high == math.inf else trees._num(high)
    raise trees.InstanceError(
        f"sampling.{name} must be a finite number in {lo}{low:g}, {top}{hi}"
        f"{' ' + what if what else ''}, got {v!r}")


def _ints(name: str, vs, high: int | None, empty: bool) -> None:
  """Refuses `vs` unless it is a tuple of depths in 1..high (non-empty
  unless `empty`)."""
  if not isinstance(vs, (tuple, list)) or (not vs and not empty) or not all(
      trees._is_int(v) and 1 <= v <= (high or v) for v in vs):
    span = ">= 1" if high is None else f"in 1..{high}"
    raise trees.InstanceError(
        f"sampling.{name} must be a {'' if empty else 'non-empty '}tuple of "
        f"depths {span}, got {vs!r}")


def _number_list(name: str, vs) -> None:
  if not isinstance(vs, (tuple, list)) or not all(
      trees._is_real(v) and math.isfinite(v) and v > 0 for v in vs):
    raise trees.InstanceError(
        f"sampling.{name} must be a tuple of finite numbers > 0, got {vs!r}")


def parse(config: Any) -> ExperimentConfig:
  """The sweep's config, validated, and every instance it builds (target,
  pattern, alpha, seed, p at every depth): what `run` would refuse, refused
  before any work (`launch.sample` calls it while parsing its flags).

  Raises:
    InstanceError: a bad field (named, with its value and the limit) or an
      instance that cannot be built.
  """
  from sampling import configlib

  cfg = configlib.from_config(ExperimentConfig, config)
  for n in sorted({*cfg.ns_tree, *cfg.mc_ns}):
    try:
      trees.make_instance(2, n, cfg.target, cfg.pattern, cfg.alpha,
                          seed=cfg.seed, p=cfg.p)
    except trees.InstanceError as e:
      raise trees.InstanceError(f"config.sampling (the depth-{n} instance): "
                                f"{e}") from e
  return cfg


def _slope(ns, ys) -> float:
  ns, ys = np.asarray(ns, float), np.asarray(ys, float)
  ok = np.isfinite(ys) & (ys > 0)
  if ok.sum() < 2:
    return float("nan")
  return float(np.polyfit(np.log(ns[ok]), np.log(ys[ok]), 1)[0])


def walk_curve(table, chain, horizons, window: bool) -> dict:
  """P(leaf), TV and moves per accepted sample at each horizon T (one
  evolution; the lifted read-out averages over ⌊T/2⌋..T)."""
  horizons = sorted(int(t) for t in horizons)
  n_nodes = len(table.logmu)
  mu = tables.target_law(table)
  p = np.zeros(len(chain.stay))
  p[0] = 1.0
  mv = exact.move_prob(chain)
  leaf_hist, moves_hist = [], []
  moves = 0.0
  for _ in range(horizons[-1] + 1):
    nodes = p[:n_nodes] + (p[n_nodes:] if len(p) > n_nodes else 0.0)
    leaf_hist.append(nodes[table.first_leaf:].copy())
    moves_hist.append(moves)
    moves += float(p @ mv)
    p = exact.evolve(chain, p)
  leaf_cum = np.cumsum(np.stack(leaf_hist), 0)
  moves_cum = np.cumsum(moves_hist)
  out = dict(steps=[], p_leaf=[], tv=[], moves_per_sample=[])
  for t in horizons:
    lo = t // 2 if window else t
    cnt = t - lo + 1
    leaf = (leaf_cum[t] - (leaf_cum[lo - 1] if lo > 0 else 0)) / cnt
    mv_avg = (moves_cum[t] - (moves_cum[lo - 1] if lo > 0 else 0)) / cnt
    pl = float(leaf.sum())
    out["steps"].append(t)
    out["p_leaf"].append(pl)
    out["tv"].append(tables.tv(leaf / pl, mu) if pl > 0 else 1.0)
    out["moves_per_sample"].append(mv_avg / pl if pl > 0 else float("inf"))
  return out


def cost_to_delta(curve: dict, delta: float) -> float:
  """min over T of moves per sample subject to TV ≤ δ (inf if never)."""
  best = float("inf")
  for tv, c in zip(curve["tv"], curve["moves_per_sample"], strict=True):
    if tv <= delta:
      best = min(best, c)
  return best


def topdown_tv_sibling(n: int, alpha: float) -> float:
  """Exact top-down TV on U + sibling (§2a): TV(Bin(n−1, p), Bin(n−1, ½))
  with p = α² / (1 + α²)."""
  # log p and log(1 − p) without forming p (1 − p rounds to 0 at α ≳ 1e8)
  log_p = -math.log1p(alpha ** -2)
  log_q = -2 * math.log(alpha) - math.log1p(alpha ** -2)
  k = np.arange(n)
  logc = np.array([math.lgamma(n) - math.lgamma(i + 1) - math.lgamma(n - i)
                   for i in k])
  a = np.exp(logc + k * log_p + (n - 1 - k) * log_q)
  b = np.exp(logc + (n - 1) * math.log(0.5))
  return 0.5 * float(np.abs(a - b).sum())


def mc_large(cfg: ExperimentConfig, n: int) -> dict:
  """§4.3 at depth n (no enumeration): top-down's unbiased TV, and the
  debiased TV of low-dimensional statistics (a lower bound on the TV) for
  top-down, SJ + leaf loops and the lifted walk at T = c α² n²."""
  inst = trees.make_instance(2, n, cfg.target, cfg.pattern, cfg.alpha,
                             seed=cfg.seed, p=cfg.p)
  stats_cfg = montecarlo.StatsConfig(bootstrap=cfg.mc_bootstrap,
                                     seed=cfg.seed)
  key = jax.random.fold_in(jax.random.key(cfg.seed), 1000 + n)
  out = {}
  xs, _ = sampling.sample(inst, "top_down", jax.random.fold_in(key, 0),
                          cfg.mc_samples)
  lb = montecarlo.tv_lower_bound(inst, xs, jax.random.fold_in(key, 1),
                                 config=stats_cfg)
  out["top_down"] = dict(unbiased=montecarlo.topdown_tv(inst, xs),
                         lower_bound=_brief(lb), moves_per_sample=n)
  for c in cfg.mc_horizons:
    steps = int(c * cfg.alpha ** 2 * n ** 2)
    for i, (method, kw) in enumerate((
        ("js", dict(steps=steps, leaf_loop=2 * cfg.alpha * n)),
        ("lifted", dict(steps=steps)))):
      k = jax.random.fold_in(key, 10 + 2 * len(out) + i)
      xs, st = sampling.sample(inst, method, k, cfg.mc_samples, **kw)
      lb = montecarlo.tv_lower_bound(inst, xs, jax.random.fold_in(k, 1),
                                     st["accepted"], stats_cfg)
      out[f"{method}/T={steps}"] = dict(
          lower_bound=_brief(lb), steps=steps,
          accepted=float(st["accepted"].mean()),
          moves_per_sample=float(st["moves"].sum()
                                 / max(st["accepted"].sum(), 1)))
  return out


def _brief(lb: dict) -> dict:
  return {k: lb[k] for k in ("tv", "ci95", "argmax", "samples")}


def run(config: Any, workdir: str) -> dict:
  """Runs the sweeps; returns the results dict (also in results.json).

  Raises:
    InstanceError: a bad config (`parse`), before any work.
  """
  cfg = parse(config)
  os.makedirs(workdir, exist_ok=True)
  t0 = time.perf_counter()
  res: dict[str, Any] = dict(config=dataclasses.asdict(cfg))

  # Fig B (lumped, any n)
  logging.info("lumped chains: 4 oracles x 2 walks x %d depths ...",
               len(cfg.ns_lumped))
  lumped = {}
  cases = [("exact", 1.0), ("slow", cfg.alpha), ("depth", cfg.small_alpha),
           ("depth", cfg.alpha)]
  for pattern, a in cases:
    for walk in ("js", "lifted"):
      costs = []
      for n in cfg.ns_lumped:
        g = exact.depth_factors(pattern, n, a)
        costs.append(exact.lumped_cost(g, walk, 2 * a * n)[
            "moves_per_sample"])
      lumped[f"{walk}/{pattern}/alpha={a:g}"] = dict(
          n=list(cfg.ns_lumped), moves_per_sample=costs,
          slope=_slope(cfg.ns_lumped, costs))
    logging.info("lumped %s α=%g done (%.0fs)", pattern, a,
                 time.perf_counter() - t0)
  res["lumped"] = lumped

  # Fig A / C / D and tree-level costs (combo, constant α)
  tree = {}
  for i, n in enumerate(cfg.ns_tree):
    logging.info("exact laws on the depth-%d tree (%d/%d) ...", n, i + 1,
                 len(cfg.ns_tree))
    inst = trees.make_instance(2, n, cfg.target, cfg.pattern, cfg.alpha,
                               seed=cfg.seed, **({"p": cfg.p} if cfg.target
                                                 in ("product",) else {}))
    table = tables.node_table(inst)
    mu = tables.target_law(table)
    t_max = int(cfg.horizon_factor * cfg.alpha ** 2 * n ** 2)
    grid = np.unique(np.geomspace(n, t_max, cfg.num_horizons).astype(int))
    lam = 2 * cfg.alpha * n
    curves = dict(
        js=walk_curve(table, exact.sj_chain(table, 0.0), grid, False),
        js_loops=walk_curve(table, exact.sj_chain(table, lam), grid, False),
        lifted=walk_curve(table, exact.lifted_chain(table, lam), grid, True))
    law, p_acc = exact.rejection_law(table, cfg.alpha)
    fam = bounded.make_family(inst, "generic", cfg.family_size, cfg.seed)
    elim = bounded.eliminate(inst, fam, cfg.delta)
    tree[n] = dict(
        curves=curves,
        cost_to_delta={k: cost_to_delta(v, cfg.delta)
                       for k, v in curves.items()},
        topdown=dict(tv=tables.tv(exact.topdown_law(table), mu),
                     moves_per_sample=n),
        rejection=dict(tv=tables.tv(law, mu), moves_per_sample=n / p_acc,
                       p_accept=p_acc),
        ttt_elim=dict(queries=elim.queries, tv=tables.tv(
            np.exp(fam.log_probs[elim.index]), mu)))
    logging.info("tree n=%d done (%.0fs)", n, time.perf_counter() - t0)
  res["tree"] = {str(k): v for k, v in tree.items()}
  ns = list(cfg.ns_tree)
  res["tree_slopes"] = {
      k: _slope(ns, [tree[n]["cost_to_delta"][k] for n in ns])
      for k in ("js", "js_loops", "lifted")}
  res["ttt_elim_queries"] = [tree[n]["ttt_elim"]["queries"] for n in ns]
  res["ttt_elim_slope"] = _slope(ns, res["ttt_elim_queries"])
  res["topdown_tv_sibling"] = {
      f"{a:g}": [topdown_tv_sibling(n, a) for n in cfg.ns_topdown]
      for a in (cfg.small_alpha, cfg.alpha)}

  # Monte-Carlo check of the vectorised samplers on the smallest tree
  n0 = cfg.ns_tree[0]
  inst = trees.make_instance(2, n0, cfg.target, cfg.pattern, cfg.alpha,
                             seed=cfg.seed, p=cfg.p)
  mc = {}
  steps = int(4 * cfg.alpha ** 2 * n0 ** 2)
  for method, kw in (("js", dict(steps=steps, leaf_loop=2 * cfg.alpha * n0)),
                     ("lifted", dict(steps=steps)),
                     ("vgb", dict(steps=steps, form="mh")),
                     ("top_down", {}), ("rejection", {})):
    key = jax.random.fold_in(jax.random.key(cfg.seed), len(mc))
    xs, st = sampling.sample(inst, method, key, cfg.mc_chains, **kw)
    emp = sampling.empirical_law(xs, 2, st["accepted"])
    law = sampling.exact_output_law(inst, method, **kw)
    mc[method] = dict(tv_empirical_vs_exact=tables.tv(emp, law),
                      accepted=float(st["accepted"].mean()),
                      oracle_calls=float(st["oracle_calls"].mean()),
                      moves=float(st["moves"].mean()))
  res["monte_carlo"] = mc
  logging.info("Monte-Carlo check of the samplers at n=%d done (%.0fs)", n0,
               time.perf_counter() - t0)
  res["mc_large"] = {}
  for i, n in enumerate(cfg.mc_ns):
    logging.info("Monte-Carlo TV %d/%d: n=%d, %d chains per sampler ...",
                 i + 1, len(cfg.mc_ns), n, cfg.mc_chains)
    res["mc_large"][str(n)] = mc_large(cfg, n)
    logging.info("Monte-Carlo TV n=%d done (%.0fs)", n,
                 time.perf_counter() - t0)
  res["seconds"] = time.perf_counter() - t0

  if sharding.is_main():
    _write_file(os.path.join(workdir, "results.json"), json.dumps(
        res, indent=1, default=float).encode("utf-8"))
    plots = write_plots(res, workdir)
    write_report(res, workdir, plots)
  sharding.barrier("experiments.run")
  return res


def write_plots(res: dict, workdir: str) -> list[str]:
  """PNG figures (needs matplotlib; returns the files written)."""
  try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    logging.warning("matplotlib is not installed: no plots (pip install "
                    "-e '.[plots]')")
    return []
  files = []
  tree = res["tree"]
  ns = sorted(int(n) for n in tree)
  fig, axes = plt.subplots(1, len(ns), figsize=(4.2 * len(ns), 3.6),
                           squeeze=False)
  for ax, n in zip(axes[0], ns, strict=True):
    r = tree[str(n)]
    for name, style in (("js_loops", "-"), ("lifted", "--"), ("js", ":")):
      c = r["curves"][name]
      ax.loglog(c["moves_per_sample"], np.maximum(c["tv"], 1e-6), style,
                label=name.replace("_", "+"))
    ax.loglog([r["topdown"]["moves_per_sample"]],
              [max(r["topdown"]["tv"], 1e-6)], "o", label="top-down")
    ax.loglog([r["rejection"]["moves_per_sample"]],
              [max(r["rejection"]["tv"], 1e-6)], "s", label="rejection")
    ax.set_title(f"n = {n}")
    ax.set_xlabel("moves per accepted sample")
    ax.set_ylabel("TV(output, μ*)")
    ax.set_ylim(1e-6, 1.5)
  axes[0][0].legend(fontsize=7)
  fig.suptitle("Fig A: TV vs cost (combo errors, constant α)")
  fig.tight_layout()
  files.append(_save(fig, workdir, "fig_a_tv_vs_moves.png"))

  fig, ax = plt.subplots(figsize=(6.5, 4.6))
  for key, r in res["lumped"].items():
    ax.loglog(r["n"], r["moves_per_sample"], "o-" if key.startswith("js")
              else "s--", label=f"{key} (slope {r['slope']:.2f})")
  tn = [int(n) for n in ns]
  ax.loglog(tn, res["ttt_elim_queries"], "^-",
            label=f"TTT_ELIM queries (slope {res['ttt_elim_slope']:.2f})")
  for k in ("js_loops", "lifted"):
    ys = [tree[str(n)]["cost_to_delta"][k] for n in ns]
    ax.loglog(tn, ys, "x:", label=f"tree {k}, combo (slope "
              f"{res['tree_slopes'][k]:.2f})")
  x = np.array([4, 64])
  ax.loglog(x, 4 * x, "k-", alpha=0.2, lw=3, label="slope 1")
  ax.loglog(x, 1.5 * x ** 2, "k-", alpha=0.1, lw=6, label="slope 2")
  ax.set_xlabel("depth n")
  ax.set_ylabel("moves (queries) per exact sample")
  ax.set_title("Fig B: cost per sample vs n")
  ax.legend(fontsize=6)
  fig.tight_layout()
  files.append(_save(fig, workdir, "fig_b_cost_vs_n.png"))

  fig, ax = plt.subplots(figsize=(5.5, 4))
  for n in ns:
    c = tree[str(n)]["curves"]["js"]
    ax.semilogy(np.array(c["steps"]) / n ** 2, np.maximum(c["tv"], 1e-6),
                label=f"n={n}")
  ax.set_xlabel("T / n²")
  ax.set_ylabel("TV(law(X_T | leaf), μ*)")
  ax.set_title("Fig C: SJ collapse")
  ax.legend()
  fig.tight_layout()
  files.append(_save(fig, workdir, "fig_c_collapse.png"))

  fig, ax = plt.subplots(figsize=(5.5, 4))
  n = ns[-1]
  for name in ("js", "js_loops"):
    c = tree[str(n)]["curves"][name]
    ax.semilogx(c["steps"], c["p_leaf"],
                label="λ = 0" if name == "js" else "λ = 2αn")
  ax.set_xlabel("T")
  ax.set_ylabel("P(X_T is a leaf)")
  ax.set_title(f"Fig D: leaf mass, n = {n}")
  ax.legend()
  fig.tight_layout()
  files.append(_save(fig, workdir, "fig_d_leaf_mass.png"))

  if res.get("mc_large"):
    fig, ax = plt.subplots(figsize=(6.5, 4.6))
    for c, (n, r) in enumerate(res["mc_large"].items()):
      colour = f"C{c}"
      td = r["top_down"]
      ax.loglog([td["moves_per_sample"]], [max(td["unbiased"]["tv"], 1e-4)],
                "o", color=colour, label=f"n={n} top-down (unbiased TV)")
      for walk, marker in (("js", "s-"), ("lifted", "^--")):
        pts = sorted((v["moves_per_sample"], v["lower_bound"]["tv"])
                     for k, v in r.items() if k.startswith(walk + "/"))
        if pts:
          ax.loglog([p[0] for p in pts], [max(p[1], 1e-4) for p in pts],
                    marker, color=colour, label=f"n={n} {walk}")
    ax.set_xlabel("moves per accepted sample")
    ax.set_ylabel("TV lower bound (max over statistics)")
    ax.set_title("Fig E: Monte-Carlo TV beyond enumeration (§4.3)")
    ax.legend(fontsize=6)
    fig.tight_layout()
    files.append(_save(fig, workdir, "fig_e_mc_tv.png"))
  return files


def _write_file(path: str, data: bytes) -> None:
  """Writes `data` atomically through a fresh temporary file (`mkstemp`:
  a link planted in the workdir is replaced, never written through)."""
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)),
                             suffix=".tmp")
  try:
    os.fchmod(fd, 0o644)
    with os.fdopen(fd, "wb") as f:
      f.write(data)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def _save(fig, workdir, name) -> str:
  import matplotlib.pyplot as plt

  buf = io.BytesIO()
  fig.savefig(buf, dpi=110, format="png")
  plt.close(fig)
  _write_file(os.path.join(workdir, name), buf.getvalue())
  return name


EXPECTED = {"js": 2.0, "lifted": 1.0}


# One line under each figure in report.md: what to look for.
CAPTIONS = {
    "fig_a_tv_vs_moves.png":
        "Each curve is parametric in the horizon T (left to right: longer "
        "walks): TV to μ* against the moves they cost per accepted sample. "
        "Look for where each walk crosses δ; top-down and rejection are "
        "single points (no horizon).",
    "fig_b_cost_vs_n.png":
        "Moves per exact sample against depth n, log-log: the slope is the "
        "exponent. Depth-factor oracles stay linear (lifted) or quadratic "
        "(SJ); locally inconsistent ones (combo) pay about n²; the "
        "bounded-class sampler's queries do not grow with n.",
    "fig_c_collapse.png":
        "SJ's TV against T / n²: the curves for different n fall onto one, "
        "so the walk needs T ∝ n². They flatten at 1e-6 because the plot "
        "floors TV there (the exact TV keeps falling geometrically).",
    "fig_d_leaf_mass.png":
        "P(the walk sits on a leaf at T): about 1/(2αn) without leaf loops, "
        "at least 1/2 with λ = 2αn — why loops cut restarts by a factor n.",
    "fig_e_mc_tv.png":
        "Beyond exact enumeration: Monte-Carlo TV (lower bounds from "
        "low-dimensional statistics; top-down's is unbiased) against moves "
        "per sample. Walk points sit at the statistics' noise floor once "
        "they have mixed.",
}


def write_report(res: dict, workdir: str, plots: list[str]) -> str:
  lines = ["# Sampling with approximate oracles: scaling report", "",
           f"Computed in {res['seconds']:.0f}s. Config: "
           f"`{json.dumps(res['config'])}`.", "",
           "## Fig B: moves per exact sample vs n (Lemma S, exact at any n)",
           "", "| walk / oracle | n | moves per sample | fitted slope | "
           "expected |", "|---|---|---|---|---|"]
  for key, r in res["lumped"].items():
    walk, pattern, _ = key.split("/")
    if walk == "js":
      exp = "2"
    elif pattern in ("exact", "slow"):
      exp = "1"
    else:
      exp = "→ 2 (1.5–2 at these n; 1 while εn ≲ 1)"
    vals = ", ".join(f"{v:.1f}" for v in r["moves_per_sample"])
    lines.append(f"| {key} | {r['n']} | {vals} | {r['slope']:.2f} | "
                 f"{exp} |")
  lines += ["", "## Tree chains, locally inconsistent errors "
            f"({res['config']['pattern']}, α = {res['config']['alpha']})",
            "", f"Cost = min over T of moves per accepted sample with "
            f"TV ≤ δ = {res['config']['delta']}.", "",
            "| n | top-down TV | SJ (λ=0) | SJ + loops | lifted | "
            "rejection | TTT_ELIM queries |", "|---|---|---|---|---|---|---|"]
  for n, r in res["tree"].items():
    c = r["cost_to_delta"]
    lines.append(f"| {n} | {r['topdown']['tv']:.3f} | {c['js']:.0f} | "
                 f"{c['js_loops']:.0f} | {c['lifted']:.0f} | "
                 f"{r['rejection']['moves_per_sample']:.0f} | "
                 f"{r['ttt_elim']['queries']} |")
  s = res["tree_slopes"]
  lines += ["", f"Fitted slopes over n = {list(res['tree'])}: SJ (λ=0) "
            f"{s['js']:.2f} (expected → 3), SJ + loops {s['js_loops']:.2f} "
            f"(→ 2; finite-size 1.6–2.0), lifted {s['lifted']:.2f} (→ 2 at "
            "constant α; finite-size 1.6–1.8), TTT_ELIM queries "
            f"{res['ttt_elim_slope']:.2f} (expected 0).", "",
            "## Top-down TV on U + sibling (exact), rising with n", "",
            "| α | " + " | ".join(f"n={n}" for n in res["config"]
                                  ["ns_topdown"]) + " |",
            "|---|" + "---|" * len(res["config"]["ns_topdown"])]
  for a, tvs in res["topdown_tv_sibling"].items():
    lines.append(f"| {a} | " + " | ".join(f"{v:.3f}" for v in tvs) + " |")
  lines += ["", "## Monte-Carlo check of the vectorised samplers", "",
            "| method | TV(empirical, exact law) | accepted | oracle calls | "
            "moves |", "|---|---|---|---|---|"]
  for m, r in res["monte_carlo"].items():
    lines.append(f"| {m} | {r['tv_empirical_vs_exact']:.4f} | "
                 f"{r['accepted']:.3f} | {r['oracle_calls']:.1f} | "
                 f"{r['moves']:.1f} |")
  if res.get("mc_large"):
    lines += ["", "## Monte-Carlo TV beyond enumeration (§4.3)", "",
              "Top-down: the unbiased estimate E_q[(1 − μ*/q)⁺] ± 1.96 s.e.; "
              "every sampler: the largest debiased TV over low-dimensional "
              "statistics (per-position symbols, count of ones / DFA state, "
              "the first symbols' joint law, quantile bins of log μ* and "
              "log(q/μ*)), a lower bound on the full TV, with the bootstrap "
              "95% interval of that statistic.", "",
              "| n | sampler | moves per sample | TV | 95% | statistic |",
              "|---|---|---|---|---|---|"]
    for n, r in res["mc_large"].items():
      td = r["top_down"]
      u = td["unbiased"]
      lines.append(f"| {n} | top-down (unbiased) | {n} | {u['tv']:.3f} | "
                   f"{u['ci95'][0]:.3f}–{u['ci95'][1]:.3f} | exact |")
      for k, v in r.items():
        lb = v["lower_bound"]
        k = "top-down (statistics)" if k == "top_down" else k
        lines.append(f"| {n} | {k} | {v['moves_per_sample']:.0f} | "
                     f"{lb['tv']:.3f} | {lb['ci95'][0]:.3f}–"
                     f"{lb['ci95'][1]:.3f} | {lb['argmax']} |")
  if plots:
    lines += ["", "## Plots", ""]
    for p in plots:
      lines += [f"![{p}]({p})", "", f"*{CAPTIONS.get(p, p)}*", ""]
  path = os.path.join(workdir, "report.md")
  _write_file(path, ("\n".join(lines) + "\n").encode("utf-8"))
  return path
