"""The TTT protocols (ttt.protocol: per_task, shared, joint) and the
'full+prefix' adapter mode (ttt.adapt, ttt.inner_loop, ttt.lora)."""

import dataclasses
import json
import os
import shutil
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ttt import data, inner_loop, lora, pipeline, sharding
from ttt import job as job_lib
from ttt import model as model_lib
from ttt import weights as weights_lib
from ttt import workdir as workdir_lib
from ttt.adapt import run_wide


def _config(protocol="joint", mode="lora+prefix", **run):
  """pipeline_test's tiny job (untrained 1-layer model), one transform."""
  from conftest import tiny_pipeline_config as pipeline_config

  c = pipeline_config(**run)
  c.views.transforms = ("transpose",)
  c.ttt.protocol = protocol
  c.adapter.mode = mode
  c.adapter.prefix_len = 2
  return c


def _stages(c):
  from conftest import build_stages

  return build_stages(c)


def _adapters(stages, plan):
  out = []
  for chunk in plan.chunks:
    adapters, m = stages.adapt.train(stages.adapt.build(plan, chunk))
    out.append((jax.tree.map(np.asarray, sharding.gather(adapters)), m))
  return out


def test_joint_adaptation_resumes_where_it_was_killed(tmp_path):
  """Killed after its first segment (the state saved), the adaptation
  resumes at that step and ends with the uninterrupted run's adapters;
  each task gets its own prefix and the one shared LoRA."""
  c = _config(num_tasks=3, chunk_size=2)
  plan, stages = _stages(c)  # (one stage: its programs compile once)
  stages.adapt.prepare(plan, str(tmp_path / "whole"))
  want = _adapters(stages, plan)

  stages.adapt.prepare(plan, str(tmp_path / "killed"), stop_after=1)
  path = str(tmp_path / "killed" / run_wide.STATE_FILE)
  with np.load(path) as z:
    meta = json.loads(str(z["meta"]))
  assert meta["step"] == c.ttt.steps < meta["total"] == 3 * c.ttt.steps
  assert meta["batch"] == c.ttt.batch_size
  with pytest.raises(RuntimeError, match="prepare"):
    stages.adapt.train(stages.adapt.build(plan, plan.chunks[0]))
  stages.adapt.prepare(plan, str(tmp_path / "killed"))
  got = _adapters(stages, plan)
  for (a, ma), (b, mb) in zip(want, got, strict=True):
    jax.tree.map(np.testing.assert_array_equal, a, b)
    assert ma == mb
  (first, _), _ = want
  prefix, rest = lora.split_prefix(first)
  p = jax.tree.leaves(prefix)[0]  # [T, P, d]: one prefix per task slot
  assert not np.array_equal(p[0], p[1])
  # the shared part is the same in every slot (and trained: B != 0)
  for x in jax.tree.leaves(rest):
    np.testing.assert_array_equal(x[0], x[1])
  assert any(np.abs(x).max() > 0 for path_, x in
             jax.tree_util.tree_flatten_with_path(rest)[0]
             if "lora_b" in jax.tree_util.keystr(path_))
  # a saved state of another adaptation is named, never reused
  with np.load(path) as z:
    like = [z[f"leaf{i}"] for i in range(len(z.files) - 1)]
  with pytest.raises(ValueError, match="another run"):
    run_wide._load(path, like, dict(meta, total=meta["total"] + 1))  # noqa: SLF001
  with pytest.raises(ValueError, match="another run"):
    run_wide._load(path, [like[0][None], *like[1:]], {})  # noqa: SLF001


