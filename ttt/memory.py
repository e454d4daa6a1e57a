"""Memory: what the run may use, what each program needs, the chunk size.

The probes: the process's resident memory (`rss_bytes`, `peak_rss_bytes`,
a sampling thread behind `MemoryMeter`'s peak per stage) and the devices'
(`device_memory`). The plan: `memory_budget` (what the run may use),
`stage_memory` (XLA's memory analysis of every stage's programs at a
chunk's shapes, from each stage's `inputs`) and `fit_memory`, which picks
the largest chunk that fits (`largest_that_fits`, one rule for one size
per run and for sizes per length bucket) and builds the stages for it.
"""

from __future__ import annotations

import math
import os
import re
import resource
import sys
import threading
import time
from typing import NamedTuple

import jax
from absl import logging

from ttt import arc, errors, sharding
from ttt import plan as plan_lib
from ttt import workdir as workdir_lib

GB = 2**30  # memory figures are in GiB


# ------------------------------------------------------------------------------
# Probes
# ------------------------------------------------------------------------------


def peak_memory_gb() -> float | None:
  """Peak device memory in use so far (GiB), where the backend reports it."""
  stats = jax.devices()[0].memory_stats() or {}
  peak = stats.get("peak_bytes_in_use")
  return None if peak is None else round(peak / 2**30, 2)


def rss_bytes() -> int:
  """The process's resident memory now (bytes; its peak where the current
  value is not readable)."""
  try:
    with open("/proc/self/statm", encoding="ascii") as f:
      return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
  except (OSError, ValueError, IndexError):
    return peak_rss_bytes()


def peak_rss_bytes() -> int:
  """The process's peak resident memory (bytes) since it started (Linux:
  VmHWM; nothing here resets it)."""
  try:
    with open("/proc/self/status", encoding="ascii") as f:
      found = re.search(r"^VmHWM:\s+(\d+) kB", f.read(), re.M)
    if found:
      return int(found.group(1)) * 1024
  except OSError:
    pass
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return peak if sys.platform == "darwin" else peak * 1024  # (macOS: bytes)


class _RssSampler:
  """A daemon thread reading the process's resident memory every
  `interval` seconds; `take()` returns the largest value seen since the
  previous `take()` (or since it started). It never resets the kernel's
  own high-water mark (`VmHWM`, what `/usr/bin/time -v` reports), as
  writing `/proc/self/clear_refs` did."""

  def __init__(self, interval: float = 0.01):
    self._lock = threading.Lock()
    self._max = rss_bytes()
    self._interval = interval
    threading.Thread(target=self._run, daemon=True,
                     name="ttt-rss-sampler").start()

  def _run(self):
    while True:
      now = rss_bytes()
      with self._lock:
        self._max = max(self._max, now)
      time.sleep(self._interval)

  def take(self) -> int:
    now = rss_bytes()
    with self._lock:
      peak, self._max = max(self._max, now), now
    return peak


_SAMPLER: list = []  # the process's one sampler, started on first use


def _sampler() -> _RssSampler:
  with _SAMPLER_LOCK:
    if not _SAMPLER:
      _SAMPLER.append(_RssSampler())
  return _SAMPLER[0]


_SAMPLER_LOCK = threading.Lock()


def device_memory() -> dict[str, int]:
  """{'in_use', 'peak', 'limit'} bytes of the first local device, where
  its backend reports them (GPU, TPU); {} on CPU."""
  stats = jax.local_devices()[0].memory_stats() or {}
  names = dict(in_use="bytes_in_use", peak="peak_bytes_in_use",
               limit="bytes_limit")
  return {k: int(stats[v]) for k, v in names.items() if v in stats}


