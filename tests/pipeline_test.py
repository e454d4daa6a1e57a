"""End-to-end tests of the main job (ttt.pipeline, launch.ttt)."""

import json
import logging
import os
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import (
  run_counting_compiles,
  stage_programs,
  tiny_pipeline_config,
)

from configs import arc_ttt
from ttt import arc, augment, data, evaluate, files, pipeline, select
from ttt import job as job_lib
from ttt import plan as plan_lib
from ttt import workdir as workdir_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


def _tasks(workdir):
  with open(os.path.join(workdir, "results.json")) as f:
    return json.load(f)["tasks"]


def test_pipeline_runs_kills_and_resumes(tmp_path):
  wd = str(tmp_path / "run")
  first = pipeline.run(tiny_pipeline_config(), wd, stop_after_chunks=1)
  assert first["stopped"] and first["chunks_done"] == 1
  assert sorted(os.listdir(os.path.join(wd, "chunks"))) == ["00000.json"]
  with open(os.path.join(wd, "chunks", "00000.json")) as f:
    before = json.load(f)
  summary = pipeline.run(tiny_pipeline_config(), wd)
  assert summary["tasks"] == 3 and summary["untrained_model"]
  with open(os.path.join(wd, "chunks", "00000.json")) as f:
    assert json.load(f) == before  # chunk 0 was not redone
  sub, res = _check_outputs(wd, 3)
  for rec in res["tasks"]:
    assert len(rec["tests"]) == len(sub[rec["id"]])
  assert summary["decodes"] > 0
  # the killed-and-resumed run equals an uninterrupted one
  whole = str(tmp_path / "whole")
  pipeline.run(tiny_pipeline_config(), whole)
  assert _tasks(whole) == res["tasks"]


def test_results_do_not_depend_on_chunk_size(tmp_path):
  """Adapters, data and views are keyed by the task's index in the run."""
  c1 = tiny_pipeline_config(chunk_size=1)
  c3 = tiny_pipeline_config(chunk_size=3)
  for c in (c1, c3):
    c.ttt.steps = 3
  pipeline.run(c1, str(tmp_path / "one"))
  pipeline.run(c3, str(tmp_path / "three"))
  a, b = _tasks(str(tmp_path / "one")), _tasks(str(tmp_path / "three"))
  assert [t["id"] for t in a] == [t["id"] for t in b]
  for x, y in zip(a, b, strict=True):
    assert x["tests"] == y["tests"]
    np.testing.assert_allclose(x["ttt"]["final_loss"],
                               y["ttt"]["final_loss"], rtol=1e-5)
    assert x["ttt"]["rows"] == y["ttt"]["rows"] > 0


def test_three_chunks_compile_each_program_once(tmp_path):
  """A 3-chunk run builds every program once: no program is lowered twice
  for the same shapes, and each stage's programs exactly once."""
  c = tiny_pipeline_config(num_tasks=6, chunk_size=2)
  c.vote.also = ("flat", "identity")
  programs = stage_programs(c)
  # every stage of this run has its programs: TTT, decoding, the votes
  assert {k.split(".")[0] for k in programs} == {"adapt", "decode", "select"}
  s, names = run_counting_compiles(c, str(tmp_path))
  assert s["tasks"] == 6
  # (eager jax.random ops log the same argument shapes for different static
  # shapes, so only the pipeline's own programs are compared here)
  for stage, program in programs.items():
    assert names[f"jit({program})"] == 1, (stage, program, names)
  assert sum(names.values()) < 40  # no per-chunk rebuilds of small ops


def _groups_round_trip(config, parsed):
  """Every field a ConfigDict group sets is the parsed group's value (no
  group dropped, no field re-defaulted on the way)."""
  import dataclasses

  for name, group in config.items():
    if not hasattr(group, "items"):
      continue
    got = dataclasses.asdict(getattr(parsed, name))
    for k, v in group.items():
      want = list(v) if isinstance(v, tuple) else v
      have = list(got[k]) if isinstance(got[k], tuple) else got[k]
      assert have == want, (name, k, have, want)


