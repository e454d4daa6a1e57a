"""The `per_task` protocol: a fresh adapter per task (MARC, the ARChitects'
PoE paper), trained on that task's rows alone.

`make(...)` captures the ttt, adapter, model and data groups and the run's
capacities and builds the jitted programs once (adapter init; the vmapped
inner loop of `ttt.inner_loop`). Adapters are keyed by the global task
index (`fold_in(key(seed), 1)` for init, `fold_in(key(seed), task index)`
for data and steps), so results do not depend on `run.chunk_size` or on
how many hosts run. Each host builds the TTT rows of the task slots its
devices hold. Progress of the inner loop is reported from inside the
compiled program to a reporter this stage owns (a log line about 8 times
per chunk, with an ETA).
"""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from ttt import codec as codec_lib
from ttt import data, inner_loop, lora, sharding
from ttt.adapt.common import (
  Adapt,
  ChunkData,
  Protocol,
  adapter_shardings,
  slot_index,
  untrained,
)


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


def make(*, ttt: inner_loop.TTTConfig, adapter, model, data_cfg,
                  seed: int, length_bucket: int, weights, mesh,
                  caps, codec_=None) -> Adapt:
  """Builds the TTT stage of the `per_task` protocol.

  Args:
    ttt, adapter, model, data_cfg: the ttt, adapter, model and data
      groups.
    seed: the run's seed.
    length_bucket: TTT row lengths are padded to a multiple (when the
      run has no fixed length).
    weights: a placed `ttt.weights.Weights`.
    mesh: the task mesh.
    caps: the plan's `Capacities` (task slots T, row length).
    codec_: the run's `ttt.codec.Codec` (its rows; default the cells').
  """
  codec_ = codec_lib.default(codec_)
  steps = ttt.steps
  trains = ttt.enabled
  progress = _Progress()
  groups = SimpleNamespace(model=model, adapter=adapter, ttt=ttt)
  shardings = adapter_shardings(weights, mesh, model)
  programs: dict = {"init": jax.jit(
      lora.make_init(groups, jax.random.fold_in(jax.random.key(seed), 1)),
      out_shardings=shardings)}
  if trains:
    programs["train"] = inner_loop.make_inner_loop(
        groups, weights.graphdef, progress=progress)

  def build(plan, chunk: list[int]) -> ChunkData:
    slots, index, keys = slot_index(plan, chunk, caps.tasks, seed)
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
    params = weights.template if adapter.tunes_all else None
    adapters = programs["init"](params, sharding.shard_tasks(cd.task_index,
                                                             mesh))
    if cd.datasets is None:
      return adapters, untrained(n)
    logging.info("  TTT: %d tasks x %d steps", n, ttt.steps)
    progress.start(steps)
    adapters, m = programs["train"](weights.base, adapters, cd.datasets,
                                    sharding.shard_tasks(cd.keys, mesh))
    # the layout `init` gives (XLA may choose another for the trained
    # adapters on a 2-D mesh): the decoders' programs, compiled for it,
    # are reused (a no-op on the 1-D mesh)
    adapters = jax.device_put(adapters, shardings)
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

  return Adapt(build, train, token_counts, programs, inputs)


PROTOCOL = Protocol(make)
