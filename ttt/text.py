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

The tokenizer side is `TextCodec` (`open_codec(path, style)`): the chat
template (the snapshot's `tokenizer_config.json` Jinja template, else
Llama-3's header format), the loss mask, prompt ids and decoding of
generated ids; `ttt.codec` puts it behind the `Codec` face the stages use.

A chat template is the model's file, so it is held to account: one that
fails to parse, uses an unknown filter or raises while rendering, one whose
rendering is empty or leaves out a message's text (the task), and one that
runs past the rendering bounds (`MAX_RENDER_CHARS` of output,
`MAX_RENDER_STEPS` loop iterations and calls, `MAX_RENDER_SECONDS`: nested
loops) is refused with a `ttt.errors.InputError` naming where the template
came from; so is a list of named templates without a 'default' one.
"""

from __future__ import annotations

import datetime
import functools
import os
import threading
import time
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from ttt import arc, augment, data, errors, tokens

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


def _array_grid(grid: np.ndarray) -> str:
  # numpy's str() of an integer array under numpy's default print options,
  # pinned so that a caller's np.set_printoptions cannot change the text.
  return np.array2string(grid.astype(np.int64), max_line_width=75,
                         threshold=1000, edgeitems=3, separator=" ",
                         prefix="")


def _word_grid(grid: np.ndarray) -> str:
  return "\n".join(" ".join(COLOUR_WORDS[int(v)] for v in row)
                   for row in grid)


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


def _parse_array(text: str) -> np.ndarray | None:
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


def _parse_words(text: str) -> np.ndarray | None:
  text = text.replace("Input:\n", "").replace("\nOutput:\n", "").strip()
  try:
    rows = [[_WORD_COLOUR[w] for w in line.split()]
            for line in text.split("\n")]
  except KeyError:
    return None
  return _grid_or_none(rows)


def _array_layout(task: arc.Task, st: Style):
  """MARC's 'new' / 'default' layout: the demonstrations in the system
  message (input -> output + footer, one a line), the query in the user
  message; (messages, answer text or None, output spans)."""
  query, target = task.test[-1]
  system, spans = ARRAY_PROMPT, []
  for i, o in task.train:
    system += st.grid(i) + SEPARATOR
    start = len(system) - 1  # the space after '->' belongs to the output
    system += st.grid(o) + st.footer
    spans.append((start, len(system)))
    system += "\n"
  messages = [{"role": "system", "content": system},
              {"role": "user", "content": st.grid(query) + SEPARATOR}]
  return messages, None if target is None else st.answer(st.grid(target)), \
      spans


def _barc_layout(task: arc.Task, st: Style):
  """MARC's messager for BARC's checkpoints: the demonstrations and the
  query in the user message (no output spans: MARC never trains on it)."""
  query, target = task.test[-1]
  user = BARC_INTRO
  for k, (i, o) in enumerate(task.train):
    user += (f"Example {k + 1}:\nInput:\n{st.grid(i)}\n\n"
             f"Output:\n{st.grid(o)}\n")
  user += BARC_TEST + f"Input:\n{st.grid(query)}\n\n\n" + BARC_ASK
  messages = [{"role": "system", "content": BARC_SYSTEM},
              {"role": "user", "content": user}]
  return messages, None if target is None else st.answer(st.grid(target)), []


class Style(NamedTuple):
  """A way MARC writes a task as text (a `STYLES` entry).

  Attributes:
    footer: what ends an output grid.
    grid: `int[H, W] -> text`.
    answer: a grid's text -> the assistant's whole answer.
    layout: `(task, style) -> (messages, answer text or None, output
      spans)` (`Layout`).
    parse: an answer's text (its `#`s deleted, a code fence's inside
      taken) -> int8[H, W] or None.
  """

  footer: str
  grid: Callable[[np.ndarray], str]
  answer: Callable[[str], str]
  layout: Callable
  parse: Callable[[str], np.ndarray | None]


STYLES: dict[str, Style] = {
    "new": Style("#", _array_grid, lambda g: g + "#", _array_layout,
                 _parse_array),
    "default": Style("", _array_grid, lambda g: g, _array_layout,
                     _parse_array),
    "barc": Style("", _word_grid, BARC_ANSWER.format, _barc_layout,
                  _parse_words),
}


def style_of(style: str) -> Style:
  """The `STYLES` entry named `style` (ValueError naming the known)."""
  if style not in STYLES:
    raise ValueError(f"text style must be one of {tuple(STYLES)}, got "
                     f"{style!r}")
  return STYLES[style]


def check_style(style: str) -> None:
  style_of(style)


def footer(style: str) -> str:
  """What ends an output grid in `style` ('#' for 'new', else '')."""
  return style_of(style).footer


def grid_text(grid: np.ndarray, style: str = "new") -> str:
  """A grid as MARC writes it: numpy's `str()` or colour words ('barc')."""
  return style_of(style).grid(np.asarray(grid))


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
  st = style_of(style)
  if not task.test:
    raise arc.TaskError(task.id, "has no test pair to use as the query")
  messages, answer, spans = st.layout(task, st)
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
  st = style_of(style)
  text = text.replace("#", "").replace("  ", " ")
  if "```" in text:
    text = text.split("```")[1].strip()
  return st.parse(text)