def test_every_preset_of_every_config_loads_and_validates():
  from configs import arc_ttt, pretrain
  from configs.sampling import scaling
  from sampling import experiments
  from ttt import configlib
  from ttt import job as job_lib
  from ttt import model as model_lib
  from ttt import pretrain as pt

  for preset in arc_ttt.PRESETS:
    c = arc_ttt.get_config(preset)
    job = job_lib.parse(c)
    _groups_round_trip(c, job)
    assert job.init_from == c.init_from
  for preset in pretrain.PRESETS:
    c = pretrain.get_config(preset)
    configlib.from_config(pt.PretrainConfig, c.pretrain)
    model = configlib.from_config(model_lib.ModelConfig, c.model)
    assert dataclasses_equal(model, c.model)
  for preset in scaling.PRESETS:
    c = scaling.get_config(preset).sampling
    exp = configlib.from_config(experiments.ExperimentConfig, c)
    assert dataclasses_equal(exp, c)
    for k, v in scaling.PRESETS[preset].items():  # the preset's overrides
      assert getattr(exp, k) == (tuple(v) if isinstance(v, list) else v)
  from configs import table as table_config

  for arg in ("cpu", "gpu", "cpu,version=2"):
    t = table_config.get_config(arg)
    job = job_lib.parse(t.job)
    _groups_round_trip(t.job, job)
    assert len(job.run.task_ids) >= 50 and job.run.num_tasks == 0


def dataclasses_equal(parsed, group) -> bool:
  import dataclasses

  got = dataclasses.asdict(parsed)
  return all((list(got[k]) if isinstance(got[k], tuple) else got[k])
             == (list(v) if isinstance(v, tuple) else v)
             for k, v in group.items())


def test_gpu_preset_without_a_model_says_what_to_train(tmp_path):
  c = arc_ttt.get_config("gpu")
  c.run.num_tasks = 1
  with pytest.raises(FileNotFoundError, match="train one first"):
    pipeline.run(c, str(tmp_path))


@pytest.mark.parametrize("method", ["hierarchical", "flat", "reference"])
def test_oracle_model_scores_100_percent(tmp_path, method):
  c = tiny_pipeline_config(num_tasks=5, chunk_size=3)
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

  summary = pipeline.run(tiny_pipeline_config(), str(tmp_path), predictor=bad)
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
  c = tiny_pipeline_config(challenges=str(cpath), solutions=str(spath),
                           num_tasks=0, select="first")
  summary = pipeline.run(c, str(tmp_path / "run"), predictor=_oracle)
  assert summary["tasks"] == 4 and summary["skipped_tasks"] == 2
  sub, res = _check_outputs(str(tmp_path / "run"), 4)
  reasons = {r["id"]: r.get("skipped") for r in res["tasks"]}
  assert "row 1 has 1 cells" in reasons["deadbeef"]
  assert "data.max_len" in reasons[big.id]
  assert summary["pass2_tasks"] == 2
  report = (tmp_path / "run" / "report.md").read_text()
  assert "| `deadbeef` | – | – | – | – | skipped: " in report
  solved = [t for t in res["tasks"] if t.get("correct")]
  assert len(solved) == 2
  for t in solved:  # the per-task table: the oracle's answers everywhere
    n = len(t["tests"])
    assert f"| `{t['id']}` | ✓ | {n}/{n} | {n}/{n} |" in report


def test_missing_checkpoint_is_a_clear_error(tmp_path):
  c = tiny_pipeline_config()
  c.init_from = str(tmp_path / "nope")
  with pytest.raises(FileNotFoundError, match="no model checkpoint at"):
    pipeline.run(c, str(tmp_path / "run"))


