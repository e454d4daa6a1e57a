"""The TTT stage: per-chunk data, adapters created on the mesh, training.

`make_adapt(...)` captures the ttt, adapter, model and data groups and the
run's capacities and builds the stage of the run's protocol
(`PROTOCOLS[ttt.protocol]`, one face): `per_task` here -- the jitted
programs built once (adapter init; the vmapped inner loop of
`ttt.inner_loop`) -- or the run-wide `shared` / `joint` of `ttt.protocols`.
It returns an `Adapt` whose per-chunk calls take data only:

    seconds = adapt.prepare(plan, directory)  # run-wide protocols: adapt
    chunk = adapt.build(plan, task_indices)  # ChunkData: rows, keys, slots
    adapters, metrics = adapt.train(chunk)   # adapters [T] on the mesh

Adapters are keyed by the global task index (`fold_in(key(seed), 1)` for
init, `fold_in(key(seed), task index)` for data and steps), so results do
not depend on `run.chunk_size` or on how many hosts run. Each host builds
the TTT rows of the task slots its devices hold. Progress of the inner
loop is reported from inside the compiled program to a reporter this stage
owns (a log line about 8 times per chunk, with an ETA).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from ttt import codec as codec_lib
from ttt import data, inner_loop, lora, protocols, sharding

PAD_INDEX = 2**31 - 1  # padding slot s gets task index PAD_INDEX - s


class ChunkData(NamedTuple):
  """A chunk's TTT inputs.

  Attributes:
    slots: task index (in the run) of each used slot, in slot order.
    task_index: int32[T] task index per slot (padding slots: indices past
      every real task), host array.
    keys: key[T] data/step keys `fold_in(key(seed), task index)`.
    datasets: `TTTDataset` [T, N, L], task-sharded on the mesh; None when
      nothing trains here (TTT off, or a run-wide protocol).
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


class Adapt(NamedTuple):
  """The TTT stage, built once per run.

  Attributes:
    build: `(plan, task_indices) -> ChunkData` for a chunk of the plan.
    train: `ChunkData -> (adapters [T] task-sharded or None, metrics)`:
      metrics per used slot: final_loss, nonfinite, rows (lists).
    tokens: `ChunkData -> {'ttt_real', 'ttt_computed'}` TTT tokens of
      the chunk (the padded share).
    steps: optimizer steps per task (`ttt.steps`).
    programs: {name: jitted program}.
    inputs: `length -> {name: args}`: the arguments of each program for a
      chunk of padding slots with rows of `length` (the shapes and
      shardings of a chunk's call: `ttt.plan` lowers the programs on them
      for their memory analysis).
    prepare: `(plan, directory) -> seconds`, called once before the
      chunks: a run-wide protocol adapts there (resumable in `directory`);
      per task it does nothing.
  """

  build: Callable
  train: Callable
  tokens: Callable
  steps: int
  programs: dict
  inputs: Callable = lambda length: {}
  prepare: Callable = lambda plan, directory, stop_after=0: 0.0


class _Progress:
  """Logs the inner loop's step marks once each, with an ETA from the
  rate after the first mark (compilation excluded)."""

  def __init__(self):
    self.start(0)

  def start(self, total: int) -> None:
    self.total, self.t0 = total, time.perf_counter()
    self.first, self.seen = None, 0

  def __call__(self, done: int) -> None:
    if done <= self.seen:  # once per mark (tasks and shards repeat it)
      return
    self.seen, now = done, time.perf_counter()
    if self.first is None:
      self.first = (now, done)
    t1, d1 = self.first
    eta = ((now - t1) / (done - d1) * (self.total - done)
           if done > d1 else float("nan"))
    logging.info("  TTT step %d/%d (%.0fs%s)", done, self.total,
                 now - self.t0, "" if eta != eta else f", ETA {eta:.0f}s")


def make_adapt(**kwargs) -> Adapt:
  """Builds the TTT stage of `kwargs['ttt'].protocol` (the arguments of
  `make_per_task`)."""
  return PROTOCOLS[kwargs["ttt"].protocol](**kwargs)


