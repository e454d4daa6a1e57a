"""Learning-rate schedules and the clipped AdamW shared by every trainer.

* `ttt_schedule(cfg)`: the TTT inner loop's linear warm-up (`warmup_frac` of
  the steps) to `lr`, then cosine decay to 0 at `steps`.
* `pretrain_schedule(cfg)`: initial training's warm-up (`warmup_steps`) to
  `lr`, cosine decay to `lr * end_lr_frac` at `steps`.
* `clipped_adamw(schedule, cfg)`: global-norm clipping (`cfg.clip_norm`, 0:
  off) then AdamW (`cfg.b1`, `cfg.b2`, `cfg.weight_decay`). Under `jax.vmap`
  over tasks the clip is per task (the norm is computed inside the mapped
  function).

`cfg` is any object with those fields (`ttt.inner_loop.TTTConfig`,
`ttt.pretrain.PretrainConfig`).
"""

from __future__ import annotations

from typing import Any

import optax


def ttt_schedule(cfg: Any) -> optax.Schedule:
  """Linear warm-up to `cfg.lr`, then cosine decay to 0 at `cfg.steps`."""
  warmup = int(round(cfg.warmup_frac * cfg.steps))
  if warmup == 0:
    return optax.cosine_decay_schedule(cfg.lr, max(cfg.steps, 1))
  return optax.warmup_cosine_decay_schedule(
      0.0, cfg.lr, warmup_steps=warmup, decay_steps=max(cfg.steps, warmup + 1),
      end_value=0.0)


def pretrain_schedule(cfg: Any) -> optax.Schedule:
  """Linear warm-up to `cfg.lr`, cosine decay to `lr * end_lr_frac`."""
  return optax.warmup_cosine_decay_schedule(
      0.0, cfg.lr, warmup_steps=min(cfg.warmup_steps, cfg.steps - 1),
      decay_steps=cfg.steps, end_value=cfg.lr * cfg.end_lr_frac)


def clipped_adamw(schedule, cfg: Any) -> optax.GradientTransformation:
  """Global-norm clip (`cfg.clip_norm`, 0: off), then AdamW on `schedule`
  with `cfg.b1`, `cfg.b2`, `cfg.weight_decay`."""
  adamw = optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2,
                      weight_decay=cfg.weight_decay)
  if cfg.clip_norm > 0:
    return optax.chain(optax.clip_by_global_norm(cfg.clip_norm), adamw)
  return adamw
