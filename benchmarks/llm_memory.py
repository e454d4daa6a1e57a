r"""Memory of per-task LoRA TTT on pretrained-LM shapes, from XLA itself.

For each shape of `configs/common.LLM_SHAPES` (cut to the 16 project
tokens) and each number of tasks T on ONE device, the TTT program of the
main job (`ttt.inner_loop.make_inner_loop`: vmap over tasks, scan over
steps, AdamW on the adapters) is lowered and compiled for abstract inputs
-- nothing is allocated, no weights are needed -- and its
`memory_analysis()` read: arguments (the frozen base in the compute dtype,
adapters, data), outputs, temporaries (activations, gradients, optimizer
state) and their peak sum. This is the CPU compiler's figure; a GPU build
fuses differently (flash attention keeps no [L, L] scores), so treat it as
an upper bound there. Divide T by the devices of the task axis for a mesh.

Command (CPU, a few minutes; the 8B shape compiles like the others when
`model.scan_layers` is on, the default of the `llm` preset):

  python benchmarks/llm_memory.py [--shapes smollm2_135m,llama3_1b,llama3_8b]
      [--tasks 1,4] [--seq_len 2048] [--batch 2] [--rank 32] [--remat 1]

Prints one JSON line: per (shape, T) the GB of each part and the compile
seconds, with the versions and the command.
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


def measure(shape: str, tasks: int, args) -> dict:
  import jax
  import jax.numpy as jnp
  import ml_collections
  from flax import nnx

  from configs import common
  from ttt import data, inner_loop, lora
  from ttt import model as model_lib

  model = dict(common.model_config(shape, dtype=args.dtype).to_dict(),
               scan_layers=bool(args.scan_layers), remat=bool(args.remat))
  cfg = ml_collections.ConfigDict(dict(
      model=model, adapter=dict(mode="lora", rank=args.rank,
                                alpha=float(args.rank)),
      ttt=dict(steps=args.steps, batch_size=args.batch)))
  key = jax.random.key(0)
  graphdef, _, base = lora.split(nnx.eval_shape(
      lambda: model_lib.make_model(cfg.model, cfg.adapter, key)))
  dt = jnp.dtype(args.dtype)
  base = jax.tree.map(lambda x: jax.ShapeDtypeStruct(
      x.shape, dt if jnp.issubdtype(x.dtype, jnp.floating) else x.dtype),
      base)  # the frozen base in the compute dtype (`ttt.weights.place`)
  adapters = jax.eval_shape(lora.make_init(cfg, key), None,
                            jnp.arange(tasks))
  rows, length = args.rows, args.seq_len
  i32 = lambda *s: jax.ShapeDtypeStruct(s, jnp.int32)  # noqa: E731
  ds = data.TTTDataset(i32(tasks, rows, length), i32(tasks, rows, length),
                       i32(tasks, rows, length), i32(tasks, rows, length, 3),
                       jax.ShapeDtypeStruct((tasks, rows), jnp.bool_),
                       i32(tasks, rows, length))
  keys = jax.eval_shape(lambda: jax.random.split(key, tasks))
  t0 = time.perf_counter()
  compiled = inner_loop.make_inner_loop(cfg, graphdef).lower(
      base, adapters, ds, keys).compile()
  seconds = time.perf_counter() - t0
  m = compiled.memory_analysis()
  gb = lambda b: round(b / 2**30, 3)  # noqa: E731
  params = model_lib.count_params(base)
  return dict(shape=shape, tasks=tasks, base_params=params,
              adapter_params_per_task=model_lib.count_params(adapters)
              // tasks,
              arguments_gb=gb(m.argument_size_in_bytes),
              outputs_gb=gb(m.output_size_in_bytes),
              temporaries_gb=gb(m.temp_size_in_bytes),
              peak_gb=gb(m.argument_size_in_bytes + m.output_size_in_bytes
                         + m.temp_size_in_bytes - m.alias_size_in_bytes),
              compile_s=round(seconds, 1))


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--shapes", default="smollm2_135m,llama3_1b,llama3_8b")
  p.add_argument("--tasks", default="1,4")
  p.add_argument("--seq_len", type=int, default=2048)
  p.add_argument("--rows", type=int, default=32, help="rows per task (N)")
  p.add_argument("--batch", type=int, default=2)
  p.add_argument("--steps", type=int, default=16)
  p.add_argument("--rank", type=int, default=32)
  p.add_argument("--dtype", default="bfloat16")
  p.add_argument("--scan_layers", type=int, default=1)
  p.add_argument("--remat", type=int, default=0,
                 help="1: recompute each block in the backward pass")
  args = p.parse_args(argv)
  import jax

  rows = [measure(s, int(t), args) for s in args.shapes.split(",")
          for t in args.tasks.split(",")]
  for r in rows:
    print(json.dumps(r), file=sys.stderr, flush=True)
  out = dict(benchmark="llm_memory", rows=rows, seq_len=args.seq_len,
             rows_per_task=args.rows, batch=args.batch, rank=args.rank,
             dtype=args.dtype, scan_layers=bool(args.scan_layers),
             remat=bool(args.remat),
             device=jax.devices()[0].device_kind, jax=jax.__version__,
             python=platform.python_version(),
             command=" ".join(["python", "benchmarks/llm_memory.py",
                               *(argv if argv is not None
                                 else sys.argv[1:])]))
  print(json.dumps(out))
  return out


if __name__ == "__main__":
  main()
