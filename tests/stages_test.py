"""Tests of the main job's stages on their own: plan, workdir, selection,
and every member of the decoder registry and the selection table."""

import dataclasses
import json
import os

import numpy as np
import pytest

from ttt import (
  arc,
  augment,
  configlib,
  decoders,
  pipeline,
  select,
  sharding,
  tokens,
  views,
)
from ttt import job as job_lib
from ttt import plan as plan_lib
from ttt import workdir as workdir_lib
from ttt.decoders import common, sampled


def _config(**run):
  from conftest import tiny_job_config

  c = tiny_job_config(**{"num_tasks": 2, **run})
  c.decode.max_new_tokens = 16
  return c


def _task(name, side, demos=2, tests=1):
  g = lambda: np.full((side, side), 3, np.int8)  # noqa: E731
  return arc.Task(name, [(g(), g()) for _ in range(demos)],
                  [(g(), g()) for _ in range(tests)])


# --- plan --------------------------------------------------------------------


def test_plan_run_pads_to_the_mesh_skips_long_tasks_and_orders_chunks():
  job = job_lib.parse(_config(chunk_size=2))
  job = job._replace(data=dataclasses.replace(job.data, max_len=200))
  tasks = [_task("a", 4), _task("big", 12), _task("b", 2, tests=2),
           _task("c", 3)]
  mesh = sharding.make_mesh()
  kw = dict(run=job.run, data_cfg=job.data, views_cfg=job.views,
            decode=job.decode)
  plan = plan_lib.plan_run(tasks, mesh, **kw)
  assert list(plan.too_long) == [1] and "data.max_len" in plan.too_long[1]
  assert plan.queries[1] == [] and len(plan.queries[2]) == 2
  assert plan.chunks == [[0, 1], [2, 3]]  # the run's order
  caps = plan.caps
  assert caps.chunk == 2 and caps.tasks == mesh.size  # padded to 8
  assert caps.queries == mesh.size
  # dfs (the preset): each view repeated max_candidates times in the vote,
  # decoded once per program row
  assert plan.per_view == job.decode.max_candidates
  assert caps.views == caps.decode_views * plan.per_view
  assert caps.ttt_len % job.run.length_bucket == 0
  assert caps.prompt_len <= job.data.max_len
  # by length: similar tasks share a chunk (the long one is skipped: key 0)
  length = plan_lib.plan_run(tasks, mesh, **{
      **kw, "run": dataclasses.replace(job.run, chunk_order="length")})
  assert length.chunks == [[1, 2], [3, 0]]
  queries, slots = plan.chunk_queries([2, 3])
  assert [q.task_index for q in queries] == [2, 2, 3] and slots == [0, 0, 1]


# --- workdir -----------------------------------------------------------------


def test_workdir_refuses_other_configs_and_concurrent_runs(tmp_path):
  wd_path = str(tmp_path / "wd")
  a = dict(x=1, y="same")
  wd = workdir_lib.open_workdir(wd_path, a, False, "{}")
  # a second run into the same workdir while the first holds it
  with pytest.raises(workdir_lib.WorkdirError, match=f"pid {os.getpid()}"):
    workdir_lib.open_workdir(wd_path, a, False, "{}")
  workdir_lib.write_chunk(wd, 0, dict(records=[dict(id="t1")], timings={}))
  wd.close()
  workdir_lib.open_workdir(wd_path, a, False, "{}").close()  # resumes
  with pytest.raises(workdir_lib.WorkdirError, match="x: 1 -> 2"):
    workdir_lib.open_workdir(wd_path, dict(a, x=2), False, "{}")
  wd = workdir_lib.open_workdir(wd_path, dict(a, x=2), True, "{}")
  assert not os.listdir(os.path.join(wd_path, "chunks"))  # cleared
  assert json.loads((tmp_path / "wd" / "fingerprint.json").read_text())[
      "x"] == 2
  # stored chunks: exactly the expected tasks, else redone
  workdir_lib.write_chunk(wd, 0, dict(records=[dict(id="t1")], timings={}))
  assert workdir_lib.stored_chunk(wd, 0, ["t1"])["records"] == [
      dict(id="t1")]
  assert workdir_lib.stored_chunk(wd, 0, ["t2"]) is None
  assert workdir_lib.stored_chunk(wd, 1, ["t1"]) is None
  for bad in ("{}", "", '{"records": 3}', "[1, 2]", '{"records": [{'):
    with open(wd.chunk_path(0), "w", encoding="utf-8") as f:
      f.write(bad)
    assert workdir_lib.stored_chunk(wd, 0, ["t1"]) is None, bad
  wd.close()
  # a truncated fingerprint: its chunks' config is unknown, so refused
  (tmp_path / "wd" / "fingerprint.json").write_text('{"x": ')
  with pytest.raises(workdir_lib.WorkdirError, match="another config"):
    workdir_lib.open_workdir(wd_path, a, False, "{}")
  with pytest.raises(workdir_lib.WorkdirError, match="--workdir is empty"):
    workdir_lib.open_workdir("", a, False, "{}")


