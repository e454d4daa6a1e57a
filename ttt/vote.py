"""Voting reducers: from many predictions per test input to two attempts.

Jitted reducers over padded candidates, for ONE test input, vmappable over
tasks (`vmap_vote`):

* `hierarchical_vote` (the paper's rule, our exact definition): predictions
  `int8[V, S, 30, 30]` from V views x S samples. Each view nominates its
  top-3 distinct predictions by frequency (ties: first seen); when it has
  fewer than 3 distinct ones it adds its row-wise and then its column-wise
  majority grid, if new. A global vote over all nominations then counts, for
  each distinct grid, how many views nominated it; ties prefer a grid an
  identity view nominated, then the first nomination (in view order, then
  rank). One nomination per view and grid: a view with a single distinct
  prediction nominates it once (MARC counts it three times; see
  `reference_vote`).
* `flat_vote`: the two most frequent predictions over all views, same
  tie-breaks.
* `product_of_experts`: the two candidates with the largest summed
  log-likelihood over views, from a `[C, V]` score matrix.
* `count_poe` (host side, `poe_attempts(..., counts)`): the candidates most
  often produced (views x answers per view), ties broken by that summed
  log-likelihood -- the vote and the product of experts combined.

Row-wise majority: over the view's predictions of its most common shape
(ties: first seen), row r is the most common r-th row (ties: first seen);
column-wise likewise with columns.

Grids equal when shape and cells are equal; cells outside the shape are
ignored. When nothing valid was predicted the attempts are a defined
fallback (a 1 x 1 zero grid, or the one given) and `found` is False.

`reference_vote` reproduces MARC's voting exactly on the host (numpy), for
researchers comparing with the reference code; see
`../shared/docs/METHOD_TTT_ARC.md`, appendix.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ttt import augment

SIDE = 30


_CELLS_PER_WORD = 8  # 4 bits per cell in a uint32 fingerprint
_WORDS = -(-SIDE * SIDE // _CELLS_PER_WORD)


class VoteResult(NamedTuple):
  """Two attempts for one test input (leading task axis when vmapped).

  Attributes:
    grids: int8[2, 30, 30] attempt_1, attempt_2 (zero-padded).
    shapes: int32[2, 2] their (height, width).
    votes: int32[2] votes behind each attempt (0 when not found).
    found: bool[2] whether the attempt is a real, distinct candidate; when
      found[1] is False attempt_2 repeats attempt_1 (or the fallback).
  """

  grids: jax.Array
  shapes: jax.Array
  votes: jax.Array
  found: jax.Array


def _canonical(grids, shapes):
  """Zeroes cells outside each grid's shape. [..., 30, 30], [..., 2]."""
  i = jnp.arange(SIDE)[:, None]
  j = jnp.arange(SIDE)[None, :]
  inside = (i < shapes[..., 0, None, None]) & (j < shapes[..., 1, None, None])
  return jnp.where(inside, grids, 0).astype(jnp.int8)


def _fingerprint(grids, shapes):
  """Exact keys: uint32[..., WORDS + 1] (cells 4 bits each, then shape)."""
  flat = grids.reshape(grids.shape[:-2] + (SIDE * SIDE,)).astype(jnp.uint32)
  pad = _WORDS * _CELLS_PER_WORD - SIDE * SIDE
  flat = jnp.pad(flat, [(0, 0)] * (flat.ndim - 1) + [(0, pad)])
  flat = flat.reshape(flat.shape[:-1] + (_WORDS, _CELLS_PER_WORD))
  shifts = jnp.arange(_CELLS_PER_WORD, dtype=jnp.uint32) * 4
  words = (flat << shifts).sum(-1, dtype=jnp.uint32)
  shape_word = (shapes[..., 0] * 64 + shapes[..., 1]).astype(jnp.uint32)
  return jnp.concatenate([words, shape_word[..., None]], axis=-1)


def _equal(keys):
  """bool[E, E] pairwise equality of fingerprints uint32[E, W]."""
  return (keys[:, None, :] == keys[None, :, :]).all(-1)


