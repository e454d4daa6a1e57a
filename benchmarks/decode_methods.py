r"""Candidate search compared at one training: decode method x selection.

For each TTT setting (off / on) the chunk's adapters are trained ONCE; every
decode method then runs on those same adapters, and every selection rule on
each method's candidates, so rows differ only in what they say they differ
in. Per row: candidate coverage (the truth anywhere in the pool), pass@2
(tasks and test inputs), decode seconds (warm: each decoder runs twice and
the second run is timed), single-token model calls and selection seconds.

Commands (CPU; the shipped model; run.select='shortest' tasks of ARC-AGI-1
evaluation, one chunk):

  python benchmarks/decode_methods.py --num_tasks=10     # ~15 min, 2 cores
  python benchmarks/decode_methods.py --num_tasks=40 --out=/tmp/dm40.json

Methods (`--methods`, comma-separated): greedy; sample (T=1, 4 per view);
dfs<p> (decode.method='dfs', min_prob=p, 8 answers per view at most);
vgb (decode.method='vgb', see ttt.decoders.vgb); vgb_lifted (the lifted
walk, ttt.decoders.vgb_lifted); both 8 chains per test input, and either
takes a horizon suffix: vgb_lifted@320 sets decode.max_steps=320.
Selections (`--votes`): hierarchical, product_of_experts, count_poe.

Prints one JSON line (also written to --out): rows of {ttt, method, vote,
coverage, pass2_tasks, pass2_inputs, test_inputs, scored_tasks, decode_s,
model_calls, select_s}, and the device, versions and command.

--scaling: no model; the walk decoders' chains (`sampling.exact`'s SJ and
balanced lifted chains, the rules `sj_move` / `lifted_move` the 'vgb' and
'vgb_lifted' decoders run) on synthetic answer trees with the decoders'
oracle: K = 3 "views", each a random autoregressive law over S = 2 tokens
(logits N(0, 1) per node) with per-view logit noise σ (the views'
disagreement), μ̂ = the views' geometric mean of prefix probabilities,
target ∝ μ̂ at complete answers. Per answer length n and σ: moves per
accepted sample to TV <= δ (min over the horizon grid, from the root,
λ = 2n), the fitted log-log slopes, and the expected number of lifted
turns per down sweep Σ_k ι(x_{1:k}) under the target (ι = 1 − B / μ̂, the
views' local disagreement); a PNG with --plot (matplotlib):

  python benchmarks/decode_methods.py --scaling \
      --plot=benchmarks/figures/decode_scaling.png        # ~5 min, 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

METHOD_FIELDS = {
    "greedy": dict(method="greedy"),
    "sample": dict(method="sample", temperature=1.0, samples=4),
    "vgb": dict(method="vgb", samples=8),  # leaf_loop 64, horizon 640
    "vgb_lifted": dict(method="vgb_lifted", samples=8),  # T* in 320..640
}


def method_fields(name: str) -> dict:
  if name.startswith("dfs"):
    return dict(method="dfs", min_prob=float(name[3:] or 0.1),
                max_candidates=8)
  if "@" in name:  # a walk's horizon
    base, steps = name.split("@")
    return dict(method_fields(base), max_steps=int(steps))
  if name not in METHOD_FIELDS:
    raise ValueError(f"unknown method {name!r}")
  return METHOD_FIELDS[name]


def _rows_for_setting(config, ttt_on: bool, methods, votes, log) -> list:
  """Trains once, then every decode method x selection rule on those
  adapters, composing the main job's public stage factories."""
  import dataclasses

  import jax

  from ttt import evaluate, pipeline, select, sharding
  from ttt import job as job_lib
  from ttt import plan as plan_lib
  from ttt import weights as weights_lib

  config = config.copy_and_resolve_references()
  config.ttt.enabled = ttt_on
  job = job_lib.parse(config)
  tasks, _ = plan_lib.load_tasks(job.run)
  mesh = sharding.make_mesh()
  weights, model_cfg = weights_lib.load(job.init_from, job.model, job.adapter,
                                        job.run.seed)
  job = job._replace(model=model_cfg)
  weights = weights_lib.place(weights, mesh)

  def plan_for(j):
    return plan_lib.plan_run(tasks, mesh, run=j.run, data_cfg=j.data,
                             views_cfg=j.views, decode=j.decode,
                             trains=ttt_on)

  plan = plan_for(job)
  stages = pipeline.make_stages(job, plan, weights, mesh)
  chunk = plan.chunks[0]
  cd = stages.adapt.build(plan, chunk)
  t0 = time.perf_counter()
  adapters, ttt_m = stages.adapt.train(cd)
  jax.block_until_ready(adapters)
  log(f"ttt={ttt_on}: {len(chunk)} tasks trained in "
      f"{time.perf_counter() - t0:.1f}s")
  rows = []
  for name in methods:
    dj = job._replace(decode=dataclasses.replace(job.decode,
                                                 **method_fields(name)),
                      vote=dataclasses.replace(job.vote, method=votes[0],
                                               also=tuple(votes[1:])))
    dplan = plan_for(dj)
    ds = pipeline.make_stages(dj, dplan, weights, mesh)
    queries, slot_of = dplan.chunk_queries(cd.slots)
    ds.decoder.decode(queries, slot_of, adapters)  # compile + warm
    t0 = time.perf_counter()
    decoded = ds.decoder.decode(queries, slot_of, adapters)
    decode_s = time.perf_counter() - t0
    attempts, times = ds.selection.select(queries, slot_of,
                                          decoded.predictions, adapters)
    for vote_method in votes:  # each rule as the main one, on one pool
      order = {vote_method: attempts[vote_method],
               **{m: a for m, a in attempts.items() if m != vote_method}}
      records = evaluate.chunk_records(dplan, chunk, cd.slots, queries,
                                  decoded.predictions, order, ttt_m,
                                  ds.decoder.empty_slots)
      s = evaluate.score(records)
      rescored = select.RULES[vote_method].rescored
      row = dict(ttt=ttt_on, method=name, vote=vote_method,
                 coverage=round(s["coverage"], 4),
                 pass2_tasks=s["pass2_tasks"],
                 pass2_inputs=s["pass2_inputs"],
                 test_inputs=s["test_inputs"],
                 scored_tasks=s["scored_tasks"],
                 decode_s=round(decode_s, 2),
                 model_calls=decoded.model_calls,
                 select_s=round(times[f"voting_{vote_method}"] + (
                     times["rescoring"] if rescored else 0.0), 2))
      log(json.dumps(row))
      rows.append(row)
  return rows


