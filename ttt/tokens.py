"""Grids as token sequences: codec, sequence layout, loss masks, positions.

Vocabulary (16 tokens): colours 0-9 are tokens 0-9, then `ROW_END` (ends
every grid row), `INPUT` and `OUTPUT` (mark the start of an input / output
grid), `BOS`, `EOS` (ends every output grid) and `PAD`.

A task with demonstrations (i_1, o_1) ... (i_K, o_K) and query (q, a) is the
sequence::

  BOS INPUT i_1 OUTPUT o_1 EOS ... INPUT i_K OUTPUT o_K EOS INPUT q OUTPUT a EOS

where a grid of H rows and W columns is its rows in order, each followed by
`ROW_END` (H * (W + 1) tokens). A prompt for inference stops after the query's
`OUTPUT`; the model then writes the answer grid and `EOS` (at most
30 * 31 + 1 = 931 tokens).

Positions come in two forms: `positions`, the 1-D index 0..L-1, and
`coords` (row, column, segment) for the 3-D scheme: a cell (r, c) sits at
(r + 1, c + 1); its row's `ROW_END` at (r + 1, W + 1); markers (`INPUT`,
`OUTPUT`, `BOS`) at (0, 0) and `EOS` at (H + 1, 0). The segment is
2 * example + (0 for an input grid, 1 for an output grid), so the example
index is `segment // 2` (the query is example K). Padding has all-zero coords.

The loss mask marks the target tokens of output grids (their cells, row ends
and EOS, never the `OUTPUT` marker): every output ('outputs'), every output
except the first demonstration's ('marc', MARC's rule: nothing precedes it),
or the query's only ('query').

`python -m ttt.tokens --stats` prints how many evaluation tasks fit 2048 / 4096
/ 8192 tokens.
"""

from __future__ import annotations

import sys
from typing import NamedTuple

import numpy as np

from ttt import arc

ROW_END = 10
INPUT = 11
OUTPUT = 12
BOS = 13
EOS = 14
PAD = 15
VOCAB_SIZE = 16
TOKEN_NAMES = tuple(str(c) for c in range(10)) + (
    "ROW_END", "INPUT", "OUTPUT", "BOS", "EOS", "PAD")

# Longest answer the model may write after OUTPUT: 30 rows of 31 tokens + EOS.
MAX_ANSWER_TOKENS = arc.MAX_SIDE * (arc.MAX_SIDE + 1) + 1

LOSS_MODES = ("outputs", "marc", "query")


class Encoded(NamedTuple):
  """One encoded sequence; fixed length L, padded with `PAD`.

  Attributes:
    tokens: int32[L] token ids.
    mask: int32[L] 1 where the token is a loss target.
    positions: int32[L] 1-D positions 0..L-1.
    coords: int32[L, 3] (row, column, segment) for the 3-D scheme.
    length: int, the number of real (non-padding) tokens.
  """

  tokens: np.ndarray
  mask: np.ndarray
  positions: np.ndarray
  coords: np.ndarray
  length: int


class SequenceTooLong(arc.TaskError):
  """A task whose sequence does not fit the requested length."""


def grid_length(shape: tuple[int, int]) -> int:
  """Tokens a grid of this shape takes: H * (W + 1)."""
  return shape[0] * (shape[1] + 1)


def encode_grid(grid: np.ndarray) -> np.ndarray:
  """int8[H, W] grid -> int32[H * (W + 1)] tokens (rows, each + ROW_END)."""
  h = grid.shape[0]
  out = np.empty((h, grid.shape[1] + 1), np.int32)
  out[:, :-1] = grid
  out[:, -1] = ROW_END
  return out.reshape(-1)


def _grid_coords(shape: tuple[int, int], segment: int) -> np.ndarray:
  """int32[H * (W + 1), 3] coords of a grid's tokens."""
  h, w = shape
  rows, cols = np.meshgrid(np.arange(1, h + 1), np.arange(1, w + 2),
                           indexing="ij")
  out = np.empty((h, w + 1, 3), np.int32)
  out[..., 0] = rows
  out[..., 1] = cols
  out[..., 2] = segment
  return out.reshape(-1, 3)