def max_answer_tokens(style: str = "new") -> int:
  """A bound on the tokens of the longest answer (a 30 x 30 grid) and its
  stop token under any tokenizer: its characters + 1 (a token writes at
  least one character). 1892 for 'new' (Llama-3 spends about 1,830)."""
  st = style_of(style)
  widest = np.full((arc.MAX_SIDE, arc.MAX_SIDE), 8, np.int8)  # 'Purple':
  # the longest colour word (and one digit, as every colour, in numbers)
  return len(st.answer(st.grid(widest))) + 1


# --- the chat template --------------------------------------------------------

# Llama-3's header format, used when a model ships no chat template.
LLAMA3_HEADER = "<|start_header_id|>{role}<|end_header_id|>\n\n"
LLAMA3_EOT = "<|eot_id|>"
LLAMA3_BOS = "<|begin_of_text|>"
TEMPLATE_DATE = "26 Jul 2024"  # Llama-3.1's template default date_string


def _token_text(value) -> str | None:
  """A tokenizer_config special-token entry ('text' or {'content': ...})."""
  if isinstance(value, dict):
    value = value.get("content")
  return value if isinstance(value, str) else None


# Bounds on one rendering of a model's chat template: a broken or hostile
# template (nested loops, an exponential macro) must end with an error, not
# hang the run or fill the memory. MARC's longest prompts are ~10^5
# characters and a chat template loops over a handful of messages.
MAX_RENDER_CHARS = 1 << 22  # characters of output
MAX_RENDER_STEPS = 1_000_000  # loop iterations + calls
MAX_RENDER_SECONDS = 10.0  # wall clock, checked every 1024 steps
_BOUNDED = "ttt_bounded_loop__"  # the global the loops are wrapped in


def read_tokenizer_config(path: str) -> dict:
  """A snapshot's `tokenizer_config.json` ({} when there is none); for a
  GGUF file, its `tokenizer.chat_template` metadata as `chat_template`.

  Raises:
    ttt.errors.InputError: the file is not valid JSON or not an object, or
      the GGUF file cannot be read (naming the file).
  """
  from ttt import pretrained

  if os.path.isfile(path) and path.endswith(".gguf"):
    _, meta = pretrained.read_gguf(path, only=("tokenizer.chat_template",))
    return ({"chat_template": meta["tokenizer.chat_template"]}
            if "tokenizer.chat_template" in meta else {})
  file = os.path.join(path, "tokenizer_config.json")
  if not os.path.isdir(path) or not os.path.exists(file):
    return {}
  return pretrained.read_json_object(file)


def template_origin(path: str) -> str:
  """Where `read_tokenizer_config(path)`'s chat template comes from, for
  errors: the file and its field, or the GGUF metadata key."""
  if os.path.isfile(path) and path.endswith(".gguf"):
    return f"{path} (GGUF metadata tokenizer.chat_template)"
  return f"{os.path.join(path, 'tokenizer_config.json')} (chat_template)"


def _pick_template(source, origin: str) -> tuple[str | None, str]:
  """(the Jinja source, its origin) of a `chat_template` value: a string,
  or Hugging Face's list of named templates, whose 'default' is taken."""
  if isinstance(source, list):
    named = {}
    for t in source:
      if not (isinstance(t, dict) and isinstance(t.get("name"), str)
              and isinstance(t.get("template"), str)):
        raise errors.InputError(
            f"{origin}: a list of named templates holds "
            f"{{'name': ..., 'template': ...}} objects, not {repr(t)[:60]}")
      named[t["name"]] = t["template"]
    if "default" not in named:
      raise errors.InputError(
          f"{origin}: named chat templates "
          f"{', '.join(map(repr, named)) or '(none)'} and no 'default' one; "
          "ttt-jax renders the 'default' template (there is no setting to "
          "pick another): add one named 'default'")
    return named["default"], f"{origin} (the one named 'default')"
  if source is not None and not isinstance(source, str):
    raise errors.InputError(f"{origin}: the chat template is "
                            f"{repr(source)[:40]} ({type(source).__name__}), "
                            "not a Jinja template (a string, or a list of "
                            "named ones)")
  return source, origin


