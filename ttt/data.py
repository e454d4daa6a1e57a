"""Leave-one-out tasks and the per-task TTT datasets (host side, numpy).

`leave_one_out(task)` turns K demonstrations into K tasks, each holding one
demonstration out as its query; `build_ttt_dataset(task, config, key)` expands
those by sampled group elements (`ttt.augment`), encodes them (`ttt.tokens`),
drops duplicates and sequences longer than `max_len`, and returns fixed-shape
arrays `[N, L]` ready to be stacked over tasks for the compiled inner loop.

This module builds data; it does not train (`ttt.inner_loop`) or pick views
for inference (`ttt.decode`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import numpy as np

from ttt import arc, augment, configlib, tokens


def leave_one_out(task: arc.Task) -> list[arc.Task]:
  """One task per demonstration, in demonstration order.

  Task k holds demonstration k as its single test pair and the other
  demonstrations, in their original order, as `train`. Its id is
  `'<id>/loo<k>'`. A task with fewer than 2 demonstrations gives [].
  """
  if len(task.train) < 2:
    return []
  return [
      arc.Task(f"{task.id}/loo{k}", task.train[:k] + task.train[k + 1:],
               [task.train[k]])
      for k in range(len(task.train))
  ]


def leave_two_out(task: arc.Task) -> list[arc.Task]:
  """Tasks holding demonstration i out as the query and j != i out entirely.

  Ordered by (i, j); `train` keeps the original order of the other K - 2
  demonstrations; ids `'<id>/l2o<i>_<j>'`. Needs K >= 3, else [].
  """
  k = len(task.train)
  if k < 3:
    return []
  return [
      arc.Task(f"{task.id}/l2o{i}_{j}",
               [p for n, p in enumerate(task.train) if n not in (i, j)],
               [task.train[i]])
      for i in range(k) for j in range(k) if j != i
  ]


def end_to_end(task: arc.Task) -> list[arc.Task]:
  """The paper's end-to-end ablation: each demonstration alone, no context."""
  return [arc.Task(f"{task.id}/e2e{k}", [], [pair])
          for k, pair in enumerate(task.train)]


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """How a task's TTT dataset is built (fields mirror `config.data`)."""

  max_len: int = 2048  # L: tokens per sequence; longer sequences are dropped
  num_sequences: int = 250  # N: rows per task (MARC's cap)
  leave_out: str = "one"  # 'one' (leave-one-out) or 'end_to_end'
  fill_leave_two_out: bool = True  # add leave-two-out tasks when short of N
  oversample: float = 2.0  # draw this many x N candidates before dedup
  dihedral: bool = True  # sample the D8 part of group elements
  colours: bool = True  # sample colour permutations
  fix_background: bool = True  # keep colour 0 fixed
  shuffle: bool = True  # sample demonstration orders
  extra_augmenters: tuple[str, ...] = ()  # names in augment.EXTRA_AUGMENTERS
  loss: str = "outputs"  # 'outputs', 'marc' or 'query' (ttt.tokens)

  @classmethod
  def make(cls, config: Any = None) -> DataConfig:
    """From None, a `DataConfig`, a mapping or a ConfigDict."""
    return configlib.from_config(cls, config)

  def validate(self) -> None:
    if self.leave_out not in ("one", "end_to_end"):
      raise ValueError(f"leave_out must be 'one' or 'end_to_end', got "
                       f"{self.leave_out!r}")
    if self.loss not in tokens.LOSS_MODES:
      raise ValueError(f"loss must be one of {tokens.LOSS_MODES}")
    for name in self.extra_augmenters:
      if name not in augment.EXTRA_AUGMENTERS:
        raise ValueError(f"unknown extra augmenter {name!r}")
    if self.num_sequences < 1 or self.max_len < 8:
      raise ValueError("num_sequences must be >= 1 and max_len >= 8")


class TTTDataset(NamedTuple):
  """One task's TTT data; stack over tasks for `[T, N, L]`.

  Attributes:
    tokens: int32[N, L] token ids (`PAD` in invalid rows).
    mask: int32[N, L] loss targets (all 0 in invalid rows).
    positions: int32[N, L] 1-D positions.
    coords: int32[N, L, 3] (row, column, segment) positions.
    valid: bool[N] real rows; invalid rows are padding, never trained on.
  """

  tokens: np.ndarray
  mask: np.ndarray
  positions: np.ndarray
  coords: np.ndarray
  valid: np.ndarray


def rng_from_key(key: jax.Array) -> np.random.Generator:
  """A numpy Generator seeded by a jax PRNG key (typed or raw uint32)."""
  if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.key_data(key)
  return np.random.default_rng(np.asarray(key, np.uint32).ravel().tolist())