def test_ablation_switches_change_what_they_should(tmp_path, caplog):
  def losses(c, name):
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="absl"):
      pipeline.run(c, str(tmp_path / name))
    return [t["ttt"] for t in _tasks(str(tmp_path / name))]

  per_task = losses(tiny_pipeline_config(num_tasks=2), "per_task")
  assert per_task[0]["final_loss"] != per_task[1]["final_loss"]
  c = tiny_pipeline_config(num_tasks=2)
  c.ttt.protocol = "shared"
  shared = losses(c, "shared")
  # one adapter for the run: one loss, reported for both tasks
  assert shared[0]["final_loss"] == shared[1]["final_loss"]
  assert [t["rows"] for t in shared] == [t["rows"] for t in per_task]
  # its progress counts the shared adapter's steps (steps x tasks) to the end
  marks = [tuple(map(int, m)) for m in
           re.findall(r"TTT step (\d+)/(\d+)", caplog.text)]
  assert marks and marks[-1][0] == marks[-1][1] > c.ttt.steps
  # the data switches reach the TTT rows the stage builds (what the rows
  # then train is the same program: data_test covers each variant's rows)
  def rows(**data_over):
    c = tiny_pipeline_config(num_tasks=2)
    c.data.update(data_over)
    j = job_lib.parse(c)
    task = plan_lib.load_tasks(j.run)[0][0]
    return data.build_ttt_dataset(task, j.data, jax.random.key(0))

  base = rows()
  for over in (dict(leave_out="end_to_end"), dict(loss="query")):
    other = rows(**over)
    assert (other.tokens.shape != base.tokens.shape
            or (other.tokens != base.tokens).any()
            or (other.mask != base.mask).any()), over
  c = tiny_pipeline_config(num_tasks=2)
  c.vote.method = "product_of_experts"
  c.vote.poe_candidates = 2
  s = pipeline.run(c, str(tmp_path / "poe"))
  assert s["tasks"] == 2
  for t in _tasks(str(tmp_path / "poe")):
    for q in t["tests"]:  # PoE picks among the decoded candidates
      grids = [x["grid"] for x in q["candidates"]]
      assert q["attempt_1"] in grids or not grids
  # vote.also: PoE as a second selection of the same run == the PoE run;
  # the main (hierarchical) selection unchanged
  c = tiny_pipeline_config(num_tasks=2)
  c.vote.also = ("product_of_experts",)
  c.vote.poe_candidates = 2
  pipeline.run(c, str(tmp_path / "also"))
  pairs = lambda q: (q["attempt_1"], q["attempt_2"])  # noqa: E731
  for a, p, h in zip(_tasks(str(tmp_path / "also")),
                     _tasks(str(tmp_path / "poe")),
                     _tasks(str(tmp_path / "per_task")), strict=True):
    for qa, qp, qh in zip(a["tests"], p["tests"], h["tests"], strict=True):
      assert pairs(qa["also"]["product_of_experts"]) == pairs(qp)
      assert pairs(qa) == pairs(qh) and "also" not in qh


def test_chunks_by_length_give_the_same_results_in_run_order(tmp_path):
  """run.chunk_order='length' regroups the tasks (a chunk pads to its
  longest task) but keys are per task: with one run-wide shape the same
  adapters and answers, written in the run's order."""
  small = sorted(arc.load_arc(1, "evaluation"),
                 key=lambda t: sum(g.size for g in t.grids()))[:5]
  ids = tuple(t.id for t in small)[::-1]  # longest first

  def run(name, **over):
    c = tiny_pipeline_config(num_tasks=0, select="first", chunk_size=2,
                             task_ids=ids, **over)
    pipeline.run(c, str(tmp_path / name))
    first = json.loads((tmp_path / name / "chunks" / "00000.json")
                       .read_text())
    return _tasks(str(tmp_path / name)), [r["id"] for r in first["records"]]

  plain, plain_first = run("run")
  grouped, grouped_first = run("length", chunk_order="length")
  assert plain_first != grouped_first  # the chunks really differ
  assert [t["id"] for t in grouped] == [t["id"] for t in plain]
  assert grouped == plain  # every record, TTT losses and answers included
  assert all("ttt" in t for t in plain)  # none skipped
  with pytest.raises(ValueError, match="chunk_order"):
    job_lib.parse(tiny_pipeline_config(chunk_order="sorted"))