def _best(score, ok):
  """Index of the max `score` among `ok` entries, ties to the lowest index."""
  n = score.shape[0]
  key = jnp.where(ok, score * (n + 1) + (n - jnp.arange(n)), -1)
  return jnp.argmax(key)


def _majorities(grids, shapes, valid):
  """Row-wise and column-wise majority grids of one view.

  Args:
    grids: int8[S, 30, 30] canonical; shapes: int32[S, 2]; valid: bool[S].

  Returns:
    (int8[2, 30, 30], int32[2, 2]) the row- and column-majority grids.
  """
  shape_eq = (shapes[:, None, :] == shapes[None, :, :]).all(-1)
  shape_cnt = (shape_eq & valid[None, :]).sum(-1)
  star = _best(shape_cnt, valid)
  members = valid & shape_eq[star]

  def by_lines(g):  # g: [S, 30(lines), 30]
    line_eq = (g[:, None] == g[None, :]).all(-1)  # [S, S, 30]
    cnt = (line_eq & members[None, :, None]).sum(1)  # [S, 30]
    best = jax.vmap(lambda c: _best(c, members), in_axes=1)(cnt)  # [30]
    return g[best, jnp.arange(SIDE)]  # [30, 30]

  rows = by_lines(grids)
  cols = by_lines(grids.swapaxes(-1, -2)).T
  shape = shapes[star]
  return jnp.stack([rows, cols]), jnp.stack([shape, shape])


def _global_vote(grids, shapes, selected, from_identity, fallback):
  """Counts equal entries among `selected` and returns the top two.

  Args:
    grids: int8[E, 30, 30] canonical; shapes: int32[E, 2]; selected: bool[E];
    from_identity: bool[E] entry came from an identity view;
    fallback: (int8[30, 30], int32[2]).
  """
  if selected.shape[0] < 2:  # top_k needs two entries: add an unselected one
    grids = jnp.concatenate([grids, grids[:1]])
    shapes = jnp.concatenate([shapes, shapes[:1]])
    selected = jnp.concatenate([selected, jnp.zeros(1, bool)])
    from_identity = jnp.concatenate([from_identity, jnp.zeros(1, bool)])
  e = selected.shape[0]
  eq = _equal(_fingerprint(grids, shapes)) & selected[None, :]
  votes = eq.sum(-1)
  by_identity = (eq & from_identity[None, :]).any(-1)
  earlier = jnp.tril(eq, k=-1).any(-1)
  first = selected & ~earlier
  rank = (votes * 2 + by_identity) * e + (e - 1 - jnp.arange(e))
  key = jnp.where(first, rank, -1)
  top, idx = jax.lax.top_k(key, 2)
  found = top >= 0
  found = found.at[1].set(found[1] & found[0])
  idx = jnp.where(found, idx, idx[0])
  fb_grid, fb_shape = fallback
  out_grids = jnp.where(found[0], grids[idx], fb_grid[None])
  out_shapes = jnp.where(found[0], shapes[idx], fb_shape[None])
  return VoteResult(out_grids.astype(jnp.int8), out_shapes.astype(jnp.int32),
                    jnp.where(found, votes[idx], 0).astype(jnp.int32), found)


def _default_fallback():
  return jnp.zeros((SIDE, SIDE), jnp.int8), jnp.ones(2, jnp.int32)


def _identity_views(is_identity, num_views):
  if is_identity is None:
    return jnp.arange(num_views) == 0
  return jnp.asarray(is_identity, bool)


