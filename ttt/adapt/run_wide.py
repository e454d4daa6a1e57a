"""The run-wide TTT protocols: one adaptation over all the run's tasks.

Two entries of `ttt.adapt.PROTOCOLS` (`SHARED`, `JOINT`: the same `make`,
told whether each task learns its own prefix):

* `shared`: ONE adapter trained on the rows of every task of the run
  (the ARChitects in 2024), then used for each task.
* `joint`: one adaptation over the rows of every task in which each
  task has its own learned prefix (a task embedding: mdlARC, TRM, HRM),
  trained together with the shared part (LoRA, or every weight in
  'full+prefix' mode); each task is then decoded with its own prefix. Needs
  a prefix adapter mode ('prefix', 'lora+prefix', 'full+prefix').

Both see the demonstrations of every test task at once (never a test
output: the rows are the same leave-one-out rows per_task trains on); the
report says so. Budget: the per_task protocol's rows, `ttt.steps` x tasks x
`ttt.batch_size`, spent on one adaptation in steps of `ttt.run_wide_batch`
rows (default `ttt.batch_size`: then `ttt.steps` x tasks steps; a larger
batch takes proportionally fewer, larger steps -- the rows of one step are
computed together, as the per_task program computes all its tasks' rows
of a step together), drawn in epochs without replacement over all tasks'
valid rows; warm-up and cosine decay run over all of it.

The adaptation runs before the first chunk (`Adapt.prepare`) in segments of
up to `ttt.steps` steps (`_segment`; one compiled program, called until
done), writing its state (adapter, optimizer state, step, seconds) to
`<workdir>/protocol/<config digest>/state.npz` at most every
`SAVE_EVERY_S` seconds and
when done: a killed run resumes the adaptation from the last save, not from
scratch, and a resumed run whose chunks are partly done reuses the finished
state. The rows each step trains on depend only on the step (drawn from
one run key), so a resumed adaptation equals an uninterrupted one. Per
chunk, `train` only assembles the slots' adapters from the state.

Several hosts: every host builds every row and runs the same adaptation
(like the cells' data, deterministic); process 0 writes the state, and a
host resumes from it only where it can read process 0's workdir.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from types import SimpleNamespace

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
from ttt.errors import InputError

SAVE_EVERY_S = 60.0  # seconds of adaptation between saves of its state
STATE_FILE = "state.npz"
_RUN_KEY = 2**31 - 2**20  # fold_in index of the run-wide row draw (task
# indices are below it; mesh padding slots sit just under 2**31 - 1)


def run_rows(plan, data_cfg, codec_, seed: int, length: int,
             length_bucket: int):
  """Every trained task's TTT rows, flattened.

  Returns:
    (rows `TTTDataset` [R, L] of the valid rows (packed sequences with
    `data.pack`) in task order, task number int32[R] (0.. in `order`),
    order: the plan's task indices that have rows, rows per task {task
    index: count}, mean real tokens per row). L is `length` when fixed
    (> 0), else the longest row bucketed.
  """
  key = jax.random.key(seed)
  order, parts, counts = [], [], {}
  for n in range(len(plan.tasks)):
    if n in plan.too_long:
      continue
    ds = codec_.build_rows(plan.tasks[n], data_cfg,
                           jax.random.fold_in(key, n))
    ds = data.trim(ds, max(data.real_length(ds, codec_.pad), 1), codec_.pad)
    counts[n] = int(ds.valid.sum())
    order.append(n)
    parts.append(ds)
  longest = max([data.real_length(p, codec_.pad) for p in parts] or [1])
  length = length or data.bucket_length(longest, length_bucket,
                                        data_cfg.max_len)
  flat, task = [], []
  for j, ds in enumerate(parts):
    ds = _pad_length(ds, length, codec_.pad)
    if data_cfg.pack:  # several of a task's rows a sequence (`data.pack`)
      ds = data.pack(ds, codec_.pad)
    keep = np.flatnonzero(ds.valid)
    flat.append(jax.tree.map(lambda x, k=keep: x[k], ds))
    task.append(np.full(len(keep), j, np.int32))
  if not flat:
    return None, np.zeros(0, np.int32), order, counts, 0.0
  rows = jax.tree.map(lambda *x: np.concatenate(x), *flat)
  real = float((rows.tokens != codec_.pad).sum(-1).mean()) if len(
      rows.valid) else 0.0
  return rows, np.concatenate(task), order, counts, real


def _segment(total: int, steps: int) -> int:
  """Steps per call: the largest divisor of `total` up to `steps` (no step
  of the last call computed and thrown away), or `steps` when that divisor
  is under a quarter of it (then the last call's surplus steps are masked)."""
  best = max(d for d in range(1, min(steps, total) + 1) if total % d == 0)
  return best if 4 * best >= min(steps, total) else steps


def _pad_length(ds, length: int, pad: int):
  """A one-task dataset [N, L'] padded along its sequence axis to `length`
  (padding tokens, no loss, position 0: what `data.stack_rows` pads with)."""
  def one(name, x):
    if name == "valid" or x.shape[1] == length:
      return x
    width = [(0, 0)] * x.ndim
    width[1] = (0, length - x.shape[1])
    return np.pad(x, width, constant_values=pad if name == "tokens" else 0)
  return type(ds)(*(one(n, x) for n, x in zip(ds._fields, ds, strict=True)))


def _save(path: str, leaves: list, meta: dict) -> None:
  """Writes the leaves and meta to `path` atomically (a fresh temporary
  file from `mkstemp`, never a fixed name a planted link could hold; then
  `os.replace`)."""
  import tempfile
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      np.savez(f, meta=np.array(json.dumps(meta)),
               **{f"leaf{i}": np.asarray(x) for i, x in enumerate(leaves)})
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def _load(path: str, like: list, meta_want: dict):
  """(leaves, meta) stored at `path` if it matches `like` (shapes, dtypes)
  and `meta_want` (what the adaptation was: steps, rows); None if there is
  no file. A file that does not match is named and not reused."""
  if not os.path.exists(path):
    return None
  try:
    with np.load(path, allow_pickle=False) as z:
      meta = json.loads(str(z["meta"]))
      leaves = [z[f"leaf{i}"] for i in range(len(like))]
  except Exception as e:  # noqa: BLE001 -- one line naming the file
    raise InputError(f"{path}: the run-wide adaptation's saved state cannot "
                     f"be read ({type(e).__name__}: {str(e)[:200]}); delete "
                     "it to adapt from scratch") from e
  same = all(tuple(a.shape) == tuple(b.shape) and a.dtype == b.dtype
             for a, b in zip(leaves, like, strict=True))
  if not same or any(meta.get(k) != v for k, v in meta_want.items()):
    raise InputError(f"{path}: the saved run-wide adaptation is of another "
                     f"run ({ {k: meta.get(k) for k in meta_want} } vs "
                     f"{meta_want}); delete it to adapt from scratch")
  return leaves, meta


def _rows_on_mesh(tree, mesh):
  """Host leaves [segment, B, ...] with each step's B rows split over the
  mesh's devices (data parallel: the run-wide state is replicated and XLA
  sums the gradient over devices; before, one device computed every row
  while the others idled). Replicated when B does not divide. Every host
  holds the same draw and hands over its devices' part."""
  size = sharding.axis_size(mesh)

  def put(x):
    x = np.asarray(x)
    split = x.ndim > 1 and x.shape[1] % size == 0
    where = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(
        None, mesh.axis_names[0]) if split else jax.sharding.PartitionSpec())
    return jax.make_array_from_callback(x.shape, where, lambda i: x[i])

  return jax.tree.map(put, tree)


