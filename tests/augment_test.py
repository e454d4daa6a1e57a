"""Property tests for the augmentation group (ttt.augment)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ttt import arc
from ttt import augment as A


def _random_grid(rng, h=None, w=None):
  h = h or int(rng.integers(1, 8))
  w = w or int(rng.integers(1, 8))
  return rng.integers(0, 10, (h, w)).astype(np.int8)


def _random_element(rng, k=0, d=None):
  colours = rng.permutation(10).astype(np.int32)
  return A.Element(np.int32(rng.integers(8) if d is None else d), colours,
                   rng.permutation(k).astype(np.int32))


def _equal(a, b):
  return a.shape == b.shape and (a == b).all()


def test_dihedral_elements_match_numpy_and_are_distinct():
  x = np.arange(12).reshape(3, 4) % 10
  els = A.dihedral()
  assert len(els) == 8 and int(els[0].dihedral) == A.IDENTITY
  want = [x, np.rot90(x), np.rot90(x, 2), np.rot90(x, 3), np.flipud(x),
          np.fliplr(x), x.T, np.rot90(x, 2).T]
  images = [A.apply(g, x) for g in els]
  for got, w in zip(images, want, strict=True):
    assert _equal(got, w)
  for a, b in itertools.combinations(images, 2):
    assert not _equal(a, b)


def test_group_laws_of_the_dihedral_tables():
  e = A.IDENTITY
  for a in range(8):
    assert A.COMPOSE[a, e] == A.COMPOSE[e, a] == a
    assert A.COMPOSE[a, A.INVERSE[a]] == e == A.COMPOSE[A.INVERSE[a], a]
    for b, c in itertools.product(range(8), repeat=2):
      assert (A.COMPOSE[A.COMPOSE[a, b], c] == A.COMPOSE[a, A.COMPOSE[b, c]])


@pytest.mark.parametrize("d", range(8))
def test_invert_apply_compose_for_every_dihedral_element(d):
  rng = np.random.default_rng(d)
  for _ in range(20):
    x = _random_grid(rng)
    g = _random_element(rng, d=d)
    h = _random_element(rng)
    assert _equal(A.invert(g, A.apply(g, x)), x)
    assert _equal(A.apply(A.inverse(g), A.apply(g, x)), x)
    assert _equal(A.apply(A.compose(g, h), x), A.apply(g, A.apply(h, x)))
    ident = A.compose(g, A.inverse(g))
    assert int(ident.dihedral) == 0
    np.testing.assert_array_equal(ident.colours, np.arange(10))


def test_identity_element():
  rng = np.random.default_rng(0)
  x = _random_grid(rng)
  assert _equal(A.apply(A.identity(), x), x)
  assert _equal(A.apply(A.dihedral()[0], x), x)


def _toy_task(rng, k=4):
  return arc.Task("toy", [(_random_grid(rng), _random_grid(rng))
                          for _ in range(k)],
                  [(_random_grid(rng), _random_grid(rng)),
                   (_random_grid(rng), None)])


def _same_task(a, b):
  if len(a.train) != len(b.train) or len(a.test) != len(b.test):
    return False
  pairs = list(zip(a.train + a.test, b.train + b.test, strict=True))
  return all(_equal(x1, x2) and ((y1 is None and y2 is None) or _equal(y1, y2))
             for (x1, y1), (x2, y2) in pairs)


def test_task_action_reorders_inverts_and_composes():
  rng = np.random.default_rng(1)
  task = _toy_task(rng)
  for _ in range(10):
    g = _random_element(rng, 4)
    h = _random_element(rng, 4)
    moved = A.apply_task(g, task)
    for n, k in enumerate(g.order):
      assert _equal(moved.train[n][0], A.apply(g, task.train[k][0]))
    assert moved.test[1][1] is None
    assert _same_task(A.invert_task(g, moved), task)
    assert _same_task(A.apply_task(A.compose(g, h), task),
                      A.apply_task(g, A.apply_task(h, task)))
  with pytest.raises(ValueError, match="order has 3 entries"):
    A.apply_task(_random_element(rng, 3), task)


def test_compose_and_inverse_inside_jit_match_numpy():
  rng = np.random.default_rng(2)
  g, h = _random_element(rng, 5), _random_element(rng, 5)
  got = jax.jit(lambda a, b: A.inverse(A.compose(a, b)))(
      jax.tree.map(jnp.asarray, g), jax.tree.map(jnp.asarray, h))
  want = A.inverse(A.compose(g, h))
  for x, y in zip(got, want, strict=True):
    np.testing.assert_array_equal(x, y)


def test_sample():
  key = jax.random.key(0)
  g = jax.jit(lambda k: A.sample(k, 5, num=64))(key)
  assert g.dihedral.shape == (64,) and g.colours.shape == (64, 10)
  assert g.order.shape == (64, 5)
  assert (g.colours[:, 0] == 0).all()  # background kept by default
  assert (jnp.sort(g.colours, -1) == jnp.arange(10)).all()
  assert (jnp.sort(g.order, -1) == jnp.arange(5)).all()
  assert len(set(np.asarray(g.dihedral).tolist())) == 8
  again = A.sample(key, 5, num=64)
  for x, y in zip(g, again, strict=True):
    np.testing.assert_array_equal(x, y)
  free = A.sample(key, 3, num=64, fix_background=False)
  assert (free.colours[:, 0] != 0).any()
  fixed = A.sample(key, 3, dihedral=False, colours=False, shuffle=False)
  assert int(fixed.dihedral) == 0
  np.testing.assert_array_equal(fixed.colours, np.arange(10))
  np.testing.assert_array_equal(fixed.order, np.arange(3))
  rng = np.random.default_rng(0)
  h = A.sample_numpy(rng, 4, 32)
  assert (h.colours[:, 0] == 0).all()
  assert (np.sort(h.order, -1) == np.arange(4)).all()


def test_padded_form_equals_numpy_on_every_arc1_grid(arc1):
  grids = [g for t in arc1 for g in t.grids()]
  padded, shapes = A.pad_grids(grids)
  rng = np.random.default_rng(3)
  elements = [_random_element(rng, d=d) for d in range(8)]
  stacked = A.Element(*(np.stack(f) for f in zip(*elements, strict=True)))
  apply_all = jax.jit(jax.vmap(A.apply_padded, in_axes=(0, None, None)))
  invert_all = jax.jit(jax.vmap(A.invert_padded, in_axes=(0, 0, 0)))
  out, out_shapes = apply_all(stacked, padded, shapes)
  back, back_shapes = invert_all(stacked, out, out_shapes)
  out, out_shapes = np.asarray(out), np.asarray(out_shapes)
  np.testing.assert_array_equal(np.asarray(back), np.broadcast_to(
      padded, back.shape))
  np.testing.assert_array_equal(np.asarray(back_shapes), np.broadcast_to(
      shapes, back_shapes.shape))
  for e, g in enumerate(elements):
    for n, x in enumerate(grids):
      want = A.apply(g, x)
      got = A.unpad_grid(out[e, n], out_shapes[e, n])
      assert _equal(got, want), (e, n)
      h, w = want.shape
      assert not out[e, n, h:].any() and not out[e, n, :, w:].any()


def test_padded_single_grid_jit_and_vmap_over_tasks():
  rng = np.random.default_rng(4)
  x = _random_grid(rng, 5, 3)
  p, s = A.pad_grid(x)
  for g in A.dihedral():
    out, shape = jax.jit(A.apply_padded)(g, p, s)
    assert _equal(A.unpad_grid(out, shape), A.apply(g, x))
  # vmapped over tasks: one element per task, a batch of grids per task
  tasks = [[_random_grid(rng) for _ in range(3)] for _ in range(4)]
  els = [_random_element(rng) for _ in tasks]
  pg = np.stack([A.pad_grids(t)[0] for t in tasks])
  ps = np.stack([A.pad_grids(t)[1] for t in tasks])
  st = A.Element(*(np.stack(f) for f in zip(*els, strict=True)))
  out, shapes = jax.vmap(A.apply_padded)(st, pg, ps)
  for t, (grids, g) in enumerate(zip(tasks, els, strict=True)):
    for n, x in enumerate(grids):
      assert _equal(A.unpad_grid(out[t, n], shapes[t, n]), A.apply(g, x))


@pytest.mark.parametrize("name", sorted(A.EXTRA_AUGMENTERS))
def test_extra_augmenters_are_invertible_and_bounded(name):
  rng = np.random.default_rng(5)
  forward, _ = A.EXTRA_AUGMENTERS[name]
  for _ in range(10):
    x = _random_grid(rng)
    assert _equal(A.invert_extra(name, forward(x)), x)
  task = _toy_task(rng)
  out = A.apply_extra(name, task)
  assert out is not None
  assert _equal(out.train[0][0], forward(task.train[0][0]))
  assert out.test[1][1] is None
  big = arc.Task("big", [(np.zeros((16, 16), np.int8),) * 2],
                 [(np.zeros((16, 16), np.int8), None)])
  assert A.apply_extra(name, big) is None
  with pytest.raises(ValueError, match="unknown extra augmenter"):
    A.apply_extra("nope", task)