def hierarchical_vote(grids, shapes, valid, is_identity=None, fallback=None
                      ) -> VoteResult:
  """The hierarchical vote for ONE test input (jittable; see module doc).

  Args:
    grids: int8[V, 30, 30, ...] predictions, already mapped back to the
      original frame: int8[V, S, 30, 30] for V views x S samples.
    shapes: int32[V, S, 2] their (height, width).
    valid: bool[V, S] False for malformed decodes and padding.
    is_identity: bool[V] identity views (default: view 0 only).
    fallback: optional (int8[30, 30], int32[2]) used when nothing is valid.

  Returns:
    A `VoteResult`.
  """
  num_views, num_samples = valid.shape
  grids = _canonical(grids, shapes)
  fallback = _default_fallback() if fallback is None else fallback
  keys = _fingerprint(grids, shapes)  # [V, S, W]

  def nominate(g, s, ok, k):
    eq = _equal(k) & ok[None, :]
    cnt = eq.sum(-1)
    first = ok & ~jnp.tril(eq, k=-1).any(-1)
    score = jnp.where(first, cnt * (num_samples + 1)
                      + (num_samples - jnp.arange(num_samples)), -1)
    top, idx = jax.lax.top_k(score, min(3, num_samples))
    maj_g, maj_s = _majorities(g, s, ok)
    ent_g = jnp.concatenate([g[idx], maj_g])  # up to 5 entries
    ent_s = jnp.concatenate([s[idx], maj_s])
    ent_ok = jnp.concatenate([top >= 0, jnp.full(2, ok.any())])
    ent_eq = _equal(_fingerprint(ent_g, ent_s))
    chosen = []
    for n in range(ent_ok.shape[0]):  # greedy: first 3 distinct, in order
      new = ent_ok[n]
      taken = jnp.int32(0)
      for m, c in enumerate(chosen):
        new = new & ~(c & ent_eq[n, m])
        taken = taken + c
      chosen.append(new & (taken < 3))
    return ent_g, ent_s, jnp.stack(chosen)

  ent_g, ent_s, chosen = jax.vmap(nominate)(grids, shapes, valid, keys)
  per_view = ent_g.shape[1]
  from_identity = jnp.repeat(_identity_views(is_identity, num_views),
                             per_view)
  return _global_vote(ent_g.reshape(-1, SIDE, SIDE), ent_s.reshape(-1, 2),
                      chosen.reshape(-1), from_identity, fallback)


def flat_vote(grids, shapes, valid, is_identity=None, fallback=None
              ) -> VoteResult:
  """The two most frequent predictions over all views (jittable).

  Args and returns as `hierarchical_vote`; `votes` are raw frequencies.
  """
  num_views, num_samples = valid.shape
  grids = _canonical(grids, shapes)
  fallback = _default_fallback() if fallback is None else fallback
  from_identity = jnp.repeat(_identity_views(is_identity, num_views),
                             num_samples)
  return _global_vote(grids.reshape(-1, SIDE, SIDE), shapes.reshape(-1, 2),
                      valid.reshape(-1), from_identity, fallback)


def product_of_experts(scores, valid=None):
  """Picks the two candidates with the largest summed log-likelihood.

  Args:
    scores: float[C, V] log-likelihood of candidate c under view v
      (non-finite entries count as -inf).
    valid: bool[C] candidates that exist (default all).

  Returns:
    (int32[2] candidate indices, float32[2] their summed scores, bool[2]
    found). When fewer than two candidates are valid the missing index
    repeats the first and found is False.
  """
  scores = jnp.asarray(scores, jnp.float32)
  if scores.shape[0] < 2:  # one candidate: a second, invalid row
    valid = (jnp.ones(scores.shape[0], bool) if valid is None
             else jnp.asarray(valid, bool))
    scores = jnp.concatenate([scores, jnp.full((2 - scores.shape[0],)
                                               + scores.shape[1:], -jnp.inf)])
    valid = jnp.concatenate([valid, jnp.zeros(2 - valid.shape[0], bool)])
  total = jnp.where(jnp.isfinite(scores), scores, -jnp.inf).sum(-1)
  ok = jnp.isfinite(total)
  if valid is not None:
    ok = ok & jnp.asarray(valid, bool)
  total = jnp.where(ok, total, -jnp.inf)
  top, idx = jax.lax.top_k(total, 2)
  found = jnp.isfinite(top)
  found = found.at[1].set(found[1] & found[0])
  idx = jnp.where(found, idx, idx[0]).astype(jnp.int32)
  return idx, jnp.where(found, top, -jnp.inf), found


def vmap_vote(fn):
  """Jits `fn` vmapped over a leading task axis of every argument."""
  return jax.jit(jax.vmap(fn))


