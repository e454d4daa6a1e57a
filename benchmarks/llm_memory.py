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

On a (tasks, model) mesh (issue 44, `ttt.sharding.make_mesh`): `--mesh
8x1,4x2,2x4,1x8` lowers the same program for T x M devices (XLA's host
platform is asked for that many with `--xla_force_host_platform_device_
count`, set here before jax is imported unless XLA_FLAGS already names a
count), the inputs carrying the job's shardings: the base split over
`model` by `ttt.sharding.param_shardings` (Megatron's layout), adapters by
`ttt.adapt.common.adapter_shardings`, datasets and keys over `task`. The
SPMD-partitioned program's memory analysis is PER DEVICE. `--tasks` then
counts tasks per task-axis device (the program gets tasks x T). With
`--decode 1` the DFS decode program (`ttt.decoders.dfs.make_program`) is
measured too, on the same mesh: one query per task (Q = the tasks), `--views`
view rows of `--prompt_len` tokens each, a KV cache of prompt + max_new
positions, under the TTT program's adapters. `--preset marc` takes the
adapter, TTT, data and decode settings of `configs/arc_ttt.py:marc` (LoRA
rank 128 alpha 16 on q, v, gate, up, down; 250 rows of up to 8,191 tokens,
batch 2; remat; decode 1,892 new tokens) and the full 128,256-token Llama-3
vocabulary (its text codec); the flags given override it. E.g.

  python benchmarks/llm_memory.py --preset marc --shapes llama3_8b \
      --mesh 8x1,4x2,2x4,1x8 --tasks 1,2,4 --decode 1

Each point also reports the per-device argument bytes the shardings imply
(`expected_arguments_gb`, the base's share `base_gb_per_device`), to catch
XLA replicating an input it was given split.

Prints one JSON line: per (shape, mesh, T) the GB of each part and the
compile seconds, with the versions and the command.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

LLAMA3_VOCAB = 128256  # the Llama-3 tokenizer (MARC's text codec: all of it)
COUNT_FLAG = "--xla_force_host_platform_device_count"


def parse_meshes(text: str) -> list[tuple[int, int]]:
  """'8x1,4x2' -> [(8, 1), (4, 2)] ((task, model) sizes)."""
  out = []
  for item in filter(None, (s.strip() for s in (text or "").split(","))):
    t, m = item.lower().split("x")
    out.append((int(t), int(m)))
  return out


def _gb(b) -> float:
  return round(b / 2**30, 3)


def _nbytes(x) -> int:
  """Bytes per device of an abstract input (its shard's shape)."""
  import jax
  import numpy as np

  shape = x.shape
  if getattr(x, "sharding", None) is not None:
    shape = x.sharding.shard_shape(shape)
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    return int(np.prod(shape)) * 8  # uint32[2] per threefry key
  return int(np.prod(shape)) * np.dtype(x.dtype).itemsize


def _tree_bytes(tree) -> int:
  import jax
  return sum(_nbytes(x) for x in jax.tree.leaves(tree))


def _with(tree, shardings):
  """Abstract leaves carrying shardings (one sharding or a tree of them)."""
  import jax
  from jax.sharding import Sharding

  if shardings is None:
    return tree
  if isinstance(shardings, Sharding):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(
        x.shape, x.dtype, sharding=shardings), tree)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(
      x.shape, x.dtype, sharding=s), tree, shardings)


def _analysis(compiled) -> dict:
  m = compiled.memory_analysis()
  return dict(arguments_gb=_gb(m.argument_size_in_bytes),
              outputs_gb=_gb(m.output_size_in_bytes),
              temporaries_gb=_gb(m.temp_size_in_bytes),
              peak_gb=_gb(m.argument_size_in_bytes + m.output_size_in_bytes
                          + m.temp_size_in_bytes - m.alias_size_in_bytes))


