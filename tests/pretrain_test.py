"""Tests for ttt.pretrain, ttt.ckpt, ttt.metrics and launch.pretrain."""

import gzip
import json
import os
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest

from ttt import ckpt, metrics, pretrain, tokens
from ttt import model as M

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(**pre):
  p = dict(steps=4, batch_size=8, max_len=256, lr=1e-3, warmup_steps=1,
           eval_every=2, checkpoint_every=2, log_every=1, heldout_tasks=4,
           prefetch=2)
  p.update(pre)
  return ml_collections.ConfigDict(dict(
      model=dict(num_layers=1, d_model=32, num_heads=2, mlp_dim=64,
                 dtype="float32"),
      pretrain=p))


def _params(workdir):
  """The float32 parameters of the newest checkpoint in `workdir`."""
  cfg = _config()
  c = pretrain.PretrainConfig(**cfg.pretrain)
  from ttt import sharding
  _, state, _ = pretrain.model_and_state(cfg, c, sharding.make_mesh(
      axis=sharding.DATA_AXIS))
  restored, meta = ckpt.Checkpointer(os.path.join(workdir, "checkpoints")
                                     ).restore(state)
  return restored, meta


def test_sampled_sequences_fit_and_are_deterministic():
  cfg = pretrain.PretrainConfig(max_len=300, batch_size=4, heldout_tasks=2)
  sources, heldout = pretrain.load_pool(cfg)
  assert len(heldout) == 2
  held = {t.id for t in heldout}
  assert not any(s.id.split("/")[1] in held for s in sources)
  a = pretrain.make_batch(sources, cfg, step=7)
  b = pretrain.make_batch(sources, cfg, step=7)
  c = pretrain.make_batch(sources, cfg, step=8)
  np.testing.assert_array_equal(a.tokens, b.tokens)
  assert not np.array_equal(a.tokens, c.tokens)
  assert a.tokens.shape == (4, 300)
  assert (a.mask.sum(1) > 0).all()
  assert (a.tokens[:, 0] == tokens.BOS).all()
  # every sequence holds at least one demonstration and a query
  assert ((a.tokens == tokens.INPUT).sum(1) >= 2).all()


def test_resumed_run_equals_uninterrupted_run(tmp_path):
  """Also: the run is killed after step 3, whose checkpoint is corrupt --
  the resume warns, restarts from step 2 and still ends equal to the
  uninterrupted run, with one metrics record per step. (A clean resume is
  tested by tests/multihost_test.py.)"""
  straight = str(tmp_path / "straight")
  pieces = str(tmp_path / "pieces")
  pretrain.train_and_evaluate(_config(), straight)
  first = pretrain.train_and_evaluate(_config(stop_after_steps=3), pieces)
  assert first["stopped_at"] == 3
  assert not os.path.exists(os.path.join(pieces, "model"))
  step3 = os.path.join(pieces, "checkpoints", "3")
  assert os.path.isdir(step3)
  for root, _, files in os.walk(os.path.join(step3, "state")):
    for name in files:  # zero every array file of the newest checkpoint
      with open(os.path.join(root, name), "r+b") as f:
        size = f.seek(0, 2)
        f.seek(0)
        f.write(b"\0" * size)
  last = pretrain.train_and_evaluate(_config(), pieces)
  assert last["stopped_at"] == 4
  a, meta = _params(straight)
  b, _ = _params(pieces)
  assert meta["step"] == 4 and int(a.step) == 4
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6,
                               atol=1e-7)
  records = metrics.read(os.path.join(pieces, "metrics.jsonl"))
  assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4]
  assert any("eval_exact" in r for r in records)
  assert all(np.isfinite(r["loss"]) for r in records if "loss" in r)
  # the exported weights load into a fresh model
  exported = ckpt.load_weights_config(os.path.join(pieces, "model"))
  assert exported["model"]["d_model"] == 32
  assert exported["trained_steps"] == 4


def test_weights_round_trip_in_bf16(tmp_path):
  from flax import nnx

  m = M.make_model(dict(num_layers=1, d_model=32, num_heads=2, mlp_dim=32))
  _, params = nnx.split(m, nnx.Param)
  ckpt.save_weights(str(tmp_path / "w"), params, dict(d_model=32))
  loaded = ckpt.load_weights(str(tmp_path / "w"), params)
  for x, y in zip(jax.tree.leaves(loaded), jax.tree.leaves(params),
                  strict=True):
    assert x.dtype == y.dtype == np.float32
    np.testing.assert_allclose(x, y, rtol=1e-2, atol=1e-2)  # bf16 rounding
  with pytest.raises(FileNotFoundError, match="no model checkpoint"):
    ckpt.load_weights(str(tmp_path / "nothing"), params)


