"""Tests for ttt.arc: loading and validation."""

import json
import re

import numpy as np
import pytest

from ttt import arc

GOOD = {
    "train": [{"input": [[1, 2], [3, 4]], "output": [[4, 3], [2, 1]]},
              {"input": [[0]], "output": [[9]]}],
    "test": [{"input": [[5, 5, 5]]}],
}


def test_load_arc_versions_and_splits():
  train1 = arc.load_arc(1, "training")
  eval1 = arc.load_arc("arc-agi-1", "evaluation")
  assert len(train1) == 400 and len(eval1) == 400
  eval2 = arc.load_arc(2, "eval")
  assert len(eval2) == 120
  t = eval1[0]
  assert isinstance(t, arc.Task) and len(t.id) == 8
  for i, o in t.train:
    assert i.dtype == np.int8 and o.dtype == np.int8 and i.ndim == 2
  assert all(o is not None for _, o in t.test)
  with pytest.raises(ValueError, match="unknown ARC version"):
    arc.load_arc(3)
  with pytest.raises(ValueError, match="unknown split"):
    arc.load_arc(1, "test")


def test_task_from_json_with_and_without_solutions():
  t = arc.task_from_json("abc", GOOD)
  assert t.test[0][1] is None
  np.testing.assert_array_equal(t.train[1][1], [[9]])
  t = arc.task_from_json("abc", GOOD, solutions=[[[1]]])
  np.testing.assert_array_equal(t.test[0][1], [[1]])
  challenge, sols = arc.task_to_json(t)
  assert challenge == GOOD and sols == [[[1]]]


def _bad(path, value):
  obj = json.loads(json.dumps(GOOD))
  node = obj
  for p in path[:-1]:
    node = node[p]
  node[path[-1]] = value
  return obj


@pytest.mark.parametrize("path,value,message", [
    (("train", 1, "output"), [[1, 2], [3]],
     "task t1: train[1].output row 1 has 1 cells, expected 2"),
    (("train", 0, "input"), [], "train[0].input is empty"),
    (("train", 0, "input"), [[]], "train[0].input row 0 is empty"),
    (("train", 0, "input"), [[0] * 31], "has 31 columns, at most 30"),
    (("train", 0, "input"), [[0]] * 31, "has 31 rows, at most 30"),
    (("train", 0, "output"), [[1, 10], [0, 0]],
     "row 0 column 1 holds 10, outside 0-9"),
    (("train", 0, "output"), [[1, -1], [0, 0]], "holds -1, outside 0-9"),
    (("train", 0, "output"), [[1, 1.5], [0, 0]], "holds 1.5, not an integer"),
    (("train", 0, "output"), [[1, "2"], [0, 0]], "holds '2', not an integer"),
    (("train", 0, "output"), [[1, True], [0, 0]], "holds True, not an integer"),
    (("train", 0, "output"), "0101", "is a str, expected a list of rows"),
    (("train",), [], "has no demonstrations"),
    (("test",), [], "has no test input"),
    (("train",), {"input": 1}, "'train' is a dict, expected a list"),
    (("train", 0), {"input": [[1]]}, "train[0] has no 'output'"),
])
def test_validation_errors_name_task_pair_and_problem(path, value, message):
  with pytest.raises(arc.TaskError, match=re.escape(message)) as info:
    arc.task_from_json("t1", _bad(path, value))
  assert info.value.task_id == "t1"
  assert isinstance(info.value, ValueError)
  assert str(info.value).startswith("task t1: ")


def test_numpy_grids_are_validated():
  with pytest.raises(arc.TaskError, match="has 3 dimensions"):
    arc.as_grid(np.zeros((2, 2, 2), int), task_id="x")
  with pytest.raises(arc.TaskError, match="not an integer"):
    arc.as_grid(np.array([[0.5]]), task_id="x")
  with pytest.raises(arc.TaskError, match="dtype bool"):
    arc.as_grid(np.array([[True]]), task_id="x")
  assert arc.as_grid(np.array([[1.0, 2.0]])).dtype == np.int8


def test_load_json_skips_bad_tasks_and_reports_them(tmp_path):
  data = {"good1": GOOD, "ragged": _bad(("train", 0, "input"), [[1], [1, 2]]),
          "good2": GOOD, "nodemo": _bad(("train",), [])}
  path = tmp_path / "challenges.json"
  path.write_text(json.dumps(data))
  sol_path = tmp_path / "solutions.json"
  sol_path.write_text(json.dumps({"good2": [[[3]]]}))
  errors = []
  tasks = arc.load_json(path, sol_path, errors=errors)
  assert [t.id for t in tasks] == ["good1", "good2"]
  assert tasks[0].test[0][1] is None
  np.testing.assert_array_equal(tasks[1].test[0][1], [[3]])
  assert [e.task_id for e in errors] == ["ragged", "nodemo"]
  assert "row 1 has 2 cells, expected 1" in str(errors[0])
  with pytest.raises(arc.TaskError, match="task ragged"):
    arc.load_json(path)  # default: raise
  assert len(arc.load_json(data, on_error="skip")) == 2


