"""Throughput of the TTT inner loop: vmapped over tasks vs one task at a time.

The same jitted single-task program (`inner_loop.make_train_task`) is run
(a) vmapped over T tasks in one call (`make_inner_loop`) and (b) in a Python
loop, one task after another (MARC's way), on the same synthetic workload:
random token sequences of length L, loss on the last 30% of each sequence
(as `../shared/peers/torch_peft_ttt.py`), B sequences per step, S steps.

FLOPs per trained token follow the peer's PaLM-style convention (causal
attention not halved): with N_mm the matmul weights (q, k, v, o, gate, up,
down per layer, plus the output head), attn = 4 * layers * L * d_model,
  LoRA (frozen base): 4 * N_mm + 3 * attn + 6 * N_lora
  full fine-tuning:   3 * (2 * N_mm + attn)
MFU = FLOPs/s / the device's dense bf16 peak (H100 SXM/H200: 989.4 TFLOP/s;
none on CPU unless --peak_tflops is given).

Prints one JSON line: device, tokens_per_s (wall), tokens_per_cpu_s (per
second of process CPU time, all threads: the figure that a machine shared
with other jobs distorts least), looped_tokens_per_s,
speedup_vs_looped, tasks_per_s, step_ms, mfu, peak_memory_gb, the workload,
and `sweep` (one entry per T when --tasks lists several; the top-level
figures are the last T's). The looped rate is measured on
min(T, --looped_tasks) tasks (per-task time is constant).

With --peer PATH (the peer script, `../shared/peers/torch_peft_ttt.py`)
the peer runs exactly this workload (the preset's shape, L, B, S, T, LoRA
rank/alpha/targets, lr, per-task clip 1.0, fp32 for --dtype float32) on the
same device kind in the same invocation: PEFT one task after another, eager
and torch.compile, and the stacked batched LoRA (CPU: all T tasks at once,
eager and compiled; GPU: 32 at a time, compiled). Its JSON lines are under
`peer`; `peer_best_tokens_per_s`, `peer_best`, `vs_peer_best` (ours /
the peer's best configuration) and `meets_target` (vs_peer_best >=
`target_vs_peer`, 1.3 on CPU) sum them up. The peer's CPU threads are
torch's default (one per core) unless --peer_threads is given. With
--peer_clock cpu both sides are timed in process CPU seconds (all threads;
the peer's timer patched to `time.process_time`): on a machine shared with
other jobs that distorts the ratio less than wall time does.

--cpu_devices N runs ours on N JAX CPU devices with the task axis sharded
over them (the launches' layout, `launch/common.py`); 0 is JAX's single
CPU device (one intra-op thread pool).

CPU default (about a minute): python benchmarks/ttt_throughput.py
CPU against the peer (the `small` shape, float32, about 5 minutes):
  python benchmarks/ttt_throughput.py --preset small --dtype float32 \
      --cpu_devices 2 --peer ../shared/peers/torch_peft_ttt.py
LLM shapes (random weights; configs/common.LLM_SHAPES), e.g. on a GPU:
  python benchmarks/ttt_throughput.py --preset llama3_1b --tasks 8,32 \
      --seq_len 1024 --batch 2 --steps 8 --rank 32
GPU (base):  python benchmarks/ttt_throughput.py --preset base \
    --tasks 16,64,256 --seq_len 1024 --batch 8 --steps 32 --rank 16 \
    --peer peers/torch_peft_ttt.py
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from configs import common
from sampling import mesh as mesh_lib
from ttt import data, inner_loop, lora, metrics
from ttt import memory as memory_lib
from ttt import model as model_lib


def flops_per_token(cfg, seq_len: int, mode: str, n_lora: int) -> float:
  m = model_lib.ModelConfig(**cfg.model.to_dict())
  q_width, kv_width = m.num_heads * m.head_dim, m.kv_heads * m.head_dim
  n_mm = m.num_layers * (2 * m.d_model * q_width + 2 * m.d_model * kv_width
                         + 3 * m.d_model * m.mlp_dim)
  n_mm += m.d_model * m.vocab_size  # output head
  attn = 4 * m.num_layers * seq_len * q_width
  if mode == "full":
    return 3.0 * (2 * n_mm + attn)
  return 4.0 * n_mm + 3 * attn + 6 * n_lora


def synthetic_datasets(n_tasks, rows, seq_len, vocab, loss_frac=0.3, seed=0):
  rng = np.random.default_rng(seed)
  toks = rng.integers(0, vocab, (n_tasks, rows, seq_len), dtype=np.int32)
  mask = np.zeros_like(toks)
  mask[..., int(seq_len * (1 - loss_frac)):] = 1
  pos = np.broadcast_to(np.arange(seq_len, dtype=np.int32), toks.shape)
  coords = np.zeros(toks.shape + (3,), np.int32)
  coords[..., 0] = pos  # any valid coordinates; cost is what is measured
  return data.TTTDataset(toks, mask, np.array(pos), coords,
                         np.ones((n_tasks, rows), bool), np.ones_like(toks))


def make_config(args):
  extra = {} if getattr(args, "attention_block", -1) == -1 else dict(
      attention_block=args.attention_block)
  return ml_collections.ConfigDict(dict(
      model=common.model_config(args.preset, dtype=args.dtype, **extra),
      adapter=dict(mode=args.mode, rank=args.rank, alpha=args.alpha,
                   targets=tuple(args.targets.split(",")), prefix_len=8),
      ttt=dict(steps=args.steps, batch_size=args.batch, lr=1e-4)))


def timed(fn, *xs, repeat=2, cpu=None):
  """Best wall seconds of `repeat` calls after a warm-up; with a list
  `cpu`, appends that call's process CPU seconds (all threads)."""
  jax.block_until_ready(fn(*xs))  # compile + warm-up
  best, best_cpu = float("inf"), None
  for _ in range(repeat):
    t0, c0 = time.perf_counter(), time.process_time()
    jax.block_until_ready(fn(*xs))
    wall = time.perf_counter() - t0
    if wall < best:
      best, best_cpu = wall, time.process_time() - c0
  if cpu is not None:
    cpu.append(best_cpu)
  return best