# --- batched host wrappers (the selection stage, `ttt.select`, calls them) ---


def pad_votes(groups: Sequence[Sequence[np.ndarray | None]], num_g: int,
              num_s: int):
  """Padded vote inputs from predictions grouped by view category.

  Returns (int8[G, S, 30, 30] grids, int32[G, S, 2] shapes, bool[G, S] ok)
  with G = `num_g`, S = `num_s` capacities (None predictions are not ok).
  """
  grids = np.zeros((num_g, num_s, SIDE, SIDE), np.int8)
  shapes = np.ones((num_g, num_s, 2), np.int32)
  ok = np.zeros((num_g, num_s), bool)
  for g, preds in enumerate(groups):
    for k, p in enumerate(preds):
      if p is not None:
        grids[g, k], shapes[g, k] = augment.pad_grid(p)
        ok[g, k] = True
  return grids, shapes, ok


def _grouped(categories: Sequence[str], predictions):
  """(ordered distinct categories, predictions grouped by them)."""
  cats = list(dict.fromkeys(categories))
  return cats, [[p for c2, p in zip(categories, predictions, strict=True)
                 if c2 == c] for c in cats]


def vote_batch(fn, items, num_g: int, num_s: int, identity: str,
               num_rows: int | None = None) -> list[list]:
  """Two attempts per item with a jitted, vmapped reducer.

  Args:
    fn: `vmap_vote(hierarchical_vote)` or `vmap_vote(flat_vote)` (built
      once by the caller).
    items: per query, (view categories, predictions in the task frame or
      None), aligned.
    num_g, num_s: capacities (categories per query, predictions per
      category); fixed per run so `fn` compiles once.
    identity: the category of untransformed views (tie-break).
    num_rows: pad the batch to this many rows (a fixed capacity).

  Returns:
    Per item `[attempt_1, attempt_2]` (numpy grids or None).
  """
  if not items:
    return []
  rows = max(len(items), num_rows or 0)
  g = np.zeros((rows, num_g, num_s, SIDE, SIDE), np.int8)
  sh = np.ones((rows, num_g, num_s, 2), np.int32)
  ok = np.zeros((rows, num_g, num_s), bool)
  ident = np.zeros((rows, num_g), bool)
  for i, (categories, predictions) in enumerate(items):
    cats, groups = _grouped(categories, predictions)
    if len(cats) > num_g or max(map(len, groups), default=0) > num_s:
      raise ValueError(f"vote capacity {num_g}x{num_s} too small for "
                       f"{len(cats)} categories")
    g[i], sh[i], ok[i] = pad_votes(groups, num_g, num_s)
    ident[i, :len(cats)] = [c == identity for c in cats]
  res = jax.device_get(fn(g, sh, ok, ident))
  out = []
  for i in range(len(items)):
    out.append([augment.unpad_grid(res.grids[i, k], res.shapes[i, k])
                if res.found[i, k] else None for k in range(2)])
  return out


def reference_batch(items, identity: str) -> list[list]:
  """MARC's exact vote (`reference_vote`) per item (see `vote_batch`)."""
  out = []
  for categories, predictions in items:
    preds = [(c, p) for c, p in zip(categories, predictions, strict=True)
             if p is not None]
    cats = [c for c in dict.fromkeys(categories) if c != identity]
    out.append(list(reference_vote(preds, identity=identity,
                                   categories=cats)))
  return out


def distinct(predictions) -> list[tuple[np.ndarray, int]]:
  """Distinct non-None grids with their counts, most frequent first
  (ties: first seen)."""
  seen: dict = {}
  for p in predictions:
    if p is None:
      continue
    k = (p.shape, p.tobytes())
    if k in seen:
      seen[k][1] += 1
    else:
      seen[k] = [p, 1]
  return sorted((tuple(x) for x in seen.values()), key=lambda x: -x[1])


