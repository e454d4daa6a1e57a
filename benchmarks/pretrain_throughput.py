"""Throughput of initial training: the train step and the host data pipeline.

Times `pretrain.make_train_step` on batches from the real sampler
(`pretrain.make_batch`: ARC-AGI-1 training tasks, plus re-ARC when
--re_arc_dir is given) and, separately, how fast the host builds batches.

FLOPs per token (PaLM-style, causal attention not halved, as the peer):
3 * (2 * N_mm + 4 * layers * L * d_model), N_mm the matmul weights
(q, k, v, o, gate, up, down, head). Counted on padded tokens (the device
computes them); `real_tokens_per_s` counts non-padding tokens.

Prints one JSON line: device, tokens_per_s (padded), real_tokens_per_s,
pipeline_tokens_per_s (real tokens the host sampler builds per second, one
thread), step_ms, mfu, peak_memory_gb, workload.

With --peer PATH (`../shared/peers/torch_peft_ttt.py`) the peer's full
fine-tuning (`--mode full`, one task, AdamW, eager and `--compile`) runs
exactly this shape -- the preset's layers, width, heads, MLP, vocabulary,
B sequences of L tokens, S steps, the same precision -- in the same
invocation, and the line gains `peer` (each configuration's JSON),
`peer_best_tokens_per_s` and `vs_peer_best` (ours / the peer's best,
padded tokens both). --repeat N times our step N times (the figure is the
best). Pause background work while timing.

CPU (about a minute): python benchmarks/pretrain_throughput.py
CPU against the peer (issue 47's workload, a few minutes):
  python benchmarks/pretrain_throughput.py --preset tiny --batch 8 \
      --seq_len 1024 --steps 5 --dtype float32 \
      --peer ../shared/peers/torch_peft_ttt.py
GPU: python benchmarks/pretrain_throughput.py --preset base --batch 64 \
    --seq_len 2048 --steps 20
"""

import argparse
import json
import platform
import subprocess
import sys
import time

import jax
import ml_collections
import numpy as np

from configs import common
from ttt import memory as memory_lib
from ttt import metrics, pretrain, sharding


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--preset", default="tiny")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--seq_len", type=int, default=512)
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--dtype", default="bfloat16")
  p.add_argument("--re_arc_dir", default="")
  p.add_argument("--peak_tflops", type=float, default=None)
  p.add_argument("--peer", default="", help="the peer script: run it too")
  p.add_argument("--peer_timeout", type=float, default=1800)
  p.add_argument("--repeat", type=int, default=1)
  args = p.parse_args()

  config = ml_collections.ConfigDict(dict(
      model=common.model_config(args.preset, dtype=args.dtype),
      pretrain=dict(steps=1000, batch_size=args.batch, max_len=args.seq_len,
                    re_arc_dir=args.re_arc_dir, re_arc_examples=200)))
  cfg = pretrain.PretrainConfig(**config.pretrain)
  mesh = sharding.make_mesh(axis=sharding.DATA_AXIS)
  sources, _ = pretrain.load_pool(cfg)
  t0 = time.perf_counter()
  batches = [pretrain.make_batch(sources, cfg, s) for s in range(args.steps)]
  build_s = time.perf_counter() - t0
  real = sum(int((b.mask.shape[1] - (b.tokens == 15).sum(1)).sum())
             for b in batches)
  graphdef, state, optimizer = pretrain.model_and_state(config, cfg, mesh)
  step = pretrain.make_train_step(graphdef, optimizer)
  on_device = [sharding.shard_batch(b, mesh) for b in batches]
  state, m = step(state, on_device[0])  # compile
  jax.block_until_ready(m)
  dt = float("inf")
  for _ in range(max(1, args.repeat)):
    t0 = time.perf_counter()
    for b in on_device:
      state, m = step(state, b)
    jax.block_until_ready((state, m))
    dt = min(dt, time.perf_counter() - t0)
  mc = config.model
  n_mm = mc.num_layers * (4 * mc.d_model ** 2 + 3 * mc.d_model * mc.mlp_dim)
  n_mm += mc.d_model * mc.vocab_size
  fpt = 3.0 * (2 * n_mm + 4 * mc.num_layers * args.seq_len * mc.d_model)
  padded = args.steps * args.batch * args.seq_len / dt
  peak = metrics.peak_tflops(args.peak_tflops)
  print(json.dumps(dict(
      device=jax.devices()[0].device_kind, backend=jax.default_backend(),
      devices=len(jax.devices()), jax=jax.__version__,
      python=platform.python_version(),
      tokens_per_s=round(padded, 1), real_tokens_per_s=round(real / dt, 1),
      pipeline_tokens_per_s=round(real / build_s, 1),
      step_ms=round(1e3 * dt / args.steps, 2),
      mfu=round(padded * fpt / (peak * 1e12), 4) if peak else None,
      peak_memory_gb=memory_lib.peak_memory_gb(),
      loss=float(np.asarray(m["loss"])),
      workload=dict(preset=args.preset, batch=args.batch,
                    seq_len=args.seq_len, steps=args.steps, dtype=args.dtype,
                    flops_per_token=fpt, peak_tflops=peak),
      **(peer_fields(args, config.model, padded) if args.peer else {}))))


def peer_fields(args, mc, ours: float) -> dict:
  """The peer's full fine-tuning on this exact shape (eager, compiled):
  each configuration's JSON line and ours / its best."""
  device = "cpu" if jax.default_backend() == "cpu" else "cuda"
  shape = ["--mode", "full", "--tasks", "1", "--layers", mc.num_layers,
           "--hidden", mc.d_model, "--heads", mc.num_heads,
           "--kv-heads", mc.get("num_kv_heads") or mc.num_heads,
           "--inter", mc.mlp_dim, "--vocab", mc.vocab_size,
           "--seq-len", args.seq_len, "--batch", args.batch,
           "--steps", args.steps, "--lr", 3e-4, "--clip-grad", 1.0,
           "--device", device,
           "--precision", "fp32" if args.dtype == "float32" else "autocast"]
  runs = []
  for extra in ([], ["--compile"]):
    cmd = [sys.executable, args.peer] + [str(x) for x in shape] + extra
    try:
      out = subprocess.run(cmd, capture_output=True, text=True,
                           timeout=args.peer_timeout)
      line = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""
      runs.append(dict(args=" ".join(extra) or "eager", **json.loads(line))
                  if out.returncode == 0 and line else
                  dict(args=" ".join(extra) or "eager", failed=out.returncode,
                       stderr=out.stderr[-400:]))
    except (subprocess.TimeoutExpired, json.JSONDecodeError) as e:
      runs.append(dict(args=" ".join(extra) or "eager", failed=str(e)[:200]))
  ok = [r for r in runs if "tokens_per_s" in r]
  best = max(ok, key=lambda r: r["tokens_per_s"]) if ok else None
  return dict(peer=runs,
              peer_best_tokens_per_s=best and round(best["tokens_per_s"], 1),
              peer_best=best and best["args"],
              vs_peer_best=best and round(ours / best["tokens_per_s"], 3))


if __name__ == "__main__":
  main()
