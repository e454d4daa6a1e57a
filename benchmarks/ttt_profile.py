r"""Where one TTT step's CPU time goes: XLA:CPU thunks by op class.

Runs the vmapped TTT inner loop (`inner_loop.make_inner_loop`, the workload
of `ttt_throughput.py`) once to compile, then once under `jax.profiler`,
and joins the trace's per-thunk events (XLA:CPU records one per HLO
instruction it executes) with the compiled program's HLO text to put every
thunk in a class:

  base_dot       matmuls with the frozen, shared weights (q, k, v, o, gate,
                 up, down, the output head; forward and input gradients):
                 one matmul over all tasks' rows (no batch dimension)
  lora_dot       the adapters' small batched matmuls (x A, (x A) B and
                 their gradients: a task batch dimension)
  attention_dot  q k^T and p v (forward and backward)
  softmax        fusions computing exp / max / log-softmax (attention and
                 the loss)
  optimizer      the step's bookkeeping outside the model's forward and
                 backward: gradient norm and clip, AdamW, the keep-if-finite
                 selects, drawing the rows
  outside_steps  what runs once, outside the scanned steps (the trained
                 adapter's final loss, the initial optimizer state)
  copy           layout copies and transposes (and the fusions XLA built
                 around one: a transposed product of activations feeding a
                 gradient matmul)
  elementwise    everything else in the forward and backward (RMSNorm,
                 RoPE, SwiGLU, residual adds, gathers, reductions)

With --program pretrain the same for ONE initial-training step
(`pretrain.make_train_step`, the workload of `pretrain_throughput.py`: the
preset's model, --batch sequences of --seq_len tokens of the real sampler,
full fine-tuning with AdamW); there is no scan over steps, so
`outside_steps` is empty and `optimizer` is what is outside the forward
and backward (AdamW, the gradient norm and clip).

CPU seconds are summed over threads (thunks of one step can run
concurrently on the intra-op threads), so the shares are of CPU time.

Command (CPU; a couple of minutes on the `small` shape):
  python benchmarks/ttt_profile.py --preset small --dtype float32
  python benchmarks/ttt_profile.py --program pretrain --preset tiny \
      --batch 8 --seq_len 1024 --dtype float32
Prints one JSON line: wall seconds of the profiled call, CPU seconds and
share per class, the top thunks (name, class, shape, op_name, ms).
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ttt_throughput  # noqa: E402

from sampling import mesh as mesh_lib  # noqa: E402
from ttt import inner_loop, lora  # noqa: E402
from ttt import model as model_lib  # noqa: E402

_LINE = re.compile(r"^\s*(?:ROOT )?%(\S+) = (\S+?)(?:\{[^}]*\})? (\S+?)\(")
_CALLS = re.compile(r"calls=%([\w.\-]+)")
_OPNAME = re.compile(r'op_name="([^"]*)"')


def parse_hlo(text: str):
  """(instructions: name -> dict(shape, op, calls, op_name), computations:
  name -> list of instruction dicts) of an HLO module's text."""
  instrs, comps, current = {}, collections.defaultdict(list), None
  for line in text.splitlines():
    if not line.startswith(" ") and "{" in line and "->" in line:
      current = line.split()[1 if line.startswith("ENTRY") else 0]
      current = current.lstrip("%")
      continue
    m = _LINE.match(line)
    if not m:
      continue
    calls = _CALLS.search(line)
    op_name = _OPNAME.search(line)
    d = dict(name=m.group(1), shape=m.group(2), op=m.group(3),
             calls=calls.group(1) if calls else None,
             op_name=op_name.group(1) if op_name else "",
             batch="lhs_batch_dims" in line)
    instrs[d["name"]] = d
    comps[current].append(d)
  return instrs, comps


def classify(ins: dict, comps, scanned: bool = True) -> str:
  """The op class of one top-level instruction (see the module doc);
  `scanned`: the program's steps run in a while loop (TTT; not the one
  pretraining step)."""
  body = comps.get(ins["calls"], []) if ins["calls"] else []
  ops = {b["op"] for b in body} | {ins["op"]}
  names = " ".join([ins["op_name"]] + [b["op_name"] for b in body])
  if "dot" in ops or "convolution" in ops:
    dots = [b for b in body if b["op"] == "dot"] or [ins]
    if any(t in names for t in ("BTNH", "BNTS", "BSNH")):
      return "attention_dot"
    return "lora_dot" if any(d["batch"] for d in dots) else "base_dot"
  if scanned and "while/body" not in names:
    return "outside_steps"
  if "jvp" not in names:
    return "optimizer"
  if ops & {"exponential", "log"} or "reduce_max" in names:
    return "softmax"
  if ("copy" in ops or "transpose" in ops or "copy" in ins["name"]
      or "transpose" in ins["name"]):
    return "copy"
  return "elementwise"