def _groups(shape: str, args):
  """(config with model/adapter/ttt groups, max_new) of one shape."""
  import ml_collections

  from configs import common

  model = dict(common.model_config(shape, dtype=args.dtype).to_dict(),
               scan_layers=bool(args.scan_layers), remat=bool(args.remat))
  if args.vocab:
    model["vocab_size"] = args.vocab
  adapter = dict(mode="lora", rank=args.rank, alpha=float(args.alpha
                                                          or args.rank))
  if args.targets:
    adapter["targets"] = tuple(args.targets.split(","))
  ttt = dict(steps=args.steps, batch_size=args.batch)
  if args.preset == "marc":
    from configs import arc_ttt

    marc = arc_ttt.get_config("marc")
    ttt = {**marc.ttt.to_dict(), **ttt}
  return ml_collections.ConfigDict(dict(model=model, adapter=adapter,
                                        ttt=ttt))


def _decode_codec(vocab: int, max_new: int):
  """A stand-in for the run's codec at `vocab` logits: the cells' below
  the 16-token cut, else MARC's text codec's shape (no grammar, every token
  an answer token, a few stop tokens) -- what the DFS program reads of it;
  no tokenizer needed."""
  import numpy as np

  from ttt import codec as codec_lib

  if vocab <= codec_lib.CELLS.vocab_size:
    return codec_lib.CELLS
  stop = np.zeros(vocab, bool)
  stop[[vocab - 1, vocab - 2, 2]] = True  # (eot, eos, the '#' footer)
  return codec_lib.CELLS._replace(
      name="text", vocab="full", vocab_size=vocab, pad=vocab - 3,
      max_answer=max_new, grammar=False, answer_tokens=np.ones(vocab, bool),
      stop_tokens=stop)


def measure(shape: str, tasks: int, args, mesh=None) -> dict:
  """One point: the TTT program (and with `args.decode` the DFS decode
  program) for `tasks` tasks in all -- per task-axis device on a mesh."""
  import types

  import jax
  import jax.numpy as jnp
  from flax import nnx

  from ttt import data, inner_loop, lora, sharding
  from ttt import model as model_lib
  from ttt.adapt import common as adapt_common

  cfg = _groups(shape, args)
  model_cfg, _ = lora.configs(cfg)
  key = jax.random.key(0)
  graphdef, template, base = lora.split(nnx.eval_shape(
      lambda: model_lib.make_model(cfg.model, cfg.adapter, key)))
  dt = jnp.dtype(args.dtype)
  base = jax.tree.map(lambda x: jax.ShapeDtypeStruct(
      x.shape, dt if jnp.issubdtype(x.dtype, jnp.floating) else x.dtype),
      base)  # the frozen base in the compute dtype (`ttt.weights.place`)
  per_device, mesh_shape = tasks, None
  if mesh is not None:
    mesh_shape = dict(mesh.shape)
    tasks = tasks * sharding.axis_size(mesh)
  adapters = jax.eval_shape(lora.make_init(cfg, key), None,
                            jnp.arange(tasks))
  rows, length = args.rows, args.seq_len
  i32 = lambda *s: jax.ShapeDtypeStruct(s, jnp.int32)  # noqa: E731
  ds = data.TTTDataset(i32(tasks, rows, length), i32(tasks, rows, length),
                       i32(tasks, rows, length), i32(tasks, rows, length, 3),
                       jax.ShapeDtypeStruct((tasks, rows), jnp.bool_),
                       i32(tasks, rows, length))
  keys = jax.eval_shape(lambda: jax.random.split(key, tasks))
  full_base = _tree_bytes(base)
  if mesh is not None:  # the job's shardings (`ttt.weights.place`, stages)
    on_tasks = sharding.task_sharding(mesh)
    base = _with(base, sharding.param_shardings(base, mesh, model_cfg))
    adapters = _with(adapters, adapt_common.adapter_shardings(
        types.SimpleNamespace(template=template), mesh, model_cfg))
    ds, keys = _with(ds, on_tasks), _with(keys, on_tasks)
  t0 = time.perf_counter()
  compiled = inner_loop.make_inner_loop(cfg, graphdef).lower(
      base, adapters, ds, keys).compile()
  seconds = time.perf_counter() - t0
  out = dict(shape=shape, mesh=mesh_shape, tasks=tasks,
             tasks_per_task_device=per_device,
             base_params=model_lib.count_params(base),
             adapter_params_per_task=model_lib.count_params(adapters)
             // tasks,
             base_gb=_gb(full_base), base_gb_per_device=_gb(_tree_bytes(base)),
             adapters_gb_per_device=_gb(_tree_bytes(adapters)),
             expected_arguments_gb=_gb(_tree_bytes((base, adapters, ds,
                                                    keys))),
             **_analysis(compiled), compile_s=round(seconds, 1))
  if args.decode:
    out["decode"] = measure_decode(cfg, graphdef, base, adapters, tasks,
                                   args, mesh)
  print(json.dumps(out), file=sys.stderr, flush=True)
  return out


