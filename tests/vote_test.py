"""Tests for ttt.vote: the jitted reducers against plain numpy, MARC's rule."""

from collections import Counter

import jax
import numpy as np
import pytest

from ttt import vote
from ttt.augment import pad_grid, unpad_grid

# --- a plain numpy implementation of the hierarchical / flat rules ----------


def _key(g):
  return g.shape, g.tobytes()


def _grid(k):
  return np.frombuffer(k[1], np.int8).reshape(k[0])


def _first_most_common(items):
  counts = Counter(items)
  best = max(counts.values())
  return next(x for x in items if counts[x] == best)


def _majority(keys, transpose):
  grids = [_grid(k) for k in keys]
  if transpose:
    grids = [g.T for g in grids]
  shape = _first_most_common([g.shape for g in grids])
  members = [g for g in grids if g.shape == shape]
  rows = [np.frombuffer(_first_most_common([m[r].tobytes() for m in members]),
                        np.int8) for r in range(shape[0])]
  out = np.stack(rows)
  return _key(np.ascontiguousarray(out.T if transpose else out))


def _ranked(keys):
  """Distinct keys by (count desc, first appearance)."""
  counts = Counter(keys)
  first = {}
  for n, k in enumerate(keys):
    first.setdefault(k, n)
  return sorted(counts, key=lambda k: (-counts[k], first[k])), counts


def _global(entries):
  """entries: list of (key, from_identity). Returns ranking with votes."""
  keys = [k for k, _ in entries]
  counts = Counter(keys)
  ident = {k for k, i in entries if i}
  first = {}
  for n, k in enumerate(keys):
    first.setdefault(k, n)
  ranked = sorted(counts, key=lambda k: (-counts[k], -(k in ident), first[k]))
  return [(k, counts[k]) for k in ranked]


def numpy_hierarchical(views, identity):
  entries = []
  for v, preds in enumerate(views):
    keys = [_key(g) for g in preds if g is not None]
    if not keys:
      continue
    ranked, _ = _ranked(keys)
    noms = ranked[:3]
    if len(ranked) < 3:
      for extra in (_majority(keys, False), _majority(keys, True)):
        if extra not in noms and len(noms) < 3:
          noms.append(extra)
    entries += [(k, identity[v]) for k in noms]
  return _global(entries)


def numpy_flat(views, identity):
  return _global([(_key(g), identity[v]) for v, preds in enumerate(views)
                  for g in preds if g is not None])


# --- random cases -------------------------------------------------------------


def _random_case(rng, num_views, num_samples):
  pool = []
  for _ in range(int(rng.integers(1, 6))):
    shape = [(2, 2), (2, 3), (3, 2)][int(rng.integers(3))]
    pool.append(rng.integers(0, 3, shape).astype(np.int8))
  views = []
  for _ in range(num_views):
    preds = []
    for _ in range(num_samples):
      r = rng.random()
      if r < 0.15:
        preds.append(None)
      elif r < 0.25:  # a one-off variant
        g = pool[int(rng.integers(len(pool)))].copy()
        g[0, 0] = (g[0, 0] + 1) % 10
        preds.append(g)
      else:
        preds.append(pool[int(rng.integers(len(pool)))])
    views.append(preds)
  identity = rng.random(num_views) < 0.3
  return views, identity


def _padded(views, rng, junk=True):
  v, s = len(views), len(views[0])
  grids = np.zeros((v, s, 30, 30), np.int8)
  shapes = np.ones((v, s, 2), np.int32)
  valid = np.zeros((v, s), bool)
  if junk:  # garbage outside shapes and in invalid slots must not matter
    grids[:] = rng.integers(0, 10, grids.shape)
  for i, preds in enumerate(views):
    for j, g in enumerate(preds):
      if g is not None:
        grids[i, j, :g.shape[0], :g.shape[1]] = g
        shapes[i, j] = g.shape
        valid[i, j] = True
  return grids, shapes, valid


def _check(result, ranking, t=None):
  r = jax.tree.map(lambda x: np.asarray(x if t is None else x[t]), result)
  if not ranking:
    assert not r.found.any()
    return
  assert r.found[0]
  assert _key(unpad_grid(r.grids[0], r.shapes[0])) == ranking[0][0]
  assert r.votes[0] == ranking[0][1]
  if len(ranking) > 1:
    assert r.found[1]
    assert _key(unpad_grid(r.grids[1], r.shapes[1])) == ranking[1][0]
    assert r.votes[1] == ranking[1][1]
  else:
    assert not r.found[1]