def poe_attempts(candidates: list[np.ndarray], scores: np.ndarray,
                 counts: Sequence[int] | None = None) -> list:
  """Two attempts from `scores` float[C, V] (candidate x view log-lik.).

  Views where some candidate does not fit (non-finite) are left out when at
  least one view scores every candidate; with no candidate, [None, None].
  With `counts` (how often each candidate was produced) the most frequent
  win and the summed score breaks ties (`count_poe`).
  """
  if not candidates:
    return [None, None]
  usable = np.isfinite(scores).all(0)
  s = scores[:, usable] if usable.any() else scores
  if counts is not None:
    total = np.where(np.isfinite(s), s, -np.inf).sum(-1)
    order = sorted(range(len(candidates)),
                   key=lambda c: (-counts[c], -total[c], c))
    return [candidates[order[0]],
            candidates[order[1]] if len(order) > 1 else None]
  idx, _, found = jax.device_get(product_of_experts(s))
  return [candidates[idx[0]] if found[0] else candidates[0],
          candidates[idx[1]] if found[1] else None]


# --- MARC's voting, reproduced exactly (host side) --------------------------


def _key(grid) -> tuple:
  a = np.asarray(grid, np.int8)
  return a.shape, a.tobytes()


def _grid(key) -> np.ndarray:
  shape, data = key
  return np.frombuffer(data, np.int8).reshape(shape).copy()


def _most_common(items: list) -> Hashable:
  """Most common item, ties to the first appearance."""
  return Counter(items).most_common(1)[0][0]


def _row_majority(keys: list) -> tuple:
  grids = [_grid(k) for k in keys]
  height, width = _most_common([g.shape for g in grids])
  rows = []
  for r in range(height):
    rows.append(np.frombuffer(_most_common([
        g[r].tobytes() for g in grids if g.shape[1] == width
        and g.shape[0] > r]), np.int8))
  return _key(np.stack(rows))


def _column_majority(keys: list) -> tuple:
  transposed = [_key(_grid(k).T) for k in keys]
  return _key(_grid(_row_majority(transposed)).T)


def _top3(keys: list) -> tuple:
  if not keys:
    return None, None, None
  counts = Counter(keys)
  distinct = list(counts)  # first-appearance order
  n = np.array([counts[u] for u in distinct])
  c1 = distinct[int(np.argmax(n))]
  a = np.argsort(n, kind="stable")
  c2 = c3 = c1
  if len(distinct) > 2:
    c2, c3 = distinct[a[-2]], distinct[a[-3]]
  elif len(distinct) > 1:
    c2 = distinct[a[-2]]
  rows, cols = _row_majority(keys), _column_majority(keys)
  if c2 == c1:
    c2 = rows if rows != c1 else cols
  if c3 in (c1, c2):
    c3 = rows if rows not in (c1, c2) else cols
  return c1, c2, c3


def reference_vote(predictions: Sequence[tuple[Hashable, np.ndarray]], *,
                   identity: Hashable, categories: Sequence[Hashable]
                   ) -> tuple[np.ndarray | None, np.ndarray | None]:
  """MARC's voting, exactly (numpy, host side).

  Ties between equally frequent grids, which MARC leaves to Python's set
  order, go to the first appearance here.

  Args:
    predictions: `(label, grid)` in order; grids already mapped back.
    identity: the label of untransformed predictions.
    categories: ordered labels of the transformed views; a label not listed
      counts only in the pooled vote.

  Returns:
    `(attempt_1, attempt_2)` int8 grids (they may be equal), or
    `(None, None)` when there are no predictions.
  """
  by_label: dict = {}
  for label, grid in predictions:
    by_label.setdefault(label, []).append(_key(grid))
  if not by_label:
    return None, None
  pool = [k for keys in by_label.values() for k in keys]
  cand = list(_top3(pool))
  for label in [identity, *categories]:
    if label in by_label:
      cand += _top3(by_label[label])
  cand = [c for c in cand if c is not None]
  c1, c2, c3 = _top3(cand)
  if cand.count(c2) == cand.count(c3) and identity in by_label:
    ident = by_label[identity]
    if ident.count(c2) <= ident.count(c3):
      c2 = c3
  return _grid(c1), _grid(c2)
