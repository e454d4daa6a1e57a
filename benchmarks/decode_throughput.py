"""Throughput of batched decoding (tasks x views) and of the whole pipeline.

1. Decoding: greedy KV-cache decoding (`ttt.decoders.sampled`) of
   Q test inputs x V views (MARC's 8 views: identity, 2 shuffled orders, 5
   dihedral transforms) of real ARC-AGI-1 evaluation prompts, each query under
   its own LoRA adapter, for `--max_new` tokens. Weights are random, so rows
   rarely stop early: generated tokens are counted, not assumed.
2. Pipeline: `ttt.pipeline.run` on `--pipeline_tasks` tasks with the
   `configs/arc_ttt.py:tiny` preset (shipped tiny checkpoint when present),
   end-to-end seconds per task, split into data / TTT / inference / voting.

Prints one JSON line: device, tokens_per_s (generated tokens/s),
candidates_per_s (decoded view predictions/s), pipeline_s_per_task, the
pipeline's timings, and the workload.

CPU (about two minutes): python benchmarks/decode_throughput.py
GPU: python benchmarks/decode_throughput.py --preset base --queries 256 \
    --max_new 256 --pipeline_tasks 64
"""

import argparse
import json
import os
import platform
import tempfile
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from configs import arc_ttt, common
from ttt import arc, lora, pipeline, sharding, tokens, views
from ttt import memory as memory_lib
from ttt import model as model_lib
from ttt.decoders import sampled


def decode_bench(args):
  cfg = ml_collections.ConfigDict(dict(
      model=common.model_config(args.preset, dtype=args.dtype),
      adapter=dict(mode="lora", rank=16, alpha=32.0)))
  model = model_lib.make_model(cfg.model, cfg.adapter, jax.random.key(0))
  graphdef, _, base = lora.split(model)
  tasks = sorted(arc.load_arc(1, "evaluation"),
                 key=lambda t: tokens.sequence_length(t, 0, False))
  queries = [t for t in tasks if tokens.sequence_length(t, 0, False)
             < args.prompt_len][:args.queries]
  vs = [views.make_views(len(t.train)) for t in queries]
  num_v = max(len(v) for v in vs)
  q = len(queries)
  prompts = np.full((q, num_v, args.prompt_len), tokens.PAD, np.int32)
  coords = np.zeros((q, num_v, args.prompt_len, 3), np.int32)
  lengths = np.ones((q, num_v), np.int32)
  segs = np.zeros((q, num_v), np.int32)
  valid = np.zeros((q, num_v), bool)
  for i, (t, tv) in enumerate(zip(queries, vs, strict=True)):
    for j, v in enumerate(tv):
      p = views.prompt(t, 0, v, args.prompt_len)
      if p is None:
        continue
      prompts[i, j], coords[i, j], lengths[i, j] = p.tokens, p.coords, \
          p.length
      segs[i, j] = 2 * len(v.demos) + 1
      valid[i, j] = True
  adapters = lora.init_adapters(cfg, jax.random.key(1), q)
  mesh = sharding.make_mesh()
  keys = jax.random.key_data(jax.random.split(jax.random.key(2), q))
  slots = np.arange(q, dtype=np.int32)
  args_d = sharding.pad_tasks((slots, prompts, lengths, coords, segs, valid,
                               keys), mesh.size)[0]
  args_d = sharding.shard_tasks(args_d, mesh)
  args_d = args_d[:-1] + (jax.random.wrap_key_data(args_d[-1]),)
  adapters = sharding.replicate(adapters, mesh)
  base_r = sharding.replicate(base, mesh)
  program = sampled.make_program(graphdef, args.max_new)
  fn = lambda *a: program(base_r, adapters, *a)  # noqa: E731
  jax.block_until_ready(fn(*args_d))  # compile
  t0 = time.perf_counter()
  out = jax.block_until_ready(fn(*args_d))
  dt = time.perf_counter() - t0
  out = np.asarray(out)[:q]
  generated = int(((out != tokens.PAD) & valid[..., None]).sum())
  return dict(tokens_per_s=round(generated / dt, 1),
              candidates_per_s=round(int(valid.sum()) / dt, 2),
              decode_s=round(dt, 3), queries=q, views=num_v,
              generated_tokens=generated)


def pipeline_bench(args):
  c = arc_ttt.get_config("tiny")
  if not os.path.exists(os.path.join(c.init_from, "model_config.json")):
    c.init_from = ""
  c.run.num_tasks = args.pipeline_tasks
  c.run.chunk_size = args.pipeline_tasks
  with tempfile.TemporaryDirectory() as wd:
    t0 = time.perf_counter()
    s = pipeline.run(c, wd)
    total = time.perf_counter() - t0
  return dict(pipeline_s_per_task=round(total / args.pipeline_tasks, 2),
              pipeline_timings_s={k: round(v, 2)
                                  for k, v in s["timings_s"].items()},
              pipeline_tasks=args.pipeline_tasks,
              pipeline_model=c.init_from or "untrained",
              pipeline_pass2=s["pass2"])


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--preset", default="small")
  p.add_argument("--dtype", default="bfloat16")
  p.add_argument("--queries", type=int, default=8)
  p.add_argument("--prompt_len", type=int, default=512)
  p.add_argument("--max_new", type=int, default=64)
  p.add_argument("--pipeline_tasks", type=int, default=4)
  args = p.parse_args()
  out = dict(device=jax.devices()[0].device_kind,
             backend=jax.default_backend(), jax=jax.__version__,
             python=platform.python_version())
  out.update(decode_bench(args))
  if args.pipeline_tasks:
    out.update(pipeline_bench(args))
  out["peak_memory_gb"] = memory_lib.peak_memory_gb()
  out["workload"] = dict(preset=args.preset, dtype=args.dtype,
                         prompt_len=args.prompt_len, max_new=args.max_new)
  print(json.dumps(out))


if __name__ == "__main__":
  jnp.zeros(())  # initialise the backend before timing
  main()