def test_the_fingerprint_holds_the_challenges_files_content(tmp_path):
  path = tmp_path / "c.json"
  path.write_text('{"a": 1}')
  job = job_lib.parse(_config(challenges=str(path)))
  before = job_lib.fingerprint(job)
  assert before["run.challenges"].startswith("sha256:")
  path.write_text('{"a": 2}')  # edited in place, same path
  assert job_lib.fingerprint(job)["run.challenges"] != before[
      "run.challenges"]


# --- selection on its own ----------------------------------------------------


def _query(task, labels_categories):
  vs = tuple(views.View(label, cat, (0, 1), augment.Element(
      np.int32(0), np.arange(10, dtype=np.int32), np.zeros(0, np.int32)))
      for label, cat in labels_categories)
  return views.Query(0, task, 0, vs, (10,) * len(vs), 0)


def test_selection_rules_on_their_own():
  g = lambda v: np.full((2, 2), v, np.int8)  # noqa: E731
  task = _task("t", 2)
  q = _query(task, [("identity", "identity"), ("transpose", "geometric"),
                    ("rot90", "geometric"), ("flip", "geometric")])
  preds = [(g(1), g(2), g(2), g(3))]
  spec = select.SelectSpec(queries=8, groups=4, per_group=4, per_view=1,
                           max_len=100, length_bucket=8)
  programs = {}
  pick = {m: r.make(spec, programs) for m, r in select.RULES.items()
          if not r.rescored}
  flat = pick["flat"]([q], preds, None)[0]
  assert flat[0].tolist() == g(2).tolist()  # the most frequent
  hier = pick["hierarchical"]([q], preds, None)[0]
  # one nomination per category: identity's 1 and the geometric views' 2
  # tie at one vote each; the identity view's nomination wins the tie
  assert hier[0].tolist() == g(1).tolist()
  assert hier[1].tolist() == g(2).tolist()
  ref = pick["reference"]([q], preds, None)[0]
  assert {a.tobytes() for a in ref} <= {g(v).tobytes() for v in (1, 2, 3)}
  ident = pick["identity"]([q], preds, None)[0]
  assert ident[0].tolist() == g(1).tolist()  # the identity view's own
  # rules share their programs: identity reuses the hierarchical vote
  assert sorted(programs) == ["flat_vote", "hierarchical_vote"]
  scored = [select.Scored([g(2), g(3)], [2, 1], np.array([[-1., -1.],
                                                          [-0.1, -0.1]]))]
  poe = select.RULES["product_of_experts"].make(spec, {})
  assert poe([q], preds, scored)[0][0].tolist() == g(3).tolist()
  count = select.RULES["count_poe"].make(spec, {})
  assert count([q], preds, scored)[0][0].tolist() == g(2).tolist()
  with pytest.raises(ValueError, match="vote.method must be one of"):
    configlib.from_config(select.VoteConfig, dict(method="identity"))


# --- every registry member on a tiny model -----------------------------------

# Fields a method needs beyond the defaults to run small; a new method with
# usable defaults needs no entry (it is iterated all the same).
EXAMPLES = {"sample": dict(temperature=1.0, samples=2),
            "vgb": dict(samples=2, max_steps=24)}