def test_chunk_padding_benchmark_counts_less_padding_by_length():
  out = subprocess.run(
      [sys.executable, "benchmarks/chunk_padding.py",
       "--config=configs/table.py:cpu,version=2"], cwd=ROOT,
      capture_output=True, text=True, timeout=300, check=True)
  r = json.loads(out.stdout.strip().splitlines()[-1])
  run, length = r["orders"]["run"], r["orders"]["length"]
  assert run["real_tokens"] == length["real_tokens"] > 0
  assert run["padded_tokens"] > length["padded_tokens"] >= length[
      "real_tokens"]
  assert r["ratio_run_over_length"]["attention"] > 1


def test_poe_scored_in_calls_of_a_few_rows_selects_the_same(
    tmp_path, monkeypatch):
  """Long rows are scored a few per program call (`SCORE_ELEMENTS`: the
  scorer holds every row's attention matrix): the same attempts as one
  call -- and PoE as a separate run == PoE as `vote.also` of another,
  recorded alike (a missing attempt_2 repeats attempt_1 in both)."""
  def run(name, **vote):
    c = tiny_pipeline_config(num_tasks=2)
    c.init_from = arc_ttt.get_config().init_from  # candidates to score
    c.decode.max_new_tokens = 40
    c.vote.poe_candidates = 4
    c.vote.update(vote)
    pipeline.run(c, str(tmp_path / name))
    return _tasks(str(tmp_path / name))

  together = run("also", also=("product_of_experts",))
  calls = []
  row_scorer = select.make_row_scorer

  def counted(graphdef):
    score = row_scorer(graphdef)

    def call(base, adapters, slots, batch):
      calls.append(len(slots))
      return score(base, adapters, slots, batch)
    return call

  monkeypatch.setattr(select, "make_row_scorer", counted)
  monkeypatch.setattr(select, "SCORE_ELEMENTS", 1)
  apart = run("poe", method="product_of_experts")
  assert len(calls) > 1 and set(calls) == {8}, calls  # 8 fake devices
  assert sum(len(q["candidates"]) for t in apart for q in t["tests"]) > 2
  for a, p in zip(together, apart, strict=True):
    for qa, qp in zip(a["tests"], p["tests"], strict=True):
      assert qa["candidates"] == qp["candidates"]
      assert ((qa["also"]["product_of_experts"]["attempt_1"],
               qa["also"]["product_of_experts"]["attempt_2"])
              == (qp["attempt_1"], qp["attempt_2"]))


def test_ttt_off_and_adapter_modes(tmp_path):
  """Without TTT a fresh LoRA (B = 0) leaves the base model's predictions
  unchanged at any rank; a fresh prefix changes them."""
  def run(name, **adapter):
    c = tiny_pipeline_config(num_tasks=2)
    c.init_from = arc_ttt.get_config().init_from  # the shipped model
    c.ttt.enabled = False
    c.decode.max_new_tokens = 40
    c.adapter.update(adapter)
    pipeline.run(c, str(tmp_path / name))
    return _tasks(str(tmp_path / name))

  lora16, lora4 = run("lora16"), run("lora4", rank=4)
  prefix = run("prefix", mode="prefix", prefix_len=2)
  for t in lora16:
    assert t["ttt"]["final_loss"] is None and t["ttt"]["rows"] == 0
  assert [t["tests"] for t in lora16] == [t["tests"] for t in lora4]
  assert [t["tests"] for t in lora16] != [t["tests"] for t in prefix]


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


