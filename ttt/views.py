"""Inference views: the queries asked per test input, and their inverses.

A view is a way to ask the model for one test input's answer: which
demonstrations (and in which order) form the prompt, and which group element
(dihedral x colours, `ttt.augment`) transforms every grid of it. The model's
answer in the view's frame maps back with `to_original` (the inverse element)
before voting.

Views of one test input (`make_views`, MARC's set by default):

* identity: all demonstrations in the original order, then `orders` distinct
  shuffled orders; with `leave_one_out`, each subset missing one
  demonstration (original order and `orders` shuffles); category
  'identity'.
* transforms: one view per name in `transforms` (default MARC's transpose,
  flip_ud, flip_lr, rot90, rot180), the original-order prompt with every grid
  transformed; category = the transform's name.
* colours: `colour_perms` views with a random colour permutation fixing 0
  (and the original order); category 'colour'.

Views whose prompt does not fit `max_len` are dropped (counted by the
caller). Categories are what the hierarchical vote groups by.

`make_queries(task, task_index, ...)` gives the main job's `Query` values,
one per test input: its kept views (each repeated `samples` times for
sampled decoding), their prompt lengths, and how many views were too long.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import numpy as np

from ttt import arc, augment, codec, configlib, tokens

IDENTITY = "identity"
COLOUR = "colour"
# MARC's inference transforms, by our dihedral names.
MARC_TRANSFORMS = ("transpose", "flip_ud", "flip_lr", "rot90", "rot180")


@dataclasses.dataclass(frozen=True)
class ViewConfig:
  """Which views to ask (fields mirror `config.views`)."""

  orders: int = 2  # extra shuffled demonstration orders per identity view
  leave_one_out: bool = False  # add leave-one-out demonstration subsets
  transforms: tuple[str, ...] = MARC_TRANSFORMS  # dihedral views
  colour_perms: int = 0  # views with a random colour permutation
  max_views: int = 0  # keep at most this many views per input (0: all)

  def validate(self) -> None:
    bad = set(self.transforms) - set(augment.DIHEDRAL_NAMES[1:])
    if bad:
      raise ValueError(f"unknown view transforms {sorted(bad)}; known: "
                       f"{augment.DIHEDRAL_NAMES[1:]}")
    if self.orders < 0 or self.colour_perms < 0 or self.max_views < 0:
      raise ValueError("views.orders/colour_perms/max_views must be >= 0")


class View(NamedTuple):
  """One query of a test input.

  Attributes:
    label: unique name within the input (e.g. 'identity/order1', 'rot90').
    category: 'identity', a transform name, or 'colour' (vote groups).
    demos: indices into `task.train`, in prompt order.
    element: the `augment.Element` applied to every grid (empty order).
  """

  label: str
  category: str
  demos: tuple[int, ...]
  element: augment.Element


def _element(dihedral: int = 0, colours=None) -> augment.Element:
  c = (np.arange(arc.NUM_COLOURS, dtype=np.int32) if colours is None
       else np.asarray(colours, np.int32))
  return augment.Element(np.int32(dihedral), c, np.zeros(0, np.int32))


def make_views(num_demos: int, config: Any = None,
               rng: np.random.Generator | None = None) -> list[View]:
  """The views of a test input of a task with `num_demos` demonstrations.

  Deterministic for a given `rng` (default: seed 0).
  """
  cfg = configlib.from_config(ViewConfig, config)
  rng = rng if rng is not None else np.random.default_rng(0)
  ident = _element()
  out = []
  seen = set()

  def add_orders(base: tuple[int, ...], name: str):
    orders = [base]
    tries = 0
    while len(orders) < 1 + cfg.orders and tries < 20 * (1 + cfg.orders):
      tries += 1
      o = tuple(int(i) for i in rng.permutation(base))
      if o not in orders:
        orders.append(o)
    for n, o in enumerate(orders):
      if o in seen:
        continue
      seen.add(o)
      out.append(View(name if n == 0 else f"{name}/order{n}", IDENTITY, o,
                      ident))

  full = tuple(range(num_demos))
  add_orders(full, IDENTITY)
  if cfg.leave_one_out and num_demos > 1:
    for k in range(num_demos):
      add_orders(tuple(i for i in full if i != k), f"loo{k}")
  for name in cfg.transforms:
    d = augment.DIHEDRAL_NAMES.index(name)
    out.append(View(name, name, full, _element(d)))
  for n in range(cfg.colour_perms):
    perm = np.arange(arc.NUM_COLOURS, dtype=np.int32)
    perm[1:] = 1 + rng.permutation(arc.NUM_COLOURS - 1)
    out.append(View(f"colour{n}", COLOUR, full, _element(0, perm)))
  if cfg.max_views:
    out = out[:cfg.max_views]
  return out


def view_task(task: arc.Task, test_index: int, view: View,
              answer: np.ndarray | None = None) -> arc.Task:
  """The task as the view asks it: chosen demonstrations, transformed.

  The single test pair is the transformed test input with `answer` (given
  in the original frame, transformed too) or None.
  """
  g = view.element
  train = [tuple(augment.apply(g, x) for x in task.train[k])
           for k in view.demos]
  q = augment.apply(g, task.test[test_index][0])
  a = None if answer is None else augment.apply(g, answer)
  return arc.Task(task.id, train, [(q, a)])


def to_original(view: View, grid: np.ndarray | None) -> np.ndarray | None:
  """Maps a prediction in the view's frame back to the task's frame."""
  return None if grid is None else augment.invert(view.element, grid)


def prompt(task: arc.Task, test_index: int, view: View, max_len: int,
           codec_: codec.Codec | None = None) -> tokens.Encoded | None:
  """The view's inference prompt in the codec's format (default the
  cells': it ends at the query's OUTPUT), or None when it does not fit
  `max_len` with room for at least one answer token."""
  c = codec.default(codec_)
  vt = view_task(task, test_index, view)
  if c.sequence_length(vt, include_answer=False) >= max_len:
    return None
  return c.encode_task(vt, max_len, include_answer=False)


class Query(NamedTuple):
  """One test input of one task, as the main job asks it (immutable).

  Attributes:
    task_index: the task's index in the run (keys: data, views, samples).
    task: the task.
    test_index: which test input.
    views: the kept views, in order (repeated per sample).
    lengths: real prompt tokens of each kept view.
    too_long: views dropped because their prompt did not fit.
  """

  task_index: int
  task: arc.Task
  test_index: int
  views: tuple[View, ...]
  lengths: tuple[int, ...]
  too_long: int

  @property
  def categories(self) -> tuple[str, ...]:
    return tuple(v.category for v in self.views)


def make_queries(task: arc.Task, task_index: int, config: Any, max_len: int,
                 seed: int = 0, samples: int = 1,
                 codec_: codec.Codec | None = None) -> list[Query]:
  """The queries of every test input of `task`.

  Views come from `make_views` with `rng = default_rng([seed, task_index,
  test_index])`; a view whose prompt leaves no room for an answer token
  within `max_len` is dropped (counted in `too_long`). Each kept view is
  repeated `samples` times (sampled decoding: every sample votes; 'dfs':
  one slot per enumerated answer). Lengths are the codec's (default
  the cells').
  """
  c = codec.default(codec_)
  out = []
  for ti in range(len(task.test)):
    rng = np.random.default_rng([seed, task_index, ti])
    kept, lengths, too_long = [], [], 0
    for v in make_views(len(task.train), config, rng):
      n = c.sequence_length(view_task(task, ti, v), include_answer=False)
      if n >= max_len:
        too_long += 1
        continue
      kept += [v] * samples
      lengths += [n] * samples
    out.append(Query(task_index, task, ti, tuple(kept), tuple(lengths),
                     too_long))
  return out