def thunk_events(trace_dir: str):
  """Complete events ('X') of the newest trace under `trace_dir`."""
  path = max(glob.glob(os.path.join(trace_dir, "plugins", "profile", "*",
                                    "*.trace.json.gz")), key=os.path.getmtime)
  with gzip.open(path) as f:
    return [e for e in json.load(f)["traceEvents"] if e.get("ph") == "X"]


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--preset", default="small")
  p.add_argument("--tasks", type=int, default=8)
  p.add_argument("--seq_len", type=int, default=256)
  p.add_argument("--batch", type=int, default=4)
  p.add_argument("--steps", type=int, default=8)
  p.add_argument("--rank", type=int, default=16)
  p.add_argument("--alpha", type=float, default=32.0)
  p.add_argument("--targets", default="q,k,v,o,gate,up,down")
  p.add_argument("--mode", default="lora")
  p.add_argument("--dtype", default="float32")
  p.add_argument("--cpu_devices", type=int, default=0)
  p.add_argument("--attention_block", type=int, default=-1)
  p.add_argument("--top", type=int, default=15)
  p.add_argument("--hlo_out", default="", help="write the HLO text here")
  p.add_argument("--program", default="ttt", choices=["ttt", "pretrain"])
  args = p.parse_args(argv)
  ttt_throughput.set_cpu_devices(args.cpu_devices)
  fn, inputs, call = (pretrain_program(args) if args.program == "pretrain"
                      else ttt_program(args))
  return profile(args, fn, inputs, call, scanned=args.program == "ttt")


def pretrain_program(args):
  """One initial-training step and its inputs (state, batch)."""
  import ml_collections

  from configs import common
  from ttt import pretrain

  config = ml_collections.ConfigDict(dict(
      model=common.model_config(args.preset, dtype=args.dtype),
      pretrain=dict(steps=1000, batch_size=args.batch, max_len=args.seq_len)))
  cfg = pretrain.PretrainConfig(**config.pretrain)
  mesh = mesh_lib.make_mesh(axis=mesh_lib.DATA_AXIS)
  sources, _ = pretrain.load_pool(cfg)
  batch = mesh_lib.shard_batch(pretrain.make_batch(sources, cfg, 0), mesh)
  graphdef, state, optimizer = pretrain.model_and_state(config, cfg, mesh)
  step = pretrain.make_train_step(graphdef, optimizer)
  held = dict(state=state)

  def call():  # (the step donates its state: each call takes the last one)
    held["state"], m = step(held["state"], batch)
    return m

  return step, (state, batch), call


def ttt_program(args):
  """The vmapped TTT inner loop and its inputs."""
  cfg = ttt_throughput.make_config(args)
  model = model_lib.make_model(cfg.model, cfg.adapter, jax.random.key(0))
  graphdef, params, base = lora.split(model)
  key = jax.random.key(0)
  ds = ttt_throughput.synthetic_datasets(
      args.tasks, args.steps * args.batch, args.seq_len, cfg.model.vocab_size)
  adapters = lora.init_adapters(cfg, key, args.tasks, params)
  keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(
      jnp.arange(args.tasks))
  if jax.device_count() > 1:
    mesh = mesh_lib.make_mesh()
    base = mesh_lib.replicate(base, mesh)
    adapters, ds, keys = mesh_lib.shard_tasks((adapters, ds, keys), mesh)
  fn = inner_loop.make_inner_loop(cfg, graphdef)
  inputs = (base, adapters, ds, keys)
  return fn, inputs, lambda: fn(*inputs)


def profile(args, fn, inputs, call, scanned: bool) -> dict:
  """The HLO of jitted `fn` at `inputs`; `call()` (one run of it) once to
  warm, then profiled, each thunk's CPU time put in its class; prints and
  returns the line."""
  hlo = fn.lower(*inputs).compile().as_text()
  if args.hlo_out:
    with open(args.hlo_out, "w", encoding="utf-8") as f:
      f.write(hlo)
  instrs, comps = parse_hlo(hlo)
  jax.block_until_ready(call())  # warm
  trace_dir = tempfile.mkdtemp(prefix="ttt_profile_")
  jax.profiler.start_trace(trace_dir)
  t0 = time.perf_counter()
  jax.block_until_ready(call())
  wall = time.perf_counter() - t0
  jax.profiler.stop_trace()

  per_class = collections.Counter()
  per_thunk = collections.Counter()
  for e in thunk_events(trace_dir):
    ins = instrs.get(e["name"])
    if ins is None or ins["op"] in ("while", "conditional", "call"):
      continue  # runtime events, and control flow whose body is counted
    per_class[classify(ins, comps, scanned)] += e["dur"] * 1e-6
    per_thunk[e["name"]] += e["dur"] * 1e-6
  total = sum(per_class.values())
  out = dict(
      program=args.program, preset=args.preset, dtype=args.dtype,
      tasks=args.tasks,
      seq_len=args.seq_len, batch=args.batch, steps=args.steps,
      devices=jax.device_count(), xla_flags=os.environ.get("XLA_FLAGS", ""),
      jax=jax.__version__, wall_s=round(wall, 3),
      thunk_cpu_s=round(total, 3),
      cpu_s={k: round(v, 3) for k, v in per_class.most_common()},
      share={k: round(v / total, 3) for k, v in per_class.most_common()},
      top=[dict(name=n, cls=classify(instrs[n], comps, scanned),
                shape=instrs[n]["shape"], op_name=instrs[n]["op_name"][-70:],
                ms=round(1e3 * s, 1))
           for n, s in per_thunk.most_common(args.top)])
  print(json.dumps(out))
  return out


if __name__ == "__main__":
  main()