def test_run_wide_segment_trains_each_row_under_its_task_prefix():
  """The joint loss is the token mean over rows, each under its own task's
  prefix; a task with no row in the step keeps its prefix (no weight
  decay), the shared LoRA moves."""
  model_cfg = dict(num_layers=1, d_model=32, num_heads=2, mlp_dim=64,
                   vocab_size=16, dtype="float32")
  adapter_cfg = dict(mode="lora+prefix", rank=2, prefix_len=2)
  cfg = types.SimpleNamespace(
      model=model_cfg, adapter=adapter_cfg,
      ttt=inner_loop.TTTConfig(steps=1, batch_size=2, lr=1e-2,
                               weight_decay=0.0, warmup_frac=0.0))
  graphdef, adapter, base = lora.split(model_lib.make_model(
      model_cfg, adapter_cfg, jax.random.key(0)))
  # three task embeddings; B != 0 so the LoRA is live
  state = jax.tree_util.tree_map_with_path(
      lambda p, x: (jnp.stack([x, x + 0.5, x - 0.5])
                    if inner_loop.task_leaf(p) else x + 0.01), adapter)
  rng = np.random.default_rng(0)
  mask = np.ones((2, 10), np.int32)
  mask[1, 7:] = 0  # rows of different target counts: a token mean
  rows = data.TTTDataset(
      tokens=rng.integers(0, 12, (2, 10)).astype(np.int32), mask=mask,
      positions=np.tile(np.arange(10, dtype=np.int32), (2, 1)),
      coords=np.zeros((2, 10, 3), np.int32), valid=np.ones(2, bool),
      segments=np.ones((2, 10), np.int32))
  task = np.array([1, 2], np.int32)  # the rows of two tasks, one batch
  fn, opt_init = inner_loop.make_run_wide_segment(
      cfg, graphdef, total_steps=1, segment=1, per_task=inner_loop.task_leaf)
  batches = (jax.tree.map(lambda x: x[None], rows), task[None])
  new, _, ok, m = fn(base, jax.tree.map(jnp.copy, state), opt_init(state),
                     jnp.bool_(True), batches, jnp.int32(0))  # (donated)
  # the loss by hand: each row alone under its task's adapter, token mean
  total = count = 0.0
  for r, t in enumerate(task):
    one = lora.merge(graphdef, inner_loop.pick_task(state, int(t)), base)
    ll, w = model_lib.target_logprobs(
        one, jax.tree.map(lambda x, r=r: x[r:r + 1], rows))
    total, count = total + (ll * w).sum(), count + w.sum()
  np.testing.assert_allclose(m["loss"][0], -total / count, rtol=1e-5)
  assert bool(ok)
  p_old = jax.tree.leaves(lora.split_prefix(state)[0])[0]
  p_new = jax.tree.leaves(lora.split_prefix(new)[0])[0]
  np.testing.assert_array_equal(p_new[0], p_old[0])  # task 0: no row
  assert not np.allclose(p_new[1], p_old[1])
  assert not np.allclose(p_new[2], p_old[2])
  moved = [not np.allclose(a, b) for a, b in zip(
      jax.tree.leaves(lora.split_prefix(new)[1]),
      jax.tree.leaves(lora.split_prefix(state)[1]), strict=True)]
  assert any(moved)


def test_full_prefix_mode_copies_weights_and_draws_a_fresh_prefix():
  """'full+prefix': every task starts from the base weights and its own
  fresh prefix (per task index, never the checkpoint's: it has none)."""
  from configs import arc_ttt

  c = _config("per_task", "full+prefix")
  job = job_lib.parse(c)
  weights, model_cfg = weights_lib.load(arc_ttt.get_config().init_from,
                                        job.model, job.adapter, 0)
  c.model.update(dataclasses.asdict(model_cfg))  # the checkpoint's shape
  init = lora.make_init(c, jax.random.key(1))
  out = jax.jit(init)(weights.template, jnp.array([3, 4, 3], jnp.int32))
  prefix, rest = lora.split_prefix(out)
  p = jax.tree.leaves(prefix)[0]
  assert p.shape[:2] == (3, 2)
  np.testing.assert_array_equal(p[0], p[2])  # keyed by the task index
  assert not np.array_equal(p[0], p[1])
  for x, w in zip(jax.tree.leaves(rest),
                  jax.tree.leaves(lora.split_prefix(weights.template)[1]),
                  strict=True):
    np.testing.assert_array_equal(x[1], w)


def test_joint_needs_a_task_embedding():
  with pytest.raises(ValueError, match="prefix adapter mode"):
    job_lib.parse(_config("joint", "lora"))
  with pytest.raises(ValueError, match="ttt.protocol must be one of"):
    job_lib.parse(_config("jointly", "lora+prefix"))