def test_trim_keeps_every_real_token_and_refuses_to_cut():
  from ttt import data, tokens

  task = arc.load_arc(1, "evaluation")[0]
  ds = data.build_ttt_dataset(task, dict(max_len=4096, num_sequences=6))
  stacked = data.stack([ds, ds])
  n = data.bucket_length(data.real_length(stacked), 128, 4096)
  assert n % 128 == 0 and n < 4096
  cut = data.trim(stacked, n)
  assert (stacked.tokens[..., n:] == tokens.PAD).all()
  assert stacked.mask[..., n:].sum() == 0
  np.testing.assert_array_equal(cut.mask, stacked.mask[..., :n])
  assert data.real_length(stacked) <= data.row_length_bound(
      task, dict(max_len=4096, num_sequences=6))
  with pytest.raises(ValueError, match="would cut real tokens"):
    data.trim(stacked, data.real_length(stacked) - 1)


def test_row_length_bound_is_tight_and_safe(arc1_eval):
  """The bound that fixes the run's TTT length is >= every built row and
  reached by the leave-one-out rows (no data is built to compute it)."""
  from ttt import data

  cfg = dict(max_len=2048, num_sequences=16)
  for task in arc1_eval[:12]:
    ds = data.build_ttt_dataset(task, cfg)
    if not ds.valid.any():
      continue
    bound = data.row_length_bound(task, cfg)
    assert data.real_length(ds) <= bound
    assert bound - data.real_length(ds) <= bound // 4, task.id


def test_full_fine_tuning_runs_on_the_mesh(tmp_path):
  """'full' mode copies the loaded weights into every task's slot across
  all 8 devices (the table's full_ft row once stopped there) and trains."""
  c = tiny_pipeline_config(num_tasks=2)
  c.init_from = arc_ttt.get_config().init_from  # restored: on one device
  c.adapter.mode = "full"
  s = pipeline.run(c, str(tmp_path / "full"))
  assert s["tasks"] == 2
  ttt = [t["ttt"] for t in _tasks(str(tmp_path / "full"))]
  assert all(np.isfinite(t["final_loss"]) and t["rows"] > 0 for t in ttt)
  assert ttt[0]["final_loss"] != ttt[1]["final_loss"]  # one model per task


def test_sampled_answers_vote_and_are_reproducible(tmp_path, caplog):
  c = tiny_pipeline_config(num_tasks=2)
  c.decode.method = "sample"
  c.decode.temperature = 1.0
  c.decode.samples = 3
  with caplog.at_level(logging.INFO, logger="absl"):
    s = pipeline.run(c, str(tmp_path / "a"))
  assert s["tasks"] == 2
  # progress from inside the compiled inner loop, once per mark
  assert caplog.text.count("TTT step 1/2") == 1
  assert caplog.text.count("TTT step 2/2") == 1
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
  greedy = tiny_pipeline_config(num_tasks=2)
  greedy.decode.samples = 2
  with pytest.raises(ValueError, match="needs decode.method='sample'"):
    pipeline.run(greedy, str(tmp_path / "c"))


def _search_config(method: str, **decode_fields):
  """The shipped model on the shortest task, 3 views, no TTT."""
  c = arc_ttt.get_config("tiny")
  c.run.num_tasks = 1
  c.ttt.enabled = False
  c.views.orders = 1
  c.views.transforms = ("transpose",)
  c.decode.max_new_tokens = 64
  c.decode.method = method
  c.decode.update(decode_fields)
  c.vote.method = "hierarchical"  # no rescoring pass
  return c


def _candidates(workdir) -> list[list[dict]]:
  res = json.loads((workdir / "results.json").read_text())
  return [q for t in res["tasks"] for q in t["tests"]], res["summary"]