def make_template(tok_config: dict, bos: str | None = None,
                  origin: str = "chat_template"):
  """`render(messages, add_generation_prompt) -> str`: the model's chat
  template (`tokenizer_config.json`'s Jinja `chat_template`, rendered the
  way Hugging Face renders it) or, without one, Llama-3's header format
  (BOS, then `<|start_header_id|>role<|end_header_id|>\\n\\n` + the content
  stripped + `<|eot_id|>` per message: each message stripped, as torchtune
  and Hugging Face's Llama-3 template do; another model's template decides
  for itself).

  Args:
    tok_config: the tokenizer config (`read_tokenizer_config`).
    bos: the BOS token's text when the config names none.
    origin: where the template comes from (`template_origin`), named in
      errors; the returned function carries it as `render.origin`.

  Raises:
    ttt.errors.InputError: (here) a template that is not a string or list
      of named ones, a list without 'default', a template that does not
      parse or names an unknown filter or test; (from `render`) one that
      raises, runs past the bounds (`MAX_RENDER_*`), renders nothing, or
      leaves out a message's text.
  """
  source, origin = _pick_template(tok_config.get("chat_template"), origin)
  bos = _token_text(tok_config.get("bos_token")) or bos
  if not source:
    start = LLAMA3_BOS if bos is None else bos

    def render_llama3(messages, add_generation_prompt=False):
      out = start + "".join(
          LLAMA3_HEADER.format(role=m["role"]) + m["content"].strip()
          + LLAMA3_EOT for m in messages)
      if add_generation_prompt:
        out += LLAMA3_HEADER.format(role="assistant")
      return out

    render_llama3.origin = "Llama-3's header format (no chat template)"
    return render_llama3
  template, budget = _bounded_template(source, origin)
  specials = {k: _token_text(tok_config.get(k)) or ""
              for k in ("bos_token", "eos_token", "pad_token", "unk_token")}
  if bos is not None and not specials["bos_token"]:
    specials["bos_token"] = bos

  def render(messages, add_generation_prompt=False):
    # Llama-3.1/3.2 templates print today's date into the system message
    # unless `date_string` is given: their own default, fixed, so that a
    # row does not change from one day to the next (MARC's TTT prompt for
    # such models hard-codes the same date)
    budget.steps, budget.deadline = 0, time.monotonic() + MAX_RENDER_SECONDS
    pieces, size = [], 0
    try:
      for piece in template.generate(
          messages=messages, add_generation_prompt=add_generation_prompt,
          date_string=TEMPLATE_DATE, **specials):
        size += len(piece)
        if size > MAX_RENDER_CHARS:
          raise errors.InputError(
              f"{origin}: the chat template writes more than "
              f"{MAX_RENDER_CHARS:,} characters for one chat; refused")
        pieces.append(piece)
    except errors.InputError:
      raise
    except Exception as e:  # the template's own error, whatever it is
      raise errors.InputError(
          f"{origin}: the chat template fails to render "
          f"({type(e).__name__}: {' '.join(str(e).split())})") from e
    out = "".join(pieces)
    _check_rendered(out, messages, origin)
    return out

  render.origin = origin
  return render


def _check_rendered(out: str, messages, origin: str) -> None:
  """A rendered chat must show the model every message's text (stripped:
  templates trim it); an empty rendering or one that drops the task is
  refused instead of training and decoding on the wrong text."""
  if not out.strip():
    raise errors.InputError(f"{origin}: the chat template renders an empty "
                            "prompt")
  for m in messages:
    if m["content"].strip() not in out:
      raise errors.InputError(
          f"{origin}: the chat template's rendering leaves out the "
          f"{m['role']} message's text (the task): the model would not see "
          "it")


