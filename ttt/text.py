"""MARC's text format: messages, answers and their parsing.

MARC (Akyürek et al.) trains and prompts its released checkpoints (Llama-3
8B, Llama-3.2 1B/3B) on tasks written as text, one chat per task. This
module reproduces those messages exactly, before any chat template, in the
three styles MARC's scripts select:

* ``'new'`` (MARC's ``--new_format``, the released Llama checkpoints): a grid
  is printed the way numpy prints an integer array (``[[0 1]\\n [2 3]]``), a
  pair is ``"{input} -> {output}#"``; the system message is MARC's
  instruction followed by one pair per line for every demonstration, the
  user message is ``"{query} -> "`` and the answer ``"{output}#"``.
* ``'default'`` (MARC's scripts without a format flag): the same without
  the ``#`` footer.
* ``'barc'`` (``--barc_format``, for BARC's checkpoints): colour words
  (``Black Blue Red Green Yellow Gray Pink Orange Purple Brown`` for 0-9)
  separated by spaces, rows by newlines; ``Example k:`` blocks in the user
  message and the answer inside a code fence.

`marc_messages(task)` takes the task's LAST test pair as the query.
`parse_answer(text)` reads a written answer back into a grid the way MARC's
prediction script does (every ``#`` deleted, the text inside a code fence if
there is one, numbers split on whitespace, rows = newlines + 1) and returns
None for anything that is not an ARC grid.

The tokenizer side (chat template, loss mask, prompt ids, decoding) is
`TextCodec` below.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ttt import arc

STYLES = ("new", "default", "barc")

# MARC's instruction for the 'new' and 'default' styles (its
# GPTTextMessageRepresenterV2 with python-array grids).
ARRAY_PROMPT = (
    "Figure out the underlying transformation in the following examples and "
    "apply it to the test case. Here are some examples from this "
    "transformation, your answer must follow the format.\n"
    "The input-output grids are provided as python arrays:\n")

# MARC's messager for BARC's checkpoints: its default system prompt and the
# fixed text around the examples in the user message.
BARC_SYSTEM = (
    "You are a world-class puzzle solver with exceptional pattern recognition "
    "skills. Your task is to analyze puzzles, spot patterns, and provide "
    "direct solutions.")
BARC_INTRO = (
    "Given input-output grid pairs as reference examples, carefully observe "
    "the patterns to predict the output grid for new test input. Each pair "
    "follows the same transformation rule. Grids are 2D arrays represented as "
    "strings, with cells (colors) separated by spaces and rows by newlines.\n"
    "Here are the input and output grids for the reference examples:\n")
BARC_TEST = "\n\nHere is the input grid for the test example:\n"
BARC_ASK = (
    "Directly provide the output grids corresponding to the given test input "
    "grids, based on the patterns observed in the reference examples.")
BARC_ANSWER = "The output grid for the test input grid is:\n\n```\n{}\n```"

COLOUR_WORDS = ("Black", "Blue", "Red", "Green", "Yellow", "Gray", "Pink",
                "Orange", "Purple", "Brown")
_WORD_COLOUR = {w: c for c, w in enumerate(COLOUR_WORDS)}

SEPARATOR = " -> "  # between a pair's input and output ('new', 'default')


def check_style(style: str) -> None:
  if style not in STYLES:
    raise ValueError(f"text style must be one of {STYLES}, got {style!r}")


def footer(style: str) -> str:
  """What ends an output grid in `style` ('#' for 'new', else '')."""
  check_style(style)
  return "#" if style == "new" else ""


def grid_text(grid: np.ndarray, style: str = "new") -> str:
  """A grid as MARC writes it: numpy's `str()` or colour words ('barc')."""
  check_style(style)
  grid = np.asarray(grid)
  if style == "barc":
    return "\n".join(" ".join(COLOUR_WORDS[int(v)] for v in row)
                     for row in grid)
  # numpy's str() of an integer array under numpy's default print options,
  # pinned so that a caller's np.set_printoptions cannot change the text.
  return np.array2string(grid.astype(np.int64), max_line_width=75,
                         threshold=1000, edgeitems=3, separator=" ",
                         prefix="")