def test_dfs_pool_holds_every_wellformed_greedy_answer(tmp_path):
  """A well-formed greedy answer is the constrained-greedy one, which the
  enumeration always keeps; DFS never yields a malformed answer."""
  pipeline.run(_search_config("greedy"), str(tmp_path / "g"))
  c = _search_config("dfs", min_prob=0.05, max_candidates=4)
  c.vote.method = "count_poe"
  pipeline.run(c, str(tmp_path / "d"))
  greedy, _ = _candidates(tmp_path / "g")
  dfs, summary = _candidates(tmp_path / "d")
  assert summary["decode"]["method"] == "dfs"
  assert summary["decode"]["model_calls"] > 0
  grid = lambda c: json.dumps(c["grid"])  # noqa: E731
  for g, d in zip(greedy, dfs, strict=True):
    assert not d["malformed_by_category"]
    pool = {grid(x) for x in d["candidates"]}
    assert {grid(x) for x in g["candidates"]} <= pool
    assert d["attempt_1"] is None or json.dumps(d["attempt_1"]) in pool


def test_vgb_chains_answer_in_the_identity_slots(tmp_path):
  c = _search_config("vgb", samples=4, max_steps=64)
  pipeline.run(c, str(tmp_path / "v"))
  tests, summary = _candidates(tmp_path / "v")
  assert summary["decode"]["model_calls"] > 0
  found = 0
  for q in tests:
    assert not q["malformed_by_category"]
    for cand in q["candidates"]:
      assert set(cand["categories"]) == {"identity"}
      assert cand["views"] == ["identity"] * cand["count"]
      found += cand["count"]
  assert found >= len(tests)  # chains that start at the greedy answer


def test_outputs_are_strict_json(tmp_path):
  """NaN/inf never reach a JSON file: they are written as null."""
  files.write_json(str(tmp_path / "x.json"),
                      dict(loss=float("nan"), ok=[1.0, float("inf")]))

  def refuse(name):
    raise ValueError(name)

  got = json.loads((tmp_path / "x.json").read_text(), parse_constant=refuse)
  assert got == dict(loss=None, ok=[1.0, None])


def test_run_config_is_validated(tmp_path):
  with pytest.raises(ValueError, match="run.num_tasks must be >= 0"):
    pipeline.run(tiny_pipeline_config(num_tasks=-1), str(tmp_path))


def _kaggle(tmp_path, tasks, broken_tests=2):
  """A challenges file of `tasks` plus one broken task with
  `broken_tests` test inputs, and its solutions file."""
  chal, sol = {}, {}
  for t in tasks:
    chal[t.id] = dict(train=[dict(input=i.tolist(), output=o.tolist())
                             for i, o in t.train],
                      test=[dict(input=i.tolist()) for i, _ in t.test])
    sol[t.id] = [o.tolist() for _, o in t.test]
  chal["broken00"] = dict(train=[dict(input=[[1, 2], [3]], output=[[1]])],
                          test=[dict(input=[[1]])] * broken_tests)
  cpath, spath = tmp_path / "c.json", tmp_path / "s.json"
  cpath.write_text(json.dumps(chal))
  spath.write_text(json.dumps(sol))
  return str(cpath), str(spath)


def test_skipped_task_gets_one_entry_per_test_input(tmp_path):
  small = sorted(arc.load_arc(1, "evaluation"),
                 key=lambda t: sum(g.size for g in t.grids()))[:2]
  cpath, spath = _kaggle(tmp_path, small, broken_tests=3)
  c = tiny_pipeline_config(challenges=cpath, solutions=spath, num_tasks=0,
                           select="first")
  pipeline.run(c, str(tmp_path / "run"), predictor=_oracle)
  sub = json.loads((tmp_path / "run" / "submission.json").read_text())
  assert len(sub["broken00"]) == 3
  evaluate.check_submission(sub, arc.test_counts(cpath))
  short = dict(sub, broken00=sub["broken00"][:1])
  with pytest.raises(ValueError, match="wrong number of entries"):
    evaluate.check_submission(short, arc.test_counts(cpath))
  with pytest.raises(ValueError, match="missing"):
    evaluate.check_submission({k: v for k, v in sub.items()
                               if k != "broken00"}, arc.test_counts(cpath))