class MemoryMeter:
  """Peak memory per stage: `tick(stage)` after each stage records the
  process's peak resident memory since the previous tick (and, where the
  backend reports it, device memory in use), in GiB.

  The peak is the largest resident memory a sampling thread saw since the
  previous tick (every 10 ms, `_RssSampler`): each stage gets its own,
  and the kernel's high-water mark of the process is left alone, so
  `/usr/bin/time -v` still reports the whole run's peak. A spike shorter
  than the sampling interval can be missed (`exact` says the figures are
  sampled, not the kernel's mark).
  """

  def __init__(self):
    self._sampler = _sampler()
    self._sampler.take()  # this meter's first stage starts now
    self.exact = False
    self.stages: dict[str, float] = {}
    self.device: dict[str, float] = {}

  def tick(self, stage: str) -> None:
    peak = self._sampler.take() / GB
    self.stages[stage] = round(max(self.stages.get(stage, 0.0), peak), 3)
    dev = device_memory()
    if "in_use" in dev:
      self.device[stage] = round(dev["in_use"] / GB, 3)


# ------------------------------------------------------------------------------
# Memory: what the run may use, what each program needs, the chunk size
# ------------------------------------------------------------------------------

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
  dev = device_memory()
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


def stage_memory(stages, plan: plan_lib.Plan, max_len: int,
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
  shared = 1 if "limit" in device_memory() else len(
      jax.local_devices())
  return resident + SLACK * shared * max(figures.values(), default=0.0)


def fit_memory(plan: plan_lib.Plan, build, replan, budget: tuple[float, str],
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


def largest_that_fits(cap: int, mesh_size: int, need, gb: float
                      ) -> tuple[int, str]:
  """The largest chunk of at most `cap` tasks that fits `gb`, and the rule.

  The need (GiB, `need(size)`, XLA's analysis of the programs at that many
  tasks) is analysed at one and two tasks per device (S1, S2 task slots,
  padded to the mesh) and extrapolated linearly in task slots S: need(S) =
  need(S1) + (S - S1) * (need(S2) - need(S1)) / (S2 - S1); the largest
  size predicted to fit is then analysed, one task less while it does not
  fit (never below one task per device, which the caller has checked
  fits).
  """
  s1, s2 = min(cap, mesh_size), min(cap, 2 * mesh_size)
  n1 = need(s1)
  p1, p2 = (sharding.padded_count(s, mesh_size) for s in (s1, s2))
  slope = (need(s2) - n1) / max(p2 - p1, 1)
  size = s1
  while size < cap and n1 + (sharding.padded_count(
      size + 1, mesh_size) - p1) * slope <= gb:
    size += 1
  while size > s1 and need(size) > gb:  # the prediction checked
    size -= 1
  return size, (f"linear in task slots S from {p1}: {n1:.2f} GiB + "
                f"(S - {p1}) x {slope:.3f} GiB")


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

  size = min(chunk_size, mesh_size)
  p1, _, _, n1 = need_at(size)
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
        f"{p1.caps.tasks} task slots); give the run more memory "
        "(run.memory_gb) or shorter rows (data.max_len, data.num_sequences)")
  size, rule = largest_that_fits(chunk_size, mesh_size,
                                 lambda s: need_at(s)[3], gb)
  return done(*need_at(size), size, rule)


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

  def caps_at(slots: int) -> plan_lib.Capacities:  # of the slots alone
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
    elif need(cap, shape) > gb and need(min(cap, mesh_size), shape) > gb:
      # (only where memory does not grow with the lengths)
      size, rule = max(lower, 1), "as a longer bucket"
    elif need(cap, shape) > gb:
      size, rule = largest_that_fits(cap, mesh_size,
                                     lambda s: need(s, shape), gb)
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
  dev = device_memory()
  return (dev["in_use"] if "in_use" in dev else rss_bytes()) / GB


def chunk_size_warning(memory: Memory, chunk_size: int, n_tasks: int
                       ) -> str | None:
  """What the log says when the memory plan cut `run.chunk_size` (None when
  it did not: a run of fewer tasks than `chunk_size` has smaller chunks by
  construction, not for want of memory)."""
  if memory.per_bucket:
    return (f"memory: chunks sized per length bucket {memory.per_bucket} "
            f"(run.chunk_size={chunk_size} does not fit "
            f"{memory.budget:.2f} GiB at every length)")
  if memory.chunk_size < min(chunk_size, n_tasks):
    return (f"memory: chunks of {memory.chunk_size} tasks (run.chunk_size="
            f"{chunk_size} does not fit {memory.budget:.2f} GiB)")
  return None


def summary(mem: Memory, setup_peak: float, peaks: dict) -> dict:
  """The run summary's `memory_gb`: peak resident GiB of the setup and per
  stage (`peaks`, over the chunks) and the memory plan `mem`."""
  return dict(
      peak_rss=round(max([setup_peak, *peaks.values()]), 3),
      setup=round(setup_peak, 3), stages=peaks,
      budget=round(mem.budget, 3), budget_source=mem.source,
      resident=round(mem.resident, 3), need=round(mem.need, 3),
      chunk_size=mem.chunk_size, rule=mem.rule,
      chunk_size_per_bucket=mem.per_bucket,
      programs={k: round(v, 4) for k, v in mem.programs.items()})


class StageClock:
  """Seconds and peak resident memory per stage since the last tick."""

  def __init__(self):
    self.t0, self.times = time.perf_counter(), {}
    self.memory = MemoryMeter()

  def tick(self, stage: str) -> None:
    now = time.perf_counter()
    self.times[stage], self.t0 = now - self.t0, now
    self.memory.tick(stage)


def fit_run(plan, build, replan, run, max_len: int, mesh_size: int, wd,
            ids: list[str]):
  """`fit_memory` for the main job: the budget from `run.memory_gb`, a
  resumed run's chunks read from the workdir `wd` and the chosen ones
  recorded there (`ttt.workdir.stored_plan` / `write_plan`; `ids`: the
  run's task ids), the plan logged (and a warning when it cut
  `run.chunk_size`). Returns `fit_memory`'s (plan, stages, Memory)."""
  budget = memory_budget(run.memory_gb)
  plan, built, mem = fit_memory(
      plan, build, replan, budget, max_len, run.chunk_size, mesh_size,
      workdir_lib.stored_plan(wd, budget, ids))  # (a resume's chunks)
  workdir_lib.write_plan(wd, budget, [[ids[n] for n in c]
                                      for c in plan.chunks]
                         if mem.per_bucket else None)
  logging.info("memory: budget %.2f GiB (%s), %.2f GiB resident, needs "
               "%.2f GiB at %d tasks per chunk (%s); programs per device "
               "%s", mem.budget, mem.source, mem.resident, mem.need,
               mem.chunk_size, mem.rule,
               {k: round(v, 3) for k, v in mem.programs.items()})
  warning = chunk_size_warning(mem, run.chunk_size, len(ids))
  if warning:
    logging.warning("%s", warning)
  return plan, built, mem


# ------------------------------------------------------------------------------
# The model axis: how many devices hold one copy of the base
# ------------------------------------------------------------------------------

def ttt_program_memory(groups, mesh, rows: int, length: int,
                       tasks_per_device: int = 1) -> float:
  """GiB per device of the TTT program (`ttt.inner_loop.make_inner_loop`)
  for `tasks_per_device` tasks on each device of the mesh's task axis, `rows`
  rows of `length` tokens a task, the base split over the mesh's `model`
  axis as the run places it: XLA's memory analysis of the partitioned
  program, lowered from abstract inputs (nothing allocated, no weights read).

  Args:
    groups: has `.model` (the base's `ModelConfig`), `.adapter`, `.ttt`.
  """
  import types

  import jax.numpy as jnp
  from flax import nnx

  from ttt import data, inner_loop, lora
  from ttt import model as model_lib
  from ttt.adapt import common as adapt_common

  key = jax.random.key(0)
  graphdef, template, base = lora.split(nnx.eval_shape(
      lambda: model_lib.make_model(groups.model, groups.adapter, key)))
  dt = model_lib._dtype(groups.model.dtype)  # noqa: SLF001
  if jnp.dtype(dt).itemsize != 2:
    dt = None  # (`ttt.weights.place` keeps a float32 base as it is)
  tasks = tasks_per_device * sharding.axis_size(mesh)

  def abstract(x, where):
    kind = dt if dt is not None and jnp.issubdtype(x.dtype,
                                                   jnp.floating) else x.dtype
    return jax.ShapeDtypeStruct(x.shape, kind, sharding=where)

  base = jax.tree.map(abstract, base,
                      sharding.param_shardings(base, mesh, groups.model))
  adapters = jax.eval_shape(lora.make_init(groups, key), None,
                            jnp.arange(tasks))
  where = adapt_common.adapter_shardings(
      types.SimpleNamespace(template=template), mesh, groups.model)
  adapters = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      adapters, where if not isinstance(where, jax.sharding.Sharding)
      else jax.tree.map(lambda _: where, adapters))
  on_tasks = sharding.task_sharding(mesh)

  def spec(*shape, kind=jnp.int32):
    return jax.ShapeDtypeStruct((tasks, *shape), kind, sharding=on_tasks)

  ds = data.TTTDataset(spec(rows, length), spec(rows, length),
                       spec(rows, length), spec(rows, length, 3),
                       spec(rows, kind=jnp.bool_), spec(rows, length))
  keys = jax.eval_shape(lambda: jax.random.split(key, tasks))
  keys = jax.ShapeDtypeStruct(keys.shape, keys.dtype, sharding=on_tasks)
  m = inner_loop.make_inner_loop(groups, graphdef).lower(
      base, adapters, ds, keys).compile().memory_analysis()
  if m is None:
    return 0.0
  return (m.argument_size_in_bytes + m.output_size_in_bytes
          - m.alias_size_in_bytes + m.temp_size_in_bytes) / GB