class Layout(NamedTuple):
  """Where the demonstrations' outputs sit inside the system message.

  Attributes:
    messages: the system and user messages.
    answer: the assistant message (None when the query's output is unknown).
    output_spans: per demonstration, `(start, end)` character offsets in the
      system content of its output: from just after ``" ->"`` through the
      footer (MARC unmasks this for demonstrations 2..K). Empty for 'barc'
      (its demonstrations sit in the user message, which MARC never trains
      on).
  """

  messages: list[dict]
  answer: dict | None
  output_spans: list[tuple[int, int]]


def layout(task: arc.Task, style: str = "new") -> Layout:
  """`marc_messages` plus the character spans of the demonstrations' outputs."""
  check_style(style)
  if not task.test:
    raise arc.TaskError(task.id, "has no test pair to use as the query")
  query, target = task.test[-1]
  if style == "barc":
    user = BARC_INTRO
    for k, (i, o) in enumerate(task.train):
      user += (f"Example {k + 1}:\nInput:\n{grid_text(i, style)}\n\n"
               f"Output:\n{grid_text(o, style)}\n")
    user += BARC_TEST + f"Input:\n{grid_text(query, style)}\n\n\n" + BARC_ASK
    messages = [{"role": "system", "content": BARC_SYSTEM},
                {"role": "user", "content": user}]
    answer = (None if target is None else
              BARC_ANSWER.format(grid_text(target, style)))
    spans = []
  else:
    foot = footer(style)
    system = ARRAY_PROMPT
    spans = []
    for i, o in task.train:
      system += grid_text(i, style) + SEPARATOR
      start = len(system) - 1  # the space after '->' belongs to the output
      system += grid_text(o, style) + foot
      spans.append((start, len(system)))
      system += "\n"
    messages = [{"role": "system", "content": system},
                {"role": "user",
                 "content": grid_text(query, style) + SEPARATOR}]
    answer = None if target is None else grid_text(target, style) + foot
  if answer is not None:
    answer = {"role": "assistant", "content": answer}
  return Layout(messages, answer, spans)


def marc_messages(task: arc.Task, style: str = "new"
                  ) -> tuple[list[dict], dict | None]:
  """MARC's chat messages for `task`, its last test pair the query.

  Args:
    task: demonstrations in `task.train`; `task.test[-1]` is the query.
    style: 'new', 'default' or 'barc' (module docstring).

  Returns:
    `(messages, answer)`: `messages` is `[system, user]`, each a dict
    `{"role": ..., "content": ...}`; `answer` is the assistant message
    `{"role": "assistant", "content": ...}`, or None when the query's output
    is unknown. No chat template is applied.
  """
  out = layout(task, style)
  return out.messages, out.answer


def _grid_or_none(rows: list[list[int]]) -> np.ndarray | None:
  if not rows or not rows[0]:
    return None
  if any(len(r) != len(rows[0]) for r in rows):
    return None
  g = np.array(rows, dtype=np.int64)
  if g.shape[0] > arc.MAX_SIDE or g.shape[1] > arc.MAX_SIDE:
    return None
  if ((g < 0) | (g > 9)).any():
    return None
  return g.astype(arc.GRID_DTYPE)


def parse_answer(text: str, style: str = "new") -> np.ndarray | None:
  """A written answer as a grid, read the way MARC's prediction script does.

  Every ``#`` is deleted and double spaces collapsed; text inside a code
  fence is taken when there is one. 'new'/'default': the brackets are
  dropped, the rest split on whitespace into integers, rows = newlines + 1
  and columns = count / rows. 'barc': one colour word per cell, rows on
  newlines.

  Returns:
    int8[H, W], or None when the text does not read as a grid: a token that
    is not a number (colour word), a count that does not reshape (ragged
    rows), an empty grid, a value outside 0-9 or a side over 30.
  """
  check_style(style)
  text = text.replace("#", "").replace("  ", " ")
  if "```" in text:
    text = text.split("```")[1].strip()
  if style == "barc":
    text = text.replace("Input:\n", "").replace("\nOutput:\n", "").strip()
    try:
      rows = [[_WORD_COLOUR[w] for w in line.split()]
              for line in text.split("\n")]
    except KeyError:
      return None
    return _grid_or_none(rows)
  text = text.strip()
  try:
    values = [int(v) for v in text.replace("[", "").replace("]", "").split()]
  except ValueError:
    return None
  n_rows = text.count("\n") + 1
  n_cols = len(values) // n_rows
  if n_cols == 0 or n_rows * n_cols != len(values):
    return None
  return _grid_or_none([values[r * n_cols:(r + 1) * n_cols]
                        for r in range(n_rows)])