def _bounded_template(source: str, origin: str):
  """(jinja2 template, its budget) of a chat template in Hugging Face's
  sandbox (immutable, `trim_blocks`, `lstrip_blocks`, loop controls,
  `raise_exception` and `strftime_now`), bounded: each `for` loop's
  iterable is wrapped so that every iteration counts a step, every call
  counts a step (a macro's recursion), and `*` / `**` are refused when
  their result would be huge (no constant folding of them at compile time
  either). `render` resets `budget.steps` and `budget.deadline`."""
  import jinja2
  from jinja2 import nodes, sandbox

  class Budget(threading.local):
    """One rendering's steps and deadline (per thread; `render` resets
    them)."""

    steps = 0
    deadline = float("inf")

  budget = Budget()

  def step():
    budget.steps += 1
    if budget.steps > MAX_RENDER_STEPS:
      raise errors.InputError(
          f"{origin}: the chat template runs more than "
          f"{MAX_RENDER_STEPS:,} loop iterations and calls for one chat "
          "(nested loops?); refused")
    if budget.steps % 1024 == 0 and time.monotonic() > budget.deadline:
      raise errors.InputError(
          f"{origin}: the chat template renders for more than "
          f"{MAX_RENDER_SECONDS:g} s; refused")

  class Bounded:
    """An iterable counting a step per item (its length the wrapped one's,
    so `loop.length` reads the same)."""

    def __init__(self, items):
      self._items = items

    def __len__(self):
      return len(self._items)

    def __iter__(self):
      for item in self._items:
        step()
        yield item

  class Environment(sandbox.ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset(["*", "**"])

    def call(self, context, obj, /, *args, **kwargs):
      step()
      return super().call(context, obj, *args, **kwargs)

    def call_binop(self, context, operator, left, right):
      _check_binop(operator, left, right, origin)
      return super().call_binop(context, operator, left, right)

  def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)

  def strftime_now(fmt):
    return datetime.datetime.now().strftime(fmt)

  env = Environment(trim_blocks=True, lstrip_blocks=True,
                    extensions=["jinja2.ext.loopcontrols"])
  env.globals.update(raise_exception=raise_exception,
                     strftime_now=strftime_now)
  env.globals[_BOUNDED] = Bounded
  try:
    tree = env.parse(source)
    for loop in tree.find_all(nodes.For):
      call = nodes.Call(nodes.Name(_BOUNDED, "load"), [loop.iter], [], None,
                        None)
      call.set_lineno(loop.lineno)
      call.set_environment(env)
      loop.iter = call
    template = env.from_string(tree)
  except jinja2.TemplateError as e:  # syntax, unknown filter or test
    where = f" (line {e.lineno})" if getattr(e, "lineno", None) else ""
    raise errors.InputError(
        f"{origin}: the chat template does not parse{where}: "
        f"{' '.join(str(e).split())}") from e
  return template, budget


def _check_binop(operator: str, left, right, origin: str) -> None:
  """Refuses a `*` or `**` whose result would be huge (a string or list
  repeated past `MAX_RENDER_CHARS`, a power of thousands of digits)."""
  if operator == "*":
    for seq, n in ((left, right), (right, left)):
      if (isinstance(seq, (str, list, tuple)) and isinstance(n, int)
          and len(seq) * n > MAX_RENDER_CHARS):
        raise errors.InputError(f"{origin}: the chat template repeats a "
                                f"sequence {n:,} times; refused")
  elif (isinstance(left, int) and isinstance(right, int) and abs(left) > 1
        and right * abs(left).bit_length() > 1 << 16):
    raise errors.InputError(f"{origin}: the chat template computes "
                            f"{left} ** {right}; refused")


# --- the codec ----------------------------------------------------------------