def run_one(args, cfg, n_tasks, graphdef, base, params):
  key = jax.random.key(0)
  rows = args.steps * args.batch
  ds = synthetic_datasets(n_tasks, rows, args.seq_len, cfg.model.vocab_size)
  adapters = lora.init_adapters(cfg, key, n_tasks, params)
  keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(n_tasks))
  vmapped = inner_loop.make_inner_loop(cfg, graphdef)
  if jax.device_count() > 1:  # the launches' layout: tasks over devices
    mesh = mesh_lib.make_mesh()
    base_in = mesh_lib.replicate(base, mesh)
    adapters_in, ds_in, keys_in = mesh_lib.shard_tasks((adapters, ds, keys),
                                                       mesh)
  else:
    base_in, adapters_in, ds_in, keys_in = base, adapters, ds, keys
  cpu = []
  t_vmap = timed(vmapped, base_in, adapters_in, ds_in, keys_in, cpu=cpu)
  tokens = n_tasks * args.steps * args.batch * args.seq_len
  out = dict(tasks=n_tasks, seconds=round(t_vmap, 4),
             cpu_seconds=round(cpu[0], 4),
             tokens_per_cpu_s=round(tokens / cpu[0], 1),
             tokens_per_s=round(tokens / t_vmap, 1),
             tasks_per_s=round(n_tasks / t_vmap, 3),
             step_ms=round(1e3 * t_vmap / args.steps, 2))
  if args.looped_tasks:
    single = jax.jit(inner_loop.make_train_task(cfg, graphdef))
    n_loop = min(n_tasks, args.looped_tasks)
    take = lambda t: jax.tree.map(lambda x: x[t], (adapters, ds))  # noqa
    args_t = [take(t) + (keys[t],) for t in range(n_loop)]

    def loop():
      return [single(base, *a) for a in args_t]

    t_loop = timed(loop) / n_loop  # seconds per task
    per_task_tokens = args.steps * args.batch * args.seq_len
    out.update(looped_tokens_per_s=round(per_task_tokens / t_loop, 1),
               looped_tasks_per_s=round(1 / t_loop, 3),
               speedup_vs_looped=round(out["tokens_per_s"] * t_loop
                                       / per_task_tokens, 2))
  return out