def markdown(out: dict) -> str:
  """The rows as a markdown table (RESULTS.md)."""
  lines = ["| TTT | decode | selection | coverage | pass@2 tasks | "
           "pass@2 inputs | decode s | model calls | selection s |",
           "|---|---|---|---|---|---|---|---|---|"]
  for r in out["rows"]:
    lines.append(
        f"| {'on' if r['ttt'] else 'off'} | {r['method']} | {r['vote']} | "
        f"{100 * r['coverage']:.1f}% | {r['pass2_tasks']}/{r['scored_tasks']}"
        f" | {r['pass2_inputs']}/{r['test_inputs']} | {r['decode_s']:.1f} | "
        f"{r['model_calls']} | {r['select_s']:.1f} |")
  return "\n".join(lines)


def synthetic_table(n: int, sigma: float, views: int = 3, S: int = 2,
                    seed: int = 0):
  """A `sampling.tables.NodeTable` of the decoders' oracle on a synthetic
  tree, and Σ_k ι(x_{1:k}) averaged over the target (see --scaling)."""
  from sampling import tables, trees

  rng = np.random.default_rng(seed)
  depth, parent, symbol, logmu = [0], [-1], [-1], [0.0]
  lp = np.zeros((views, 1))  # each view's log prefix probability, a level
  log_rho = []  # log B(v) / μ̂(v) of the internal nodes, level order
  for d in range(n):
    count = S ** d
    z = rng.normal(size=(1, count, S)) + sigma * rng.normal(
        size=(views, count, S))
    cond = z - np.logaddexp.reduce(z, axis=2, keepdims=True)
    mean = cond.mean(0)  # log μ̂(v·a) − log μ̂(v)
    log_rho += list(np.logaddexp.reduce(mean, axis=1))
    lp = (lp[:, :, None] + cond).reshape(views, -1)
    off = trees.level_offset(S, d)
    depth += [d + 1] * (count * S)
    parent += list(np.repeat(np.arange(off, off + count), S))
    symbol += list(np.tile(np.arange(S), count))
    logmu += list(lp.mean(0))
  logmu = np.array(logmu)
  first = len(logmu) - S ** n
  logm = logmu.copy()  # log M(v): leaf masses summed up the tree
  for v in range(first - 1, -1, -1):
    logm[v] = np.logaddexp.reduce(logm[1 + v * S:1 + (v + 1) * S])
  table = tables.NodeTable(np.array(depth), np.array(parent),
                           np.array(symbol), logm, logmu,
                           np.zeros_like(logmu), first, S, n)
  iota = -np.expm1(np.array(log_rho))  # ι(v) = 1 − B(v)/μ̂(v) >= 0
  turns = np.zeros(len(logmu))  # Σ ι over the path's internal prefixes
  for v in range(1, len(logmu)):
    turns[v] = turns[parent[v]] + iota[parent[v]]
  mu = tables.target_law(table)
  return table, float(mu @ turns[first:])