class TextCodec:
  """MARC's text format through a model's tokenizer and chat template.

  Rows (`encode_task`) are the chat rendered by the template and tokenised
  as one string (special tokens such as `<|eot_id|>` are the tokenizer's
  added tokens); the loss mask marks every token that overlaps the loss
  text: the assistant turn (header, answer and end-of-turn: what the
  template adds after the user turn) and, with loss 'marc', the outputs of
  demonstrations 2..K in the system message (from after `' ->'` through the
  footer: MARC's unmasked spans); 'outputs' adds the first demonstration's
  output, 'query' has the assistant turn only. Prompts end with the
  template's generation prompt (the assistant header). Positions are 1-D.

  Args:
    tokenizer: a `tokenizers.Tokenizer`.
    render: `make_template`'s function.
    style: 'new', 'default' or 'barc'.
    vocab_size: the model's vocabulary (logits) size.
    stop_ids: ids that end an answer (end-of-turn, end-of-text).
    pad: the padding id (never a real token of a row).
  """

  def __init__(self, tokenizer, render, style: str, vocab_size: int,
               stop_ids, pad: int):
    check_style(style)
    self.tokenizer, self.render, self.style = tokenizer, render, style
    self.vocab_size, self.pad = int(vocab_size), int(pad)
    stop = np.zeros(self.vocab_size, bool)
    for i in stop_ids:
      if i is not None and 0 <= i < self.vocab_size:
        stop[i] = True
    foot = footer(style)
    if foot:  # every token that writes the footer ends the answer
      for i in range(min(self.vocab_size, tokenizer.get_vocab_size())):
        if foot in tokenizer.decode([i]):
          stop[i] = True
    self.stop = stop
    self.answer_tokens = np.ones(self.vocab_size, bool)
    # (a row is measured, then encoded: the same text twice in a row)
    self._encode = functools.lru_cache(maxsize=1024)(self._encode_text)

  def _encode_text(self, text: str) -> tuple[np.ndarray, np.ndarray]:
    enc = self.tokenizer.encode(text, add_special_tokens=False)
    return (np.asarray(enc.ids, np.int32),
            np.asarray(enc.offsets, np.int32).reshape(-1, 2))

  @staticmethod
  def _query_task(task: arc.Task, test_index: int) -> arc.Task:
    return arc.Task(task.id, task.train, [task.test[test_index]])

  def _texts(self, task: arc.Task, include_answer: bool, loss: str):
    """(text, loss spans in it) of the task's chat."""
    lay = layout(task, self.style)
    if not include_answer:
      return self.render(lay.messages, add_generation_prompt=True), []
    if lay.answer is None:
      raise arc.TaskError(task.id, "the query has no output to encode (use "
                          "include_answer=False for a prompt)")
    prompt = self.render(lay.messages, add_generation_prompt=False)
    full = self.render(lay.messages + [lay.answer],
                       add_generation_prompt=False)
    if not full.startswith(prompt):
      raise errors.InputError(
          f"{getattr(self.render, 'origin', 'the chat template')}: the chat "
          "template renders the answer's turn by changing what comes before "
          "it: no loss mask")
    spans = [(len(prompt), len(full))]
    outputs = {"outputs": lay.output_spans, "marc": lay.output_spans[1:],
               "query": []}[loss]
    system = lay.messages[0]["content"].strip()
    at = full.find(system) if outputs else -1
    if at >= 0:
      spans += [(at + s, at + e) for s, e in outputs]
    return full, spans

  def sequence_length(self, task: arc.Task, test_index: int = 0,
                      include_answer: bool = True) -> int:
    text, _ = self._texts(self._query_task(task, test_index), include_answer,
                          "query")
    return len(self._encode(text)[0])

  def encode_task(self, task: arc.Task, max_len: int, *, test_index: int = 0,
                  include_answer: bool = True, loss: str = "outputs"
                  ) -> tokens.Encoded:
    """The task's row (or, without the answer, its prompt) padded to
    `max_len` (`ttt.tokens.Encoded`; coords all zero)."""
    if loss not in tokens.LOSS_MODES:
      raise ValueError(f"loss must be one of {tokens.LOSS_MODES}, got "
                       f"{loss!r}")
    text, spans = self._texts(self._query_task(task, test_index),
                              include_answer, loss)
    ids, offsets = self._encode(text)
    n = len(ids)
    if n > max_len:
      raise tokens.SequenceTooLong(task.id, f"sequence needs {n} tokens, "
                                   f"max_len is {max_len}")
    out = np.full(max_len, self.pad, np.int32)
    out[:n] = ids
    mask = np.zeros(max_len, np.int32)
    for s, e in spans:
      mask[:n] |= ((offsets[:, 0] < e) & (offsets[:, 1] > s)).astype(np.int32)
    return tokens.Encoded(out, mask, np.arange(max_len, dtype=np.int32),
                          np.zeros((max_len, 3), np.int32), n)

  def decode_grid(self, ids) -> np.ndarray | None:
    """Generated ids (up to the first stop token, or padding) as a grid
    (`parse_answer` of their text; None: malformed)."""
    ids = np.asarray(ids, np.int64).reshape(-1)
    end = np.flatnonzero(self.stop[np.clip(ids, 0, self.vocab_size - 1)]
                         | (ids == self.pad) | (ids < 0)
                         | (ids >= self.vocab_size))
    cut = ids[:end[0] + 1] if end.size else ids
    cut = cut[(cut != self.pad) & (cut >= 0) & (cut < self.vocab_size)]
    if cut.size == 0:
      return None
    written = self.tokenizer.decode([int(i) for i in cut],
                                    skip_special_tokens=True)
    return parse_answer(written, self.style)

  def max_answer_tokens(self) -> int:
    """`max_answer_tokens(style)`: a bound on the longest answer."""
    return max_answer_tokens(self.style)

  def row_encoder(self, base: arc.Task, config):
    """`data.build_ttt_dataset`'s row encoder for one base task: `g ->
    Encoded | None` (None: longer than `config.max_len` or than
    `row_length_bound`, which the plan's fixed shapes rely on)."""
    limit = min(config.max_len, self.row_length_bound(base, config, True))

    def row(g):
      t = augment.apply_task(g, base)
      n = self.sequence_length(t)
      if n > limit:
        return None
      return self.encode_task(t, config.max_len, loss=config.loss)

    return row

  def row_length_bound(self, task: arc.Task, config, base: bool = False
                       ) -> int:
    """The longest row of the task's TTT data under identity colours (in
    either orientation), among those that fit `max_len` (rows longer than
    this under a colour permutation are dropped, so it bounds every row).
    With `base`, `task` is one base task (else the task whose leave-one-out
    tasks are the bases)."""
    if not base:
      return data.row_length_bound(task, config, self.sequence_length)
    best = 1
    for d in ((0, 1) if config.dihedral else (0,)):
      g = augment.Element(np.int32(d), np.arange(arc.NUM_COLOURS,
                                                 dtype=np.int32),
                          np.zeros(0, np.int32))
      n = self.sequence_length(augment.apply_task(g, task))
      if n <= config.max_len:
        best = max(best, n)
    return best

  def build_rows(self, task: arc.Task, config, key=None, stats=None):
    """One task's TTT dataset in this format (`data.build_ttt_dataset`)."""
    return data.build_ttt_dataset(task, config, key, stats,
                                  encoder=self.row_encoder, pad=self.pad)