def test_bad_re_arc_files_are_skipped_and_reported(tmp_path):
  good = [{"input": [[1, 2]], "output": [[2, 1]]}] * 3
  bad_example = good + [{"input": [[1, 12]], "output": [[1]]}]
  with gzip.open(tmp_path / "aaaaaaaa.json.gz", "wt") as f:
    json.dump(bad_example, f)
  with open(tmp_path / "bbbbbbbb.json", "w") as f:
    f.write("{not json")
  errors = []
  sources = pretrain.load_re_arc(str(tmp_path), errors=errors)
  assert [s.id for s in sources] == ["re_arc/aaaaaaaa"]
  assert len(sources[0].pairs) == 3
  assert any("aaaaaaaa example 3" in e for e in errors)
  assert any("bbbbbbbb" in e for e in errors)
  with pytest.raises(FileNotFoundError, match="is not a directory"):
    pretrain.PretrainConfig(re_arc_dir=str(tmp_path / "missing")).validate()


def test_malformed_re_arc_files_of_every_kind_are_skipped(tmp_path):
  """A JSON object instead of a list (a TypeError before), a truncated or
  corrupt gzip, non-dict examples, too few good examples: each file is
  skipped with its reason and the good one loads."""
  good = [{"input": [[1, 2]], "output": [[2, 1]]}] * 3
  with gzip.open(tmp_path / "aaaaaaaa.json.gz", "wt") as f:
    json.dump(good, f)
  with gzip.open(tmp_path / "bbbbbbbb.json.gz", "wt") as f:
    json.dump({"examples": good}, f)
  whole = gzip.compress(json.dumps(good * 50).encode())
  (tmp_path / "cccccccc.json.gz").write_bytes(whole[:len(whole) // 2])
  (tmp_path / "dddddddd.json.gz").write_bytes(whole[:10] + b"\xff" * 40)
  (tmp_path / "eeeeeeee.json").write_text(json.dumps([1, "x", None] + good))
  (tmp_path / "ffffffff.json").write_text(json.dumps(good[:1]))
  (tmp_path / "gggggggg.json").write_text('"a string"')
  errors = []
  sources = pretrain.load_re_arc(str(tmp_path), errors=errors)
  assert [s.id for s in sources] == ["re_arc/aaaaaaaa", "re_arc/eeeeeeee"]
  text = "\n".join(errors)
  assert "bbbbbbbb.json.gz: holds a JSON dict, expected a list" in text
  assert "gggggggg.json: holds a JSON str, expected a list" in text
  assert "cccccccc.json.gz" in text and "dddddddd.json.gz" in text
  assert "eeeeeeee example 0: is a int, expected an object" in text
  assert "ffffffff.json: 1 good examples, at least 2 needed" in text


def test_a_re_arc_dir_with_no_usable_file_names_the_reasons(tmp_path):
  """Not 'set pretrain.re_arc_dir' when it is set: the files' reasons."""
  (tmp_path / "aaaaaaaa.json").write_text('{"input": 1}')
  (tmp_path / "bbbbbbbb.json").write_text("{not json")
  cfg = pretrain.PretrainConfig(re_arc_dir=str(tmp_path), heldout_tasks=0,
                                arc_training=True)
  errors = []
  with pytest.raises(ValueError, match="no usable re-ARC file: .*aaaaaaaa"
                     ".*holds a JSON dict.*bbbbbbbb") as info:
    pretrain.load_pool(cfg, errors)
  assert "set pretrain.re_arc_dir" not in str(info.value)
  assert len(errors) == 2


def test_check_finite_names_the_step():
  metrics.check_finite("loss", 1.0, 3)
  with pytest.raises(FloatingPointError, match="loss is nan at step 7"):
    metrics.check_finite("loss", float("nan"), 7)


def test_launch_pretrain_smoke(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  cmd = [sys.executable, "-m", "launch.pretrain",
         "--config=configs/pretrain.py:tiny,steps=3",
         "--config.pretrain.batch_size=2", "--config.pretrain.max_len=256",
         "--config.pretrain.log_every=1", "--config.pretrain.eval_every=3",
         "--config.model.num_layers=1",
         f"--workdir={tmp_path}"]
  out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "step 3/3" in out.stderr
  assert os.path.exists(tmp_path / "model" / "model_config.json")
  assert os.path.exists(tmp_path / "config.json")
  # the data report: sources with their counts, and the leakage guard's
  # refusal of ARC-AGI-1's training copy of an evaluation task
  with open(tmp_path / "data.json", encoding="utf-8") as f:
    report = json.load(f)
  assert report["sources"]["arc1"]["tasks"] > 300
  assert "arc1/40853293" in report["leakage_guard"]["refused"]
  assert "refused 1 training sources that are evaluation tasks" in \
      out.stderr


def test_broken_model_checkpoints_are_named(tmp_path):
  from flax import nnx

  m = M.make_model(dict(num_layers=1, d_model=32, num_heads=2, mlp_dim=32))
  _, params = nnx.split(m, nnx.Param)
  path = str(tmp_path / "w")
  ckpt.save_weights(path, params, dict(d_model=32))
  other = M.make_model(dict(num_layers=1, d_model=64, num_heads=2,
                            mlp_dim=32))
  # another shape: named from the checkpoint's metadata, before any read
  with pytest.raises(ValueError, match=r"model checkpoint .*w: weight "
                     r"'blocks/0/attn/k/kernel/value' is \(32, 32\) in .*"
                     r"this model needs \(64, 64\)"):
    ckpt.load_weights(path, nnx.split(other, nnx.Param)[1])
  with open(os.path.join(path, ckpt.CONFIG_FILE), "w") as f:
    f.write("{broken")
  with pytest.raises(ValueError, match=r"model_config.json is not valid "
                     r"JSON"):
    ckpt.load_weights_config(path)


def _pairs_json(pairs):
  return json.dumps([{"input": np.asarray(i).tolist(),
                      "output": np.asarray(o).tolist()} for i, o in pairs])


def test_evaluation_tasks_never_enter_training(tmp_path):
  """The leakage guard: a re-ARC-style file named after an ARC-AGI-1 or
  ARC-AGI-2 evaluation task, a renamed copy of an evaluation task's pairs
  (matched by content), and a training task that copies one (ARC-AGI-1's
  40853293 is evaluation task 070dd51e) are refused by name, the rest
  trains; one shared pair (chance) is not refused."""
  from ttt import arc, pretrain_data

  ev1 = {t.id: t for t in arc.load_arc(1, "evaluation")}
  ev2 = [t for t in arc.load_arc(2, "evaluation") if t.id not in ev1]
  rng = np.random.default_rng(0)
  own = [(rng.integers(0, 10, (3, 4)), rng.integers(0, 10, (4, 3)))
         for _ in range(4)]
  (tmp_path / "aaaaaaaa.json").write_text(_pairs_json(own))
  (tmp_path / "00576224.json").write_text(_pairs_json(own))  # an eval id
  (tmp_path / f"{ev2[0].id}.json").write_text(_pairs_json(own))  # AGI-2
  renamed = list(ev1["e7639916"].train)  # another name, the same pairs
  (tmp_path / "bbbbbbbb.json.gz").write_bytes(gzip.compress(
      _pairs_json(renamed[::-1]).encode()))
  (tmp_path / "40853293.json").write_text(_pairs_json(own))
  one = own + [ev1["e7639916"].train[0]]  # one shared pair: chance
  (tmp_path / "cccccccc.json").write_text(_pairs_json(one))
  cfg = pretrain.PretrainConfig(re_arc_dir=str(tmp_path), heldout_tasks=0,
                                arc_training=False)
  refused = {}
  sources, _ = pretrain.load_pool(cfg, [], refused)
  assert sorted(s.id for s in sources) == ["re_arc/aaaaaaaa",
                                           "re_arc/cccccccc"]
  assert refused == {
      "re_arc/00576224": "named like ARC-AGI-1 evaluation task 00576224",
      f"re_arc/{ev2[0].id}":
          f"named like ARC-AGI-2 evaluation task {ev2[0].id}",
      "re_arc/bbbbbbbb": f"{len(renamed)} pairs of ARC-AGI-1 evaluation "
                         "task e7639916",
      "re_arc/40853293": "named like ARC-AGI-1 training task 40853293, "
                         "which copies 3 pairs of ARC-AGI-1 evaluation "
                         "task 070dd51e"}
  line = pretrain_data.refused_message(refused)
  assert "\n" not in line and "refused 4 training sources" in line
  report = pretrain_data.describe_pool(cfg, sources, [], refused)
  assert report["sources"]["re_arc"] == dict(tasks=2, pairs=9,
                                             dir=tmp_path.name)
  assert report["leakage_guard"]["evaluation_ids"] == 514
  # ARC-AGI-2's training split re-uses ARC-AGI-1 evaluation tasks: as
  # sources, every one of them is refused
  agi2 = [pretrain.Source(f"x/{n}", list(t.train))
          for n, t in enumerate(arc.load_arc(2, "training")[:200])]
  reused = {t.id for t in arc.load_arc(2, "training")[:200]} & set(ev1)
  leaks = pretrain_data.evaluation_leaks(agi2)
  assert reused and len(leaks) >= len(reused)
  # nothing left: the run is refused, naming them
  for name in ("aaaaaaaa.json", "cccccccc.json"):
    os.remove(tmp_path / name)
  with pytest.raises(ValueError, match="every source is an evaluation task"
                     ".*re_arc/00576224"):
    pretrain.load_pool(cfg, [], {})