def scaling(args) -> dict:
  """The --scaling sweep (module docstring)."""
  from sampling import exact, experiments

  ns = [int(x) for x in args.scaling_ns.split(",")]
  sigmas = [float(x) for x in args.scaling_sigmas.split(",")]
  rows = []
  for sigma in sigmas:
    for n in ns:
      table, turns = synthetic_table(n, sigma)
      horizons = np.unique(np.geomspace(n, 30 * n * n, 30).astype(int))
      row = dict(sigma=sigma, n=n,
                 turns_per_sweep=round(max(turns, 0.0), 4))
      for walk, chain, window in (
          ("vgb", exact.sj_chain(table, leaf_loop=2.0 * n), False),
          ("vgb_lifted", exact.lifted_chain(table, leaf_loop=2.0 * n), True)):
        curve = experiments.walk_curve(table, chain, horizons, window)
        row[walk] = experiments.cost_to_delta(curve, args.delta)
      print(json.dumps(row), file=sys.stderr, flush=True)
      rows.append(row)
  slopes = {f"{w}/sigma={s:g}": experiments._slope(  # noqa: SLF001
      ns, [r[w] for r in rows if r["sigma"] == s])
            for w in ("vgb", "vgb_lifted") for s in sigmas}
  out = dict(benchmark="decode_scaling", delta=args.delta, views=3, S=2,
             rows=rows, slopes=slopes)
  if args.plot:
    out["plot"] = _plot_scaling(out, args.plot)
  return out


def _plot_scaling(out: dict, path: str) -> str:
  import io

  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  from ttt import files

  fig, ax = plt.subplots(figsize=(6.4, 4.6))
  sigmas = sorted({r["sigma"] for r in out["rows"]})
  for i, s in enumerate(sigmas):
    rs = [r for r in out["rows"] if r["sigma"] == s]
    ns = [r["n"] for r in rs]
    for w, style in (("vgb", "--"), ("vgb_lifted", "-")):
      ax.loglog(ns, [r[w] for r in rs], style + "o", color=f"C{i}",
                label=f"{w}, σ={s:g} (slope "
                f"{out['slopes'][f'{w}/sigma={s:g}']:.2f})")
  ax.set_xlabel("answer length n (tokens)")
  ax.set_ylabel(f"moves per answer to TV ≤ {out['delta']:g}")
  ax.set_title("walk decoders on synthetic answer trees (3 views, S = 2)")
  ax.legend(fontsize=7)
  fig.tight_layout()
  buf = io.BytesIO()
  fig.savefig(buf, dpi=110, format="png")
  plt.close(fig)
  files.write_bytes(path, buf.getvalue())
  return path


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--num_tasks", type=int, default=10)
  p.add_argument("--methods", default="greedy,sample,dfs0.2,dfs0.1,dfs0.05")
  p.add_argument("--votes", default="hierarchical,product_of_experts,"
                 "count_poe")
  p.add_argument("--ttt", default="off,on")
  p.add_argument("--ttt_steps", type=int, default=0,
                 help="override ttt.steps (0: the preset's)")
  p.add_argument("--out", default="")
  p.add_argument("--markdown", default="",
                 help="print this JSON file's rows as a markdown table")
  p.add_argument("--max_new_tokens", type=int, default=0)
  p.add_argument("--scaling", action="store_true",
                 help="the synthetic scaling sweep (no model)")
  p.add_argument("--scaling_ns", default="4,6,8,10,12")
  p.add_argument("--scaling_sigmas", default="0,0.3,1")
  p.add_argument("--delta", type=float, default=0.05)
  p.add_argument("--plot", default="", help="--scaling: write a PNG here")
  args = p.parse_args(argv)
  if args.scaling:
    out = scaling(args)
    out["command"] = " ".join(["python", "benchmarks/decode_methods.py",
                               *(argv if argv is not None else sys.argv[1:])])
    print(json.dumps(out))
    return out
  if args.markdown:
    with open(args.markdown, encoding="utf-8") as f:
      out = json.loads(f.readline())
    print(markdown(out))
    return out

  import jax

  from configs import arc_ttt
  from launch import common  # noqa: F401 (one CPU device per core)

  config = arc_ttt.get_config("tiny")
  config.run.num_tasks = args.num_tasks
  config.run.chunk_size = args.num_tasks
  if args.max_new_tokens:
    config.decode.max_new_tokens = args.max_new_tokens
  if args.ttt_steps:
    config.ttt.steps = args.ttt_steps

  def log(msg):
    print(msg, file=sys.stderr, flush=True)

  rows = []
  for setting in args.ttt.split(","):
    rows += _rows_for_setting(config, setting == "on",
                              args.methods.split(","), args.votes.split(","),
                              log)
  out = dict(benchmark="decode_methods", num_tasks=args.num_tasks,
             select="shortest", ttt_steps=config.ttt.steps, rows=rows,
             device=jax.devices()[0].device_kind, devices=jax.device_count(),
             jax=jax.__version__, python=platform.python_version(),
             command=" ".join(["python", "benchmarks/decode_methods.py",
                               *(argv if argv is not None else sys.argv[1:])]))
  line = json.dumps(out)
  print(line)
  if args.out:
    with open(args.out, "w", encoding="utf-8") as f:
      f.write(line + "\n")
  return out


if __name__ == "__main__":
  main()