def test_joint_full_prefix_runs_the_main_job_and_says_so(tmp_path):
  """VARC's recipe jointly: every weight and a task token, one adaptation
  over both tasks (the shared protocol's main job: pipeline_test's
  ablation test)."""
  c = _config("joint", "full+prefix", num_tasks=2, chunk_size=2)
  c.ttt.run_wide_batch = 3  # the rows of 2 x 2 steps of 2: 3 steps of 3
  s = pipeline.run(c, str(tmp_path / "run"))
  assert s["tasks"] == 2 and s["ttt"]["protocol"] == "joint"
  assert s["ttt"]["adapter_mode"] == "full+prefix"
  res = json.loads((tmp_path / "run" / "results.json").read_text())
  ttt = [t["ttt"] for t in res["tasks"]]
  assert all(t["rows"] > 0 and np.isfinite(t["final_loss"]) for t in ttt)
  # one adaptation: the tasks' final loss is the saved state's (below)
  report = (tmp_path / "run" / "report.md").read_text()
  assert "Protocol joint: one adaptation over the demonstrations of all " \
         "the run's test tasks at once" in report
  state, = (tmp_path / "run" / "protocol").glob(f"*/{run_wide.STATE_FILE}")
  assert s["timings_s"]["ttt"] > 0 and s["padded_share"]["ttt"] is not None
  with np.load(state) as z:
    meta = json.loads(str(z["meta"]))
  assert (meta["step"], meta["total"], meta["batch"]) == (3, 3, 3)
  assert len(meta["losses"]) == 3  # segments dividing the 3 steps: 1
  assert [t["final_loss"] for t in ttt] == [meta["final_loss"]] * 2
  # another config's run in the workdir (one killed before any chunk has
  # no fingerprint check) never resumes this state, and keeps it (it was
  # deleted before); the state records its config's digest, so a copy in
  # another config's folder is refused, not resumed
  wd = types.SimpleNamespace(file=lambda n: str(tmp_path / "run" / n))

  def state_dir(config):
    return workdir_lib.state_dir(wd, job_lib.fingerprint(
        job_lib.parse(config)))

  assert state_dir(c) == str(state.parent)
  assert meta["config"] == state.parent.name
  c.ttt.lr = c.ttt.lr / 2
  other = state_dir(c)
  assert other != str(state.parent) and state.exists()
  os.makedirs(other)
  shutil.copy(state, other)
  c.run.overwrite = True
  with pytest.raises(ValueError, match="of another run.*'config'"):
    pipeline.run(c, str(tmp_path / "run"))
  assert state.exists()


def test_workdirs_made_before_the_protocol_field_still_resume(tmp_path):
  """A per_task run's fingerprint is what it was before `ttt.protocol`
  (and with `ttt.shared_adapter` False) existed; another protocol is not."""
  from ttt import workdir as workdir_lib

  job = job_lib.parse(_config("per_task", "lora"))
  now = job_lib.fingerprint(job)
  assert "ttt.protocol" not in now
  old = dict(now, **{"ttt.shared_adapter": False})
  (tmp_path / "chunks").mkdir()
  (tmp_path / "chunks" / "00000.json").write_text("{}")
  (tmp_path / "fingerprint.json").write_text(json.dumps(old))
  workdir_lib.open_workdir(str(tmp_path), now, False, "{}",
                           job_lib.NEUTRAL).close()
  joint = job_lib.fingerprint(job_lib.parse(_config("joint")))
  assert joint["ttt.protocol"] == "joint"
  with pytest.raises(workdir_lib.WorkdirError, match="ttt.protocol"):
    workdir_lib.open_workdir(str(tmp_path), joint, False, "{}",
                             job_lib.NEUTRAL)