def make_per_task(*, ttt: inner_loop.TTTConfig, adapter, model, data_cfg,
                  seed: int, length_bucket: int, weights, mesh,
                  caps, codec_=None) -> Adapt:
  """Builds the TTT stage of the `per_task` protocol.

  Args:
    ttt, adapter, model, data_cfg: the ttt, adapter, model and data
      groups.
    seed: the run's seed.
    length_bucket: TTT row lengths are padded to a multiple (when the
      run has no fixed length).
    weights: a placed `ttt.weights.Weights`, or None (a test double
      decodes: no adapters, nothing trains).
    mesh: the task mesh.
    caps: the plan's `Capacities` (task slots T, row length).
    codec_: the run's `ttt.codec.Codec` (its rows; default the cells').
  """
  codec_ = codec_lib.default(codec_)
  steps = ttt.steps
  trains = weights is not None and ttt.enabled
  progress = _Progress()
  programs: dict = {}
  if weights is not None:
    groups = SimpleNamespace(model=model, adapter=adapter, ttt=ttt)
    programs["init"] = jax.jit(
        lora.make_init(groups, jax.random.fold_in(jax.random.key(seed), 1)),
        out_shardings=sharding.task_sharding(mesh))
  if trains:
    groups = SimpleNamespace(model=model, adapter=adapter, ttt=ttt)
    programs["train"] = inner_loop.make_inner_loop(
        groups, weights.graphdef, progress=progress)

  def build(plan, chunk: list[int]) -> ChunkData:
    slots = [n for n in chunk if n not in plan.too_long]
    index = np.array(slots + [PAD_INDEX - s
                              for s in range(len(slots), caps.tasks)],
                     np.int32)
    key = jax.random.key(seed)
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.asarray(index))
    if not trains:
      return ChunkData(slots, index, keys, None,
                       np.zeros(caps.tasks, np.int32))
    mine = sharding.local_rows(caps.tasks, mesh)
    local = data.stack([
        codec_.build_rows(plan.tasks[slots[r]], data_cfg, keys[r])
        if r < len(slots) else
        data.blank(data_cfg.num_sequences, data_cfg.max_len, codec_.pad)
        for r in mine])
    # (a run-wide length needs no collective; every host takes one branch)
    length = caps.ttt_len or data.bucket_length(
        sharding.global_max(data.real_length(local, codec_.pad)),
        length_bucket,
        data_cfg.max_len)
    local = data.trim(local, length, codec_.pad)
    if data_cfg.pack:  # several rows a sequence; `rows` counts the rows
      local = data.pack_tasks(local, codec_.pad)
    rows = data.row_counts(local)
    real = (local.tokens != codec_.pad).sum(-1)  # [T_local, N]
    used = [i for i, r in enumerate(mine) if r < len(slots)]
    row_tokens = float(sum(real[i][local.valid[i]].mean() for i in used
                           if local.valid[i].any()))
    return ChunkData(slots, index, keys,
                     sharding.put_rows(local, caps.tasks, mesh),
                     sharding.gather(sharding.put_rows(rows, caps.tasks,
                                                       mesh)),
                     sharding.global_sum(row_tokens), length)

  def train(cd: ChunkData) -> tuple[Any, dict]:
    n = len(cd.slots)
    untrained = dict(final_loss=[None] * n, nonfinite=[False] * n,
                     rows=[0] * n)
    if weights is None:  # a test double decodes: no model, no adapters
      return None, untrained
    params = weights.template if adapter.tunes_all else None
    adapters = programs["init"](params, sharding.shard_tasks(cd.task_index,
                                                             mesh))
    if cd.datasets is None:
      return adapters, untrained
    logging.info("  TTT: %d tasks x %d steps", n, ttt.steps)
    progress.start(steps)
    adapters, m = programs["train"](weights.base, adapters, cd.datasets,
                                    sharding.shard_tasks(cd.keys, mesh))
    m = sharding.gather(dict(final_loss=m["final_loss"],
                             nonfinite=m["nonfinite"]))
    jax.block_until_ready(adapters)
    return adapters, dict(
        final_loss=[float(x) for x in m["final_loss"][:n]],
        nonfinite=[bool(x) for x in m["nonfinite"][:n]],
        rows=[int(x) for x in cd.rows[:n]])

  def token_counts(cd: ChunkData) -> dict:
    if cd.datasets is None:
      return dict(ttt_real=0.0, ttt_computed=0.0)
    per_step = ttt.steps * ttt.batch_size
    return dict(ttt_real=cd.row_tokens * per_step,
                ttt_computed=float(caps.tasks * per_step * cd.length))

  def inputs(length: int) -> dict:
    if weights is None:
      return {}
    params = weights.template if adapter.tunes_all else None
    index = np.arange(caps.tasks, dtype=np.int32)
    out = {"init": (params, sharding.shard_tasks(index, mesh))}
    if trains:
      adapters = programs["init"](*out["init"])
      blank = data.blank(data_cfg.num_sequences, length)
      keys = jax.vmap(jax.random.key)(jnp.asarray(index))
      mine = sharding.local_rows(caps.tasks, mesh)
      out["train"] = (weights.base, adapters, sharding.put_rows(
          data.stack([blank] * len(mine)), caps.tasks, mesh),
                      sharding.shard_tasks(keys, mesh))
    return out

  return Adapt(build, train, token_counts, steps, programs, inputs)


# ttt.protocol -> the stage's factory (one face: `Adapt`)
PROTOCOLS: dict[str, Callable[..., Adapt]] = {
    "per_task": make_per_task,
    "shared": protocols.make_run_wide,
    "joint": protocols.make_run_wide,
}

