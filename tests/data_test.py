"""Tests for ttt.data: leave-one-out tasks and TTT datasets."""

import jax
import numpy as np
import pytest

from ttt import arc, data, tokens


def _task(k=4, seed=0):
  rng = np.random.default_rng(seed)
  g = lambda: rng.integers(0, 10, rng.integers(2, 5, 2)).astype(np.int8)  # noqa: E731
  return arc.Task("t", [(g(), g()) for _ in range(k)], [(g(), None)])


def test_leave_one_out():
  task = _task(4)
  loo = data.leave_one_out(task)
  assert len(loo) == 4
  for k, sub in enumerate(loo):
    assert sub.id == f"t/loo{k}"
    assert all(p is q for p, q in zip(
        sub.train, task.train[:k] + task.train[k + 1:], strict=True))
    assert len(sub.test) == 1 and sub.test[0] is task.train[k]
  assert data.leave_one_out(_task(1)) == []


def test_leave_two_out_and_end_to_end():
  task = _task(4)
  l2o = data.leave_two_out(task)
  assert len(l2o) == 12
  first = l2o[0]  # query 0, dropped 1
  assert first.test[0] is task.train[0]
  assert [p is task.train[n] for p, n in zip(first.train, (2, 3),
                                             strict=True)] == [True, True]
  assert data.leave_two_out(_task(2)) == []
  e2e = data.end_to_end(task)
  assert len(e2e) == 4 and all(t.train == [] for t in e2e)


def _rows(ds):
  return {ds.tokens[n].tobytes() for n in np.flatnonzero(ds.valid)}


def test_dataset_shapes_validity_determinism():
  task = _task(4)
  cfg = dict(max_len=256, num_sequences=40)
  key = jax.random.key(7)
  stats = {}
  ds = data.build_ttt_dataset(task, cfg, key, stats=stats)
  assert ds.tokens.shape == (40, 256) and ds.tokens.dtype == np.int32
  assert ds.mask.shape == (40, 256) and ds.positions.shape == (40, 256)
  assert ds.coords.shape == (40, 256, 3) and ds.valid.shape == (40,)
  assert ds.valid.all() and stats["rows"] == 40
  assert len(_rows(ds)) == 40  # de-duplicated
  again = data.build_ttt_dataset(task, cfg, key)
  for a, b in zip(ds, again, strict=True):
    np.testing.assert_array_equal(a, b)
  other = data.build_ttt_dataset(task, cfg, jax.random.key(8))
  assert not np.array_equal(ds.tokens, other.tokens)
  # the first rows are the untransformed leave-one-out tasks, in order
  for k, sub in enumerate(data.leave_one_out(task)):
    want = tokens.encode_task(sub, 256)
    np.testing.assert_array_equal(ds.tokens[k], want.tokens)
    np.testing.assert_array_equal(ds.mask[k], want.mask)
    np.testing.assert_array_equal(ds.coords[k], want.coords)


def test_every_row_is_an_augmented_leave_one_out_task():
  """Each row decodes to a group image of one leave-one-out task."""
  from ttt import augment

  task = _task(3)
  ds = data.build_ttt_dataset(task, dict(max_len=256, num_sequences=30))
  loo = data.leave_one_out(task)
  for n in range(30):
    toks = ds.tokens[n]
    starts = np.flatnonzero(toks == tokens.OUTPUT)
    answer = tokens.decode_grid(toks[starts[-1] + 1:])
    assert answer is not None
    ok = False
    for sub in loo:
      x = sub.test[0][1]
      for d in range(8):
        img = augment._dihedral_np(x, d)
        if img.shape == answer.shape:
          # some colour permutation fixing 0 maps img onto answer
          pairs = set(zip(img.ravel().tolist(), answer.ravel().tolist(),
                          strict=True))
          ok |= (len({a for a, _ in pairs}) == len(pairs)
                 and len({b for _, b in pairs}) == len(pairs)
                 and all((a == 0) == (b == 0) for a, b in pairs))
    assert ok, n


def test_length_filter_and_padding_rows():
  rng = np.random.default_rng(1)
  small = [(rng.integers(0, 3, (2, 2)).astype(np.int8),) * 2 for _ in range(3)]
  huge = (np.zeros((20, 20), np.int8), np.zeros((20, 20), np.int8))
  task = arc.Task("mixed", small + [huge], [(small[0][0], None)])
  stats = {}
  ds = data.build_ttt_dataset(
      task, dict(max_len=64, num_sequences=500), jax.random.key(0),
      stats=stats)
  # every leave-one-out task holds the 20x20 pair (as context or query), so
  # only the leave-two-out tasks that drop it entirely fit in 64 tokens
  assert stats["too_long"] > 0
  n = int(ds.valid.sum())
  assert 0 < n < 500 and not ds.valid[n:].any()
  assert (ds.tokens[n:] == tokens.PAD).all() and not ds.mask[n:].any()
  assert (ds.tokens[:n, :64] != tokens.PAD).any(-1).all()
  lengths = (ds.tokens[:n] != tokens.PAD).sum(-1)
  assert (lengths <= 64).all()


