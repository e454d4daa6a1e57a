"""MARC's text format (ttt.text): messages, answers, parsing.

Expected strings are written from the format rules (hand-written text for a
small task; rows joined by hand for real ARC-AGI-1 evaluation tasks), not
produced by the code under test.
"""

import numpy as np
import pytest

from ttt import arc, text

G1 = np.array([[0, 1], [2, 3]], np.int8)
G2 = np.array([[4, 5, 6]], np.int8)
G3 = np.array([[7], [8]], np.int8)
G4 = np.array([[9, 0]], np.int8)
SMALL = arc.Task("small", [(G1, G2), (G3, G4)], [(G2, G1)])

NEW_SYSTEM = (
    "Figure out the underlying transformation in the following examples and "
    "apply it to the test case. Here are some examples from this "
    "transformation, your answer must follow the format.\n"
    "The input-output grids are provided as python arrays:\n")


def test_new_style_small_task_by_hand():
  messages, answer = text.marc_messages(SMALL, "new")
  assert messages == [
      {"role": "system", "content": NEW_SYSTEM
       + "[[0 1]\n [2 3]] -> [[4 5 6]]#\n[[7]\n [8]] -> [[9 0]]#\n"},
      {"role": "user", "content": "[[4 5 6]] -> "},
  ]
  assert answer == {"role": "assistant", "content": "[[0 1]\n [2 3]]#"}


def test_default_style_small_task_by_hand():
  messages, answer = text.marc_messages(SMALL, "default")
  assert messages[0]["content"] == (
      NEW_SYSTEM + "[[0 1]\n [2 3]] -> [[4 5 6]]\n[[7]\n [8]] -> [[9 0]]\n")
  assert messages[1] == {"role": "user", "content": "[[4 5 6]] -> "}
  assert answer == {"role": "assistant", "content": "[[0 1]\n [2 3]]"}


def test_barc_style_small_task_by_hand():
  messages, answer = text.marc_messages(SMALL, "barc")
  assert messages[0] == {"role": "system", "content": (
      "You are a world-class puzzle solver with exceptional pattern "
      "recognition skills. Your task is to analyze puzzles, spot patterns, "
      "and provide direct solutions.")}
  assert messages[1]["role"] == "user"
  assert messages[1]["content"] == (
      "Given input-output grid pairs as reference examples, carefully observe "
      "the patterns to predict the output grid for new test input. Each pair "
      "follows the same transformation rule. Grids are 2D arrays represented "
      "as strings, with cells (colors) separated by spaces and rows by "
      "newlines.\nHere are the input and output grids for the reference "
      "examples:\n"
      "Example 1:\nInput:\nBlack Blue\nRed Green\n\nOutput:\n"
      "Yellow Gray Pink\n"
      "Example 2:\nInput:\nOrange\nPurple\n\nOutput:\nBrown Black\n"
      "\n\nHere is the input grid for the test example:\n"
      "Input:\nYellow Gray Pink\n\n\n"
      "Directly provide the output grids corresponding to the given test "
      "input grids, based on the patterns observed in the reference examples.")
  assert answer == {"role": "assistant", "content": (
      "The output grid for the test input grid is:\n\n```\n"
      "Black Blue\nRed Green\n```")}


def _rows(grid):  # numpy's str() of a small int grid, written out by hand
  return "[" + "\n ".join(
      "[" + " ".join(str(int(v)) for v in row) + "]" for row in grid) + "]"


def _words(grid):
  names = "Black Blue Red Green Yellow Gray Pink Orange Purple Brown".split()
  return "\n".join(" ".join(names[int(v)] for v in row) for row in grid)


@pytest.fixture(scope="module")
def eval_tasks():
  tasks = arc.load_arc(1, "evaluation")
  # the first 40 tasks, plus every task with a 30-wide grid or 2 test pairs
  wide = [t for t in tasks if max(g.shape[1] for g in t.grids()) == 30]
  multi = [t for t in tasks if len(t.test) > 1]
  return tasks[:40] + wide[:5] + multi[:5]


