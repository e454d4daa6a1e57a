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

Prints one JSON line: device, tokens_per_s, looped_tokens_per_s,
speedup_vs_looped, tasks_per_s, step_ms, mfu, peak_memory_gb, the workload,
and `sweep` (one entry per T when --tasks lists several; the top-level
figures are the last T's). The looped rate is measured on
min(T, --looped_tasks) tasks (per-task time is constant).

With --peer PATH (the peer script) the peer runs the same workload in the
same invocation (`--lora-impl peft`, sequential, and `--lora-impl stacked`)
and its JSON lines are included under `peer`.

CPU default (about a minute): python benchmarks/ttt_throughput.py
LLM shapes (random weights; configs/common.LLM_SHAPES), e.g. on a GPU:
  python benchmarks/ttt_throughput.py --preset llama3_1b --tasks 8,32 \
      --seq_len 1024 --batch 2 --steps 8 --rank 32
GPU (base):  python benchmarks/ttt_throughput.py --preset base \
    --tasks 16,64,256 --seq_len 1024 --batch 8 --steps 32 --rank 16 \
    --peer peers/torch_peft_ttt.py
"""

import argparse
import json
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
from ttt import data, inner_loop, lora, metrics
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
                         np.ones((n_tasks, rows), bool))


def make_config(args):
  return ml_collections.ConfigDict(dict(
      model=common.model_config(args.preset, dtype=args.dtype),
      adapter=dict(mode=args.mode, rank=args.rank, alpha=args.alpha,
                   targets=tuple(args.targets.split(",")), prefix_len=8),
      ttt=dict(steps=args.steps, batch_size=args.batch, lr=1e-4)))


def timed(fn, *xs, repeat=2):
  jax.block_until_ready(fn(*xs))  # compile + warm-up
  best = float("inf")
  for _ in range(repeat):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*xs))
    best = min(best, time.perf_counter() - t0)
  return best


def run_one(args, cfg, n_tasks, graphdef, base, params):
  key = jax.random.key(0)
  rows = args.steps * args.batch
  ds = synthetic_datasets(n_tasks, rows, args.seq_len, cfg.model.vocab_size)
  adapters = lora.init_adapters(cfg, key, n_tasks, params)
  keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(n_tasks))
  vmapped = inner_loop.make_inner_loop(cfg, graphdef)
  t_vmap = timed(vmapped, base, adapters, ds, keys)
  tokens = n_tasks * args.steps * args.batch * args.seq_len
  out = dict(tasks=n_tasks, seconds=round(t_vmap, 4),
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


def run_peer(args):
  results = []
  base = ["--layers", "8", "--hidden", "512", "--heads", "8", "--inter",
          "1536", "--vocab", "16", "--seq-len", str(args.seq_len),
          "--batch", str(args.batch), "--steps", str(args.steps),
          "--rank", str(args.rank), "--alpha", str(args.alpha)]
  for extra in (["--tasks", "16", "--lora-impl", "peft"],
                ["--tasks", "16", "--lora-impl", "peft", "--compile"],
                ["--tasks", "64", "--lora-impl", "stacked",
                 "--batched-tasks", "32", "--compile"]):
    cmd = [sys.executable, args.peer] + base + extra
    try:
      p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
      line = p.stdout.strip().splitlines()[-1] if p.stdout.strip() else ""
      results.append(dict(args=" ".join(extra), **json.loads(line))
                     if p.returncode == 0 and line else
                     dict(args=" ".join(extra), failed=p.returncode,
                          stderr=p.stderr[-500:]))
    except (subprocess.TimeoutExpired, json.JSONDecodeError) as e:
      results.append(dict(args=" ".join(extra), failed=str(e)[:200]))
  return results


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
  p.add_argument("--peer", default="", help="path of torch_peft_ttt.py")
  args = p.parse_args()

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
      jax=jax.__version__, python=platform.python_version(),
      **{k: last.get(k) for k in (
          "tokens_per_s", "looped_tokens_per_s", "speedup_vs_looped",
          "tasks_per_s", "looped_tasks_per_s", "step_ms", "mfu")},
      peak_memory_gb=metrics.peak_memory_gb(),
      workload=dict(preset=args.preset, mode=args.mode, seq_len=args.seq_len,
                    batch=args.batch, steps=args.steps, rank=args.rank,
                    targets=args.targets, dtype=args.dtype,
                    params=model_lib.count_params(nnx.state(model)),
                    adapter_params_per_task=model_lib.count_params(params),
                    flops_per_token=fpt, peak_tflops=peak),
      sweep=sweep)
  if args.peer:
    out["peer"] = run_peer(args)
  print(json.dumps(out))


if __name__ == "__main__":
  main()
