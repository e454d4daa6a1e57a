"""End-to-end tests of the main job (ttt.pipeline, launch.ttt)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from configs import arc_ttt
from ttt import arc, augment, evaluate, pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(**run):
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
  c.views.transforms = ("transpose", "rot90")
  return c


def _oracle(task, test_index, view):
  """A perfect model: the true answer, in the view's frame."""
  return augment.apply(view.element, task.test[test_index][1])


def _check_outputs(workdir, n_tasks):
  with open(os.path.join(workdir, "submission.json")) as f:
    sub = json.load(f)
  evaluate.check_submission(sub)
  assert len(sub) == n_tasks
  with open(os.path.join(workdir, "results.json")) as f:
    res = json.load(f)
  assert len(res["tasks"]) == n_tasks
  for name in ("metrics.jsonl", "config.json", "report.md"):
    assert os.path.exists(os.path.join(workdir, name)), name
  assert os.listdir(os.path.join(workdir, "renderings"))
  return sub, res


def test_pipeline_runs_kills_and_resumes(tmp_path):
  wd = str(tmp_path / "run")
  first = pipeline.run(_config(), wd, stop_after_chunks=1)
  assert first["stopped"] and first["chunks_done"] == 1
  assert sorted(os.listdir(os.path.join(wd, "chunks"))) == ["00000.json"]
  with open(os.path.join(wd, "chunks", "00000.json")) as f:
    before = json.load(f)
  summary = pipeline.run(_config(), wd)
  assert summary["tasks"] == 3 and summary["untrained_model"]
  with open(os.path.join(wd, "chunks", "00000.json")) as f:
    assert json.load(f) == before  # chunk 0 was not redone
  sub, res = _check_outputs(wd, 3)
  for rec in res["tasks"]:
    assert len(rec["tests"]) == len(sub[rec["id"]])
    for t in rec["tests"]:
      assert t["views"][:2] == ["identity", "identity/order1"] or \
          t["views"][0] == "identity"
  assert summary["decodes"] > 0
  assert summary["malformed"] <= summary["decodes"]


@pytest.mark.parametrize("method", ["hierarchical", "flat", "reference"])
def test_oracle_model_scores_100_percent(tmp_path, method):
  c = _config(num_tasks=5, chunk_size=3)
  c.vote.method = method
  c.views.colour_perms = 1
  summary = pipeline.run(c, str(tmp_path), predictor=_oracle)
  assert summary["scored_tasks"] == 5
  assert summary["pass2"] == 1.0 and summary["coverage"] == 1.0
  assert summary["malformed"] == 0
  assert set(summary["category_accuracy"].values()) == {1.0}
  sub, res = _check_outputs(str(tmp_path), 5)
  tasks = {t.id: t for t in arc.load_arc(1, "evaluation")}
  for task_id, attempts in sub.items():
    for n, a in enumerate(attempts):
      np.testing.assert_array_equal(a["attempt_1"], tasks[task_id].test[n][1])


def test_wrong_predictions_score_zero_and_malformed_are_counted(tmp_path):
  def bad(task, test_index, view):
    if view.category == "identity":
      return None  # malformed decode
    truth = task.test[test_index][1]
    return augment.apply(view.element, (truth + 1) % 10)

  summary = pipeline.run(_config(), str(tmp_path), predictor=bad)
  assert summary["pass2"] == 0.0 and summary["coverage"] == 0.0
  assert summary["malformed"] > 0


