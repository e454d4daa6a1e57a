"""Typed views of config groups: frozen dataclasses built from ConfigDicts.

Each module that takes a config group (`config.data`, `config.model`, ...)
declares a frozen dataclass with commented defaults; `from_config` builds it
from None, an instance, a mapping or an `ml_collections.ConfigDict`, and
rejects unknown fields by name so a typo in `--config.x.y=...` fails loudly.

The dataclasses are the ONE source of defaults: config files build their
groups with `group(cls, **overrides)`, naming only what a preset changes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")


def from_config(cls: type[T], config: Any = None) -> T:
  """Builds dataclass `cls` from `config` (unknown keys raise ValueError).

  Lists become tuples (dataclasses here are frozen and hashable); the
  result's `validate()` runs when it has one.
  """
  if config is None:
    out = cls()
  elif isinstance(config, cls):
    out = config
  else:
    if not isinstance(config, Mapping):
      config = (config.to_dict() if hasattr(config, "to_dict")
                else vars(config))
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = set(config) - fields
    if unknown:
      raise ValueError(f"unknown {cls.__name__} fields {sorted(unknown)}; "
                       f"known: {sorted(fields)}")
    kw = {k: tuple(v) if isinstance(v, list) else v
          for k, v in config.items()}
    out = cls(**kw)
  if hasattr(out, "validate"):
    out.validate()
  return out


def group(cls: type, **overrides: Any):
  """The ConfigDict for dataclass `cls`: every field, at its default unless
  overridden (unknown names raise). Tuples stay tuples (ConfigDicts keep
  them), so `--config.g.field=...` overrides type-check against them."""
  import ml_collections

  out = from_config(cls, overrides)
  return ml_collections.ConfigDict(
      {f.name: getattr(out, f.name) for f in dataclasses.fields(cls)})