@pytest.mark.parametrize("style", text.STYLES)
def test_real_tasks_follow_the_format_rules(eval_tasks, style):
  for t in eval_tasks:
    q, a = t.test[-1]
    messages, answer = text.marc_messages(t, style)
    if style == "barc":
      user = "".join(
          f"Example {k + 1}:\nInput:\n{_words(i)}\n\nOutput:\n{_words(o)}\n"
          for k, (i, o) in enumerate(t.train))
      assert messages[1]["content"].endswith(
          user + "\n\nHere is the input grid for the test example:\nInput:\n"
          + _words(q) + "\n\n\nDirectly provide the output grids "
          "corresponding to the given test input grids, based on the patterns "
          "observed in the reference examples."), t.id
      assert answer["content"] == (
          "The output grid for the test input grid is:\n\n```\n"
          + _words(a) + "\n```")
    else:
      foot = "#" if style == "new" else ""
      demos = "".join(f"{_rows(i)} -> {_rows(o)}{foot}\n" for i, o in t.train)
      assert messages == [
          {"role": "system", "content": NEW_SYSTEM + demos},
          {"role": "user", "content": f"{_rows(q)} -> "}], t.id
      assert answer == {"role": "assistant", "content": _rows(a) + foot}
    assert np.array_equal(text.parse_answer(answer["content"], style), a)
    assert text.parse_answer(answer["content"], style).dtype == np.int8


def test_numpy_print_options_do_not_change_the_text():
  with np.printoptions(threshold=4, linewidth=10, edgeitems=1):
    assert text.grid_text(np.zeros((30, 30), np.int8)) == _rows(
        np.zeros((30, 30), np.int8))


def test_query_is_the_last_test_pair_and_unknown_answer_is_none():
  t = arc.Task("two", [(G1, G2)], [(G1, G2), (G3, None)])
  messages, answer = text.marc_messages(t, "new")
  assert messages[1]["content"] == "[[7]\n [8]] -> "
  assert answer is None


@pytest.mark.parametrize("written, grid", [
    ("[[1 2]\n [3 4]]#", [[1, 2], [3, 4]]),
    ("[[1  2]\n [3 4]]", [[1, 2], [3, 4]]),  # double space collapsed
    ("  [[5]]#  ", [[5]]),
    ("[[1 2] [3 4]]", [[1, 2, 3, 4]]),  # one line: one row (MARC's rule)
    ("```\n[[7 8]]\n```", [[7, 8]]),
])
def test_parse_answer_reads_marc_text(written, grid):
  assert np.array_equal(text.parse_answer(written, "new"), grid)


@pytest.mark.parametrize("written", [
    "", "#", "[[]]", "[[1 2]\n [3]]", "[[1 2]\n [3 4 5]]", "[[1, 2]]",
    "[[1 a]]", "[[10]]", "[[-1]]", "[[1 2]]\n[[3]]",
    "[[" + " ".join(["0"] * 31) + "]]",
])
def test_parse_answer_rejects_malformed_text(written):
  assert text.parse_answer(written, "new") is None
  assert text.parse_answer(written, "default") is None


def test_parse_answer_barc():
  ok = ("The output grid for the test input grid is:\n\n```\n"
        "Red Blue\nBlack Brown\n```")
  assert np.array_equal(text.parse_answer(ok, "barc"), [[2, 1], [0, 9]])
  for bad in ["The output grid is: Red", "```\nRed Blue\nBlack\n```",
              "```\nRed Bleu\n```", "```\n\n```", "```\nRed\n\nBlue\n```"]:
    assert text.parse_answer(bad, "barc") is None, bad


def test_unknown_style_is_refused():
  with pytest.raises(ValueError, match="style"):
    text.marc_messages(SMALL, "old")
  with pytest.raises(ValueError, match="style"):
    text.parse_answer("[[1]]", "old")
