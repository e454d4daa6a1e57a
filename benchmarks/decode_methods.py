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
vgb (decode.method='vgb', see ttt.decoders.vgb).
Selections (`--votes`): hierarchical, product_of_experts, count_poe.

Prints one JSON line (also written to --out): rows of {ttt, method, vote,
coverage, pass2_tasks, pass2_inputs, test_inputs, scored_tasks, decode_s,
model_calls, select_s}, and the device, versions and command.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

METHOD_FIELDS = {
    "greedy": dict(method="greedy"),
    "sample": dict(method="sample", temperature=1.0, samples=4),
    "vgb": dict(method="vgb", samples=8),  # leaf_loop 64, horizon 640
}


def method_fields(name: str) -> dict:
  if name.startswith("dfs"):
    return dict(method="dfs", min_prob=float(name[3:] or 0.1),
                max_candidates=8)
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
  args = p.parse_args(argv)
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