@pytest.mark.parametrize("rule", ["hierarchical", "flat"])
def test_jitted_vote_equals_numpy_on_random_cases(rule):
  fn = {"hierarchical": vote.hierarchical_vote, "flat": vote.flat_vote}[rule]
  ref = {"hierarchical": numpy_hierarchical, "flat": numpy_flat}[rule]
  rng = np.random.default_rng(0)
  for num_views, num_samples, num_cases in [(4, 5, 300), (1, 1, 20),
                                            (3, 2, 50), (6, 8, 50)]:
    cases = [_random_case(rng, num_views, num_samples)
             for _ in range(num_cases)]
    padded = [_padded(views, rng) for views, _ in cases]
    batch = [np.stack(x) for x in zip(*padded, strict=True)]
    identity = np.stack([i for _, i in cases])
    result = vote.vmap_vote(fn)(*batch, identity)
    for t, (views, ident) in enumerate(cases):
      _check(result, ref(views, ident), t)


def test_vmapped_equals_one_task_at_a_time():
  rng = np.random.default_rng(1)
  cases = [_random_case(rng, 3, 4) for _ in range(6)]
  padded = [_padded(v, rng) for v, _ in cases]
  batch = [np.stack(x) for x in zip(*padded, strict=True)]
  ident = np.stack([i for _, i in cases])
  batched = vote.vmap_vote(vote.hierarchical_vote)(*batch, ident)
  single = jax.jit(vote.hierarchical_vote)
  for t in range(6):
    one = single(*padded[t], ident[t])
    for a, b in zip(one, batched, strict=True):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b)[t])


def test_reordering_changes_nothing_without_ties():
  rng = np.random.default_rng(2)
  checked = 0
  for _ in range(200):
    # views with exactly 3 distinct predictions nominate all of them
    pool = [rng.integers(0, 4, (2, 2)).astype(np.int8) for _ in range(6)]
    views = [[pool[int(k)] for k in rng.choice(6, 3, replace=False)]
             for _ in range(5)]
    views = [p + p[:1] for p in views]  # S = 4, one repeat
    ident = rng.random(5) < 0.4
    ranking = numpy_hierarchical(views, ident)
    if len(set(map(_key, pool))) < 6:
      continue
    sig = [(c, k in {_key(g) for v, p in enumerate(views) if ident[v]
                     for g in p}) for k, c in ranking]
    if len(sig) > 2 and (sig[0] == sig[1] or sig[1] == sig[2]):
      continue  # a tie decided by first appearance
    checked += 1
    perm_v = rng.permutation(5)
    shuffled = [[views[v][s] for s in rng.permutation(4)] for v in perm_v]
    a = jax.jit(vote.hierarchical_vote)(*_padded(views, rng), ident)
    b = jax.jit(vote.hierarchical_vote)(*_padded(shuffled, rng),
                                        ident[perm_v])
    for x, y in zip(a, b, strict=True):
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert checked > 50


def test_invalid_and_padding_never_win():
  rng = np.random.default_rng(3)
  a = np.array([[1, 2]], np.int8)
  b = np.array([[3], [4]], np.int8)
  garbage = np.full((30, 30), 7, np.int8)
  views = [[a, None, None, None], [b, a, None, None]]
  grids, shapes, valid = _padded(views, rng)
  grids[~valid] = garbage
  shapes[~valid] = (30, 30)
  for fn in (vote.hierarchical_vote, vote.flat_vote):
    r = jax.jit(fn)(grids, shapes, valid)
    got = {_key(unpad_grid(g, s)) for g, s in zip(r.grids, r.shapes,
                                                   strict=True)}
    assert got == {_key(a), _key(b)}
  # a task with nothing valid gets the flagged fallback
  none = jax.jit(vote.hierarchical_vote)(grids, shapes,
                                         np.zeros_like(valid))
  assert not np.asarray(none.found).any()
  np.testing.assert_array_equal(none.shapes, [[1, 1], [1, 1]])
  fb = (np.asarray(pad_grid(b)[0]), np.array([2, 1], np.int32))
  none = jax.jit(vote.hierarchical_vote)(grids, shapes, np.zeros_like(valid),
                                         None, fb)
  np.testing.assert_array_equal(none.shapes, [[2, 1], [2, 1]])