def fit_model_axis(groups, rows: int, length: int, memory_gb: float = 0.0,
                   devices=None) -> tuple[int, dict[int, float]]:
  """The smallest model axis M (a divisor of the device count, ascending)
  at which the TTT program of one task per task-axis device fits the budget
  (`memory_budget(memory_gb)`: per device on an accelerator; on CPU the
  process's, shared by the local devices) with `SLACK`; rows of `length`
  tokens (the run's longest, `data.max_len`). The run's own memory plan
  then checks every program at the chosen mesh (`fit_memory`).

  Returns:
    (M, {M tried: GiB per device}).

  Raises:
    InputError: no M fits, naming the figure at the largest.
  """
  devices = list(devices if devices is not None else jax.devices())
  n = len(devices)
  budget, source = memory_budget(memory_gb)
  shared = 1 if "limit" in device_memory() else len(jax.local_devices())
  tried = {}
  for m in [d for d in range(1, n + 1) if n % d == 0]:
    try:
      mesh = sharding.make_mesh(devices=devices, model_parallel=m)
    except ValueError:  # a model group would straddle hosts unevenly
      continue
    tried[m] = ttt_program_memory(groups, mesh, rows, length)
    logging.info("model axis %d: the TTT program needs %.2f GiB per device "
                 "(one task per task-axis device, rows of %d tokens)", m,
                 tried[m], length)
    if SLACK * shared * tried[m] <= budget:
      return m, tried
  m = max(tried) if tried else n
  times = f"{SLACK} x {shared} local devices x" if shared > 1 else \
      f"{SLACK} x"
  raise errors.InputError(
      f"run.model_parallel=0 (auto): no model axis fits the budget of "
      f"{budget:.2f} GiB ({source}): the TTT program of one task per "
      f"device needs {tried.get(m, float('nan')):.2f} GiB per device even "
      f"at model_parallel={m} ({times} that must fit); use more devices, "
      "shorter rows (data.max_len) or a smaller adapter")
