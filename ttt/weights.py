"""Base models: loading one into a named `Weights`, placing it.

`load(init_from, model, adapter, seed) -> (Weights, ModelConfig)` builds
the transformer from

* a checkpoint written by `ttt.ckpt.save_weights` (the project's own);
* a pretrained language model (`ttt.pretrained`): a Hugging Face snapshot
  directory of Llama, Mistral, Qwen2 or Qwen3 architecture, or a GGUF file
  of Llama architecture, cut to the project's 16 tokens (one token per
  cell: the embedding and head rows of '0'-'9', newline, 'I', 'O' and the
  model's BOS / EOS / pad) with 1-D positions;
* nothing (an empty `init_from`): an UNTRAINED model, said loudly.

The stored shape wins over `model`; the compute dtype stays the config's.
`place(weights, mesh)` copies the weights onto every device of a 1-D mesh
(splits the base over a model axis), once per run; `digest(init_from)` is
the base's content hash (what a resumed run must match). Nothing
downstream knows where a base came from.

Host memory. On a 1-D mesh a pretrained base is read whole onto the host
(one tensor at a time; a stacked layer leaf held once), then replicated.
On a `(task, model)` mesh (`load(..., mesh=...)` with
`sharding.model_size(mesh) > 1`) it is never whole on one host:
`pretrained.load_base` gets `sharding.param_shardings` of the abstract
base (and of the 'full' modes' template) and builds each leaf from its
devices' pieces -- safetensors read by slice (peak host memory about one
device's piece of one tensor), GGUF one tensor at a time, read whole,
converted, sliced for the devices, dropped (peak about one tensor) --
plus the pieces in flight; `place` then keeps those arrays where they are
(the bfloat16 cast of the base runs on the devices, per shard). A
project checkpoint (`ttt.ckpt`, orbax) is still restored whole and then
placed: those are the project's own small models.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from absl import logging
from flax import nnx

from ttt import ckpt, configlib, errors, lora, pretrained, sharding
from ttt import model as model_lib


class Weights(NamedTuple):
  """A base model split for TTT.

  Attributes:
    graphdef: the NNX graph definition (`ttt.lora.split`).
    template: one task's fresh adapter (LoRA / prefix factors) or, in
      'full' mode, the loaded weights themselves (every task's start).
    base: the frozen, shared weights (in 'full' mode what is not adapted).
    source: what the base is, in words (for the log and the report; a
      pretrained model's token mapping included).
  """

  graphdef: Any
  template: Any
  base: Any
  source: str = ""


def _check_stored_types(path: str, stored: dict) -> None:
  """InputError naming the checkpoint's `model_config.json` and the field
  when a stored architecture field has another type than the model's
  (`"num_layers": "4"`, a list for a number, ...)."""
  defaults = dataclasses.asdict(model_lib.ModelConfig())
  for k, v in stored.items():
    if k not in defaults:
      continue
    d = defaults[k]
    ok = (isinstance(v, bool) if isinstance(d, bool)
          else isinstance(v, int) and not isinstance(v, bool)
          if isinstance(d, int)
          else isinstance(v, (int, float)) and not isinstance(v, bool)
          if isinstance(d, float)
          else isinstance(v, str) if isinstance(d, str)
          else isinstance(v, (list, tuple)) if isinstance(d, tuple)
          else True)
    if not ok:
      raise errors.InputError(
          f"model checkpoint {path}: {ckpt.CONFIG_FILE} has model.{k} = "
          f"{v!r} ({type(v).__name__}); it must be a "
          f"{type(d).__name__} like the default {d!r}")


def load(init_from: str, model: model_lib.ModelConfig,
         adapter: model_lib.AdapterConfig, seed: int, vocab: str = "cell",
         mesh=None) -> tuple[Weights, model_lib.ModelConfig]:
  """The run's base model and the model config it was built with.

  Args:
    init_from: a directory written by `ttt.ckpt.save_weights`, or '' for
      an untrained model.
    model: the config's model group (the checkpoint's shape wins).
    adapter: the adapter group (what a task adapts).
    seed: adapters (and an untrained base) draw from `key(seed)`.
    vocab: a pretrained LM's vocabulary, the codec's (`ttt.codec.Codec.
      vocab`): 'cell' (cut to the 16 project tokens) or 'full' (every id:
      MARC's text format).
    mesh: the run's mesh, or None. With a model axis a pretrained base
      (and the 'full' modes' template) comes back already split over it
      (`sharding.param_shardings`), read piece by piece (module
      docstring); otherwise (None, a 1-D mesh, a project checkpoint) the
      weights come back unplaced, for `place`.

  Raises:
    FileNotFoundError: `init_from` names no directory (with what to do).
    ttt.errors.InputError: a directory that is neither a Hugging Face
      snapshot nor a ttt-jax checkpoint (saying what each lacks); a
      pretrained model's file that cannot be used (`ttt.pretrained`).
  """
  fields = dataclasses.asdict(model)
  if init_from and pretrained.is_pretrained(init_from):
    return _load_pretrained(init_from, fields, adapter, seed, vocab, mesh)
  if init_from:
    fields = dataclasses.asdict(model_config(init_from, model, vocab))
  net = model_lib.make_model(fields, adapter, jax.random.key(seed))
  graphdef, template, base = lora.split(net)
  if init_from:
    if adapter.tunes_all:  # (a checkpoint holds no task prefix: it stays
      # fresh)
      prefix, rest = lora.split_prefix(template)
      template = lora.merge_prefix(prefix, ckpt.load_weights(init_from, rest))
    else:
      base = ckpt.load_weights(init_from, base)
  else:
    logging.warning("init_from is empty: this run uses an UNTRAINED base "
                    "model; expect 0%% accuracy")
  source = "a ttt-jax checkpoint" if init_from else "UNTRAINED"
  return Weights(graphdef, template, base, source), net.config


def model_config(init_from: str, model: model_lib.ModelConfig,
                 vocab: str = "cell") -> model_lib.ModelConfig:
  """The base's `ModelConfig` without reading its weights: a pretrained
  model's architecture (`ttt.pretrained.model_config`) or a checkpoint's
  stored shape over `model` (how it computes -- the dtype, the attention
  blocks -- stays `model`'s); `model` itself without `init_from`.

  Raises: as `load`.
  """
  if not init_from:
    return model
  fields = dataclasses.asdict(model)
  if pretrained.is_pretrained(init_from):
    fields.update(pretrained.model_config(init_from, vocab))
    return configlib.from_config(model_lib.ModelConfig, fields)
  if not os.path.isdir(init_from):
    raise FileNotFoundError(
        f"no model checkpoint at {init_from}: train one first (python -m "
        "launch.pretrain --config=configs/pretrain.py:<preset> and point "
        "init_from at its exported model), run the shipped one "
        "(--config.init_from=checkpoints/tiny with the tiny model), or "
        "name a Hugging Face snapshot directory or a .gguf file")
  _check_checkpoint_folder(init_from)
  # the checkpoint's shape wins, a field it does not store is the default
  # (not the config's: e.g. an older file has no num_kv_heads, and
  # scan_layers is how its weights are laid out); how it computes (the
  # compute dtype, the attention blocks) stays the config's
  stored = ckpt.load_weights_config(init_from)["model"]
  _check_stored_types(init_from, stored)
  return configlib.from_config(model_lib.ModelConfig, {
      **dataclasses.asdict(model_lib.ModelConfig()),
      **{k: v for k, v in stored.items() if k in fields},
      "dtype": model.dtype, "attention_block": model.attention_block})


def load_placed(init_from: str, model: model_lib.ModelConfig, adapter,
                seed: int, vocab: str, mesh, protocol: str = ""):
  """`load`, placed on `mesh` in its compute dtype and checked finite;
  logs what was loaded.

  Returns:
    (placed `Weights`, the checkpoint's `ModelConfig`, facts for the run's
    summary and report: adapter (its parameters per task and training MB
    per task), untrained (no `init_from`), source (what the base is)).
  """
  weights, model_cfg = load(init_from, model, adapter, seed, vocab, mesh)
  weights = place(weights, mesh, compute_dtype(model_cfg), model_cfg)
  check_finite(weights, init_from)
  per_task = count_adapter(weights)
  logging.info("model: %s, %d base parameters, adapter %s: %d parameters "
               "per task (%.1f MB per task in training: weights, "
               "gradients and AdamW's two moments in float32), protocol "
               "%s", init_from or "UNTRAINED", count_base(weights, adapter),
               adapter.mode, per_task, per_task * 16 / 1e6, protocol)
  # weights, gradients and AdamW's two moments, float32
  facts = dict(adapter=dict(adapter_params_per_task=per_task,
                            adapter_train_mb_per_task=round(
                                per_task * 16 / 1e6, 2)),
               untrained=not init_from, source=weights.source)
  return weights, model_cfg, facts


def _load_pretrained(path: str, fields: dict, adapter, seed: int,
                     vocab: str = "cell", mesh=None):
  """A pretrained LM (cut to the cell vocabulary, or with its full one),
  built without ever holding random base weights: the model is abstract
  until each tensor is read (one at a time) into its place -- on a mesh
  with a model axis straight onto its devices' shards (`load`)."""
  fields.update(pretrained.model_config(path, vocab))
  config = configlib.from_config(model_lib.ModelConfig, fields)
  key = jax.random.key(seed)
  graphdef, template, base = lora.split(nnx.eval_shape(
      lambda: model_lib.make_model(config, adapter, key)))
  split = mesh is not None and sharding.model_size(mesh) > 1

  def read(abstract):
    where = (sharding.param_shardings(abstract, mesh, config) if split
             else None)
    return pretrained.load_base(path, abstract, vocab, shardings=where)

  if adapter.tunes_all:  # the fresh prefix of 'full+prefix' is not read
    prefix, rest = lora.split_prefix(template)
    if adapter.num_prefix:
      prefix = jax.jit(lambda: lora.split_prefix(lora.split(
          model_lib.make_model(config, adapter, key))[1])[0])()
    template = lora.merge_prefix(prefix, read(rest))
  else:  # fresh adapters (jit drops the base's random init)
    template = jax.jit(lambda: lora.split(model_lib.make_model(
        config, adapter, key))[1])()
  base = read(base)
  if vocab == "full":
    source = (f"pretrained {pretrained.format_of(path)} model, its full "
              f"vocabulary ({config.vocab_size} tokens, its own tokenizer)")
    logging.info("base: %s", source)
    return Weights(graphdef, template, base, source), config
  ids = pretrained.token_map(path)
  names = [repr(c) for c in pretrained.CELL_STRINGS] + ["BOS", "EOS", "PAD"]
  pairs = ", ".join(f"{n}={i}" for n, i in zip(names, ids, strict=True))
  source = (f"pretrained {pretrained.format_of(path)} model, vocabulary cut "
            f"to 16 tokens (project token = model id: {pairs})")
  logging.info("base: %s", source)
  return Weights(graphdef, template, base, source), config


def _check_checkpoint_folder(init_from: str) -> None:
  """Refuses a folder that is neither kind of base, saying what each kind
  lacks (a snapshot without config.json is not reported as a broken
  ttt-jax checkpoint)."""
  if not os.path.isfile(os.path.join(init_from, ckpt.CONFIG_FILE)):
    raise errors.InputError(
        f"{init_from} is neither a Hugging Face snapshot "
        f"({pretrained.why_not(init_from)}) nor a ttt-jax checkpoint (no "
        f"{ckpt.CONFIG_FILE})")


def digest(init_from: str) -> str:
  """The base's content hash: 'sha256:...' of a project checkpoint's
  files (`ckpt.digest`) or of a pretrained model's files (read in blocks),
  the path itself when it names nothing, '' for none.

  A pretrained model's files are every file its reader reads
  (`pretrained.source_files`: a snapshot's shards wherever its index puts
  them inside the snapshot) and, as before that, every JSON and weights
  file at the top of a snapshot folder, each hashed with its path relative
  to the folder (so an unchanged flat snapshot keeps its digest).
  """
  if not init_from:
    return ""
  if pretrained.is_pretrained(init_from):
    if os.path.isfile(init_from):
      root, names = os.path.dirname(init_from), [
          os.path.basename(init_from)]
    else:
      root = init_from
      top = [os.path.join(root, n) for n in os.listdir(root)
             if n.endswith((".json", ".safetensors", ".gguf"))
             and os.path.isfile(os.path.join(root, n))]
      names = sorted({os.path.relpath(f, root) for f in
                      top + pretrained.source_files(root)})
    h = hashlib.sha256()
    for name in names:
      h.update(name.encode() + b"\0")
      with open(os.path.join(root, name), "rb") as fh:
        for block in iter(lambda fh=fh: fh.read(1 << 22), b""):
          h.update(block)
    return "sha256:" + h.hexdigest()
  if os.path.isdir(init_from):
    _check_checkpoint_folder(init_from)
    return ckpt.digest(init_from)
  return init_from


def place(weights: Weights, mesh, dtype=None,
          model: model_lib.ModelConfig | None = None) -> Weights:
  """`weights` with template and base placed on the mesh: copied onto
  every device of a 1-D task mesh; on a `(task, model)` mesh split over
  `model` by `ttt.sharding.param_specs` (`model` gives the head and MLP
  counts that must divide). Restored weights sit on one device, which a
  multi-device program refuses (the 'full' mode's template is every
  task's starting point).

  Args:
    weights: the loaded weights (float32).
    mesh: the run's mesh.
    dtype: the compute dtype; when it is 16-bit the frozen base is stored
      in it (half the memory; the model casts every weight to it anyway,
      so results are the same), while the template -- what TTT updates --
      keeps float32 master weights.
    model: the base's config; required on a mesh with a model axis.

  On a mesh with a model axis, leaves that already carry their sharding
  (a pretrained base loaded split by `load(..., mesh=...)`) stay where
  they are: nothing is gathered to the host or moved.
  """
  base = weights.base
  if dtype is not None and jnp.dtype(dtype).itemsize == 2:
    base = jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(
        x.dtype, jnp.floating) else x, base)
  if sharding.model_size(mesh) == 1:
    return weights._replace(
        template=sharding.replicate(weights.template, mesh),
        base=sharding.replicate(base, mesh))
  if model is None:
    raise ValueError("placing a base over a model axis needs its "
                     "ModelConfig")
  return weights._replace(
      template=sharding.place_params(weights.template, mesh, model),
      base=sharding.place_params(base, mesh, model))


def compute_dtype(config: model_lib.ModelConfig):
  """The dtype the model computes in ('auto': float32 on CPU, bfloat16 on
  GPU/TPU)."""
  return model_lib._dtype(config.dtype)  # noqa: SLF001 (the one resolver)


def count_base(weights: Weights, adapter: model_lib.AdapterConfig) -> int:
  """Parameters of the base model (all of them in 'full' mode)."""
  return model_lib.count_params(weights.template if adapter.tunes_all
                                else weights.base)


def count_adapter(weights: Weights) -> int:
  """Parameters adapted per task (one task's adapter: the LoRA / prefix
  factors, or every weight in the full modes)."""
  return model_lib.count_params(weights.template)


def check_finite(weights: Weights, init_from: str) -> None:
  """InputError when a base weight (or a tuned one's starting value) is
  NaN or infinite: the base's logits would not be finite, and every decode
  would find no answer. Names the first such weight and the count."""
  named = [(jax.tree_util.keystr(p), x) for part in (weights.base,
                                                    weights.template)
           for p, x in jax.tree_util.tree_flatten_with_path(part)[0]
           if jnp.issubdtype(x.dtype, jnp.floating)]
  counts = jax.jit(lambda xs: [jnp.sum(~jnp.isfinite(x)) for x in xs])(
      [x for _, x in named])  # (one program for every leaf)
  bad = [(name, int(n)) for (name, _), n in zip(named, counts, strict=True)
         if int(n)]
  if bad:
    raise errors.InputError(
        f"base model {init_from or '(untrained)'}: "
        f"{sum(n for _, n in bad)} weights are not finite (NaN or inf; "
        f"first in {bad[0][0]}), so the base's logits are not finite and "
        "no answer could be decoded; use an intact checkpoint")