@pytest.mark.parametrize("method", sorted(decoders.METHODS))
def test_every_decoder_and_every_rule_run_on_a_tiny_model(tmp_path, method):
  c = _config()  # an untrained 1-layer model: every program, small
  c.ttt.enabled = False  # (decoding and selection are what is tested)
  c.decode.method = method
  c.decode.update(EXAMPLES.get(method, {}))
  c.vote.poe_candidates = 2
  others = [m for m in select.RULES if m != "hierarchical"]
  c.vote.also = tuple(others)
  s = pipeline.run(c, str(tmp_path))
  assert s["tasks"] == 2 and s["decode"]["method"] == method
  assert s["decode"]["model_calls"] > 0
  res = json.loads((tmp_path / "results.json").read_text())
  per_view = decoders.METHODS[method].per_view(job_lib.parse(c).decode)
  for t in res["tasks"]:
    for q in t["tests"]:
      assert set(q["also"]) == set(others)
      assert len(q["views"]) % per_view == 0
      grids = [x["grid"] for x in q["candidates"]]
      assert q["attempt_1"] in grids or not grids
      for rule in others:  # every rule picks among the candidates (or,
        # like 'identity' when its one view was malformed, none)
        assert q["also"][rule]["attempt_1"] in grids + [None]


# --- a new decoding method: one file + one registry line ---------------------
# (what `ttt/decoders/first_view.py` would hold; registered below as its one
# line in `decoders.METHODS` would)


def _first_view_make(cfg, weights, mesh, spec):
  program = sampled.make_program(weights.graphdef, cfg.max_new)

  def decode(queries, slots, adapters):
    rows = common.prompt_rows(queries, slots, lambda q: list(q.views[:1]),
                              spec, mesh)
    args, keys = common.put(rows, (), spec, mesh)
    out = sharding.gather(program(weights.base, adapters, *args, keys))
    return common.Decoded(
        [tuple(views.to_original(v, tokens.decode_grid(out[i, 0]))
               if j == 0 else None for j, v in enumerate(q.views))
         for i, q in enumerate(queries)],
        int((out[:len(queries)] != tokens.PAD).sum()), rows.prompt_tokens)

  def inputs(adapters, prompt_len):  # (the memory plan lowers on these)
    args, keys = common.put(common.padding_rows(spec, mesh, prompt_len), (),
                            spec, mesh)
    return {"decode": (weights.base, adapters, *args, keys)}

  return common.Decoder(decode, empty_slots=True,
                        programs={"decode": program}, inputs=inputs)


FIRST_VIEW = common.Method(
    per_view=lambda cfg: 1, views_of=lambda q, n: list(q.views[:1]),
    validate=common.single_answer, describe=lambda cfg: "first view only",
    make=_first_view_make)


def test_a_new_decoder_is_one_file_and_one_registry_line(tmp_path,
                                                          monkeypatch):
  monkeypatch.setitem(decoders.METHODS, "first_view", FIRST_VIEW)
  c = _config()
  c.decode.method = "first_view"
  s = pipeline.run(c, str(tmp_path))
  assert s["tasks"] == 2
  res = json.loads((tmp_path / "results.json").read_text())
  for t in res["tasks"]:
    for q in t["tests"]:  # only the first view answered; no malformed
      assert sum(x["count"] for x in q["candidates"]) <= 1
      assert all(set(x["views"]) <= {q["views"][0]}
                 for x in q["candidates"])
  assert "first view only" in (tmp_path / "report.md").read_text()


def test_tasks_skipped_at_load_are_not_reported_as_unsolved(tmp_path, caplog):
  import logging

  good = {"train": [{"input": [[1]], "output": [[2]]}],
          "test": [{"input": [[1]]}]}
  bad = {"train": [{"input": [[1, 2], [3]], "output": [[1]]}],
         "test": [{"input": [[1]]}]}
  chal, sols = tmp_path / "c.json", tmp_path / "s.json"
  chal.write_text(json.dumps({"good": good, "bad": bad}))
  sols.write_text(json.dumps({"good": [[[2]]]}))
  run = job_lib.parse(_config(challenges=str(chal), solutions=str(sols),
                              num_tasks=0)).run
  with caplog.at_level(logging.WARNING):
    tasks, skipped = plan_lib.load_tasks(run)
  assert [t.id for t in tasks] == ["good"] and skipped[0]["id"] == "bad"
  assert "have no solution" not in caplog.text  # 'bad' is a skip, not this
  sols.write_text(json.dumps({}))
  with caplog.at_level(logging.WARNING):
    plan_lib.load_tasks(run)
  assert "nothing will be scored" in caplog.text