def test_load_json_file_errors(tmp_path):
  path = tmp_path / "broken.json"
  path.write_text('{"a": [1, 2')
  with pytest.raises(ValueError, match="broken.json is not valid JSON"):
    arc.load_json(path)
  with pytest.raises(ValueError, match="cannot read challenges file"):
    arc.load_json(tmp_path / "missing.json")
  path.write_text("[1, 2]")
  with pytest.raises(ValueError, match="must be a JSON object"):
    arc.load_json(path)
  with pytest.raises(arc.TaskError, match="has 1 test inputs but 2 solutions"):
    arc.load_json({"a": GOOD}, {"a": [[[1]], [[2]]]})


def test_repeated_task_ids_are_refused(tmp_path):
  """JSON allows repeated keys (Python keeps the last): a challenges file
  that repeats a task id is refused, naming it."""
  task = json.dumps(dict(train=[dict(input=[[1]], output=[[2]])],
                         test=[dict(input=[[1]])]))
  path = tmp_path / "c.json"
  path.write_text(f'{{"a": {task}, "b": {task}, "a": {task}}}')
  with pytest.raises(ValueError, match=r"repeats task ids \['a'\]"):
    arc.load_json(str(path))
  path.write_text(f'{{"a": {task}, "b": {task}}}')
  assert [t.id for t in arc.load_json(str(path))] == ["a", "b"]


@pytest.mark.parametrize("task_id,problem", [
    ("", "has an empty task id"),
    ("x" * 201, "task id has 201 characters, at most 200 allowed"),
    ("a\nb", "task id holds the control character U+000A at index 1"),
    ("\x00", "task id holds the control character U+0000 at index 0"),
    ("ab\r", "task id holds the control character U+000D at index 2"),
    ("a\x1b[2J", "task id holds the control character U+001B at index 1"),
    ("x\u202ey", "task id holds the format character U+202E at index 1"),
    ("x\u2028", "task id holds the line separator character U+2028 at "
     "index 1"),
    ("\ud800", "task id holds the surrogate character U+D800 at index 0"),
])
def test_refused_ids_are_skipped_with_the_reason(task_id, problem):
  """A refused id is a skip like a malformed grid: the TaskError carries the
  id itself (the submission still owes its entry), the rest loads."""
  errors = []
  tasks = arc.load_json({"before": GOOD, task_id: GOOD, "after": GOOD},
                        errors=errors)
  assert [t.id for t in tasks] == ["before", "after"]
  assert [(e.task_id, e.problem) for e in errors] == [(task_id, problem)]
  assert errors[0].num_tests == 1
  assert "\n" not in str(errors[0]) and "\x00" not in str(errors[0])
  with pytest.raises(arc.TaskError, match=re.escape(problem)):
    arc.task_from_json(task_id, GOOD)
  with pytest.raises(arc.TaskError, match=re.escape(problem)):
    arc.validate_task(arc.Task(task_id, [(np.ones((1, 1)),) * 2],
                               [(np.ones((1, 1)), None)]))
  # counted all the same, so the submission is checked against every key
  assert arc.test_counts({task_id: GOOD, "after": GOOD}) == {
      task_id: 1, "after": 1}


@pytest.mark.parametrize("task_id", [
    "../../x", "/abs/path", "a/b", ".", "..", "x" * 200, "CON", "nul",
    "<script>alert(1)</script>", "ünïcødé-任务", " spaced ", "a|b", "#h",
])
def test_other_ids_are_valid(task_id):
  """Paths, markup and unicode are ids like any other (they name no file
  and enter markdown escaped: see evaluate_test)."""
  assert [t.id for t in arc.load_json({task_id: GOOD})] == [task_id]


def test_messages_and_logs_show_ids_repr_safe(caplog):
  """A newline in an id cannot forge a log line; plain ids read as before."""
  assert str(arc.TaskError("t1", "x")) == "task t1: x"
  assert arc.shown_id("a/b-1.c") == "a/b-1.c"
  assert arc.shown_id("a\nWARNING fake") == "'a\\nWARNING fake'"
  assert len(arc.shown_id("y" * 300)) < 120
  bad = _bad(("train", 0, "input"), [[1], [1, 2]])
  with caplog.at_level("WARNING"):
    arc.load_json({"evil\nWARNING:root:forged": bad, "\n": GOOD},
                  errors=[])
  lines = caplog.text.splitlines()
  assert len(lines) == 2, lines
  assert not any(line.startswith("WARNING:root:forged") for line in lines)
  assert "'evil\\nWARNING:root:forged'" in lines[0]


def test_bad_solution_grids_name_the_solutions_file(tmp_path):
  challenges = tmp_path / "c.json"
  challenges.write_text(json.dumps({"a": GOOD}))
  sols = tmp_path / "s.json"
  sols.write_text(json.dumps({"a": [[[1, 12]]]}))
  with pytest.raises(arc.TaskError, match=re.escape(
      f"task a: test[0].output (in solutions file {sols}) row 0 column 1 "
      "holds 12, outside 0-9")):
    arc.load_json(challenges, sols)


def test_test_counts_refuses_what_load_json_refuses(tmp_path):
  path = tmp_path / "c.json"
  path.write_text("[1, 2]")
  with pytest.raises(ValueError, match="must be a JSON object"):
    arc.test_counts(path)
