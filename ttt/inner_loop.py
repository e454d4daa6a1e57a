"""The TTT inner loop: per-task adapter training, vmapped over tasks.

`make_inner_loop(config)` returns ONE jitted function

    (base, adapters[T], datasets[T], keys[T]) -> (adapters[T], metrics[T])

written for one task (`make_train_task`) and batched with `jax.vmap` over the
task axis (base weights broadcast, everything else mapped). Steps run in
`lax.scan`; each draws a minibatch of the task's valid sequences (epochs
without replacement; invalid rows are never drawn), computes the masked
cross-entropy on the loss-mask tokens and takes one AdamW step (warm-up +
cosine, gradient clipping per task).

Tasks are independent: there is no reduction across the task axis, so the
task axis can be sharded over devices (`ttt.sharding`) without
communication, and a task whose loss or gradient goes non-finite is frozen
and finally reset to its initial adapter (`metrics['nonfinite']`) without
touching any other task's numbers. A task with no valid row (e.g. mesh
padding) keeps its initial adapter (`metrics['has_data']` False).

This module trains adapters; it does not build data (`ttt.data`) or decode.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import chex
import jax
import jax.numpy as jnp
import optax

from ttt import configlib, lora, optim
from ttt import model as model_lib


@dataclasses.dataclass(frozen=True)
class TTTConfig:
  """Inner-loop settings (fields mirror `config.ttt`); MARC's defaults."""

  steps: int = 32  # optimizer steps per task
  batch_size: int = 2  # sequences per step (MARC: 2)
  lr: float = 1e-4  # peak learning rate
  warmup_frac: float = 0.1  # linear warm-up share of the steps
  weight_decay: float = 0.01  # AdamW decoupled weight decay
  b1: float = 0.9  # Adam beta1
  b2: float = 0.999  # Adam beta2
  clip_norm: float = 1.0  # per-task global gradient-norm clip (0: off)
  # The main job's switches (the inner loop itself ignores them):
  enabled: bool = True  # False: no TTT (the base model's predictions)
  # 'per_task' (a fresh adapter per task, MARC), 'shared' (one adapter over
  # all the run's tasks, steps x tasks) or 'joint' (one run over all tasks'
  # rows with a learned prefix per task: a prefix adapter mode)
  protocol: str = "per_task"
  # rows per optimizer step of a run-wide adaptation (0: batch_size); its
  # steps are scaled so it sees steps x tasks x batch_size rows in all
  run_wide_batch: int = 0

  def validate(self) -> None:
    import math  # (local: this method is the only code that needs it)

    if self.steps < 1 or self.batch_size < 1:
      raise ValueError("ttt.steps and ttt.batch_size must be >= 1")
    if self.run_wide_batch < 0:
      raise ValueError(f"ttt.run_wide_batch must be >= 0, got "
                       f"{self.run_wide_batch!r}")
    if not 0 <= self.warmup_frac < 1:  # NaN fails too
      raise ValueError("ttt.warmup_frac must be in [0, 1), got "
                       f"{self.warmup_frac!r}")
    if not math.isfinite(self.lr) or self.lr <= 0:
      raise ValueError(f"ttt.lr must be a finite number > 0, got "
                       f"{self.lr!r}")
    for name in ("weight_decay", "clip_norm"):
      v = getattr(self, name)
      if not math.isfinite(v) or v < 0:
        raise ValueError(f"ttt.{name} must be a finite number >= 0, got "
                         f"{v!r}")
    for name in ("b1", "b2"):
      v = getattr(self, name)
      if not 0 <= v < 1:  # NaN fails too
        raise ValueError(f"ttt.{name} must be in [0, 1), got {v!r}")


def make_schedule(cfg: TTTConfig) -> optax.Schedule:
  """Linear warm-up to `lr`, then cosine decay to 0 at `steps`."""
  return optim.ttt_schedule(cfg)


def make_optimizer(cfg: TTTConfig) -> optax.GradientTransformation:
  """Clip (per task under vmap), then AdamW on the schedule."""
  return optim.clipped_adamw(make_schedule(cfg), cfg)


