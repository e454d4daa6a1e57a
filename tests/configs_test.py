"""Tests for configs.common.parse_arg."""

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
