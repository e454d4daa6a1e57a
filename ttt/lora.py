"""Adapters: split a model into (graphdef, adapters, base) and stack per task.

The model is split ONCE at the boundary; everything after is plain JAX over
pytrees:

* `split(model)` -> `(graphdef, adapters, base)`: the adapter variables
  (`nnx.LoRAParam`, which covers LoRA factors and `PrefixParam`) or, in
  'full' / 'full+prefix' mode, every `nnx.Param` (the prefix included);
  `base` is the rest, frozen and shared.
* `merge(graphdef, adapters, base)` rebuilds the model inside a loss.
* `init_adapters(config, key, n_tasks, base=None)` -> adapters stacked on a
  leading task axis `[T, ...]`: fresh LoRA (A random per task from
  `fold_in(key, task)`, B zero) and prefix vectors, or, in 'full' mode, T
  copies of the base weights (each task fine-tunes its own copy); in
  'full+prefix' mode the copies and a fresh prefix per task (the task token).
* `split_prefix(state)` / `merge_prefix(prefix, rest)`: a state's learned
  prefix apart from everything else (a checkpoint holds no prefix).

What is adapted is `config.adapter.mode`: 'lora', 'prefix', 'lora+prefix',
'full' or 'full+prefix' (see `ttt.model.AdapterConfig`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from ttt import configlib
from ttt import model as model_lib


def adapter_filter(mode: str):
  """The nnx filter selecting the adapted variables for `mode`."""
  return nnx.Param if mode.startswith("full") else nnx.LoRAParam


def split_prefix(state):
  """(the learned prefix, the rest) of an adapter / parameter state; the
  prefix part is empty in modes without one."""
  return nnx.split_state(state, model_lib.PrefixParam, ...)


def merge_prefix(prefix, rest):
  """Inverse of `split_prefix`."""
  return nnx.merge_state(prefix, rest)


def split(model: model_lib.Transformer):
  """(graphdef, adapters State, base State) for the model's adapter mode."""
  mode = model.adapter_config.mode
  return nnx.split(model, adapter_filter(mode), ...)


def merge(graphdef, adapters, base) -> model_lib.Transformer:
  """Inverse of `split` (usable inside jit / vmap / grad)."""
  return nnx.merge(graphdef, adapters, base)


def configs(config: Any):
  """(ModelConfig, AdapterConfig) from a config with `.model`/`.adapter`."""
  return (configlib.from_config(model_lib.ModelConfig, config.model),
          configlib.from_config(model_lib.AdapterConfig, config.adapter))


def abstract_split(config: Any):
  """`split` of the abstract model: (graphdef, abstract adapters, base)."""
  model_config, adapter_config = configs(config)
  model = nnx.eval_shape(
      lambda: model_lib.Transformer(model_config, adapter_config,
                                    rngs=nnx.Rngs(params=0, lora=1)))
  return split(model)


def make_init(config: Any, key: jax.Array):
  """`init(params, task_index int32[T]) -> adapters [T, ...]` (unjitted).

  Task t's adapter depends only on `fold_in(key, task_index[t])` -- not on
  which chunk or slot it lands in. In 'full' mode every task starts from
  `params` (the weights to fine-tune); otherwise `params` is ignored (pass
  None). In 'full+prefix' mode the prefix is drawn fresh per task (as in
  the prefix modes), never copied. Jit it with `out_shardings` to create
  adapters in place.
  """
  model_config, adapter_config = configs(config)

  def one(k):
    model = model_lib.Transformer(model_config, adapter_config,
                                  rngs=nnx.Rngs(params=0, lora=k))
    return split(model)[1]

  if adapter_config.tunes_all:
    def init_adapters_full(params, task_index):
      copies = jax.tree.map(
          lambda x: jnp.broadcast_to(x, task_index.shape + x.shape), params)
      if not adapter_config.num_prefix:
        return copies
      # (jit drops the rest of each fresh model: only its prefix is used)
      fresh = jax.vmap(lambda t: split_prefix(one(jax.random.fold_in(
          key, t)))[0])(task_index)
      return merge_prefix(fresh, split_prefix(copies)[1])
    return init_adapters_full

  def init_adapters_at(params, task_index):
    del params
    return jax.vmap(lambda t: one(jax.random.fold_in(key, t)))(task_index)

  return init_adapters_at


def init_adapters(config: Any, key: jax.Array, n_tasks: int, params=None):
  """Per-task adapters stacked along a leading task axis.

  Args:
    config: has `.model` and `.adapter` groups.
    key: PRNG key; task t's adapter is drawn from `fold_in(key, t)`.
    n_tasks: T.
    params: in 'full' mode, the weights to copy (the `adapters` part of
      `split(model)`), required there and ignored otherwise.

  Returns:
    The adapter State with every leaf shaped [T, ...].
  """
  if configs(config)[1].tunes_all and params is None:
    raise ValueError("full fine-tuning copies the weights: pass params")
  # jit drops the unused base initialisation.
  return jax.jit(make_init(config, key))(params, jnp.arange(n_tasks))
