"""Leave-one-out tasks and the per-task TTT datasets (host side, numpy).

`leave_one_out(task)` turns K demonstrations into K tasks, each holding one
demonstration out as its query; `build_ttt_dataset(task, config, key)` expands
those by sampled group elements (`ttt.augment`), encodes them (the codec's
row encoder: `ttt.tokens`' cells by default, `ttt.text` for MARC's text),
drops duplicates and sequences longer than `max_len`, and returns fixed-shape
arrays `[N, L]` ready to be stacked over tasks for the compiled inner loop.
`pack(ds)` (switch `data.pack`) puts several of a task's short rows in one
sequence of the same L (`segments` ids; the model attends within a row
only), so a step computes fewer padding tokens for the same loss.

This module builds data; it does not train (`ttt.inner_loop`) or pick views
for inference (`ttt.decoders`).
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
  # how tasks become tokens: 'cells' (ttt.tokens: one token per cell) or
  # 'text' (ttt.text: MARC's text format through a pretrained model's
  # tokenizer and chat template); a key of ttt.codec.CODECS
  codec: str = "cells"
  text_style: str = "new"  # codec 'text': 'new', 'default' or 'barc'
  # several short rows per sequence (`pack`: block-diagonal causal mask,
  # the same loss): fewer padding tokens per step, more rows per step
  pack: bool = False

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
    if not math.isfinite(self.oversample) or self.oversample < 1:
      raise ValueError("data.oversample must be a finite number >= 1, got "
                       f"{self.oversample!r}")


class TTTDataset(NamedTuple):
  """One task's TTT data; stack over tasks for `[T, N, L]`.

  Attributes:
    tokens: int32[N, L] token ids (`PAD` in invalid rows).
    mask: int32[N, L] loss targets (all 0 in invalid rows).
    positions: int32[N, L] 1-D positions.
    coords: int32[N, L, 3] (row, column, segment) positions.
    valid: bool[N] real rows; invalid rows are padding, never trained on.
    segments: int32[N, L] which packed row of its sequence a token belongs
      to (1, 2, ...; `pack`), 0 on padding tokens; an unpacked row is
      segment 1 on its real tokens. A token attends only to tokens of its
      own segment (`ttt.model.Transformer`'s `segments`).
  """

  tokens: np.ndarray
  mask: np.ndarray
  positions: np.ndarray
  coords: np.ndarray
  valid: np.ndarray
  segments: np.ndarray


def stack_rows(rows: list[tokens.Encoded | None], num_rows: int,
               max_len: int, pad: int = tokens.PAD) -> TTTDataset:
  """One task's `TTTDataset` [num_rows, max_len] from encoded rows.

  `None` entries and the rows after the last are padding (`valid` False,
  empty mask); rows longer than `max_len` are cut (callers check lengths).
  `pad` is the codec's padding id (`ttt.codec.Codec.pad`).
  """
  out = TTTDataset(
      tokens=np.full((num_rows, max_len), pad, np.int32),
      mask=np.zeros((num_rows, max_len), np.int32),
      positions=np.broadcast_to(np.arange(max_len, dtype=np.int32),
                                (num_rows, max_len)).copy(),
      coords=np.zeros((num_rows, max_len, 3), np.int32),
      valid=np.zeros(num_rows, bool),
      segments=np.zeros((num_rows, max_len), np.int32))
  for n, seq in enumerate(rows[:num_rows]):
    if seq is None:
      continue
    m = min(max_len, len(seq.tokens))
    out.tokens[n, :m] = seq.tokens[:m]
    out.mask[n, :m] = seq.mask[:m]
    out.coords[n, :m] = seq.coords[:m]
    out.segments[n, :min(m, seq.length)] = 1
    out.valid[n] = True
  return out


def stack(datasets: list[TTTDataset]) -> TTTDataset:
  """[T] datasets -> one with a leading task axis [T, ...]."""
  return jax.tree.map(lambda *x: np.stack(x), *datasets)


def real_length(ds: TTTDataset, pad: int = tokens.PAD) -> int:
  """1 + the last sequence position holding a real token in any row."""
  real = (ds.tokens != pad).any(axis=tuple(range(ds.tokens.ndim - 1)))
  return int(np.flatnonzero(real).max()) + 1 if real.any() else 1


def bucket_length(n: int, bucket: int, cap: int) -> int:
  """`n` rounded up to a multiple of `bucket`, at most `cap`."""
  return max(1, min(cap, -(-n // bucket) * bucket))


def trim(ds: TTTDataset, length: int, pad: int = tokens.PAD) -> TTTDataset:
  """Cuts the sequence axis of [..., N, L] datasets to `length` (padding
  costs compute, not accuracy: it is masked out of the loss and never
  attended to by a real token); `pad` is the codec's padding id."""
  if length < real_length(ds, pad):
    raise ValueError(f"trim to {length} would cut real tokens "
                     f"(longest row {real_length(ds, pad)})")
  return TTTDataset(ds.tokens[..., :length], ds.mask[..., :length],
                    ds.positions[..., :length], ds.coords[..., :length, :],
                    ds.valid, ds.segments[..., :length])


def pack(ds: TTTDataset, pad: int = tokens.PAD) -> TTTDataset:
  """ONE task's rows [N, L] packed several to a sequence of the same L.

  Greedy first-fit decreasing: the valid rows by real length, longest
  first (ties by row index), each into the first sequence with room for
  it. A row keeps its tokens, loss mask, positions and coords (they
  restart per row) and becomes segment 1, 2, ... of its sequence, in the
  order placed; padding tokens are segment 0. The packed sequences come
  first and are `valid`; the other N - n rows are empty padding rows. A
  task whose rows do not pack (no two fit one sequence) is returned as it
  is. `pad` is the codec's padding id.
  """
  n_rows, length = ds.tokens.shape
  lengths = (ds.segments > 0).sum(-1)
  order = sorted(np.flatnonzero(ds.valid), key=lambda r: (-lengths[r], r))
  bins: list[list[int]] = []
  room: list[int] = []
  for r in order:
    for b, free in enumerate(room):
      if lengths[r] <= free:
        bins[b].append(r)
        room[b] -= lengths[r]
        break
    else:
      bins.append([r])
      room.append(length - lengths[r])
  if len(bins) == len(order):
    return ds
  out = blank(n_rows, length, pad)
  for b, rows in enumerate(bins):
    at = 0
    for seg, r in enumerate(rows, 1):
      m, cut = lengths[r], slice(at, at + lengths[r])
      out.tokens[b, cut] = ds.tokens[r, :m]
      out.mask[b, cut] = ds.mask[r, :m]
      out.positions[b, cut] = ds.positions[r, :m]
      out.coords[b, cut] = ds.coords[r, :m]
      out.segments[b, cut] = seg
      at += m
    out.valid[b] = True
  return out


def pack_tasks(ds: TTTDataset, pad: int = tokens.PAD) -> TTTDataset:
  """`pack` of each task of [T, N, L] datasets."""
  return stack([pack(jax.tree.map(lambda x, t=t: x[t], ds), pad)
                for t in range(len(ds.valid))])


def row_counts(ds: TTTDataset) -> np.ndarray:
  """int32[...] original rows per task of [..., N, L] datasets (a packed
  sequence counts the rows it holds)."""
  return ds.segments.max(-1, initial=0).sum(-1).astype(np.int32)


def blank(num_rows: int, max_len: int, pad: int = tokens.PAD) -> TTTDataset:
  """A task with no data (padding rows of the task axis)."""
  return stack_rows([], num_rows, max_len, pad)


def rng_from_key(key: jax.Array) -> np.random.Generator:
  """A numpy Generator seeded by a jax PRNG key (typed or raw uint32)."""
  if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.key_data(key)
  return np.random.default_rng(np.asarray(key, np.uint32).ravel().tolist())


class _Encoder:
  """Encodes one base task under many group elements, caching per grid
  (the cell codec's row encoder: `row(g) -> Encoded | None`)."""

  def __init__(self, task: arc.Task, config: DataConfig):
    self.task = task
    self.config = config
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
    """The task's segments under `g`'s dihedral part and order (colours
    act later, on the packed tokens)."""
    d = int(g.dihedral)
    pairs = self.task.train
    if len(g.order):
      pairs = [pairs[k] for k in g.order]
    return tokens.task_segments(
        arc.Task(self.task.id, pairs, self.task.test), 0, True,
        lambda grid, k, out: self.segment(grid, d, k, out))

  def row(self, g: augment.Element) -> tokens.Encoded | None:
    """The row of the task under `g` (None: longer than `max_len`)."""
    segs = self.segments(g)
    length = self.config.max_len
    if 1 + sum(len(s.tokens) for s in segs) > length:
      return None
    seq = tokens.pack(segs, length, self.config.loss, self.task.id)
    lut = np.arange(tokens.VOCAB_SIZE, dtype=np.int32)
    lut[:arc.NUM_COLOURS] = g.colours
    return seq._replace(tokens=lut[seq.tokens])  # colours: colour tokens


def cell_rows(task: arc.Task, config: DataConfig):
  """The cell codec's row encoder of one base task: `g -> Encoded | None`
  (None: the row is longer than `config.max_len`)."""
  return _Encoder(task, config).row


def _candidates(base: list[arc.Task], config: DataConfig,
                rng: np.random.Generator, encoder=cell_rows):
  """Yields (row encoder, element) round-robin: variant v of every base
  task."""
  if not base:
    return
  per_task = max(1, math.ceil(config.oversample * config.num_sequences
                              / len(base)))
  encoders = [encoder(t, config) for t in base]
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


def _base_stages(task: arc.Task, config: DataConfig) -> list[list[arc.Task]]:
  """The base tasks the dataset draws from (before group elements), in
  stages: leave-one-out (or end-to-end), then leave-two-out fillers."""
  def with_extras(base):
    out = list(base)
    for name in config.extra_augmenters:
      out += [t for t in (augment.apply_extra(name, b) for b in base)
              if t is not None]
    return out

  if config.leave_out == "end_to_end":
    return [with_extras(end_to_end(task))]
  out = [with_extras(leave_one_out(task))]
  if config.fill_leave_two_out:
    out.append(with_extras(leave_two_out(task)))
  return out


def row_length_bound(task: arc.Task, config: Any = None,
                     sequence_length=tokens.sequence_length) -> int:
  """An upper bound on the real tokens of any row `build_ttt_dataset` can
  produce for `task` (no data built): the longest base task in either
  orientation (group elements only transpose or keep grid shapes), among
  those that fit `max_len` (longer rows are dropped). 1 when none fits.
  `sequence_length(task)` is the codec's (`ttt.codec.Codec`)."""
  config = DataConfig.make(config)
  best = 1
  for t in [b for stage in _base_stages(task, config) for b in stage]:
    for d in ((0, 1) if config.dihedral else (0,)):  # 1: rot90 transposes
      g = augment.Element(np.int32(d), np.arange(arc.NUM_COLOURS,
                                                 dtype=np.int32),
                          np.zeros(0, np.int32))
      n = sequence_length(augment.apply_task(g, t))
      if n <= config.max_len:
        best = max(best, n)
  return best


def build_ttt_dataset(task: arc.Task, config: Any = None,
                      key: jax.Array | None = None,
                      stats: dict | None = None, *, encoder=cell_rows,
                      pad: int = tokens.PAD) -> TTTDataset:
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
    encoder: `encoder(base_task, config) -> (g -> Encoded | None)`, the
      codec's row encoder (default the cell codec's, `cell_rows`; None: too
      long); `pad` its padding id.

  Returns:
    A `TTTDataset` with N rows of length L (invalid rows padded).
  """
  config = DataConfig.make(config)
  if key is None:
    key = jax.random.key(0)
  rng = rng_from_key(key)
  n_rows, length = config.num_sequences, config.max_len

  stages = _base_stages(task, config)

  seen = set()
  rows = []
  counts = dict(candidates=0, duplicates=0, too_long=0)
  for base in stages:
    if len(rows) >= n_rows:
      break
    for row, g in _candidates(base, config, rng, encoder):
      if len(rows) >= n_rows:
        break
      counts["candidates"] += 1
      seq = row(g)
      if seq is None:
        counts["too_long"] += 1
        continue
      h = seq.tokens[:seq.length].tobytes()
      if h in seen:
        counts["duplicates"] += 1
        continue
      seen.add(h)
      rows.append(seq)

  out = stack_rows(rows, n_rows, length, pad)
  if stats is not None:
    stats.update(counts, rows=len(rows))
  return out
