r"""XLA's memory analysis of the main job's programs, by chunk size.

For a main-job config (default `configs/arc_ttt.py:tiny`; any `--config`
flags apply, e.g. the task list) it builds the plan and the stages at each
chunk size of `--chunk_sizes` and prints one JSON line: per chunk size the
task slots, each program's memory per device (`compile().memory_analysis()`:
arguments + outputs - aliased + temporaries, GiB), the estimate
`ttt.memory.fit_memory` compares with the budget (resident + the largest
program over the devices sharing the memory), and the linear rule's
prediction from the two smallest sizes. Nothing runs but compilation.

  python benchmarks/memory_stages.py --chunk_sizes=2,4,10 \
      '--config.run.task_ids=("dd2401ed","817e6c09")' \
      --config.run.select=first --config.run.num_tasks=0

Figures: benchmarks/RESULTS.md, "Memory (issue 32)".
"""

import dataclasses
import json

from absl import app, flags

from launch import common  # noqa: F401  (CPU devices, before jax starts)

_CONFIG = common.define_config("arc_ttt.py:tiny")
_SIZES = flags.DEFINE_list("chunk_sizes", ["2", "4", "10"],
                           "Chunk sizes (tasks) to analyse.")


def main(argv):
  del argv
  import jax

  from ttt import codec as codec_lib
  from ttt import job as job_lib
  from ttt import memory as memory_lib
  from ttt import pipeline, sharding
  from ttt import plan as plan_lib
  from ttt import weights as weights_lib

  job = job_lib.parse(_CONFIG.value)
  codec = codec_lib.make(job.data, job.init_from)
  tasks, _ = plan_lib.load_tasks(job.run, codec)
  mesh = sharding.make_mesh()
  weights, model_cfg = weights_lib.load(job.init_from, job.model, job.adapter,
                                        job.run.seed, codec.vocab)
  job = job._replace(model=model_cfg)
  weights = weights_lib.place(weights, mesh,
                              weights_lib.compute_dtype(model_cfg))
  resident = memory_lib._resident()  # noqa: SLF001 (the estimate's own term)
  rows = []
  for size in [int(s) for s in _SIZES.value]:
    plan = plan_lib.plan_run(
        tasks, mesh, run=dataclasses.replace(job.run, chunk_size=size),
        data_cfg=job.data, views_cfg=job.views, decode=job.decode,
        trains=job.ttt.enabled, codec_=codec)
    stages = pipeline.make_stages(job, plan, weights, mesh, None, codec)
    figures = memory_lib.stage_memory(stages, plan, job.data.max_len)
    rows.append(dict(chunk_size=size, slots=plan.caps.tasks,
                     queries=plan.caps.queries,
                     programs={k: round(v, 4) for k, v in figures.items()},
                     need_gb=round(memory_lib._need(figures, resident), 3)))  # noqa: SLF001
  (a, b) = rows[0], rows[min(1, len(rows) - 1)]
  slope = ((b["need_gb"] - a["need_gb"]) / (b["slots"] - a["slots"])
           if b["slots"] > a["slots"] else 0.0)
  for r in rows:
    r["linear_gb"] = round(a["need_gb"] + (r["slots"] - a["slots"]) * slope,
                           3)
  print(json.dumps(dict(
      resident_gb=round(resident, 3), devices=len(jax.local_devices()),
      ttt_len=plan.longest[0], prompt_len=plan.longest[1], sizes=rows)))


if __name__ == "__main__":
  app.run(main)
