r"""Compile-once pipeline: chunk scaling, compile counts, the default job's
time split (cold / warm compilation cache) and its padded token shares.

Command (CPU, about 8 minutes on 2 cores; add `--baseline=<git rev>` to time
that revision's default job in the same run, from a temporary worktree):

  python benchmarks/pipeline_compile.py [--baseline=065aed1]

Prints one JSON line:
  one_chunk_s / three_chunk_s / ratio: wall seconds of `python -m launch.ttt`
    with 2 tasks per chunk, `ttt.steps=2`, 1 chunk vs 3 chunks (no
    persistent cache), and their ratio (target <= 1.6);
  compiles_one / compiles_three: XLA compilations logged
    (`JAX_LOG_COMPILES=1`); recompiled: (program, shapes) pairs lowered more
    than once in the 3-chunk run (target: none);
  default_cold_s / default_warm_s: the default job (`python -m launch.ttt`)
    with an empty compilation cache, then again with it; *_split: its
    timings_s (model_load, data, ttt, inference, voting, compile, total);
    padded_share: of TTT row tokens and decode prompt tokens; pass2;
  baseline_s: the `--baseline` revision's default job, same machine and run.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _launch(workdir: str, flags: list[str], env: dict, cwd: str = ROOT):
  cmd = [sys.executable, "-m", "launch.ttt", f"--workdir={workdir}", *flags]
  t0 = time.perf_counter()
  out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                       check=False)
  wall = time.perf_counter() - t0
  if out.returncode:
    raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
  return wall, out.stderr


def _summary(workdir: str) -> dict:
  with open(os.path.join(workdir, "results.json"), encoding="utf-8") as f:
    return json.load(f)["summary"]


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--baseline", default="",
                 help="git revision whose default job is timed too")
  args = p.parse_args(argv)
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  tmp = tempfile.mkdtemp(prefix="pipeline_compile_")
  small = ["--config.ttt.steps=2", "--config.run.chunk_size=2",
           "--compilation_cache="]
  log_env = dict(env, JAX_LOG_COMPILES="1")
  one_s, one_log = _launch(os.path.join(tmp, "one"),
                           small + ["--config.run.num_tasks=2"], log_env)
  three_s, three_log = _launch(os.path.join(tmp, "three"),
                               small + ["--config.run.num_tasks=6"], log_env)
  finished = lambda log: len(re.findall(  # noqa: E731
      r"Finished XLA compilation of", log))
  lowered = collections.Counter(
      m.split(". Argument mapping")[0]
      for m in re.findall(r"Compiling \S+ with global shapes[^\n]*",
                          three_log))
  # the pipeline's programs (eager jax ops such as jit(_normal) log equal
  # argument shapes for different static shapes: not compared)
  programs = ("train_task", "init_adapters", "decode_with_slot",
              "score_with_slot", "hierarchical_vote", "flat_vote")
  lowered = {k: n for k, n in lowered.items()
             if any(f"jit({p}" in k for p in programs)}
  cache = os.path.join(tmp, "cache")
  cold_s, _ = _launch(os.path.join(tmp, "cold"),
                      [f"--compilation_cache={cache}"], env)
  warm_s, _ = _launch(os.path.join(tmp, "warm"),
                      [f"--compilation_cache={cache}"], env)
  cold, warm = _summary(os.path.join(tmp, "cold")), _summary(
      os.path.join(tmp, "warm"))
  out = dict(
      device="cpu", cpus=os.cpu_count(), python=platform.python_version(),
      one_chunk_s=round(one_s, 1), three_chunk_s=round(three_s, 1),
      ratio=round(three_s / one_s, 2), compiles_one=finished(one_log),
      compiles_three=finished(three_log),
      recompiled=[k.split(" with")[0] for k, n in lowered.items() if n > 1],
      default_cold_s=round(cold_s, 1), default_warm_s=round(warm_s, 1),
      cold_split={k: round(v, 1) for k, v in cold["timings_s"].items()},
      warm_split={k: round(v, 1) for k, v in warm["timings_s"].items()},
      padded_share=warm.get("padded_share"),
      pass2=f"{warm['pass2_tasks']}/{warm['scored_tasks']}")
  if args.baseline:
    tree = os.path.join(tmp, "baseline")
    subprocess.run(["git", "worktree", "add", "--detach", tree,
                    args.baseline], cwd=ROOT, check=True,
                   capture_output=True)
    try:
      base_env = dict(env, PYTHONPATH=tree)
      out["baseline"] = args.baseline
      out["baseline_s"] = round(_launch(os.path.join(tmp, "base"), [],
                                        base_env, cwd=tree)[0], 1)
      out["baseline_pass2"] = "{pass2_tasks}/{scored_tasks}".format(
          **_summary(os.path.join(tmp, "base")))
      out["warm_speedup_vs_baseline"] = round(out["baseline_s"] / warm_s, 2)
    finally:
      subprocess.run(["git", "worktree", "remove", "--force", tree],
                     cwd=ROOT, check=False, capture_output=True)
  import jax

  out["jax"] = jax.__version__
  print(json.dumps(out))
  return out


if __name__ == "__main__":
  main()
