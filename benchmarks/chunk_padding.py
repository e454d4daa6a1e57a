"""TTT work a run's chunks pad to, by chunk order (`run.chunk_order`).

With `run.fixed_shapes=False` every chunk's TTT rows are padded to its own
longest task (bucketed to `run.length_bucket`); which tasks share a chunk
decides how much of the compute is padding. This counts it, without
building data or compiling anything: per chunk order, the task slots times
L (tokens per row: the linear part of the work) and times L^2 (the
attention part), next to the unpadded sum over tasks of their own longest
row (`ttt.data.row_length_bound`).

Prints one JSON line: {"orders": {"run": {...}, "length": {...}},
"ratio_run_over_length": {"tokens": x, "attention": y}, "workload": {...}}.

  python benchmarks/chunk_padding.py                      # gpu preset, 400
  python benchmarks/chunk_padding.py --config=configs/table.py:cpu
(seconds; host arithmetic only).
"""

import dataclasses
import json
import platform

from absl import app
from ml_collections import config_flags

from ttt import data, sharding
from ttt import job as job_lib
from ttt import plan as plan_lib

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/arc_ttt.py:gpu", "a main-job config, or a table "
    "config (its `job` group is used)")


def count(job, tasks, mesh, order: str) -> dict:
  """Padded TTT work of the run's chunks under `order`."""
  job = job._replace(run=dataclasses.replace(job.run, chunk_order=order))
  plan = plan_lib.plan_run(tasks, mesh, run=job.run, data_cfg=job.data,
                           views_cfg=job.views, decode=job.decode)
  bound = {n: data.row_length_bound(t, job.data)
           for n, t in enumerate(tasks) if n not in plan.too_long}
  tokens = attention = 0
  for chunk in plan.chunks:
    real = [bound[n] for n in chunk if n in bound]
    if not real:
      continue
    length = data.bucket_length(max(real), job.run.length_bucket,
                                job.data.max_len)
    tokens += plan.caps.tasks * length
    attention += plan.caps.tasks * length ** 2
  ideal = sum(bound.values())
  return dict(chunks=len(plan.chunks), padded_tokens=tokens,
              padded_attention=attention, real_tokens=ideal,
              real_attention=sum(b ** 2 for b in bound.values()),
              padded_share=round(1 - ideal / max(tokens, 1), 4))


def main(_):
  config = _CONFIG.value
  job = job_lib.parse(config.job if "job" in config else config)
  tasks, _ = plan_lib.load_tasks(job.run)
  mesh = sharding.make_mesh()
  orders = {o: count(job, tasks, mesh, o) for o in ("run", "length")}
  ratio = {k: round(orders["run"][f"padded_{k}"]
                    / max(orders["length"][f"padded_{k}"], 1), 3)
           for k in ("tokens", "attention")}
  print(json.dumps(dict(
      orders=orders, ratio_run_over_length=ratio,
      workload=dict(tasks=len(tasks), chunk_size=job.run.chunk_size,
                    length_bucket=job.run.length_bucket,
                    max_len=job.data.max_len, mesh=mesh.size),
      python=platform.python_version())))


if __name__ == "__main__":
  app.run(main)
