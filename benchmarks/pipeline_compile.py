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
    (`JAX_LOG_COMPILES=1`); program_compiles: {stage.program: times lowered}
    in the 3-chunk run, for every program of its stages
    (`ttt.pipeline.Stages.programs`; target: once per shape the plan gives
    it, 1 each with one length bucket);
    recompiled: (stage.program, shapes) pairs lowered more than once in the
    3-chunk run (target: none);
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


def _stage_programs(overrides: dict) -> dict[str, str]:
  """{stage.program: its jit name} of the stages `python -m launch.ttt`
  builds with `--config.K=V` for each of `overrides` (the default config,
  `arc_ttt.py:tiny`; built as `ttt.pipeline.run` builds them, not run)."""
  os.environ["JAX_PLATFORMS"] = "cpu"
  sys.path.insert(0, ROOT)
  from configs import arc_ttt
  from ttt import codec as codec_lib
  from ttt import job as job_lib
  from ttt import pipeline, sharding
  from ttt import plan as plan_lib
  from ttt import weights as weights_lib

  config = arc_ttt.get_config("tiny")
  config.update_from_flattened_dict(overrides)
  job = job_lib.parse(config)
  codec = codec_lib.make(job.data, job.init_from)
  tasks, _ = plan_lib.load_tasks(job.run, codec)
  mesh = sharding.make_mesh()
  plan = plan_lib.plan_run(tasks, mesh, run=job.run, data_cfg=job.data,
                           views_cfg=job.views, decode=job.decode,
                           trains=job.ttt.enabled, codec_=codec)
  weights, model_cfg, _ = weights_lib.load_placed(
      job.init_from, job.model, job.adapter, job.run.seed, codec.vocab, mesh,
      job.ttt.protocol)
  stages = pipeline.make_stages(job._replace(model=model_cfg), plan, weights,
                                mesh, None, codec)
  return {k: p.__name__ for k, p in stages.programs().items()}


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--baseline", default="",
                 help="git revision whose default job is timed too")
  args = p.parse_args(argv)
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  tmp = tempfile.mkdtemp(prefix="pipeline_compile_")
  small = {"ttt.steps": 2, "run.chunk_size": 2}
  one = dict(small, **{"run.num_tasks": 2})
  three = dict(small, **{"run.num_tasks": 6})

  def flags(overrides):
    return [f"--config.{k}={v}" for k, v in overrides.items()] + [
        "--compilation_cache="]

  log_env = dict(env, JAX_LOG_COMPILES="1")
  one_s, one_log = _launch(os.path.join(tmp, "one"), flags(one), log_env)
  three_s, three_log = _launch(os.path.join(tmp, "three"), flags(three),
                               log_env)
  finished = lambda log: len(re.findall(  # noqa: E731
      r"Finished XLA compilation of", log))
  lowered = collections.Counter(
      m.split(". Argument mapping")[0]
      for m in re.findall(r"Compiling \S+ with global shapes[^\n]*",
                          three_log))
  # the stages' programs, by jit name (eager jax ops such as jit(_normal)
  # log equal argument shapes for different static shapes: not compared)
  stage_of = {f"jit({name})": program
              for program, name in _stage_programs(three).items()}
  program_compiles = dict.fromkeys(stage_of.values(), 0)
  recompiled = []
  for k, n in lowered.items():  # k: 'Compiling jit(NAME) with global ...'
    program = stage_of.get(k.split()[1])
    if program is not None:
      program_compiles[program] += n
      if n > 1:
        recompiled.append(program)
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
      compiles_three=finished(three_log), program_compiles=program_compiles,
      recompiled=recompiled,
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