TARGET_VS_PEER = 1.3  # issue 31: ours >= 1.3x the peer's best, same run


def peer_configs(args, n_tasks: int, device: str) -> list[list[str]]:
  """The peer's configurations: PEFT one task after another (eager and
  torch.compile) and the stacked batched LoRA over all tasks at once (CPU:
  eager and compiled; GPU: compiled, 32 at a time)."""
  seq = ["--tasks", str(n_tasks), "--lora-impl", "peft"]
  if device == "cpu":
    stacked = ["--tasks", str(n_tasks), "--lora-impl", "stacked",
               "--batched-tasks", str(n_tasks)]
    return [seq, seq + ["--compile"], stacked, stacked + ["--compile"]]
  return [seq, seq + ["--compile"],
          ["--tasks", str(max(n_tasks, 64)), "--lora-impl", "stacked",
           "--batched-tasks", "32", "--compile"]]


def peer_command(args, cfg, n_tasks: int, extra: list[str]) -> list[str]:
  """The peer's command line for exactly this benchmark's workload: the
  model shape from the preset, the sequences, steps, LoRA and optimizer
  settings (clip per task), on the same device kind and precision."""
  m = model_lib.ModelConfig(**cfg.model.to_dict())
  device = "cpu" if jax.default_backend() == "cpu" else "cuda"
  precision = "fp32" if args.dtype == "float32" else "autocast"
  shape = ["--layers", m.num_layers, "--hidden", m.d_model,
           "--heads", m.num_heads, "--kv-heads", m.kv_heads,
           "--inter", m.mlp_dim, "--vocab", m.vocab_size,
           "--seq-len", args.seq_len, "--batch", args.batch,
           "--steps", args.steps, "--rank", args.rank, "--alpha", args.alpha,
           "--targets", args.targets, "--lr", cfg.ttt.lr,
           "--clip-grad", 1.0, "--device", device, "--precision", precision]
  if args.peer_threads:
    shape += ["--threads", args.peer_threads]
  argv = [str(x) for x in shape] + extra
  if args.peer_clock == "cpu":  # the peer's own timer reads CPU time
    run = ("import runpy, sys, time; time.perf_counter = time.process_time;"
           f" sys.argv = [{args.peer!r}] + {argv!r};"
           f" runpy.run_path({args.peer!r}, run_name='__main__')")
    return [sys.executable, "-c", run]
  return [sys.executable, args.peer] + argv


def run_peer(args, cfg, n_tasks: int):
  """Each peer configuration's JSON line (or why it failed)."""
  results = []
  device = "cpu" if jax.default_backend() == "cpu" else "cuda"
  for extra in peer_configs(args, n_tasks, device):
    cmd = peer_command(args, cfg, n_tasks, extra)
    try:
      p = subprocess.run(cmd, capture_output=True, text=True,
                         timeout=args.peer_timeout)
      line = p.stdout.strip().splitlines()[-1] if p.stdout.strip() else ""
      results.append(dict(args=" ".join(extra), **json.loads(line))
                     if p.returncode == 0 and line else
                     dict(args=" ".join(extra), failed=p.returncode,
                          stderr=p.stderr[-500:]))
    except (subprocess.TimeoutExpired, json.JSONDecodeError) as e:
      results.append(dict(args=" ".join(extra), failed=str(e)[:200]))
  return results


def peer_summary(ours: float, peer: list[dict]) -> dict:
  """The peer's best tokens/s, which configuration it was, and ours / it."""
  ok = [r for r in peer if "tokens_per_s" in r]
  if not ok:
    return dict(peer_best_tokens_per_s=None, vs_peer_best=None)
  best = max(ok, key=lambda r: r["tokens_per_s"])
  ratio = ours / best["tokens_per_s"]
  return dict(peer_best_tokens_per_s=round(best["tokens_per_s"], 1),
              peer_best=best["args"], vs_peer_best=round(ratio, 3),
              target_vs_peer=TARGET_VS_PEER,
              meets_target=bool(ratio >= TARGET_VS_PEER),
              peer_tokens_per_s={r["args"]: round(r["tokens_per_s"], 1)
                                 for r in ok})


