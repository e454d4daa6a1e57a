"""Tests for ttt.tokens: the codec, layout, masks, positions, decoding."""

import numpy as np
import pytest

from ttt import arc, tokens

T = tokens


def _task():
  g = lambda *rows: np.array(rows, np.int8)  # noqa: E731
  return arc.Task("toy", [(g([1, 2]), g([3], [4])), (g([5]), g([6, 7]))],
                  [(g([8, 9], [0, 1]), g([2]))])


def test_layout_of_a_small_task():
  seq = T.encode_task(_task(), 40)
  want = [T.BOS,
          T.INPUT, 1, 2, T.ROW_END, T.OUTPUT, 3, T.ROW_END, 4, T.ROW_END, T.EOS,
          T.INPUT, 5, T.ROW_END, T.OUTPUT, 6, 7, T.ROW_END, T.EOS,
          T.INPUT, 8, 9, T.ROW_END, 0, 1, T.ROW_END, T.OUTPUT, 2, T.ROW_END,
          T.EOS]
  assert seq.length == len(want) == T.sequence_length(_task())
  np.testing.assert_array_equal(seq.tokens[:seq.length], want)
  assert (seq.tokens[seq.length:] == T.PAD).all()
  assert seq.tokens.dtype == np.int32 and seq.tokens.shape == (40,)
  np.testing.assert_array_equal(seq.positions, np.arange(40))
  # coords: (row, column, segment) with cells at (r + 1, c + 1)
  np.testing.assert_array_equal(seq.coords[1], [0, 0, 0])   # INPUT of ex 0
  np.testing.assert_array_equal(seq.coords[2], [1, 1, 0])   # cell (0, 0)
  np.testing.assert_array_equal(seq.coords[3], [1, 2, 0])   # cell (0, 1)
  np.testing.assert_array_equal(seq.coords[4], [1, 3, 0])   # ROW_END
  np.testing.assert_array_equal(seq.coords[5], [0, 0, 1])   # OUTPUT of ex 0
  np.testing.assert_array_equal(seq.coords[8], [2, 1, 1])   # cell (1, 0)
  np.testing.assert_array_equal(seq.coords[10], [3, 0, 1])  # EOS after 2 rows
  np.testing.assert_array_equal(seq.coords[19], [0, 0, 4])  # query INPUT
  assert (seq.coords[seq.length:] == 0).all()


def _target_spans(mask):
  spans, start = [], None
  for n, m in enumerate(list(mask) + [0]):
    if m and start is None:
      start = n
    if not m and start is not None:
      spans.append((start, n))
      start = None
  return spans


def test_loss_masks():
  task = _task()
  outputs = T.encode_task(task, 40, loss="outputs").mask
  assert _target_spans(outputs) == [(6, 11), (15, 19), (27, 30)]
  marc = T.encode_task(task, 40, loss="marc").mask
  assert _target_spans(marc) == [(15, 19), (27, 30)]
  query = T.encode_task(task, 40, loss="query").mask
  assert _target_spans(query) == [(27, 30)]
  with pytest.raises(ValueError, match="loss must be one of"):
    T.encode_task(task, 40, loss="last")


def test_prompt_and_errors():
  task = _task()
  prompt = T.encode_task(task, 40, include_answer=False)
  assert prompt.tokens[prompt.length - 1] == T.OUTPUT
  assert prompt.length == T.sequence_length(task, include_answer=False)
  unknown = arc.Task("u", task.train, [(task.test[0][0], None)])
  T.encode_task(unknown, 40, include_answer=False)
  with pytest.raises(arc.TaskError, match="has no output to encode"):
    T.encode_task(unknown, 40)
  with pytest.raises(T.SequenceTooLong, match="task toy: sequence needs 30"):
    T.encode_task(task, 29)


def test_decode_rejects_malformed_answers():
  ok = [1, 2, T.ROW_END, 3, 4, T.ROW_END, T.EOS, T.PAD, 7]
  np.testing.assert_array_equal(T.decode_grid(ok), [[1, 2], [3, 4]])
  bad = {
      "no EOS": [1, 2, T.ROW_END],
      "empty": [T.EOS],
      "ragged": [1, 2, T.ROW_END, 3, T.ROW_END, T.EOS],
      "unterminated row": [1, 2, T.ROW_END, 3, 4, T.EOS],
      "marker inside": [1, T.INPUT, T.ROW_END, T.EOS],
      "pad inside": [1, T.PAD, T.ROW_END, T.EOS],
      "empty row": [T.ROW_END, T.EOS],
      "too wide": [0] * 31 + [T.ROW_END, T.EOS],
      "too tall": [0, T.ROW_END] * 31 + [T.EOS],
  }
  for name, toks in bad.items():
    assert T.decode_grid(toks) is None, name


def test_round_trip_every_arc1_grid(arc1):
  n = 0
  for task in arc1:
    for grid in task.grids():
      toks = np.concatenate([T.encode_grid(grid), [T.EOS]])
      back = T.decode_grid(toks)
      assert back is not None and back.shape == grid.shape
      assert (back == grid).all(), task.id
      n += 1
    # The answer region of a full encoding decodes back to the answer too.
    for k, (_, answer) in enumerate(task.test):
      prompt = T.sequence_length(task, k, include_answer=False)
      seq = T.encode_task(task, prompt + T.MAX_ANSWER_TOKENS, test_index=k)
      np.testing.assert_array_equal(T.decode_grid(seq.tokens[prompt:]), answer)
  assert n == 7000  # every input and output grid of the 800 tasks


def test_stats_command(capsys):
  assert T.main(["--stats"]) == 0
  out = capsys.readouterr().out
  assert "ARC-AGI-1 evaluation, 400 tasks" in out
  assert "ARC-AGI-2 evaluation, 120 tasks" in out
  assert "<=8192" in out
  assert T.main([]) == 2
