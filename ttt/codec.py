"""Codecs: how tasks become token ids and generated ids become grids.

A `Codec` is one face over a way of writing tasks as tokens; the data, plan,
decode and selection stages use only this face (`data.codec` picks one from
`CODECS` when the config is parsed, `make(data_cfg, init_from)` builds it
once per run):

* 'cells' (`ttt.tokens`): one token per cell, 16 tokens, 3-D positions, the
  answer grammar DFS and VGB walk (an LLM base is cut to these 16 tokens);
* 'text' (`ttt.text`): MARC's text format (`data.text_style`: 'new',
  'default', 'barc') through a pretrained model's own tokenizer and chat
  template, the full vocabulary and 1-D positions -- what MARC's released
  checkpoints were trained on.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from ttt import data, tokens


class Codec(NamedTuple):
  """A way of writing tasks as tokens (host-side functions and constants).

  Attributes:
    name: its key in `CODECS`.
    vocab: how a pretrained base is loaded ('cell': cut to the 16 project
      tokens; 'full': every row, the model's own ids).
    vocab_size: logits per position.
    pad: the padding id of rows and prompts (never a real token).
    max_answer: tokens of the longest answer, its stop token included.
    grammar: whether answers follow `ttt.decoders.common.answer_mask` (the
      cell grammar DFS prunes with and VGB walks; else DFS prunes by
      probability only).
    answer_tokens: bool[vocab_size], what greedy / sampled decoding may
      write.
    stop_tokens: bool[vocab_size], the tokens that end an answer.
    sequence_length: `(task, test_index=0, include_answer=True) -> int`.
    encode_task: `(task, max_len, *, test_index=0, include_answer=True,
      loss='outputs') -> ttt.tokens.Encoded` (a TTT row, a scoring row or,
      without the answer, an inference prompt).
    decode_grid: `ids -> grid | None`, generated ids (the stop token
      included) as a grid, None when malformed.
    build_rows: `(task, data_cfg, key, stats=None) -> ttt.data.TTTDataset`,
      one task's TTT rows.
    row_length_bound: `(task, data_cfg) -> int`, a bound on those rows'
      real tokens (no data built).
  """

  name: str
  vocab: str
  vocab_size: int
  pad: int
  max_answer: int
  grammar: bool
  answer_tokens: np.ndarray
  stop_tokens: np.ndarray
  sequence_length: Callable
  encode_task: Callable
  decode_grid: Callable
  build_rows: Callable
  row_length_bound: Callable


def _cell_answer_tokens() -> tuple[np.ndarray, np.ndarray]:
  answer = np.zeros(tokens.VOCAB_SIZE, bool)
  answer[:10] = True
  answer[[tokens.ROW_END, tokens.EOS]] = True
  stop = np.zeros(tokens.VOCAB_SIZE, bool)
  stop[tokens.EOS] = True
  return answer, stop


CELLS = Codec(
    "cells", "cell", tokens.VOCAB_SIZE, tokens.PAD, tokens.MAX_ANSWER_TOKENS,
    True, *_cell_answer_tokens(), tokens.sequence_length, tokens.encode_task,
    tokens.decode_grid, data.build_ttt_dataset, data.row_length_bound)


@functools.cache
def _text(init_from: str, style: str) -> Codec:
  from ttt import text

  c = text.open_codec(init_from, style)
  return Codec("text", "full", c.vocab_size, c.pad, c.max_answer_tokens(),
               False, c.answer_tokens, c.stop, c.sequence_length,
               c.encode_task, c.decode_grid, c.build_rows,
               c.row_length_bound)


class Entry(NamedTuple):
  """A registry entry: `make(data_cfg, init_from) -> Codec` and what the
  config check needs before anything is loaded."""

  make: Callable[..., Codec]
  grammar: bool


CODECS: dict[str, Entry] = {
    "cells": Entry(lambda data_cfg, init_from: CELLS, grammar=True),
    "text": Entry(lambda data_cfg, init_from: _text(init_from,
                                                    data_cfg.text_style),
                  grammar=False),
}


def entry(data_cfg) -> Entry:
  """The registry entry of `data_cfg.codec` (ValueError naming the known)."""
  if data_cfg.codec not in CODECS:
    raise ValueError(f"data.codec must be one of {tuple(CODECS)}, got "
                     f"{data_cfg.codec!r}")
  return CODECS[data_cfg.codec]


def check(data_cfg, needs_grammar: bool = False, method: str = "") -> None:
  """Config checks (at parse time): the codec's name, the text style, and
  a decoding method that needs the cell grammar."""
  from ttt import text

  e = entry(data_cfg)
  text.check_style(data_cfg.text_style)
  if needs_grammar and not e.grammar:
    raise ValueError(f"decode.method={method!r} walks the cell codec's "
                     f"answer grammar; data.codec={data_cfg.codec!r} has "
                     "none (use 'greedy', 'sample' or 'dfs')")


def make(data_cfg, init_from: str = "") -> Codec:
  """The run's codec (built once; the text codec reads `init_from`'s
  tokenizer and chat template)."""
  return entry(data_cfg).make(data_cfg, init_from)


def default(codec: Codec | None) -> Codec:
  """`codec`, or the cell codec for None (callers that predate codecs)."""
  return CELLS if codec is None else codec