def test_broken_and_too_long_tasks_are_skipped_and_reported(tmp_path):
  good = arc.load_arc(1, "evaluation")
  by_len = sorted(good, key=lambda t: sum(g.size for g in t.grids()))
  small, big = by_len[:2], by_len[-1]
  chal = {}
  sol = {}
  for t in small + [big]:
    chal[t.id] = dict(train=[dict(input=i.tolist(), output=o.tolist())
                             for i, o in t.train],
                      test=[dict(input=i.tolist()) for i, _ in t.test])
    sol[t.id] = [o.tolist() for _, o in t.test]
  chal["deadbeef"] = dict(train=[dict(input=[[1, 2], [3]], output=[[1]])],
                          test=[dict(input=[[1]])])
  cpath, spath = tmp_path / "c.json", tmp_path / "s.json"
  cpath.write_text(json.dumps(chal))
  spath.write_text(json.dumps(sol))
  c = _config(challenges=str(cpath), solutions=str(spath), num_tasks=0,
              select="first")
  summary = pipeline.run(c, str(tmp_path / "run"), predictor=_oracle)
  assert summary["tasks"] == 4 and summary["skipped_tasks"] == 2
  sub, res = _check_outputs(str(tmp_path / "run"), 4)
  reasons = {r["id"]: r.get("skipped") for r in res["tasks"]}
  assert "row 1 has 1 cells" in reasons["deadbeef"]
  assert "data.max_len" in reasons[big.id]
  assert summary["pass2_tasks"] == 2
  report = (tmp_path / "run" / "report.md").read_text()
  assert "deadbeef" in report and "Skipped tasks" in report


def test_missing_checkpoint_is_a_clear_error(tmp_path):
  c = _config()
  c.init_from = str(tmp_path / "nope")
  with pytest.raises(FileNotFoundError, match="no model checkpoint at"):
    pipeline.run(c, str(tmp_path / "run"))


def test_ablation_switches_run(tmp_path):
  c = _config(num_tasks=2)
  c.ttt.shared_adapter = True
  c.data.leave_out = "end_to_end"
  c.data.loss = "query"
  c.vote.method = "product_of_experts"
  c.vote.poe_candidates = 2
  s = pipeline.run(c, str(tmp_path / "a"))
  assert s["tasks"] == 2
  c = _config(num_tasks=2)
  c.ttt.enabled = False
  c.adapter.mode = "prefix"
  s = pipeline.run(c, str(tmp_path / "b"))
  assert s["tasks"] == 2


def test_launch_ttt_smoke(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  cmd = [sys.executable, "-m", "launch.ttt", "--config.init_from=",
         "--config.run.num_tasks=2", "--config.ttt.steps=2",
         "--config.data.num_sequences=4", "--config.decode.max_new_tokens=8",
         "--config.model.num_layers=1", f"--workdir={tmp_path}"]
  out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "pass@2: 0/2 tasks" in out.stdout
  assert "UNTRAINED" in out.stderr
  _check_outputs(str(tmp_path), 2)


def test_trim_length_keeps_every_real_token():
  from ttt import data, tokens

  task = arc.load_arc(1, "evaluation")[0]
  ds = data.build_ttt_dataset(task, dict(max_len=4096, num_sequences=6))
  stacked = pipeline._stack([ds, ds])
  cut = pipeline.trim_length(stacked, 128)
  assert cut.tokens.shape[-1] % 128 == 0 or cut.tokens.shape[-1] == 4096
  assert cut.tokens.shape[-1] < 4096
  n = cut.tokens.shape[-1]
  assert (stacked.tokens[..., n:] == tokens.PAD).all()
  assert stacked.mask[..., n:].sum() == 0
  np.testing.assert_array_equal(cut.mask, stacked.mask[..., :n])


def test_sampled_answers_vote_and_are_reproducible(tmp_path):
  c = _config(num_tasks=2)
  c.decode.temperature = 1.0
  c.decode.samples = 3
  s = pipeline.run(c, str(tmp_path / "a"))
  assert s["tasks"] == 2
  res = json.loads((tmp_path / "a" / "results.json").read_text())
  for t in res["tasks"]:
    for q in t["tests"]:
      labels = q["views"]
      assert len(labels) % 3 == 0 and labels[0] == labels[1] == labels[2]
      assert sum(c["count"] for c in q["candidates"]) + sum(
          q["malformed_by_category"].values()) == len(labels)
  pipeline.run(c, str(tmp_path / "b"))
  assert ((tmp_path / "a" / "submission.json").read_text()
          == (tmp_path / "b" / "submission.json").read_text())
  greedy = _config(num_tasks=2)
  greedy.decode.samples = 2
  with pytest.raises(ValueError, match="needs decode.temperature > 0"):
    pipeline.run(greedy, str(tmp_path / "c"))
