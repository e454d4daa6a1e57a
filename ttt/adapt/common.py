"""The TTT stage's face: `ChunkData`, `Adapt`, `Protocol`.

Every protocol (`ttt.adapt.PROTOCOLS`) is a `Protocol` whose `make(...)`
returns an `Adapt`; the main job calls its functions and never asks which
protocol it runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ttt import data, sharding

PAD_INDEX = 2**31 - 1  # padding slot s gets task index PAD_INDEX - s


def adapter_shardings(weights, mesh, model):
  """The shardings of a chunk's adapters `[T, ...]` (the `init` program's
  output): tasks over the task axis; on a `(task, model)` mesh each leaf
  also split over `model` as `ttt.sharding.param_spec` says (the 'full'
  modes' per-task copies as the base; a LoRA factor on its base matrix's
  split side; prefixes replicated)."""
  if sharding.model_size(mesh) == 1:
    return sharding.task_sharding(mesh)
  return sharding.param_shardings(weights.template, mesh, model,
                                  per_task=True)


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
    programs: {name: jitted program}.
    inputs: `length -> {name: args}`: the arguments of each program for a
      chunk of padding slots with rows of `length` (the shapes and
      shardings of a chunk's call: `ttt.memory` lowers the programs on them
      for their memory analysis; {} for a stage without programs).
    prepare: `(plan, directory, stop_after=0) -> seconds`, called once
      before the chunks: a run-wide protocol adapts there (resumable in
      `directory`); per task it does nothing.
  """

  build: Callable
  train: Callable
  tokens: Callable
  programs: dict
  inputs: Callable
  prepare: Callable = lambda plan, directory, stop_after=0: 0.0


class Protocol(NamedTuple):
  """A `ttt.protocol` registry entry.

  Attributes:
    make: `(*, ttt, adapter, model, data_cfg, seed, length_bucket, weights,
      mesh, caps, codec_=None) -> Adapt` (`ttt.adapt.per_task.make`'s
      arguments).
    task_embedding: whether it learns a prefix per task (then the adapter
      mode must have one: `ttt.adapt.check`).
    report: what the report adds after the run's description (markdown;
      '' for none), e.g. that one adaptation saw every task's
      demonstrations.
  """

  make: Callable[..., Adapt]
  task_embedding: bool = False
  report: str = ""


def untrained(n: int) -> dict:
  """The TTT metrics of `n` slots where nothing trained."""
  return dict(final_loss=[None] * n, nonfinite=[False] * n, rows=[0] * n)


def slot_index(plan, chunk: list[int], tasks: int, seed: int):
  """(used slots: the chunk's tasks that are not too long, int32[tasks]
  task index per slot, padding slots `PAD_INDEX - s`; key[tasks]
  `fold_in(key(seed), task index)`)."""
  slots = [n for n in chunk if n not in plan.too_long]
  index = np.array(slots + [PAD_INDEX - s for s in range(len(slots), tasks)],
                   np.int32)
  key = jax.random.key(seed)
  keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.asarray(index))
  return slots, index, keys
