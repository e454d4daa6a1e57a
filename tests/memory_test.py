"""The main job's memory: per-stage peaks, the budget, chunk sizes from
XLA's memory analysis, and the up-front refusal (ttt.metrics, ttt.plan)."""

import dataclasses
import os

import numpy as np
import pytest

from ttt import errors, metrics, pipeline, sharding
from ttt import job as job_lib
from ttt import plan as plan_lib


def _config(**run):
  """pipeline_test's tiny job, one transform."""
  from pipeline_test import _config as pipeline_config

  c = pipeline_config(**run)
  c.views.transforms = ("transpose",)
  return c


def test_meter_gives_each_stage_its_own_peak():
  meter = metrics.MemoryMeter()
  meter.tick("before")
  big = np.ones(64 * 2**20 // 8)  # 64 MiB, touched, freed within the stage
  del big
  meter.tick("stage")
  meter.tick("after")
  assert meter.stages["stage"] - meter.stages["before"] > 60 / 1024
  if meter.exact:  # Linux: the high-water mark is reset at each tick
    assert meter.stages["stage"] - meter.stages["after"] > 48 / 1024
  assert 0 < metrics.rss_bytes() <= metrics.peak_rss_bytes() * 1.01 + 2**24


def test_budget_as_given_or_what_the_machine_has():
  assert plan_lib.memory_budget(3.5) == (3.5, "run.memory_gb")
  gb, source = plan_lib.memory_budget(0.0)
  assert 0 < gb < float("inf") and source  # this Linux machine's memory
  for bad in (-1.0, float("nan"), float("inf")):
    with pytest.raises(ValueError, match="run.memory_gb"):
      job_lib.parse(_config(memory_gb=bad))
  # the budget sets chunk sizes only: not part of what a resume must match
  a = job_lib.fingerprint(job_lib.parse(_config(memory_gb=2.0)))
  assert a == job_lib.fingerprint(job_lib.parse(_config()))


def _plan_and_replan(chunk_size, num_tasks):
  job = job_lib.parse(_config(num_tasks=num_tasks, chunk_size=chunk_size))
  tasks, _ = plan_lib.load_tasks(job.run)
  mesh = sharding.make_mesh()

  def replan(size):
    return plan_lib.plan_run(
        tasks, mesh, run=dataclasses.replace(job.run, chunk_size=size),
        data_cfg=job.data, views_cfg=job.views, decode=job.decode)

  return replan(chunk_size), replan, mesh.size


def test_chunk_size_is_the_largest_that_fits(monkeypatch):
  """A program needing 0.01 GiB per task slot and device (+1 resident): the
  plan takes the largest chunk whose padded slots fit, and says why."""
  monkeypatch.setattr(plan_lib, "_resident", lambda: 1.0)
  monkeypatch.setattr(plan_lib, "stage_memory", lambda st, p, n: {
      "adapt.train": 0.01 * p.caps.tasks})
  devices = len(__import__("jax").local_devices()) * plan_lib.SLACK
  plan, replan, mesh_size = _plan_and_replan(chunk_size=20, num_tasks=40)
  for budget in (1.0 + 0.01 * devices * 8, 1.0 + 0.01 * devices * 12,
                 1.0 + 0.01 * devices * 16,
                 100.0):
    p, _, mem = plan_lib.fit_memory(plan, lambda p: None, replan,
                                    (budget, "test"), 1024, 20, mesh_size)
    want = max(s for s in range(1, 21) if 1.0 + 0.01 * devices *
               sharding.padded_count(s, mesh_size) <= budget + 1e-9)
    assert mem.chunk_size == want == max(len(c) for c in p.chunks)
    assert mem.need <= budget + 1e-9
    assert all(len(c) <= want for c in p.chunks)
  assert "fits" in mem.rule  # 100 GiB: the configured size


def test_refuses_up_front_naming_the_task(monkeypatch):
  monkeypatch.setattr(plan_lib, "_resident", lambda: 1.0)
  monkeypatch.setattr(plan_lib, "stage_memory", lambda st, p, n: {
      "decode.decode": 0.5 + 0.01 * p.caps.queries})
  plan, replan, mesh_size = _plan_and_replan(chunk_size=4, num_tasks=6)
  task = plan.tasks[plan.longest[2]].id
  with pytest.raises(errors.InputError, match=f"task {task}.*needs"):
    plan_lib.fit_memory(plan, lambda p: None, replan, (1.2, "test"), 1024,
                        4, mesh_size)


def test_run_refuses_before_any_chunk(tmp_path):
  """The real programs' analysis: 1 MiB cannot hold one task; nothing is
  written but the workdir's config (no chunk, no results)."""
  wd = str(tmp_path / "run")
  c = _config(memory_gb=2**-10, num_tasks=2)
  c.ttt.enabled = False  # (the greedy decoder alone: a faster test)
  c.decode.method = "greedy"
  with pytest.raises(errors.InputError, match=r"not even one task.*GiB"):
    pipeline.run(c, wd)
  assert not os.listdir(os.path.join(wd, "chunks"))
  assert not os.path.exists(os.path.join(wd, "results.json"))