def test_every_protocol_trains_with_every_adapter_mode_it_accepts(tmp_path):
  """`adapt.PROTOCOLS` x `ADAPTER_MODES`: each pair the config accepts
  builds its stage from the one face, prepares, trains a chunk (finite
  adapters shaped as the init program's, rows counted) and lowers its
  programs on `inputs`; each pair it refuses is a task embedding without
  a prefix mode."""
  from conftest import build_stages

  from ttt import adapt

  ran = []
  for name, entry in adapt.PROTOCOLS.items():
    for mode in model_lib.ADAPTER_MODES:
      c = _config(name, mode, num_tasks=2, chunk_size=2)
      c.ttt.steps = 1
      try:
        job_lib.parse(c)
      except ValueError as e:
        assert entry.task_embedding and "prefix" not in mode, (name, mode)
        assert "prefix adapter mode" in str(e)
        continue
      plan, stages = build_stages(c)  # (programs compile when called:
      stage = stages.adapt  # only the TTT stage's are)
      stage.prepare(plan, str(tmp_path / name / mode))
      cd = stage.build(plan, plan.chunks[0])
      adapters, m = stage.train(cd)
      ins = stage.inputs(plan.longest[0])
      assert set(ins) <= set(stage.programs), (name, mode)
      fresh = stage.programs["init"](*ins["init"])
      assert (jax.tree.structure(adapters) == jax.tree.structure(fresh)
              and all(a.shape == b.shape for a, b in zip(
                  jax.tree.leaves(adapters), jax.tree.leaves(fresh),
                  strict=True))), (name, mode)
      assert all(np.isfinite(np.asarray(x)).all()
                 for x in jax.tree.leaves(adapters)), (name, mode)
      assert all(r > 0 for r in m["rows"]) and not any(m["nonfinite"])
      assert all(np.isfinite(x) for x in m["final_loss"]), (name, mode)
      for p, args in ins.items():
        stage.programs[p].lower(*args)  # the memory plan's lowering
      ran.append((name, mode))
  assert len(ran) == 13  # per_task, shared: 5 modes each; joint: 3


def _make_fresh(*, ttt, adapter, model, data_cfg, seed, length_bucket,
                weights, mesh, caps, codec_=None):
  """A protocol written for the next test: every task decodes with its
  fresh (initial) adapter."""
  del data_cfg, length_bucket, codec_
  from ttt import adapt
  from ttt.adapt import common

  init = jax.jit(lora.make_init(
      types.SimpleNamespace(model=model, adapter=adapter, ttt=ttt),
      jax.random.fold_in(jax.random.key(seed), 1)),
      out_shardings=sharding.task_sharding(mesh))
  params = weights.template if adapter.tunes_all else None

  def build(plan, chunk):
    slots, index, keys = common.slot_index(plan, chunk, caps.tasks, seed)
    return adapt.ChunkData(slots, index, keys, None,
                           np.zeros(caps.tasks, np.int32))

  def train(cd):
    return (init(params, sharding.shard_tasks(cd.task_index, mesh)),
            common.untrained(len(cd.slots)))

  return adapt.Adapt(
      build=build, train=train,
      tokens=lambda cd: dict(ttt_real=0.0, ttt_computed=0.0),
      programs={"init": init},
      inputs=lambda length: {"init": (params, sharding.shard_tasks(
          np.arange(caps.tasks, dtype=np.int32), mesh))})


def test_a_protocol_registered_here_runs_the_main_job(tmp_path, monkeypatch):
  """A new protocol is one `Protocol` in `adapt.PROTOCOLS` (no other file
  touched): the config accepts it, the main job runs it, and its answers
  are those of the same adapters reached another way (per_task, TTT
  off)."""
  from ttt import adapt

  monkeypatch.setitem(adapt.PROTOCOLS, "fresh", adapt.Protocol(_make_fresh))
  c = _config("fresh", "lora", num_tasks=2, chunk_size=2)
  s = pipeline.run(c, str(tmp_path / "fresh"))
  assert s["tasks"] == 2 and s["ttt"]["protocol"] == "fresh"
  c = _config("per_task", "lora", num_tasks=2, chunk_size=2)
  c.ttt.enabled = False
  pipeline.run(c, str(tmp_path / "off"))
  got, want = ((tmp_path / d / "submission.json").read_text()
               for d in ("fresh", "off"))
  assert got == want
