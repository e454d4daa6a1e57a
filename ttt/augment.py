"""The augmentation group D8 x colour permutations x demonstration orders.

An element is a small pytree `Element(dihedral, colours, order)`:

* `dihedral`: int32[] in 0..7, one of the 8 symmetries of the square
  (`IDENTITY, ROT90, ROT180, ROT270, FLIP_UD, FLIP_LR, TRANSPOSE,
  ANTI_TRANSPOSE`; rotations are counter-clockwise, as `np.rot90`);
* `colours`: int32[10], cell value c becomes `colours[c]`;
* `order`: int32[K], the demonstrations after the action are
  `train[order[0]], ..., train[order[K-1]]`. An empty order (K = 0) is the
  identity on any number of demonstrations (used by `dihedral()`).

Colour and dihedral actions commute, so the group is a direct product and
everything is computed per factor. Composition follows function composition:
`apply(compose(g, h), x) == apply(g, apply(h, x))`.

`compose`, `inverse` and `sample` work on numpy arrays and on jax arrays
(inside jit, batched elements with leading axes too); `apply`/`invert` act on
numpy grids, `apply_task`/`invert_task` on a whole `Task`, and
`apply_padded`/`invert_padded` on padded grids (`int8[..., 30, 30]` plus
`int32[..., 2]` shapes) inside jit, vmappable over tasks and over elements.
Padding cells are always 0, so padded grids compare exactly.

MARC's extra invertible augmenters (2x upscaling, mirrored concatenation,
tiling) are whole-task transforms outside the group: `EXTRA_AUGMENTERS`,
`apply_extra`, `invert_extra`. They return None when a grid would exceed
30 x 30.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ttt import arc

SIDE = arc.MAX_SIDE
NUM_COLOURS = arc.NUM_COLOURS

IDENTITY, ROT90, ROT180, ROT270 = 0, 1, 2, 3
FLIP_UD, FLIP_LR, TRANSPOSE, ANTI_TRANSPOSE = 4, 5, 6, 7
DIHEDRAL_NAMES = ("identity", "rot90", "rot180", "rot270", "flip_ud",
                  "flip_lr", "transpose", "anti_transpose")

# Each dihedral element as (transpose first?, then flip rows?, flip columns?).
_TFF = np.array([
    [0, 0, 0],  # identity
    [1, 1, 0],  # rot90 ccw  = flipud(x.T)
    [0, 1, 1],  # rot180
    [1, 0, 1],  # rot270 ccw = fliplr(x.T)
    [0, 1, 0],  # flip up-down
    [0, 0, 1],  # flip left-right
    [1, 0, 0],  # transpose
    [1, 1, 1],  # anti-transpose
], np.int32)


def _dihedral_np(grid: np.ndarray, d: int) -> np.ndarray:
  t, fr, fc = _TFF[int(d)]
  out = grid.T if t else grid
  if fr:
    out = out[::-1]
  if fc:
    out = out[:, ::-1]
  return out


def _tables() -> tuple[np.ndarray, np.ndarray]:
  probe = np.arange(6).reshape(2, 3)  # no symmetry: 8 distinct images
  images = [_dihedral_np(probe, d) for d in range(8)]

  def index(img):
    return next(k for k, m in enumerate(images)
                if m.shape == img.shape and (m == img).all())

  compose = np.array([[index(_dihedral_np(_dihedral_np(probe, b), a))
                       for b in range(8)] for a in range(8)], np.int32)
  inverse = np.array([list(compose[a]).index(0) for a in range(8)], np.int32)
  return compose, inverse


# COMPOSE[a, b]: the element "b, then a"; INVERSE[a]: a's inverse.
COMPOSE, INVERSE = _tables()


class Element(NamedTuple):
  """A group element (leading batch axes allowed on every field).

  Attributes:
    dihedral: int32[...] in 0..7.
    colours: int32[..., 10], a permutation of 0..9.
    order: int32[..., K], a permutation of 0..K-1 (K = 0: identity order).
  """

  dihedral: np.ndarray | jax.Array
  colours: np.ndarray | jax.Array
  order: np.ndarray | jax.Array


def _xp(*arrays):
  return jnp if any(isinstance(a, jax.Array) for a in arrays) else np


def identity(num_demos: int = 0) -> Element:
  """The identity element (numpy), with an explicit order of length K."""
  return Element(np.int32(0), np.arange(NUM_COLOURS, dtype=np.int32),
                 np.arange(num_demos, dtype=np.int32))


def dihedral() -> list[Element]:
  """The 8 elements of D8 (identity colours and order), identity first."""
  return [Element(np.int32(d), np.arange(NUM_COLOURS, dtype=np.int32),
                  np.zeros(0, np.int32)) for d in range(8)]


def compose(g: Element, h: Element) -> Element:
  """g o h: `apply(compose(g, h), x) == apply(g, apply(h, x))`."""
  xp = _xp(*g, *h)
  d = xp.asarray(COMPOSE)[g.dihedral, h.dihedral]
  colours = xp.take_along_axis(xp.asarray(g.colours), xp.asarray(h.colours),
                               axis=-1)
  if g.order.shape[-1] == 0:
    order = h.order
  elif h.order.shape[-1] == 0:
    order = g.order
  else:
    order = xp.take_along_axis(xp.asarray(h.order), xp.asarray(g.order),
                               axis=-1)
  return Element(d, colours, order)


def inverse(g: Element) -> Element:
  """The inverse element: `invert(g, x) == apply(inverse(g), x)`."""
  xp = _xp(*g)
  return Element(xp.asarray(INVERSE)[g.dihedral],
                 xp.argsort(g.colours, axis=-1).astype(np.int32),
                 xp.argsort(g.order, axis=-1).astype(np.int32))


def sample(key: jax.Array, num_demos: int, *, num: int | None = None,
           dihedral: bool = True, colours: bool = True,
           fix_background: bool = True, shuffle: bool = True) -> Element:
  """Draws uniform group elements (jittable; `num_demos`, `num` static).

  Args:
    key: a PRNG key.
    num_demos: K, the length of `order`.
    num: None for one element, else the size of a leading batch axis.
    dihedral: draw the dihedral part (else identity).
    colours: draw a colour permutation (else identity).
    fix_background: keep colour 0 fixed (permute 1..9 only).
    shuffle: draw the demonstration order (else 0..K-1).

  Returns:
    An `Element` of jax arrays; fields shaped [] / [10] / [K], with a leading
    [num] axis when `num` is given.
  """
  if num is not None:
    keys = jax.random.split(key, num)
    return jax.vmap(lambda k: sample(
        k, num_demos, dihedral=dihedral, colours=colours,
        fix_background=fix_background, shuffle=shuffle))(keys)
  kd, kc, ko = jax.random.split(key, 3)
  d = (jax.random.randint(kd, (), 0, 8, dtype=jnp.int32) if dihedral
       else jnp.int32(0))
  if not colours:
    perm = jnp.arange(NUM_COLOURS, dtype=jnp.int32)
  elif fix_background:
    perm = jnp.concatenate([
        jnp.zeros(1, jnp.int32),
        1 + jax.random.permutation(kc, NUM_COLOURS - 1).astype(jnp.int32)])
  else:
    perm = jax.random.permutation(kc, NUM_COLOURS).astype(jnp.int32)
  order = (jax.random.permutation(ko, num_demos).astype(jnp.int32)
           if shuffle and num_demos > 1
           else jnp.arange(num_demos, dtype=jnp.int32))
  return Element(d, perm, order)


def sample_numpy(rng: np.random.Generator, num_demos: int, num: int, *,
                 dihedral: bool = True, colours: bool = True,
                 fix_background: bool = True, shuffle: bool = True
                 ) -> Element:
  """`sample` for host-side data building, drawn from a numpy Generator.

  Returns:
    An `Element` of numpy arrays shaped [num] / [num, 10] / [num, K].
  """
  d = (rng.integers(0, 8, num, dtype=np.int32) if dihedral
       else np.zeros(num, np.int32))
  perm = np.tile(np.arange(NUM_COLOURS, dtype=np.int32), (num, 1))
  if colours:
    start = 1 if fix_background else 0
    perm[:, start:] = rng.permuted(perm[:, start:], axis=1)
  order = np.tile(np.arange(num_demos, dtype=np.int32), (num, 1))
  if shuffle and num_demos > 1:
    order = rng.permuted(order, axis=1)
  return Element(d, perm, order)


def take(g: Element, index: int) -> Element:
  """Element `index` of a batched element."""
  return Element(*(np.asarray(f)[index] for f in g))


# --- numpy grids ------------------------------------------------------------


def apply(g: Element, grid: np.ndarray) -> np.ndarray:
  """Applies one element to a grid: int[H, W] -> int8[H', W']."""
  out = _dihedral_np(np.asarray(grid), int(g.dihedral))
  return np.asarray(g.colours, np.int8)[out]


def invert(g: Element, grid: np.ndarray) -> np.ndarray:
  """Maps a grid back: `invert(g, apply(g, x)) == x`."""
  return apply(inverse(Element(*(np.asarray(f) for f in g))), grid)


def _reorder(pairs: list, order: np.ndarray, task_id: str) -> list:
  order = np.asarray(order)
  if order.shape[-1] == 0:
    return list(pairs)
  if len(order) != len(pairs):
    raise ValueError(f"task {arc.shown_id(task_id)}: order has {len(order)} "
                     f"entries, the "
                     f"task has {len(pairs)} demonstrations")
  return [pairs[int(k)] for k in order]


def apply_task(g: Element, task: arc.Task) -> arc.Task:
  """Applies an element to every grid of a task and reorders demonstrations.

  Test pairs keep their order (unknown outputs stay None).
  """
  g = Element(*(np.asarray(f) for f in g))

  def f(x):
    return None if x is None else apply(g, x)

  train = [(f(i), f(o)) for i, o in _reorder(task.train, g.order, task.id)]
  return arc.Task(task.id, train, [(f(i), f(o)) for i, o in task.test])


def invert_task(g: Element, task: arc.Task) -> arc.Task:
  """Undoes `apply_task(g, .)`."""
  return apply_task(inverse(Element(*(np.asarray(f) for f in g))), task)


# --- padded grids, for compiled code ---------------------------------------


def pad_grid(grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """int[H, W] -> (int8[30, 30] zero-padded, int32[2] shape)."""
  out = np.zeros((SIDE, SIDE), np.int8)
  h, w = grid.shape
  out[:h, :w] = grid
  return out, np.array([h, w], np.int32)


def pad_grids(grids: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
  """A list of N grids -> (int8[N, 30, 30], int32[N, 2])."""
  out = np.zeros((len(grids), SIDE, SIDE), np.int8)
  shapes = np.zeros((len(grids), 2), np.int32)
  for n, g in enumerate(grids):
    out[n, :g.shape[0], :g.shape[1]] = g
    shapes[n] = g.shape
  return out, shapes


def unpad_grid(grid, shape) -> np.ndarray:
  """(int8[30, 30], int32[2]) -> int8[H, W] (numpy)."""
  h, w = (int(s) for s in np.asarray(shape))
  return np.asarray(grid)[:h, :w].astype(np.int8)


def apply_padded(g: Element, grids: jax.Array, shapes: jax.Array
                 ) -> tuple[jax.Array, jax.Array]:
  """Applies ONE element to padded grids (jittable; vmap over elements).

  Args:
    g: one element (dihedral int32[], colours int32[10]; order unused).
    grids: int8[..., 30, 30] zero-padded grids.
    shapes: int32[..., 2] their (height, width).

  Returns:
    (int8[..., 30, 30], int32[..., 2]): the transformed grids, zero-padded,
    and their shapes.
  """
  tff = jnp.asarray(_TFF)[g.dihedral]
  t, fr, fc = tff[0] == 1, tff[1] == 1, tff[2] == 1
  h = shapes[..., 0, None, None]
  w = shapes[..., 1, None, None]
  out_h = jnp.where(t, w, h)
  out_w = jnp.where(t, h, w)
  i = jnp.arange(SIDE)[:, None]
  j = jnp.arange(SIDE)[None, :]
  a = jnp.where(fr, out_h - 1 - i, i)
  b = jnp.where(fc, out_w - 1 - j, j)
  inside = (i < out_h) & (j < out_w)
  src = jnp.where(t, b * SIDE + a, a * SIDE + b)
  src = jnp.where(inside, src, 0)
  flat = grids.reshape(grids.shape[:-2] + (SIDE * SIDE,))
  src = jnp.broadcast_to(src, grids.shape).reshape(flat.shape)
  vals = jnp.take_along_axis(flat, src, axis=-1).reshape(grids.shape)
  colours = jnp.asarray(g.colours, jnp.int8)
  out = jnp.where(inside, colours[vals.astype(jnp.int32)], 0)
  new_shapes = jnp.stack([out_h[..., 0, 0], out_w[..., 0, 0]], axis=-1)
  return out.astype(jnp.int8), new_shapes.astype(jnp.int32)


def invert_padded(g: Element, grids: jax.Array, shapes: jax.Array
                  ) -> tuple[jax.Array, jax.Array]:
  """Undoes `apply_padded(g, .)` (jittable; same shapes as there)."""
  g = Element(*(jnp.asarray(f) for f in g))
  return apply_padded(inverse(g), grids, shapes)


# --- MARC's extra invertible whole-task augmenters ---------------------------


def _halve(axis: int, keep: str) -> Callable:
  def f(x):
    n = x.shape[axis]
    if n % 2:
      return None
    sl = slice(0, n // 2) if keep == "first" else slice(n // 2, n)
    return x[sl] if axis == 0 else x[:, sl]
  return f


def _every_other(axes: tuple[int, ...]) -> Callable:
  def f(x):
    if any(x.shape[a] % 2 for a in axes):
      return None
    out = x[::2] if 0 in axes else x
    return out[:, ::2] if 1 in axes else out
  return f


_UPSCALE = {
    (0, 1): lambda x: np.repeat(np.repeat(x, 2, 0), 2, 1),
    (0,): lambda x: np.repeat(x, 2, 0),
    (1,): lambda x: np.repeat(x, 2, 1),
}

# name -> (forward, inverse). The inverse keeps the part the forward map copied
# (a best-effort projection for predictions that are not exact images) and
# returns None when the grid's shape cannot be an image.
EXTRA_AUGMENTERS: dict[str, tuple[Callable, Callable]] = {
    "upscale_2x": (_UPSCALE[(0, 1)], _every_other((0, 1))),
    "upscale_height_2x": (_UPSCALE[(0,)], _every_other((0,))),
    "upscale_width_2x": (_UPSCALE[(1,)], _every_other((1,))),
    "mirror_right": (lambda x: np.concatenate([x, x[:, ::-1]], 1),
                     _halve(1, "first")),
    "mirror_left": (lambda x: np.concatenate([x[:, ::-1], x], 1),
                    _halve(1, "second")),
    "mirror_down": (lambda x: np.concatenate([x, x[::-1]], 0),
                    _halve(0, "first")),
    "mirror_up": (lambda x: np.concatenate([x[::-1], x], 0),
                  _halve(0, "second")),
    "tile_2x1": (lambda x: np.tile(x, (2, 1)), _halve(0, "first")),
    "tile_1x2": (lambda x: np.tile(x, (1, 2)), _halve(1, "first")),
    "tile_2x2": (lambda x: np.tile(x, (2, 2)),
                 lambda x: None if (h := _halve(0, "first")(x)) is None
                 else _halve(1, "first")(h)),
}


def apply_extra(name: str, task: arc.Task) -> arc.Task | None:
  """Applies an extra augmenter to every grid; None if a grid exceeds 30."""
  if name not in EXTRA_AUGMENTERS:
    raise ValueError(f"unknown extra augmenter {name!r}; known: "
                     f"{sorted(EXTRA_AUGMENTERS)}")
  forward = EXTRA_AUGMENTERS[name][0]
  if any(max(forward(g).shape) > SIDE for g in task.grids()):
    return None

  def f(x):
    return None if x is None else forward(x).astype(np.int8)

  return arc.Task(task.id, [(f(i), f(o)) for i, o in task.train],
                  [(f(i), f(o)) for i, o in task.test])


def invert_extra(name: str, grid: np.ndarray) -> np.ndarray | None:
  """Maps a grid back through an extra augmenter (None: not invertible)."""
  return EXTRA_AUGMENTERS[name][1](np.asarray(grid))
