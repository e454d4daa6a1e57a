"""Throughput of the group action, the voting reducer and TTT data building.

Prints one JSON line:
  grids_per_s        padded grids/s through the jitted group action
                     (`augment.apply_padded`, vmapped over 8 elements)
  vote_tasks_per_s   tasks/s through the jitted hierarchical vote, vmapped
                     over tasks (V views x S samples per task)
  flat_vote_tasks_per_s  the same for `flat_vote`
  ttt_datasets_400_s seconds to build the TTT datasets (default DataConfig:
                     N=250, L=2048) of all 400 ARC-AGI-1 evaluation tasks,
                     one host thread

Run: python benchmarks/augment_vote.py [--tasks 256 --views 16 --samples 8]
(about a minute on a 2-core CPU).
"""

import argparse
import json
import platform
import time

import jax
import numpy as np

from ttt import arc, augment, data, vote


def _timeit(fn, *args, repeat=5):
  jax.block_until_ready(fn(*args))  # compile
  best = float("inf")
  for _ in range(repeat):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - t0)
  return best


def bench_group_action(num_grids: int) -> float:
  tasks = arc.load_arc(1, "evaluation")
  grids = [g for t in tasks for g in t.grids()][:num_grids]
  padded, shapes = augment.pad_grids(grids)
  rng = np.random.default_rng(0)
  els = augment.sample_numpy(rng, 0, 8)
  fn = jax.jit(jax.vmap(augment.apply_padded, in_axes=(0, None, None)))
  seconds = _timeit(fn, els, padded, shapes)
  return 8 * len(grids) / seconds


def bench_vote(fn, num_tasks: int, views: int, samples: int) -> float:
  rng = np.random.default_rng(0)
  grids = np.zeros((num_tasks, views, samples, 30, 30), np.int8)
  shapes = np.zeros((num_tasks, views, samples, 2), np.int32)
  for t in range(num_tasks):
    pool = rng.integers(0, 10, (4, 12, 12)).astype(np.int8)
    pick = rng.integers(0, 4, (views, samples))
    grids[t, :, :, :12, :12] = pool[pick]
    shapes[t] = 12
  valid = rng.random((num_tasks, views, samples)) < 0.9
  identity = np.zeros((num_tasks, views), bool)
  identity[:, 0] = True
  seconds = _timeit(vote.vmap_vote(fn), grids, shapes, valid, identity)
  return num_tasks / seconds


def bench_datasets() -> tuple[float, dict]:
  tasks = arc.load_arc(1, "evaluation")
  key = jax.random.key(0)
  keys = [jax.random.fold_in(key, i) for i in range(len(tasks))]
  rows = []
  t0 = time.perf_counter()
  for task, k in zip(tasks, keys, strict=True):
    stats = {}
    data.build_ttt_dataset(task, None, k, stats=stats)
    rows.append(stats["rows"])
  seconds = time.perf_counter() - t0
  rows = np.array(rows)
  return seconds, {"rows_mean": float(rows.mean()),
                   "tasks_full": int((rows == 250).sum()),
                   "tasks_empty": int((rows == 0).sum())}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--tasks", type=int, default=256)
  parser.add_argument("--views", type=int, default=16)
  parser.add_argument("--samples", type=int, default=8)
  parser.add_argument("--grids", type=int, default=4096)
  parser.add_argument("--skip-datasets", action="store_true")
  args = parser.parse_args()
  out = {
      "device": str(jax.devices()[0].device_kind),
      "backend": jax.default_backend(),
      "jax": jax.__version__,
      "python": platform.python_version(),
      "grids_per_s": round(bench_group_action(args.grids)),
      "vote_tasks_per_s": round(bench_vote(
          vote.hierarchical_vote, args.tasks, args.views, args.samples), 1),
      "flat_vote_tasks_per_s": round(bench_vote(
          vote.flat_vote, args.tasks, args.views, args.samples), 1),
      "vote_config": {"tasks": args.tasks, "views": args.views,
                      "samples": args.samples},
  }
  if not args.skip_datasets:
    seconds, info = bench_datasets()
    out["ttt_datasets_400_s"] = round(seconds, 2)
    out["ttt_datasets"] = info
  print(json.dumps(out))


if __name__ == "__main__":
  main()
