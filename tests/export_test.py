"""Every compiled program lowers for GPU and TPU (`jax.export`, on CPU).

Catches platform-specific lowering errors without a device: the inner loop,
adapter init, the decoders (greedy/sampled, dfs, vgb), the row scorer, the
vote and the sampling walks
are exported for `cuda` and `tpu` at tiny sizes, in bfloat16 where the
model computes (the GPU/TPU default).
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from conftest import export_lowers

import sampling
from sampling import walks
from ttt import data, inner_loop, lora, select, tokens, vote
from ttt import model as M
from ttt.decoders import dfs, sampled, vgb


def _config():
  return ml_collections.ConfigDict(dict(
      model=dict(num_layers=1, d_model=64, num_heads=4, mlp_dim=128,
                 dtype="bfloat16"),
      adapter=dict(mode="lora", rank=4, alpha=8.0),
      ttt=dict(steps=2, batch_size=2)))


def test_ttt_programs_lower_for_gpu_and_tpu():
  cfg = _config()
  key = jax.random.key(0)
  graphdef, _, base = lora.split(M.make_model(cfg.model, cfg.adapter, key))
  t, n, length = 2, 4, 64
  init = jax.jit(lora.make_init(cfg, key))
  index = jnp.arange(t, dtype=jnp.int32)
  export_lowers(init, None, index)
  adapters = init(None, index)
  row = tokens.Encoded(np.full(length, tokens.PAD, np.int32),
                       np.zeros(length, np.int32),
                       np.arange(length, dtype=np.int32),
                       np.zeros((length, 3), np.int32), 1)
  ds = data.stack([data.stack_rows([row] * n, n, length)] * t)
  keys = jax.random.split(key, t)
  # (without the progress callback: a host callback cannot be exported to
  # another platform from a CPU machine; the program is otherwise the same)
  export_lowers(inner_loop.make_inner_loop(cfg, graphdef), base,
                adapters, ds, keys)
  q, v, p = 3, 2, 32
  export_lowers(sampled.make_program(graphdef, 8, temperature=0.5), base,
                adapters, jnp.zeros(q, jnp.int32),
                jnp.zeros((q, v, p), jnp.int32), jnp.ones((q, v), jnp.int32),
                jnp.zeros((q, v, p, 3), jnp.int32),
                jnp.ones((q, v), jnp.int32), jnp.ones((q, v), bool),
                jax.random.split(key, q))
  prompt_args = (jnp.zeros(q, jnp.int32), jnp.zeros((q, v, p), jnp.int32),
                 jnp.ones((q, v), jnp.int32),
                 jnp.zeros((q, v, p, 3), jnp.int32),
                 jnp.ones((q, v), jnp.int32), jnp.ones((q, v), bool))
  export_lowers(dfs.make_program(graphdef, 8, 0.1, 4), base, adapters,
                *prompt_args)
  tmaps = jnp.tile(jnp.arange(tokens.VOCAB_SIZE, dtype=jnp.int32), (q, v, 1))
  export_lowers(vgb.make_program(graphdef, 8, 4, 16, 2.0), base, adapters,
                *prompt_args, tmaps, jax.random.split(key, q))
  rows = data.stack_rows([row] * 4, 4, length)
  export_lowers(select.make_row_scorer(graphdef), base, adapters,
                jnp.zeros(4, jnp.int32), rows)
  g, s = 3, 2
  export_lowers(vote.vmap_vote(vote.hierarchical_vote),
                jnp.zeros((q, g, s, 30, 30), jnp.int8),
                jnp.ones((q, g, s, 2), jnp.int32), jnp.ones((q, g, s), bool),
                jnp.zeros((q, g), bool))


def test_sampling_walks_lower_for_gpu_and_tpu():
  inst = sampling.make_instance(2, 6, "uniform", "combo", alpha=2.0)
  keys = jax.random.split(jax.random.key(0), 8)
  for chain in (walks.make_js(inst, 16, leaf_loop=1.0),
                walks.make_lifted(inst, 16), walks.make_top_down(inst)):
    export_lowers(jax.jit(jax.vmap(chain)), keys)


def test_sharded_ttt_and_decode_programs_lower_for_gpu_and_tpu():
  """The same programs with the base split over a (2,4) mesh's `model`
  axis and the adapters over its `task` axis (`run.model_parallel=4`):
  XLA's partitioner inserts the collectives for both platforms."""
  from ttt import sharding

  cfg = _config()
  mesh = sharding.make_mesh(model_parallel=4)
  model_cfg = M.ModelConfig(**cfg.model)
  key = jax.random.key(0)
  graphdef, _, base = lora.split(M.make_model(cfg.model, cfg.adapter, key))
  base = sharding.place_params(base, mesh, model_cfg)
  assert not all(x.sharding.is_fully_replicated for x in jax.tree.leaves(
      base))
  t, n, length = 2, 4, 64
  adapters = sharding.shard_tasks(
      lora.init_adapters(cfg, key, t), mesh)
  row = tokens.Encoded(np.full(length, tokens.PAD, np.int32),
                       np.zeros(length, np.int32),
                       np.arange(length, dtype=np.int32),
                       np.zeros((length, 3), np.int32), 1)
  ds = sharding.shard_tasks(data.stack([data.stack_rows([row] * n, n,
                                                        length)] * t), mesh)
  keys = sharding.shard_tasks(jax.random.split(key, t), mesh)
  export_lowers(inner_loop.make_inner_loop(cfg, graphdef), base, adapters,
                ds, keys)
  q, v, p = 2, 2, 32
  prompt_args = sharding.shard_tasks(
      (np.zeros(q, np.int32), np.zeros((q, v, p), np.int32),
       np.ones((q, v), np.int32), np.zeros((q, v, p, 3), np.int32),
       np.ones((q, v), np.int32), np.ones((q, v), bool)), mesh)
  export_lowers(dfs.make_program(graphdef, 8, 0.1, 4), base, adapters,
                *prompt_args)