def test_resuming_with_another_config_is_refused(tmp_path):
  wd = str(tmp_path / "run")
  pipeline.run(tiny_pipeline_config(num_tasks=2), wd, predictor=_oracle)
  other = tiny_pipeline_config(num_tasks=2)
  other.ttt.steps = 5
  other.views.orders = 2
  with pytest.raises(ValueError, match=r"ttt.steps: 2 -> 5.*views.orders"):
    pipeline.run(other, wd, predictor=_oracle)
  # the same config resumes; num_renderings may change
  same = tiny_pipeline_config(num_tasks=2, num_renderings=1)
  assert pipeline.run(same, wd, predictor=_oracle)["tasks"] == 2
  chunk = tmp_path / "run" / "chunks" / "00000.json"
  chunk.write_text(chunk.read_text().replace('"tests"', '"tests_old"'))
  other.run.overwrite = True
  s = pipeline.run(other, wd, predictor=_oracle)
  assert s["tasks"] == 2 and s["pass2"] == 1.0
  # the chunk was redone (not resumed) and the new config recorded
  assert '"tests_old"' not in chunk.read_text()
  fp = json.loads((tmp_path / "run" / "fingerprint.json").read_text())
  assert fp["ttt.steps"] == 5 and fp["views.orders"] == 2


def test_resume_knows_the_model_by_content_not_its_path(tmp_path):
  """A copy of the model elsewhere resumes a run; weights replaced in
  place do not (before, the path was compared: the reverse)."""
  a, b = tmp_path / "a", tmp_path / "b"
  shutil.copytree(arc_ttt.get_config().init_from, a)
  shutil.copytree(a, b)

  def job(path):
    c = tiny_pipeline_config()
    c.init_from = str(path)
    return job_lib.parse(c)

  def check_resume(j, wd):
    workdir_lib.open_workdir(wd, job_lib.fingerprint(j), False, "{}").close()

  assert job_lib.fingerprint(job(a)) == job_lib.fingerprint(job(b))
  assert str(tmp_path) not in json.dumps(job_lib.fingerprint(job(a)))
  wd = tmp_path / "run"
  (wd / "chunks").mkdir(parents=True)
  (wd / "chunks" / "00000.json").write_text("{}")
  check_resume(job(a), str(wd))
  check_resume(job(b), str(wd))  # the same model, moved
  weights = sorted(p for p in (b / "weights").rglob("*")
                   if p.is_file() and p.parent.name == "d")
  weights[0].write_bytes(weights[0].read_bytes() + b"\0")
  with pytest.raises(ValueError, match="init_from: 'sha256:"):
    check_resume(job(b), str(wd))


def test_solutions_that_match_no_task_are_reported(tmp_path, caplog):
  small = sorted(arc.load_arc(1, "evaluation"),
                 key=lambda t: sum(g.size for g in t.grids()))[:2]
  cpath, _ = _kaggle(tmp_path, small)
  spath = tmp_path / "other.json"
  spath.write_text(json.dumps({"nothere": [[[1]]]}))
  c = tiny_pipeline_config(challenges=cpath, solutions=str(spath),
                           num_tasks=0, select="first")
  def echo_input(task, test_index, view):  # no answers known
    return augment.apply(view.element, task.test[test_index][0])

  with caplog.at_level(logging.WARNING):
    s = pipeline.run(c, str(tmp_path / "run"), predictor=echo_input)
  assert s["scored_tasks"] == 0
  text = caplog.text
  assert "is in the solutions file" in text and "nothing" in text
  assert "match no task: ['nothere']" in text