def make(task_embedding: bool, *, ttt, adapter, model, data_cfg, seed: int,
         length_bucket: int, weights, mesh, caps, codec_=None,
         save_every_s: float | None = None) -> Adapt:
  """The TTT stage of a run-wide protocol (arguments as
  `ttt.adapt.per_task.make`; `task_embedding`: each task trains its own
  prefix, `joint`, or every task shares one adapter, `shared`).

  `prepare(plan, directory, stop_after=0)` runs the adaptation (resuming
  from `directory`; `stop_after` > 0 stops after that many segments, how
  tests kill it) and returns its seconds (those of earlier attempts
  included); `build` / `train` per chunk then assemble adapters from it.
  """
  codec_ = codec_lib.default(codec_)
  per_task = inner_loop.task_leaf if task_embedding else None
  trains = ttt.enabled
  every = SAVE_EVERY_S if save_every_s is None else save_every_s
  key1 = jax.random.fold_in(jax.random.key(seed), 1)
  groups = SimpleNamespace(model=model, adapter=adapter, ttt=ttt)
  programs: dict = {}
  run: dict = {}  # the adaptation: state, order, rows per task, metrics

  init = lora.make_init(groups, key1)
  programs["init"] = jax.jit(
      init, out_shardings=adapter_shardings(weights, mesh, model))
  programs["assemble"] = jax.jit(
      lambda state, j: jax.vmap(lambda t: inner_loop.pick_task(
          state, t, per_task or (lambda p: False)))(j),
      out_shardings=adapter_shardings(weights, mesh, model))
  # one task's fresh shared part; every task's fresh prefix (jit keeps
  # only what each returns: no copies of the weights per task)
  init_one = jax.jit(lambda params, i: jax.tree.map(
      lambda x: x[0], init(params, i)))
  init_prefix = jax.jit(lambda params, i: lora.split_prefix(
      init(params, i))[0])

  def fresh_state(order):
    params = weights.template if adapter.tunes_all else None
    state = init_one(params, jnp.zeros(1, jnp.int32))
    if per_task is None:
      return state
    prefix = init_prefix(params, jnp.asarray(order, jnp.int32))
    return lora.merge_prefix(prefix, lora.split_prefix(state)[1])

  def prepare(plan, directory: str, stop_after: int = 0) -> float:
    if not trains:
      return 0.0
    t0 = time.perf_counter()
    rows, task, order, counts, real = run_rows(
        plan, data_cfg, codec_, seed, caps.ttt_len, length_bucket)
    run.update(order={n: j for j, n in enumerate(order)}, counts=counts)
    if rows is None:
      raise InputError("the run-wide TTT protocol has no task with TTT rows "
                       "(every task too long or without demonstrations)")
    batch = ttt.run_wide_batch or ttt.batch_size
    seen = ttt.steps * len(order) * ttt.batch_size  # rows, as per task
    total = -(-seen // batch)
    segment = _segment(total, ttt.steps)
    length = rows.tokens.shape[1]
    run["tokens"] = dict(real=real * total * batch,
                         computed=float(total * batch * length),
                         tasks=len(order))
    if "train" not in programs:
      g = SimpleNamespace(model=model, adapter=adapter,
                          ttt=dataclasses.replace(ttt, steps=segment,
                                                  batch_size=batch))
      programs["train"], programs["opt_init"] = (
          inner_loop.make_run_wide_segment(
              g, weights.graphdef, total_steps=total, segment=segment,
              per_task=per_task))
      draw_key = jax.random.fold_in(jax.random.key(seed), _RUN_KEY)
      valid = jnp.ones(len(task), bool)
      programs["draw"] = jax.jit(jax.vmap(lambda s: inner_loop.draw_rows(
          draw_key, valid, s, batch)))
    state = fresh_state(order)
    opt = programs["opt_init"](state)
    carry = sharding.replicate((state, opt, jnp.bool_(True)), mesh)
    treedef = jax.tree.structure(carry)
    path = os.path.join(directory, STATE_FILE)
    # `config`: the digest of the run's fingerprint (the folder's name),
    # stored in the state: a state copied into another config's folder
    # is refused, not resumed
    want = dict(total=total, batch=batch, rows=int(len(task)),
                length=int(length), tasks=len(order),
                config=os.path.basename(os.path.normpath(directory)))
    got = _load(path, jax.tree.leaves(carry), want)
    step, seconds, losses = 0, 0.0, []
    if got is not None:
      leaves, meta = got
      carry = sharding.replicate(jax.tree.unflatten(treedef, leaves), mesh)
      step, seconds = int(meta["step"]), float(meta["seconds"])
      losses = list(meta.get("losses", []))
      run["final_loss"] = meta.get("final_loss")
      logging.info("  TTT (%s): resumed at step %d/%d", ttt.protocol, step,
                   total)
    main = sharding.is_main()
    if main:
      os.makedirs(directory, exist_ok=True)
    logging.info("  TTT (%s protocol): one adaptation over %d tasks' %d "
                 "rows of %d tokens, %d steps of %d rows", ttt.protocol,
                 len(order), len(task), length, total, batch)
    saved, segments, t_seg = time.perf_counter(), 0, time.perf_counter()
    while step < total:
      idx = np.asarray(programs["draw"](jnp.arange(step, step + segment)))
      drawn = _rows_on_mesh((jax.tree.map(lambda x, i=idx: x[i], rows),
                             task[idx]), mesh)
      *carry, m = programs["train"](weights.base, *carry, drawn,
                                    jnp.int32(step))
      carry = tuple(carry)
      step = min(step + segment, total)
      segments += 1
      losses.append(float(np.asarray(m["loss"]).mean()))
      run["final_loss"] = float(m["final_loss"])
      now = time.perf_counter()
      eta = (now - t_seg) / segments * (total - step) / segment
      logging.info("  TTT step %d/%d: mean loss %.4f (%.0fs, ETA %.0fs)",
                   step, total, losses[-1], now - t0, eta)
      done = step >= total or (stop_after and segments >= stop_after)
      if main and (done or now - saved >= every):
        meta = dict(want, step=step, losses=losses,
                    final_loss=run["final_loss"],
                    seconds=seconds + now - t0)
        _save(path, [np.asarray(x) for x in jax.tree.leaves(carry)], meta)
        saved = now
      if stop_after and segments >= stop_after and step < total:
        run.clear()
        return seconds + time.perf_counter() - t0
    run["state"], run["ok"] = carry[0], bool(carry[2])
    run["losses"] = losses
    return seconds + time.perf_counter() - t0

  def build(plan, chunk: list[int]) -> ChunkData:
    slots, index, keys = slot_index(plan, chunk, caps.tasks, seed)
    rows = np.array([run.get("counts", {}).get(n, 0) for n in slots]
                    + [0] * (caps.tasks - len(slots)), np.int32)
    return ChunkData(slots, index, keys, None, rows)

  def train(cd):
    n = len(cd.slots)
    if not trains:
      params = weights.template if adapter.tunes_all else None
      return programs["init"](params, sharding.shard_tasks(
          cd.task_index, mesh)), untrained(n)
    if "state" not in run:
      raise RuntimeError("the run-wide adaptation has not run: call "
                         "Adapt.prepare before the chunks")
    j = np.array([run["order"].get(s, 0) for s in cd.slots]
                 + [0] * (len(cd.task_index) - n), np.int32)
    adapters = programs["assemble"](run["state"], sharding.shard_tasks(j,
                                                                       mesh))
    jax.block_until_ready(adapters)
    return adapters, dict(final_loss=[run["final_loss"]] * n,
                          nonfinite=[not run["ok"]] * n,
                          rows=[int(x) for x in cd.rows[:n]])

  def token_counts(cd) -> dict:
    t = run.get("tokens")
    if not t or not cd.slots:
      return dict(ttt_real=0.0, ttt_computed=0.0)
    share = len(cd.slots) / t["tasks"]  # the chunk's share of the run's
    return dict(ttt_real=t["real"] * share, ttt_computed=t["computed"] * share)

  def inputs(length: int) -> dict:
    del length  # the per-chunk programs do not see rows
    params = weights.template if adapter.tunes_all else None
    return {"init": (params, sharding.shard_tasks(
        np.arange(caps.tasks, dtype=np.int32), mesh))}

  return Adapt(build, train, token_counts, programs, inputs, prepare)


def _report(name: str, decoded: str) -> str:
  return (f" **Protocol {name}: one adaptation over the demonstrations of "
          "all the run's test tasks at once** (never their test outputs); "
          f"{decoded}.")


SHARED = Protocol(functools.partial(make, False), task_embedding=False,
                  report=_report("shared",
                                 "every task decoded with the one adapter"))
JOINT = Protocol(functools.partial(make, True), task_embedding=True,
                 report=_report("joint", "each task decoded with its own "
                                "learned prefix"))
