"""Tests for configs.common.parse_arg and the config groups' validation."""

import pytest

from configs import common


def test_parse_arg():
  c = common.parse_arg(None, preset="base", steps=250, lr=1e-4, fast=False)
  assert c.preset == "base" and c.steps == 250 and c.fast is False
  c = common.parse_arg("tiny", preset="base", fast=False)
  assert c.preset == "tiny"
  c = common.parse_arg("fast, steps=8,lr=0.5", preset="base", steps=250,
                       lr=1e-4, fast=False)
  assert c.fast is True and c.steps == 8 and c.lr == 0.5
  assert common.parse_arg("fast=no", fast=True).fast is False
  with pytest.raises(ValueError, match="unknown config arg 'step'"):
    common.parse_arg("step=3", steps=1)
  with pytest.raises(ValueError, match="is not of type int"):
    common.parse_arg("steps=x", steps=1)
  with pytest.raises(ValueError, match="not a boolean"):
    common.parse_arg("fast=maybe", fast=True)
  with pytest.raises(ValueError, match="unknown config arg 'tiny'"):
    common.parse_arg("tiny", steps=1)


NAN, INF = float("nan"), float("inf")


def _groups():
  from ttt import data, inner_loop
  from ttt import model as model_lib
  from ttt.decoders import common as decode_common

  return dict(decode=decode_common.DecodeConfig,
              adapter=model_lib.AdapterConfig, model=model_lib.ModelConfig,
              ttt=inner_loop.TTTConfig, data=data.DataConfig)


@pytest.mark.parametrize("group,field,value", [
    ("decode", "temperature", NAN), ("decode", "temperature", INF),
    ("decode", "leaf_loop", NAN), ("decode", "min_prob", NAN),
    ("adapter", "alpha", NAN), ("adapter", "alpha", INF),
    ("adapter", "alpha", 0.0),
    ("model", "dtype", "float17"), ("model", "dtype", "int8"),
    ("model", "rope_base", NAN), ("model", "norm_eps", NAN),
    ("model", "norm_eps", 0.0),
    ("ttt", "lr", NAN), ("ttt", "lr", INF), ("ttt", "weight_decay", NAN),
    ("ttt", "weight_decay", -0.1), ("ttt", "clip_norm", NAN),
    ("ttt", "clip_norm", INF), ("ttt", "b1", NAN), ("ttt", "b1", 1.0),
    ("ttt", "b2", NAN), ("ttt", "b2", -0.5), ("ttt", "warmup_frac", NAN),
    ("data", "oversample", NAN), ("data", "oversample", 0.5),
])
def test_non_finite_and_unknown_values_are_named(group, field, value):
  """Each bad value is refused by its group's `validate()`, the message
  naming the field and the value (NaN passes every `<`, so each check
  must be written to fail on it)."""
  from ttt import configlib

  cls = _groups()[group]
  with pytest.raises(ValueError, match=rf"{field} must .*got {value!r}"):
    configlib.from_config(cls, {field: value})


def test_the_defaults_and_the_named_dtypes_validate():
  from ttt import configlib

  for cls in _groups().values():
    configlib.from_config(cls, {})
  model = _groups()["model"]
  for name in ("auto", "float32", "bfloat16", "float16"):
    configlib.from_config(model, dict(dtype=name))