class Segment(NamedTuple):
  """The tokens/coords of one `INPUT grid` or `OUTPUT grid EOS` span."""

  tokens: np.ndarray  # int32[n]
  coords: np.ndarray  # int32[n, 3]
  is_output: bool


def encode_segment(grid: np.ndarray | None, example: int, is_output: bool
                   ) -> Segment:
  """Encodes `INPUT grid` or `OUTPUT grid EOS` of example `example`.

  With `grid=None` (an output not yet written) this is just `OUTPUT`.
  """
  seg = 2 * example + int(is_output)
  marker = OUTPUT if is_output else INPUT
  if grid is None:
    return Segment(np.array([marker], np.int32),
                   np.array([[0, 0, seg]], np.int32), is_output)
  h = grid.shape[0]
  parts_t = [np.array([marker], np.int32), encode_grid(grid)]
  parts_c = [np.array([[0, 0, seg]], np.int32), _grid_coords(grid.shape, seg)]
  if is_output:
    parts_t.append(np.array([EOS], np.int32))
    parts_c.append(np.array([[h + 1, 0, seg]], np.int32))
  return Segment(np.concatenate(parts_t), np.concatenate(parts_c), is_output)


def task_segments(task: arc.Task, test_index: int = 0,
                  include_answer: bool = True, encode=None) -> list[Segment]:
  """The segments of `task` with `task.test[test_index]` as the query.

  `encode(grid, example, is_output) -> Segment` defaults to
  `encode_segment`; `ttt.data` passes a caching, transforming one.
  """
  encode = encode_segment if encode is None else encode
  segs = []
  for k, (i, o) in enumerate(task.train):
    segs.append(encode(i, k, False))
    segs.append(encode(o, k, True))
  q, a = task.test[test_index]
  k = len(task.train)
  segs.append(encode(q, k, False))
  if include_answer and a is None:
    raise arc.TaskError(task.id, f"test[{test_index}] has no output to "
                        "encode (use include_answer=False for a prompt)")
  segs.append(encode(a if include_answer else None, k, True))
  return segs


def sequence_length(task: arc.Task, test_index: int = 0,
                    include_answer: bool = True) -> int:
  """Number of real tokens `encode_task` would produce (no encoding done)."""
  n = 1  # BOS
  for i, o in task.train:
    n += 1 + grid_length(i.shape) + 1 + grid_length(o.shape) + 1
  q, a = task.test[test_index]
  n += 1 + grid_length(q.shape) + 1
  if include_answer:
    n += grid_length(a.shape) + 1
  return n


def mask_for(segments: list[Segment], loss: str = "outputs") -> list[bool]:
  """Which segments are loss targets under `loss` (see module docstring)."""
  if loss not in LOSS_MODES:
    raise ValueError(f"loss must be one of {LOSS_MODES}, got {loss!r}")
  out_ids = [n for n, s in enumerate(segments) if s.is_output]
  chosen = set(out_ids)
  if loss == "marc" and len(out_ids) > 1:
    chosen.discard(out_ids[0])
  elif loss == "query":
    chosen = {out_ids[-1]}
  return [n in chosen for n in range(len(segments))]


def pack(segments: list[Segment], max_len: int, loss: str = "outputs",
         task_id: str | None = None) -> Encoded:
  """Concatenates `BOS` + segments and pads to `max_len`.

  Raises:
    SequenceTooLong: when the sequence exceeds `max_len`.
  """
  targets = mask_for(segments, loss)
  n = 1 + sum(len(s.tokens) for s in segments)
  if n > max_len:
    raise SequenceTooLong(task_id, f"sequence needs {n} tokens, max_len is "
                          f"{max_len}")
  tokens = np.full(max_len, PAD, np.int32)
  mask = np.zeros(max_len, np.int32)
  coords = np.zeros((max_len, 3), np.int32)
  tokens[0] = BOS
  pos = 1
  for seg, target in zip(segments, targets, strict=True):
    end = pos + len(seg.tokens)
    tokens[pos:end] = seg.tokens
    coords[pos:end] = seg.coords
    if target:
      mask[pos + 1:end] = 1  # everything after the OUTPUT marker
    pos = end
  return Encoded(tokens, mask, np.arange(max_len, dtype=np.int32), coords, n)