def test_launch_input_errors_are_one_line_with_status_2(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  cmd = [sys.executable, "-m", "launch.ttt",
         f"--config.run.challenges={tmp_path / 'missing.json'}",
         f"--workdir={tmp_path / 'w'}", "--compilation_cache="]
  # from another directory: the default --config comes from the package
  out = subprocess.run(cmd, cwd=str(tmp_path), env=env, capture_output=True,
                       text=True, timeout=300)
  assert out.returncode == 2, out.stderr[-2000:]
  assert "error: cannot read challenges file" in out.stderr
  assert "Traceback" not in out.stderr
  verbose = subprocess.run(cmd + ["--verbose"], cwd=str(tmp_path), env=env,
                           capture_output=True, text=True, timeout=300)
  assert verbose.returncode != 0 and "Traceback" in verbose.stderr
  assert "libtpu" not in out.stderr  # no TPU probe noise
  typo = subprocess.run(cmd[:3] + ["--config.ttt.stepz=4"], cwd=str(tmp_path),
                        env=env, capture_output=True, text=True, timeout=300)
  assert typo.returncode == 2
  assert typo.stderr.strip().splitlines()[0] == (
      "error: --config.ttt.stepz=4: no such config field. Did you mean "
      "'steps' instead of 'stepz'?")
  helped = subprocess.run(cmd[:3] + ["--help"], cwd=str(tmp_path), env=env,
                          capture_output=True, text=True, timeout=300)
  assert helped.returncode == 0, helped.stderr[-2000:]
  assert "--config.ttt.steps=256" in helped.stdout
  assert "--config.decode.method='dfs'" in helped.stdout


def test_wheel_installs_and_runs_from_anywhere(tmp_path):
  """The wheel carries every config, the task lists and the shipped model:
  installed outside the checkout, a 1-task main job runs from a temporary
  directory on the packaged checkpoint."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  wheels, target = tmp_path / "wheels", tmp_path / "site"
  build = subprocess.run(
      [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w",
       str(wheels), ROOT], env=env, capture_output=True, text=True,
      timeout=600)
  assert build.returncode == 0, build.stderr[-2000:]
  (wheel,) = wheels.glob("ttt_jax-*.whl")
  inst = subprocess.run(
      [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
       str(target), str(wheel)], env=env, capture_output=True, text=True,
      timeout=600)
  assert inst.returncode == 0, inst.stderr[-2000:]
  run_dir = tmp_path / "elsewhere"
  run_dir.mkdir()
  out = subprocess.run(
      [sys.executable, "-m", "launch.ttt", "--config.run.num_tasks=1",
       "--config.ttt.enabled=False", "--config.views.orders=0",
       "--config.views.transforms=()", "--config.decode.max_new_tokens=32",
       "--workdir=w", "--compilation_cache="],
      cwd=str(run_dir), env=dict(env, PYTHONPATH=str(target)),
      capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert f"model: {target}/ttt_checkpoints/tiny" in out.stderr
  assert "pass@2:" in out.stdout
  assert (run_dir / "w" / "report.md").exists()


def test_renderings_frame_attempts_right_and_wrong(tmp_path):
  import zlib

  task = arc.Task("x", [(np.zeros((2, 2), np.int8), np.ones((2, 2), np.int8))],
                  [(np.zeros((2, 2), np.int8), np.ones((2, 2), np.int8))])
  rec = dict(tests=[dict(truth=[[1, 1], [1, 1]], attempt_1=[[1, 1], [1, 1]],
                         attempt_2=[[0]])])
  path = str(tmp_path / "r.png")
  evaluate.render_task(path, task, rec)
  raw = open(path, "rb").read()
  w, h = np.frombuffer(raw[16:24], ">u4")
  idat = raw[raw.index(b"IDAT") + 4:raw.index(b"IEND") - 8]
  rows = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(h, -1)
  img = rows[:, 1:].reshape(h, w, 3)  # filter byte 0 on every row
  colours = {tuple(int(v) for v in p) for p in img.reshape(-1, 3)}
  assert evaluate.RIGHT in colours and evaluate.WRONG in colours
  assert w >= 4 * 2 * 16  # cells of 16 px
