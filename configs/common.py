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