def open_codec(path: str, style: str = "new") -> TextCodec:
  """The text codec of the pretrained model at `path` (a Hugging Face
  snapshot folder or a GGUF file, `ttt.pretrained`): its tokenizer, its
  chat template (or Llama-3's header format), its vocabulary size, and its
  end-of-turn / end-of-text ids as stop tokens.

  Raises:
    ttt.errors.InputError: `path` is not a pretrained model, or its
      tokenizer or chat template cannot be used (`make_template`; the
      template is rendered once here, so a broken one fails now).
  """
  from ttt import pretrained

  if not path or not pretrained.is_pretrained(path):
    raise errors.InputError(
        f"data.codec='text' needs a pretrained model's tokenizer: init_from "
        f"must be a Hugging Face snapshot folder or a .gguf file, got "
        f"{path!r}" + (f" ({pretrained.why_not(path)})" if path else ""))
  source = pretrained.open_source(path)
  tok = source.tokenizer()
  specials = source.specials()
  vocab_size = int(source.arch["vocab_size"])
  tok_config = read_tokenizer_config(path)
  bos = specials.get("bos")
  render = make_template(tok_config, None if bos is None
                         else tok.id_to_token(int(bos)),
                         template_origin(path))
  stops = [tok.token_to_id(LLAMA3_EOT), specials.get("eos"),
           tok.token_to_id("<|end_of_text|>"), tok.token_to_id("<|im_end|>")]
  return TextCodec(tok, render, style, vocab_size, stops,
                   _pad_id(tok, render, specials, vocab_size, stops))


def _pad_id(tok, render, specials: dict, vocab_size: int, stops) -> int:
  """A padding id that no row or prompt writes: the model's pad token, else
  a spare embedding row past the tokenizer's ids, else an end-of-text or
  special token that a rendered chat does not contain (some configs name
  the end-of-turn token as pad: rows hold it, so it is passed over)."""
  sample = layout(arc.Task("pad", [(np.zeros((1, 1), np.int8),) * 2],
                           [(np.zeros((1, 1), np.int8),) * 2]))
  used = set(tok.encode(render(sample.messages + [sample.answer]),
                        add_special_tokens=False).ids)
  candidates = [specials.get("pad"),
                *range(tok.get_vocab_size(), vocab_size),
                *stops, *sorted(specials.get("control") or [], reverse=True)]
  for i in candidates:
    if i is not None and 0 <= i < vocab_size and i not in used:
      return int(i)
  raise errors.InputError("the tokenizer has no id to pad with (no pad "
                          "token, no spare row, every special token used by "
                          "the chat)")
