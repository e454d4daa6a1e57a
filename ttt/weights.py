"""Base models: loading a checkpoint into a named `Weights`, placing it.

`load(init_from, model, adapter, seed) -> (Weights, ModelConfig)` builds
the transformer from a checkpoint written by `ttt.ckpt.save_weights` (its
stored shape wins over `model`; the compute dtype stays the config's) or,
with an empty `init_from`, an UNTRAINED one (said loudly in the log).
`place(weights, mesh)` copies the weights onto every device of the mesh,
once per run. Nothing downstream knows where a base came from.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, NamedTuple

import jax
from absl import logging

from ttt import ckpt, lora, sharding
from ttt import model as model_lib


class Weights(NamedTuple):
  """A base model split for TTT.

  Attributes:
    graphdef: the NNX graph definition (`ttt.lora.split`).
    template: one task's fresh adapter (LoRA / prefix factors) or, in
      'full' mode, the loaded weights themselves (every task's start).
    base: the frozen, shared weights (in 'full' mode what is not adapted).
  """

  graphdef: Any
  template: Any
  base: Any


def load(init_from: str, model: model_lib.ModelConfig,
         adapter: model_lib.AdapterConfig, seed: int
         ) -> tuple[Weights, model_lib.ModelConfig]:
  """The run's base model and the model config it was built with.

  Args:
    init_from: a directory written by `ttt.ckpt.save_weights`, or '' for
      an untrained model.
    model: the config's model group (the checkpoint's shape wins).
    adapter: the adapter group (what a task adapts).
    seed: adapters (and an untrained base) draw from `key(seed)`.

  Raises:
    FileNotFoundError: `init_from` names no directory (with what to do).
  """
  fields = dataclasses.asdict(model)
  if init_from:
    if not os.path.isdir(init_from):
      raise FileNotFoundError(
          f"no model checkpoint at {init_from}: train one first (python -m "
          "launch.pretrain --config=configs/pretrain.py:<preset> and point "
          "init_from at its exported model), or run the shipped one "
          "(--config.init_from=checkpoints/tiny with the tiny model)")
    stored = ckpt.load_weights_config(init_from)["model"]
    names = {f.name for f in dataclasses.fields(model_lib.ModelConfig)}
    fields.update({k: v for k, v in stored.items()
                   if k in names and k != "dtype"})
  net = model_lib.make_model(fields, adapter, jax.random.key(seed))
  graphdef, template, base = lora.split(net)
  if init_from:
    if adapter.mode == "full":
      template = ckpt.load_weights(init_from, template)
    else:
      base = ckpt.load_weights(init_from, base)
  else:
    logging.warning("init_from is empty: this run uses an UNTRAINED base "
                    "model; expect 0%% accuracy")
  return Weights(graphdef, template, base), net.config


def place(weights: Weights, mesh) -> Weights:
  """`weights` with template and base copied onto every device of the
  mesh. Restored weights sit on one device, which a multi-device program
  refuses (the 'full' mode's template is every task's starting point)."""
  return weights._replace(template=sharding.replicate(weights.template, mesh),
                          base=sharding.replicate(weights.base, mesh))


def count_base(weights: Weights, adapter: model_lib.AdapterConfig) -> int:
  """Parameters of the base model (all of them in 'full' mode)."""
  return model_lib.count_params(weights.template if adapter.mode == "full"
                                else weights.base)
