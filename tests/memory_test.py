"""The main job's memory: per-stage peaks, the budget, chunk sizes from
XLA's memory analysis, and the up-front refusal (ttt.metrics, ttt.plan)."""

import collections
import dataclasses
import os

import numpy as np
import pytest

from ttt import errors, pipeline, sharding
from ttt import job as job_lib
from ttt import memory as memory_lib
from ttt import plan as plan_lib
from ttt import workdir as workdir_lib


def _config(**run):
  """The pipeline tests' tiny job, one transform."""
  from conftest import tiny_pipeline_config

  c = tiny_pipeline_config(**run)
  c.views.transforms = ("transpose",)
  return c


def test_meter_gives_each_stage_its_own_peak():
  """Each stage its own peak (a sampling thread), and the process's own
  high-water mark -- what `/usr/bin/time -v` reports -- is never reset (it
  was, through /proc/self/clear_refs: the tool then saw the last stage's
  peak only)."""
  import time

  meter = memory_lib.MemoryMeter()
  meter.tick("before")
  big = np.ones(256 * 2**20 // 8)  # 256 MiB, touched, freed within the stage
  time.sleep(0.2)  # (held for 20 sampling intervals)
  del big
  meter.tick("stage")
  meter.tick("after")
  assert meter.stages["stage"] - meter.stages["before"] > 240 / 1024
  assert meter.stages["stage"] - meter.stages["after"] > 200 / 1024
  # the kernel's mark still holds the stage's peak after the ticks
  peak = memory_lib.peak_rss_bytes()
  assert peak / memory_lib.GB >= meter.stages["stage"] - 0.01
  assert 0 < memory_lib.rss_bytes() <= peak * 1.01 + 2**24


def test_budget_as_given_or_what_the_machine_has():
  assert memory_lib.memory_budget(3.5) == (3.5, "run.memory_gb")
  gb, source = memory_lib.memory_budget(0.0)
  assert 0 < gb < float("inf") and source  # this Linux machine's memory
  for bad in (-1.0, float("nan"), float("inf")):
    with pytest.raises(ValueError, match="run.memory_gb"):
      job_lib.parse(_config(memory_gb=bad))
  # the budget sets chunk sizes only: not part of what a resume must match
  a = job_lib.fingerprint(job_lib.parse(_config(memory_gb=2.0)))
  assert a == job_lib.fingerprint(job_lib.parse(_config()))


def _plan_and_replan(chunk_size, num_tasks, **run):
  job = job_lib.parse(_config(num_tasks=num_tasks, chunk_size=chunk_size,
                              **run))
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
  monkeypatch.setattr(memory_lib, "_resident", lambda: 1.0)
  monkeypatch.setattr(memory_lib, "stage_memory", lambda st, p, n: {
      "adapt.train": 0.01 * p.caps.tasks})
  devices = len(__import__("jax").local_devices()) * memory_lib.SLACK
  plan, replan, mesh_size = _plan_and_replan(chunk_size=20, num_tasks=40)
  for budget in (1.0 + 0.01 * devices * 8, 1.0 + 0.01 * devices * 12,
                 1.0 + 0.01 * devices * 16,
                 100.0):
    p, _, mem = memory_lib.fit_memory(plan, lambda p: None, replan,
                                    (budget, "test"), 1024, 20, mesh_size)
    want = max(s for s in range(1, 21) if 1.0 + 0.01 * devices *
               sharding.padded_count(s, mesh_size) <= budget + 1e-9)
    assert mem.chunk_size == want == max(len(c) for c in p.chunks)
    assert mem.need <= budget + 1e-9
    assert all(len(c) <= want for c in p.chunks)
  assert "fits" in mem.rule  # 100 GiB: the configured size


def test_refuses_up_front_naming_the_task(monkeypatch):
  monkeypatch.setattr(memory_lib, "_resident", lambda: 1.0)
  monkeypatch.setattr(memory_lib, "stage_memory", lambda st, p, n: {
      "decode.decode": 0.5 + 0.01 * p.caps.queries})
  plan, replan, mesh_size = _plan_and_replan(chunk_size=4, num_tasks=6)
  task = plan.tasks[plan.longest[2]].id
  with pytest.raises(errors.InputError, match=f"task {task}.*needs"):
    memory_lib.fit_memory(plan, lambda p: None, replan, (1.2, "test"), 1024,
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


def _bucket_plan(chunk_size=24, num_tasks=40):
  """A plan without fixed shapes, chunks cut in length order."""
  return _plan_and_replan(chunk_size, num_tasks, fixed_shapes=False,
                          chunk_order="length", length_bucket=256)


def test_chunks_sized_per_length_bucket(monkeypatch):
  """A program needing 0.001 GiB per task slot, device and 64 tokens of
  TTT row (+1 resident): each chunk is the largest that fits at its own
  shapes, cut in length order; each (slots, shape) is analysed once and
  one set of stages is built per slot count (the run's compiles: one per
  bucket and slot count); a resumed run's stored chunks are kept."""
  devices = len(__import__("jax").local_devices()) * memory_lib.SLACK
  analysed, builds = collections.Counter(), collections.Counter()

  def program_gb(slots, shape):
    return 0.001 * slots * shape[0] / 64

  def fake_memory(st, p, n, shape=None):
    shape = shape or p.longest[:2]
    analysed[(p.caps.tasks, p.caps.queries, shape)] += 1
    return {"adapt.train": program_gb(p.caps.tasks, shape)}

  def build(p):
    builds[p.caps] += 1
    return p.caps

  monkeypatch.setattr(memory_lib, "_resident", lambda: 1.0)
  monkeypatch.setattr(memory_lib, "stage_memory", fake_memory)
  plan, replan, mesh_size = _bucket_plan()
  assert len({s for s in plan.shapes.values()}) > 1  # lengths do differ
  long_ttt = plan.longest[0]

  def need(size, shape):
    return 1.0 + devices * program_gb(
        sharding.padded_count(size, mesh_size), shape)

  budget = need(mesh_size, plan.longest[:2]) + 1e-6  # 1 slot/device, longest
  p, stages, mem = memory_lib.fit_memory(plan, build, replan,
                                       (budget, "test"), 1024, 24, mesh_size)
  assert [n for c in p.chunks for n in c] == list(plan.order)
  for c, chunk in enumerate(p.chunks):
    shape = p.chunk_shape(chunk)
    assert need(len(chunk), shape) <= budget  # fits at its own shapes
    assert p.at(c).caps.tasks == sharding.padded_count(len(chunk), mesh_size)
    assert stages[p.at(c).caps] == p.at(c).caps  # its own stages
    if c + 1 < len(p.chunks):  # the largest: the next task does not fit
      more = chunk + [p.chunks[c + 1][0]]
      assert len(more) > 24 or need(len(more), p.chunk_shape(more)) > budget
  sizes = {len(c) for c in p.chunks[:-1]}
  assert len(sizes) > 1 and min(sizes) == mesh_size  # short ones larger
  assert mem.per_bucket[memory_lib.bucket_name(plan.longest[:2])] == mesh_size
  assert max(mem.per_bucket.values()) > mesh_size and mem.need <= budget
  assert long_ttt > min(s for s, _ in plan.shapes.values())
  assert max(analysed.values()) == 1  # no shapes analysed twice
  assert max(builds.values()) == 1  # one set of stages per capacities
  assert len({cc.tasks for cc in builds}) == len(builds)  # per slot count
  # a resumed run at the same budget: its stored chunks as they are
  stored = [[n] for n in plan.order]  # (not what this budget cuts)
  again, _, _ = memory_lib.fit_memory(plan, build, replan, (budget, "test"),
                                    1024, 24, mesh_size, stored)
  assert again.chunks == stored
  # fixed shapes: one size for the run, as before
  fixed = plan._replace(caps=plan.caps._replace(ttt_len=long_ttt,
                                                prompt_len=plan.longest[1]))
  one, _, m1 = memory_lib.fit_memory(fixed, build, replan, (budget, "test"),
                                   1024, 24, mesh_size)
  assert not m1.per_bucket and not one.chunk_caps


def test_resume_plans_the_same_chunks(tmp_path):
  """The chunk plan is kept with the chunks: read back at the same budget,
  refused (planned again) at another; a chunk run on other slots is
  redone."""
  wd = workdir_lib.open_workdir(str(tmp_path), {"a": 1}, False, "{}")
  ids = ["t0", "t1", "t2"]
  workdir_lib.write_plan(wd, (4.0, "run.memory_gb"), [["t0", "t1"], ["t2"]])
  assert workdir_lib.stored_plan(wd, (4.0, "run.memory_gb"), ids) == [
      [0, 1], [2]]
  assert workdir_lib.stored_plan(wd, (3.0, "run.memory_gb"), ids) is None
  assert workdir_lib.stored_plan(wd, (4.0, "run.memory_gb"), ids[:2]) is None
  workdir_lib.write_chunk(wd, 0, dict(records=[{"id": "t0"}, {"id": "t1"}],
                                      slots=8))
  assert workdir_lib.stored_chunk(wd, 0, ["t0", "t1"], 8) is not None
  assert workdir_lib.stored_chunk(wd, 0, ["t0", "t1"], 16) is None
  wd.close()