class _Encoder:
  """Encodes one base task under many group elements, caching per grid."""

  def __init__(self, task: arc.Task):
    self.task = task
    self.cache = {}

  def segment(self, grid, d, example, is_output):
    key = (id(grid), d, is_output)
    seg = self.cache.get(key)
    if seg is None:
      g = None if grid is None else augment._dihedral_np(grid, d)
      seg = tokens.encode_segment(g, 0, is_output)
      self.cache[key] = seg
    coords = seg.coords.copy()
    coords[:, 2] += 2 * example
    return tokens.Segment(seg.tokens, coords, is_output)

  def segments(self, g: augment.Element) -> list[tokens.Segment]:
    d = int(g.dihedral)
    pairs = self.task.train
    if len(g.order):
      pairs = [pairs[k] for k in g.order]
    segs = []
    for k, (i, o) in enumerate(pairs):
      segs.append(self.segment(i, d, k, False))
      segs.append(self.segment(o, d, k, True))
    q, a = self.task.test[0]
    segs.append(self.segment(q, d, len(pairs), False))
    segs.append(self.segment(a, d, len(pairs), True))
    return segs


def _candidates(base: list[arc.Task], config: DataConfig,
                rng: np.random.Generator):
  """Yields (encoder, element) round-robin: variant v of every base task."""
  if not base:
    return
  per_task = max(1, math.ceil(config.oversample * config.num_sequences
                              / len(base)))
  encoders = [_Encoder(t) for t in base]
  elements = []
  for t in base:
    k = len(t.train)
    g = augment.sample_numpy(
        rng, k, per_task, dihedral=config.dihedral, colours=config.colours,
        fix_background=config.fix_background, shuffle=config.shuffle)
    ident = augment.identity(k)
    g.dihedral[0], g.colours[0], g.order[0] = ident  # variant 0: identity
    elements.append(g)
  for v in range(per_task):
    for enc, g in zip(encoders, elements, strict=True):
      yield enc, augment.take(g, v)


def build_ttt_dataset(task: arc.Task, config: Any = None,
                      key: jax.Array | None = None,
                      stats: dict | None = None) -> TTTDataset:
  """Builds ONE task's TTT dataset (deterministic for a given key).

  Leave-one-out tasks (or, with `leave_out='end_to_end'`, each pair alone),
  plus their `extra_augmenters` images, each expanded by sampled group
  elements (the identity first), taken round-robin over base tasks,
  de-duplicated, filtered by length and capped at N. When fewer than N
  distinct sequences come out, leave-two-out tasks fill up.

  Args:
    task: the task (only its demonstrations are used).
    config: a `DataConfig`, mapping or ConfigDict (see `DataConfig`).
    key: PRNG key; per task use `jax.random.fold_in(key, task_index)`.
    stats: optional dict that receives counts: `candidates`, `duplicates`,
      `too_long`, `rows`.

  Returns:
    A `TTTDataset` with N rows of length L (invalid rows padded).
  """
  config = DataConfig.make(config)
  if key is None:
    key = jax.random.key(0)
  rng = rng_from_key(key)
  n_rows, length = config.num_sequences, config.max_len

  def with_extras(base):
    out = list(base)
    for name in config.extra_augmenters:
      out += [t for t in (augment.apply_extra(name, b) for b in base)
              if t is not None]
    return out

  if config.leave_out == "end_to_end":
    stages = [with_extras(end_to_end(task))]
  else:
    stages = [with_extras(leave_one_out(task))]
    if config.fill_leave_two_out:
      stages.append(with_extras(leave_two_out(task)))

  seen = set()
  rows = []
  counts = dict(candidates=0, duplicates=0, too_long=0)
  for base in stages:
    if len(rows) >= n_rows:
      break
    for enc, g in _candidates(base, config, rng):
      if len(rows) >= n_rows:
        break
      counts["candidates"] += 1
      segs = enc.segments(g)
      if 1 + sum(len(s.tokens) for s in segs) > length:
        counts["too_long"] += 1
        continue
      seq = tokens.pack(segs, length, config.loss, task.id)
      lut = np.arange(tokens.VOCAB_SIZE, dtype=np.int32)
      lut[:arc.NUM_COLOURS] = g.colours
      toks = lut[seq.tokens]  # colours act on colour tokens only
      h = toks[:seq.length].tobytes()
      if h in seen:
        counts["duplicates"] += 1
        continue
      seen.add(h)
      rows.append(seq._replace(tokens=toks))

  out = TTTDataset(
      tokens=np.full((n_rows, length), tokens.PAD, np.int32),
      mask=np.zeros((n_rows, length), np.int32),
      positions=np.broadcast_to(np.arange(length, dtype=np.int32),
                                (n_rows, length)),
      coords=np.zeros((n_rows, length, 3), np.int32),
      valid=np.zeros(n_rows, bool))
  for n, seq in enumerate(rows):
    out.tokens[n] = seq.tokens
    out.mask[n] = seq.mask
    out.coords[n] = seq.coords
    out.valid[n] = True
  if stats is not None:
    stats.update(counts, rows=len(rows))
  return out