def test_product_of_experts():
  scores = np.array([[-1.0, -2.0], [-0.5, -0.1], [np.nan, 0.0], [-9, -9]])
  idx, total, found = vote.product_of_experts(scores)
  np.testing.assert_array_equal(idx, [1, 0])
  np.testing.assert_allclose(total, [-0.6, -3.0])
  assert np.asarray(found).all()
  idx, _, found = vote.product_of_experts(scores, [False, True, True, False])
  np.testing.assert_array_equal(idx, [1, 1])
  np.testing.assert_array_equal(found, [True, False])
  idx, _, found = jax.jit(jax.vmap(vote.product_of_experts))(
      np.stack([scores, scores[::-1]]))
  np.testing.assert_array_equal(idx, [[1, 0], [2, 3]])


# --- MARC's exact rule --------------------------------------------------------


def _g(*rows):
  return np.array(rows, np.int8)


def test_reference_single_prediction_view_counts_three_times():
  a, b, c = _g([3, 3]), _g([1, 1]), _g([2, 2])
  preds = [("id", b), ("id", b), ("id", c), ("T", a)]
  first, second = vote.reference_vote(preds, identity="id", categories=["T"])
  # the lone transposed prediction enters the vote three times and wins
  np.testing.assert_array_equal(first, a)
  np.testing.assert_array_equal(second, b)
  # our hierarchical rule counts one nomination per view: identity wins ties
  views = [[b, b, c], [a, None, None]]
  r = jax.jit(vote.hierarchical_vote)(*_padded(views, np.random.default_rng(0)))
  np.testing.assert_array_equal(unpad_grid(r.grids[0], r.shapes[0]), b)
  np.testing.assert_array_equal(unpad_grid(r.grids[1], r.shapes[1]), c)


def test_reference_runner_up_displaced_by_row_majority():
  x, y, z = _g([1, 1], [2, 2]), _g([3, 3], [4, 4]), _g([3, 3], [2, 2])
  preds = [("id", g) for g in (x, y, y, x, z)]
  first, second = vote.reference_vote(preds, identity="id", categories=[])
  np.testing.assert_array_equal(first, x)
  np.testing.assert_array_equal(second, z)  # y was tied for first


def test_reference_identity_tie_break_and_equal_attempts():
  a, b, c = _g([1]), _g([2]), _g([3])
  preds = [("id", a), ("id", a), ("id", a), ("T", b), ("F", c)]
  first, second = vote.reference_vote(preds, identity="id",
                                      categories=["T", "F"])
  np.testing.assert_array_equal(first, a)
  np.testing.assert_array_equal(second, a)  # attempt_2 may equal attempt_1
  single = vote.reference_vote([("id", b)], identity="id", categories=[])
  np.testing.assert_array_equal(single[0], b)
  np.testing.assert_array_equal(single[1], b)
  assert vote.reference_vote([], identity="id", categories=[]) == (None, None)


def test_reference_unlisted_label_counts_only_in_pool():
  a, b = _g([1]), _g([2])
  preds = [("id", a), ("X", b), ("X", b), ("X", b), ("X", b)]
  listed = vote.reference_vote(preds, identity="id", categories=["X"])
  unlisted = vote.reference_vote(preds, identity="id", categories=[])
  np.testing.assert_array_equal(listed[0], b)
  np.testing.assert_array_equal(unlisted[0], a)


def test_product_of_experts_with_one_candidate():
  """A single candidate (all views agreed) is attempt 1; attempt 2 is not
  found (this crashed top_k with k=2 before)."""
  idx, total, found = vote.product_of_experts(np.array([[-1.0, -2.0]]))
  assert np.asarray(idx).tolist() == [0, 0]
  assert np.asarray(found).tolist() == [True, False]
  assert float(total[0]) == -3.0
  grid = np.ones((2, 2), np.int8)
  a1, a2 = vote.poe_attempts([grid], np.array([[-1.0, -2.0]]))
  assert a1 is grid and a2 is None