def measure_decode(cfg, graphdef, base, adapters, tasks: int, args,
                   mesh=None) -> dict:
  """The DFS decode program for Q = `tasks` queries (one per task), V =
  `args.views` views of `args.prompt_len` tokens, `args.max_new` new
  tokens (the KV cache holds prompt + max_new)."""
  import jax
  import jax.numpy as jnp

  from ttt import lora, sharding
  from ttt.decoders import dfs

  q, v, p = tasks, args.views, args.prompt_len
  vocab = cfg.model.vocab_size
  codec = _decode_codec(vocab, args.max_new)
  i32 = lambda *s: jax.ShapeDtypeStruct(s, jnp.int32)  # noqa: E731
  rows = (i32(q), i32(q, v, p), i32(q, v), i32(q, v, p, 3), i32(q, v),
          jax.ShapeDtypeStruct((q, v), jnp.bool_))
  if mesh is not None:
    rows = _with(rows, sharding.task_sharding(mesh))
  program = dfs.make_program(graphdef, args.max_new, args.min_prob,
                             args.max_candidates, codec=codec)
  t0 = time.perf_counter()
  compiled = program.lower(base, adapters, *rows).compile()
  seconds = time.perf_counter() - t0
  model_cfg, _ = lora.configs(cfg)
  cache = (2 * model_cfg.num_layers * q * v * model_cfg.kv_heads
           * model_cfg.head_dim
           * (p + args.max_new) * jnp.dtype(args.dtype).itemsize)
  # the cache's share per device at best (an estimate; XLA's own figure
  # is inside temporaries): rows over task, KV heads over gcd(kv_heads, M)
  split = 1
  if mesh is not None:
    split = sharding.axis_size(mesh) * math.gcd(model_cfg.kv_heads,
                                                sharding.model_size(mesh))
  return dict(queries=q, views=v, prompt_len=p, max_new=args.max_new,
              kv_cache_gb=_gb(cache), kv_cache_gb_per_device=_gb(
                  cache / split),
              expected_arguments_gb=_gb(_tree_bytes((base, adapters,
                                                     rows))),
              **_analysis(compiled), compile_s=round(seconds, 1))