def encode_task(task: arc.Task, max_len: int, *, test_index: int = 0,
                include_answer: bool = True, loss: str = "outputs"
                ) -> Encoded:
  """Encodes a task (demonstrations, then test pair `test_index`).

  Args:
    task: the task.
    max_len: L, the fixed output length.
    test_index: which test pair is the query.
    include_answer: False gives the inference prompt ending at the query's
      `OUTPUT` marker (the answer may then be unknown).
    loss: 'outputs', 'marc' or 'query' (module docstring).

  Returns:
    An `Encoded` sequence of length L.

  Raises:
    SequenceTooLong: the task does not fit `max_len`.
  """
  segs = task_segments(task, test_index, include_answer)
  return pack(segs, max_len, loss, task.id)


def decode_grid(tokens) -> np.ndarray | None:
  """Parses generated answer tokens (after `OUTPUT`) into a grid.

  Reads rows ended by `ROW_END` up to the first `EOS`; anything after `EOS`
  is ignored. Nothing is repaired.

  Args:
    tokens: int[n], the generated tokens.

  Returns:
    int8[H, W], or None when there is no `EOS`, the grid is empty, a row is
    ragged or unterminated, a non-colour token sits inside the grid, or a
    side exceeds 30.
  """
  toks = np.asarray(tokens).reshape(-1)
  ends = np.flatnonzero(toks == EOS)
  if ends.size == 0:
    return None
  body = toks[:ends[0]]
  if body.size == 0 or body[-1] != ROW_END:
    return None
  if ((body < 0) | (body > ROW_END)).any():
    return None
  breaks = np.flatnonzero(body == ROW_END)
  width = breaks[0]
  height = breaks.size
  if width == 0 or body.size != height * (width + 1):
    return None
  if not (breaks == np.arange(height) * (width + 1) + width).all():
    return None
  if height > arc.MAX_SIDE or width > arc.MAX_SIDE:
    return None
  return body.reshape(height, width + 1)[:, :width].astype(arc.GRID_DTYPE)


def length_stats(tasks: list[arc.Task], budgets=(2048, 4096, 8192)) -> dict:
  """How many tasks fit each token budget with every test pair as query.

  A task fits when the sequence of each of its test inputs (demonstrations,
  query and its answer; the largest answer, 931 tokens, when unknown) is at
  most the budget.
  """
  longest = []
  for t in tasks:
    n = 0
    for k, (_, a) in enumerate(t.test):
      m = sequence_length(t, k, include_answer=False)
      m += MAX_ANSWER_TOKENS if a is None else grid_length(a.shape) + 1
      n = max(n, m)
    longest.append(n)
  longest = np.array(longest)
  return {
      "tasks": len(tasks),
      "max_tokens": int(longest.max()) if len(tasks) else 0,
      "median_tokens": int(np.median(longest)) if len(tasks) else 0,
      "fit": {int(b): int((longest <= b).sum()) for b in budgets},
  }


def main(argv: list[str]) -> int:
  if "--stats" not in argv:
    print("usage: python -m ttt.tokens --stats", file=sys.stderr)
    return 2
  for version in (1, 2):
    tasks = arc.load_arc(version, "evaluation")
    s = length_stats(tasks)
    fits = "  ".join(f"<={b}: {n:3d} ({100 * n / s['tasks']:.0f}%)"
                     for b, n in s["fit"].items())
    print(f"ARC-AGI-{version} evaluation, {s['tasks']} tasks: {fits}  "
          f"(median {s['median_tokens']}, max {s['max_tokens']} tokens)")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