def draw_rows(key: jax.Array, valid: jax.Array, step: jax.Array,
              batch_size: int) -> jax.Array:
  """Row indices int32[B] for `step`: epochs over valid rows, no replacement.

  Epoch e is a permutation of the valid rows drawn from `fold_in(key, e)`;
  step s takes the consecutive draws s*B .. s*B+B-1 of the epoch sequence.
  With no valid row it returns row indices anyway (their mask is empty).
  """
  n = valid.shape[0]
  n_valid = jnp.maximum(valid.sum(), 1)
  draws = step * batch_size + jnp.arange(batch_size)

  def row(draw):
    u = jax.random.uniform(jax.random.fold_in(key, draw // n_valid), (n,))
    order = jnp.argsort(jnp.where(valid, u, 2.0))  # valid rows first
    return order[draw % n_valid]

  return jax.vmap(row)(draws)


def sequence_loss(model, batch) -> tuple[jax.Array, jax.Array]:
  """Masked next-token cross-entropy, averaged over target tokens.

  Args:
    model: a `ttt.model.Transformer`.
    batch: a `ttt.data.TTTDataset` slice with leaves [B, L] ([B, L, 3]).

  Returns:
    (float32[] mean loss, float32[] number of target tokens).
  """
  ll, weights = model_lib.target_logprobs(model, batch)
  count = weights.sum()
  return -(ll * weights).sum() / jnp.maximum(count, 1.0), count


def make_train_task(config: Any, graphdef=None,
                    progress: Callable[[int], None] | None = None):
  """The inner loop for ONE task (pure, unjitted).

  Args:
    config: has `.model`, `.adapter` and `.ttt` groups.
    graphdef: the model's graphdef from `lora.split` (default: built from
      the config).
    progress: optional host function `progress(steps_done)`, called from
      inside the compiled loop about 8 times per run (a
      `jax.debug.callback`; once per task or device shard, so it should
      ignore repeats). Leave it None for `jax.export` to another
      platform, which cannot carry a host callback.

  Returns:
    `train_task(base, adapter, data, key) -> (adapter, metrics)` with
    `data` a `TTTDataset` for one task ([N, L] leaves) and metrics
    `loss`, `grad_norm`, `lr` float32[steps], `final_loss` float32[] (the
    trained adapter's loss on the last step's rows), `nonfinite` (any step,
    or the trained adapter, non-finite: the adapter is reset), `has_data`
    bool[].
  """
  cfg = configlib.from_config(TTTConfig, config.ttt)
  if graphdef is None:
    graphdef = lora.abstract_split(config)[0]
  optimizer = make_optimizer(cfg)
  schedule = make_schedule(cfg)
  every = max(cfg.steps // 8, 1)  # progress callbacks per run: about 8

  def _report(step) -> None:
    progress(int(step))

  def loss_of(adapter, base, batch):
    return sequence_loss(lora.merge(graphdef, adapter, base), batch)[0]

  def train_task(base, adapter0, data, key):
    has_data = data.valid.any()

    def step(carry, s):
      adapter, opt_state, ok = carry
      rows = draw_rows(key, data.valid, s, cfg.batch_size)
      batch = jax.tree.map(lambda x: x[rows], data)
      loss, grads = jax.value_and_grad(loss_of)(adapter, base, batch)
      grad_norm = optax.tree.norm(grads)
      updates, new_state = optimizer.update(grads, opt_state, adapter)
      new_adapter = optax.apply_updates(adapter, updates)
      ok = ok & jnp.isfinite(loss) & jnp.isfinite(grad_norm)
      keep = lambda new, old: jnp.where(ok, new, old)  # noqa: E731
      adapter = jax.tree.map(keep, new_adapter, adapter)
      opt_state = jax.tree.map(keep, new_state, opt_state)
      if progress:
        jax.lax.cond(s % every == every - 1,
                     lambda: jax.debug.callback(_report, s + 1),
                     lambda: None)
      return (adapter, opt_state, ok), dict(loss=loss, grad_norm=grad_norm,
                                            lr=schedule(s))

    init = (adapter0, optimizer.init(adapter0), jnp.bool_(True))
    (adapter, _, ok), metrics = jax.lax.scan(step, init, jnp.arange(cfg.steps))
    # The trained adapter itself: its loss on the last step's rows (a last
    # update can blow up without any step's loss showing it).
    rows = draw_rows(key, data.valid, cfg.steps - 1, cfg.batch_size)
    final = loss_of(adapter, base, jax.tree.map(lambda x: x[rows], data))
    ok = ok & jnp.isfinite(final)
    trained = ok & has_data
    adapter = jax.tree.map(lambda a, a0: jnp.where(trained, a, a0), adapter,
                           adapter0)
    metrics.update(nonfinite=~ok, has_data=has_data, final_loss=final)
    return adapter, metrics

  return train_task


def make_inner_loop(config: Any, graphdef=None, *,
                    max_traces: int | None = None,
                    progress: Callable[[int], None] | None = None):
  """The jitted inner loop over T tasks at once.

  Args:
    config: has `.model`, `.adapter` and `.ttt` groups.
    graphdef: optional graphdef from `lora.split` of the model in use.
    max_traces: if given, raise when the function is traced more often
      (`chex.assert_max_traces`): a guard against silent recompilation.
    progress: optional host function `progress(steps_done)` (see
      `make_train_task`).

  Returns:
    `inner_loop(base, adapters, datasets, keys) -> (adapters, metrics)`:
    base: the frozen State (shared); adapters: State with leaves [T, ...];
    datasets: `TTTDataset` with leaves [T, N, L]; keys: key[T]
    (use `fold_in(key, task_index)`). metrics: dict of [T, steps] and [T].
    Shard the task axis with `ttt.sharding.shard_tasks`.
  """
  train_task = make_train_task(config, graphdef, progress)
  if max_traces is not None:
    train_task = chex.assert_max_traces(train_task, n=max_traces)
  return jax.jit(jax.vmap(train_task, in_axes=(None, 0, 0, 0)))


def task_leaf(path) -> bool:
  """A leaf of the per-task part under the joint protocol: the learned
  prefix (the task embedding); every other adapted variable is shared."""
  return jax.tree_util.keystr(path).startswith("['prefix']")


def pick_task(state, task, per_task=task_leaf):
  """One task's adapter from a run-wide state (per-task leaves [E, ...]
  indexed by `task`, shared leaves as they are); with `task` int32[B], the
  per-task leaves of B rows' tasks ([B, ...])."""
  return jax.tree_util.tree_map_with_path(
      lambda p, x: x[task] if per_task(p) else x, state)


def make_run_wide_segment(config: Any, graphdef, *, total_steps: int,
                          segment: int, per_task: Callable | None = None):
  """ONE adaptation over the rows of all the run's tasks, `segment` steps a
  call (the run-wide protocols: `shared`, `joint`).

  Args:
    config: has `.model`, `.adapter` and `.ttt` groups (ttt.steps is the
      per-task budget; the schedule runs over `total_steps`).
    graphdef: the model's graphdef from `lora.split`.
    total_steps: optimizer steps of the whole adaptation (warm-up and
      cosine decay over these).
    segment: steps per call (a killed run resumes after the last call).
    per_task: `path -> bool`, the leaves held per task ([E, ...], E task
      embeddings, indexed by each row's task): the model's prefix only
      (`task_leaf`; gathered to one per row); None: everything shared.

  Returns:
    `segment_fn(base, state, opt_state, ok, batches, start) -> (state,
    opt_state, ok, metrics)` jitted: `batches` a `TTTDataset` with leaves
    [segment, B, L] (the rows of steps start .. start+segment-1, drawn on
    the host with `draw_rows` over all valid rows) plus `task` int32[
    segment, B]; metrics `loss` float32[segment], `final_loss` (the state
    after the call on its last step's rows). A non-finite step freezes the
    state from there on (`ok` False); steps >= total_steps are not taken.
    And `init_opt(state)`, the optimizer's initial state.
  """
  cfg = dataclasses.replace(configlib.from_config(TTTConfig, config.ttt),
                            steps=total_steps)
  optimizer = make_optimizer(cfg)
  per_task = per_task or (lambda p: False)

  def loss_of(state, base, batch, task):
    # every row under its own task's embedding in ONE batched forward: the
    # per-task leaves are the prefix (`task_leaf`), gathered per row to
    # [B, P, d], which the model reads row by row (a vmap over rows of a
    # batch-1 model ran each row's matmuls alone: 2.5x the time per row)
    model = lora.merge(graphdef, pick_task(state, task, per_task), base)
    ll, w = model_lib.target_logprobs(model, batch)
    return -(ll * w).sum() / jnp.maximum(w.sum(), 1.0)

  def segment_fn(base, state, opt_state, ok, batches, start):
    rows, tasks = batches

    def step(carry, xs):
      state, opt_state, ok = carry
      batch, task, s = xs
      loss, grads = jax.value_and_grad(loss_of)(state, base, batch, task)
      updates, new_opt = optimizer.update(grads, opt_state, state)
      new = optax.apply_updates(state, updates)
      ok = ok & jnp.isfinite(loss) & jnp.isfinite(optax.tree.norm(grads))
      take = ok & (s < total_steps)
      keep = lambda n, o: jnp.where(take, n, o)  # noqa: E731
      return ((jax.tree.map(keep, new, state),
               jax.tree.map(keep, new_opt, opt_state), ok), loss)

    steps = start + jnp.arange(segment)
    (state, opt_state, ok), losses = jax.lax.scan(
        step, (state, opt_state, ok), (rows, tasks, steps))
    last = jax.tree.map(lambda x: x[-1], (rows, tasks))
    final = loss_of(state, base, *last)
    return state, opt_state, ok & jnp.isfinite(final), dict(
        loss=losses, final_loss=final)

  return jax.jit(segment_fn, donate_argnums=(1, 2)), jax.jit(optimizer.init)