def test_leave_two_out_fills_up_when_short():
  task = _task(3)
  cfg = dict(max_len=256, num_sequences=2000, dihedral=False, colours=False)
  s1, s2 = {}, {}
  without = data.build_ttt_dataset(task, dict(cfg, fill_leave_two_out=False),
                                   stats=s1)
  with_l2o = data.build_ttt_dataset(task, cfg, stats=s2)
  # orders only: 3 loo tasks x 2! orders = 6 distinct sequences
  assert without.valid.sum() == 6
  # plus 6 leave-two-out tasks with 1 demonstration each
  assert with_l2o.valid.sum() == 12


def test_end_to_end_variant_has_no_context():
  task = _task(4)
  ds = data.build_ttt_dataset(task, dict(max_len=128, num_sequences=20,
                                         leave_out="end_to_end"))
  valid = ds.tokens[ds.valid]
  assert ((valid == tokens.INPUT).sum(-1) == 1).all()
  assert ((valid == tokens.OUTPUT).sum(-1) == 1).all()


def test_extra_augmenters_and_config_checks():
  task = _task(3)
  plain = dict(max_len=512, num_sequences=100, dihedral=False, colours=False,
               shuffle=False, fill_leave_two_out=False)
  without = data.build_ttt_dataset(task, plain)
  ds = data.build_ttt_dataset(task, dict(plain,
                                         extra_augmenters=["upscale_2x"]))
  # 3 loo tasks, plus their 3 upscaled images (identity element only)
  assert without.valid.sum() == 3 and ds.valid.sum() == 6
  n_without = (without.tokens[without.valid] != tokens.PAD).sum(-1)
  n_with = (ds.tokens[ds.valid] != tokens.PAD).sum(-1)
  # the upscaled rows hold 4x the cells: strictly longer than any plain row
  assert sorted(n_with)[:3] == sorted(n_without)
  assert min(sorted(n_with)[3:]) > max(n_without)
  with pytest.raises(ValueError, match="unknown DataConfig fields"):
    data.build_ttt_dataset(task, dict(steps=3))
  with pytest.raises(ValueError, match="unknown extra augmenter"):
    data.build_ttt_dataset(task, dict(extra_augmenters=["zoom"]))
  with pytest.raises(ValueError, match="leave_out must be"):
    data.build_ttt_dataset(task, dict(leave_out="two"))


def test_all_arc1_eval_tasks_build(arc1_eval):
  stats = {}
  key = jax.random.key(0)
  for i, task in enumerate(arc1_eval[:40]):
    ds = data.build_ttt_dataset(task, dict(max_len=2048, num_sequences=64),
                                jax.random.fold_in(key, i), stats=stats)
    assert ds.valid.sum() == stats["rows"]
    m = ds.mask[ds.valid]
    assert (m.sum(-1) > 0).all()
    # targets are never markers, BOS or PAD
    t = ds.tokens[ds.valid][m == 1]
    assert np.isin(t, list(range(11)) + [tokens.EOS]).all()
    # rows are distinct (deduplicated) and within the bound that fixes
    # the run's TTT length
    real = [r[r != tokens.PAD].tobytes() for r in ds.tokens[ds.valid]]
    assert len(set(real)) == len(real)
    assert data.real_length(ds) <= data.row_length_bound(
        task, dict(max_len=2048, num_sequences=64))
    # each row's last output (the query answer) is a demonstration output
    # under a group element: same cell count, same colour histogram up to
    # a permutation of the non-background colours
    outs = {(o.size, tuple(sorted(np.bincount(o.ravel(), minlength=10)[1:])),
             int((o == 0).sum())) for _, o in task.train}
    for row in ds.tokens[ds.valid][:8]:
      last = np.flatnonzero(row == tokens.OUTPUT)[-1]
      grid = tokens.decode_grid(row[last + 1:])
      assert grid is not None
      sig = (grid.size, tuple(sorted(np.bincount(grid.ravel(),
                                                 minlength=10)[1:])),
             int((grid == 0).sum()))
      assert sig in outs, task.id