def set_cpu_devices(n: int) -> None:
  """N JAX CPU devices (before the backend starts; 0: JAX's default)."""
  flag = "--xla_force_host_platform_device_count"
  xla = os.environ.get("XLA_FLAGS", "")
  if n and flag not in xla:
    os.environ["XLA_FLAGS"] = f"{xla} {flag}={n}".strip()


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--preset", default="small",
                 help="tiny | small | base, or an LLM shape: smollm2_135m | "
                      "llama3_1b (random weights, 16-token cut vocabulary)")
  p.add_argument("--tasks", default="8", help="T, or a comma list to sweep")
  p.add_argument("--seq_len", type=int, default=256)
  p.add_argument("--batch", type=int, default=4)
  p.add_argument("--steps", type=int, default=8)
  p.add_argument("--rank", type=int, default=16)
  p.add_argument("--alpha", type=float, default=32.0)
  p.add_argument("--targets", default="q,k,v,o,gate,up,down")
  p.add_argument("--mode", default="lora", help="lora | prefix | full")
  p.add_argument("--dtype", default="bfloat16")
  p.add_argument("--looped_tasks", type=int, default=4,
                 help="tasks timed one after another (0: skip)")
  p.add_argument("--peak_tflops", type=float, default=None)
  p.add_argument("--attention_block", type=int, default=-1,
                 help="model.attention_block (-1: the model's auto)")
  p.add_argument("--cpu_devices", type=int, default=0,
                 help="JAX CPU devices, tasks sharded over them (the "
                      "launches' layout: one per core); 0: JAX's one device")
  p.add_argument("--peer", default="", help="path of torch_peft_ttt.py")
  p.add_argument("--peer_threads", type=int, default=0,
                 help="torch CPU threads of the peer (0: torch's default)")
  p.add_argument("--peer_timeout", type=int, default=900)
  p.add_argument("--peer_clock", default="wall",
                 help="wall | cpu: the peer's timer reads process CPU time "
                      "(its tokens_per_s then compares with our "
                      "tokens_per_cpu_s; vs_peer_best uses that one)")
  args = p.parse_args()
  set_cpu_devices(args.cpu_devices)

  cfg = make_config(args)
  model = model_lib.make_model(cfg.model, cfg.adapter, jax.random.key(0))
  graphdef, params, base = lora.split(model)
  n_lora = 0 if args.mode == "full" else model_lib.count_params(params)
  fpt = flops_per_token(cfg, args.seq_len, args.mode, n_lora)
  peak = metrics.peak_tflops(args.peak_tflops)
  sweep = []
  for n_tasks in (int(t) for t in args.tasks.split(",")):
    r = run_one(args, cfg, n_tasks, graphdef, base, params)
    r["mfu"] = (round(r["tokens_per_s"] * fpt / (peak * 1e12), 4)
                if peak else None)
    sweep.append(r)
  last = dict(sweep[-1])
  out = dict(
      device=jax.devices()[0].device_kind, backend=jax.default_backend(),
      devices=jax.device_count(), cpus=os.cpu_count(),
      xla_flags=os.environ.get("XLA_FLAGS", ""),
      jax=jax.__version__, python=platform.python_version(),
      **{k: last.get(k) for k in (
          "tokens_per_s", "tokens_per_cpu_s", "cpu_seconds",
          "looped_tokens_per_s", "speedup_vs_looped",
          "tasks_per_s", "looped_tasks_per_s", "step_ms", "mfu")},
      peak_memory_gb=memory_lib.peak_memory_gb(),
      workload=dict(preset=args.preset, mode=args.mode, seq_len=args.seq_len,
                    batch=args.batch, steps=args.steps, rank=args.rank,
                    targets=args.targets, dtype=args.dtype,
                    params=model_lib.count_params(nnx.state(model)),
                    adapter_params_per_task=model_lib.count_params(params),
                    flops_per_token=fpt, peak_tflops=peak),
      sweep=sweep)
  if args.peer:
    out["peer"] = run_peer(args, cfg, last["tasks"])
    out["peer_clock"] = args.peer_clock
    ours = out["tokens_per_cpu_s" if args.peer_clock == "cpu"
               else "tokens_per_s"]
    out.update(peer_summary(ours, out["peer"]))
  print(json.dumps(out))


if __name__ == "__main__":
  main()