def _apply_preset(args) -> None:
  """`--preset marc`: configs/arc_ttt.py:marc's settings where a flag was
  left at None."""
  preset = {}
  if args.preset == "marc":
    from configs import arc_ttt

    c = arc_ttt.get_config("marc")
    preset = dict(vocab=LLAMA3_VOCAB, rank=c.adapter.rank,
                  alpha=c.adapter.alpha,
                  targets=",".join(c.adapter.targets),
                  seq_len=c.data.max_len, rows=c.data.num_sequences,
                  batch=c.ttt.batch_size, steps=c.ttt.steps,
                  remat=int(c.model.remat),
                  scan_layers=int(c.model.scan_layers),
                  max_new=c.decode.max_new_tokens)
  defaults = dict(vocab=0, rank=32, alpha=0.0, targets="", seq_len=2048,
                  rows=32, batch=2, steps=16, remat=0, scan_layers=1,
                  max_new=931)
  for name, value in {**defaults, **preset}.items():
    if getattr(args, name) is None:
      setattr(args, name, value)
  if args.prompt_len is None:  # prompt + answer fill the context
    args.prompt_len = max(args.seq_len - args.max_new, 1)


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--shapes", default="smollm2_135m,llama3_1b,llama3_8b")
  p.add_argument("--tasks", default="1,4",
                 help="tasks (with --mesh: per task-axis device)")
  p.add_argument("--preset", default="", choices=("", "marc"),
                 help="marc: configs/arc_ttt.py:marc's settings, the full "
                 "Llama-3 vocabulary")
  p.add_argument("--seq_len", type=int, default=None, help="default 2048")
  p.add_argument("--rows", type=int, default=None,
                 help="rows per task (N), default 32")
  p.add_argument("--batch", type=int, default=None, help="default 2")
  p.add_argument("--steps", type=int, default=None, help="default 16")
  p.add_argument("--rank", type=int, default=None, help="default 32")
  p.add_argument("--alpha", type=float, default=None,
                 help="default: the rank")
  p.add_argument("--targets", default=None,
                 help="LoRA targets, comma-separated (default: all)")
  p.add_argument("--vocab", type=int, default=None,
                 help="0: the 16-token cut (default)")
  p.add_argument("--dtype", default="bfloat16")
  p.add_argument("--scan_layers", type=int, default=None, help="default 1")
  p.add_argument("--remat", type=int, default=None,
                 help="1: recompute each block in the backward pass")
  p.add_argument("--mesh", default="",
                 help="(task)x(model) meshes, e.g. 8x1,4x2,2x4,1x8; '' one "
                 "device")
  p.add_argument("--decode", type=int, default=0,
                 help="1: also the DFS decode program")
  p.add_argument("--views", type=int, default=8)
  p.add_argument("--prompt_len", type=int, default=None,
                 help="default seq_len - max_new")
  p.add_argument("--max_new", type=int, default=None,
                 help="default 931 (marc: 1892)")
  p.add_argument("--min_prob", type=float, default=0.1)
  p.add_argument("--max_candidates", type=int, default=8)
  args = p.parse_args(argv)
  _apply_preset(args)
  meshes = parse_meshes(args.mesh)
  if meshes:  # before jax is imported: the host platform's device count
    need = max(t * m for t, m in meshes)
    flags = os.environ.get("XLA_FLAGS", "")
    if COUNT_FLAG not in flags:
      os.environ["XLA_FLAGS"] = f"{flags} {COUNT_FLAG}={need}".strip()
  import jax

  from ttt import sharding

  if meshes and jax.device_count() < max(t * m for t, m in meshes):
    raise SystemExit(f"--mesh {args.mesh} needs {max(t * m for t, m in meshes)}"
                     f" devices, jax has {jax.device_count()} (XLA_FLAGS="
                     f"{os.environ.get('XLA_FLAGS', '')!r})")
  rows = []
  for s in args.shapes.split(","):
    for mesh_size in meshes or [None]:
      mesh = None
      if mesh_size is not None:
        t, m = mesh_size
        mesh = sharding.make_mesh(t * m, model_parallel=m)
      for n in args.tasks.split(","):
        rows.append(measure(s, int(n), args, mesh))
  out = dict(benchmark="llm_memory", rows=rows, preset=args.preset,
             seq_len=args.seq_len, rows_per_task=args.rows, batch=args.batch,
             steps=args.steps, rank=args.rank, alpha=args.alpha or args.rank,
             targets=args.targets or "all", vocab=args.vocab or 16,
             dtype=args.dtype, scan_layers=bool(args.scan_layers),
             remat=bool(args.remat),
             decode=(dict(views=args.views, prompt_len=args.prompt_len,
                          max_new=args.max_new, min_prob=args.min_prob,
                          max_candidates=args.max_candidates)
                     if args.decode else None),
             device=jax.devices()[0].device_kind, jax=jax.__version__,
             python=platform.python_version(),
             command=" ".join(["python", "benchmarks/llm_memory.py",
                               *(argv if argv is not None
                                 else sys.argv[1:])]))
  print(json.dumps(out))
  return out


if __name__ == "__main__":
  main()
