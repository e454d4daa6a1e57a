"""Selection: from a query's candidates to two attempts, by rules in a table.

`RULES` maps a rule name to its `Rule`; `vote.method` picks the one the
submission uses and `vote.also` more, recorded beside it (ablations of the
selection from the same candidates). The rules, over `ttt.vote`'s pure
reducers:

* 'hierarchical': views grouped by category, each nominates, a global vote;
* 'flat': the two most frequent predictions over all views;
* 'reference': MARC's exact vote (host side);
* 'product_of_experts': distinct candidates rescored by teacher-forced
  log-likelihood under every view, the largest sum wins;
* 'count_poe': the most often produced first, the summed score breaks ties;
* 'identity': the hierarchical vote over the identity view's own answers
  (what an identity-view-only run would select).

`make_selection(cfg, weights, mesh, spec)` builds every program the chosen
rules need once (the jitted vote reducers; the row scorer when a rule
rescores, called once per chunk for all of them) and returns a
`Selection`; a new rule is one table entry plus its reducer in `vote.py`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ttt import codec as codec_lib
from ttt import data, lora, sharding, views, vote
from ttt import model as model_lib
from ttt.decoders import common


@dataclasses.dataclass(frozen=True)
class VoteConfig:
  """Selection settings (the `config.vote` group)."""

  method: str = "hierarchical"  # a rule of RULES (not 'identity')
  poe_candidates: int = 8  # product of experts: candidates rescored
  # more selections from the same candidates (names in RULES), recorded
  # next to the main one (`also` in each test-input record): ablations of
  # the selection rule without a second TTT + decode
  also: tuple = ()

  def validate(self) -> None:
    check(self)


class SelectSpec(NamedTuple):
  """The run-wide shapes of selection.

  Attributes:
    queries: Q, query rows per vote call (the chunk's query capacity).
    groups: G, view categories per query (vote capacity).
    per_group: S, predictions per category (vote capacity).
    per_view: answer slots per view (`Method.per_view`).
    max_len: the context (`data.max_len`): rescored rows longer are -inf.
    length_bucket: bucket of the rescored rows' length.
    codec: the run's `ttt.codec.Codec` (how a candidate is rendered
      under each view for rescoring; None: the cell codec).
  """

  queries: int
  groups: int
  per_group: int
  per_view: int
  max_len: int
  length_bucket: int
  codec: Any = None


class Scored(NamedTuple):
  """A query's distinct candidates rescored (product of experts).

  Attributes:
    candidates: the `poe_candidates` most frequent distinct grids.
    counts: how often each was produced.
    scores: float32[C, V'] log-likelihood of each under each distinct view.
  """

  candidates: list
  counts: list
  scores: np.ndarray


class Rule(NamedTuple):
  """A selection rule.

  Attributes:
    rescored: it reads the model's scores of the candidates (`Scored`).
    main: it may be `vote.method` (else only in `vote.also`).
    make: (spec, programs) -> `pick(queries, predictions, scored) ->
      [[a1, a2], ...]` per query (`scored`: per query a `Scored`, or None
      when not rescored); the jitted programs it builds go into (or come
      from) the run's `programs` dict, so rules share them.
  """

  rescored: bool
  main: bool
  make: Callable[[SelectSpec], Callable]


def _voting(reducer) -> Callable:
  def make(spec: SelectSpec, programs: dict):
    fn = programs.setdefault(reducer.__name__, vote.vmap_vote(reducer))

    def pick(queries, predictions, scored):
      del scored
      items = [(q.categories, p)
               for q, p in zip(queries, predictions, strict=True)]
      return vote.vote_batch(fn, items, spec.groups, spec.per_group,
                             views.IDENTITY, spec.queries)

    return pick

  return make


def _reference(spec: SelectSpec, programs: dict):
  del spec, programs

  def pick(queries, predictions, scored):
    del scored
    return vote.reference_batch(
        [(q.categories, p) for q, p in zip(queries, predictions,
                                           strict=True)], views.IDENTITY)

  return pick


def _identity(spec: SelectSpec, programs: dict):
  hierarchical = _voting(vote.hierarchical_vote)(spec, programs)

  def pick(queries, predictions, scored):
    # the untransformed view's own entries: the first `per_view` (none
    # when its prompt did not fit)
    n = [spec.per_view if q.views and q.views[0].label == views.IDENTITY
         else 0 for q in queries]
    return hierarchical(
        [q._replace(views=q.views[:k]) for q, k in zip(queries, n,
                                                        strict=True)],
        [p[:k] for p, k in zip(predictions, n, strict=True)], scored)

  return pick


def _poe(with_counts: bool):
  def make(spec: SelectSpec, programs: dict):
    del spec, programs

    def pick(queries, predictions, scored):
      del queries, predictions
      return [vote.poe_attempts(s.candidates, s.scores,
                                s.counts if with_counts else None)
              for s in scored]

    return pick

  return make


RULES: dict[str, Rule] = {
    "hierarchical": Rule(False, True, _voting(vote.hierarchical_vote)),
    "flat": Rule(False, True, _voting(vote.flat_vote)),
    "reference": Rule(False, True, _reference),
    "product_of_experts": Rule(True, True, _poe(False)),
    "count_poe": Rule(True, True, _poe(True)),
    "identity": Rule(False, False, _identity),
}


def check(cfg: VoteConfig) -> None:
  """Raises ValueError unless `cfg` names rules of the table."""
  main = tuple(k for k, r in RULES.items() if r.main)
  if cfg.method not in main:
    raise ValueError(f"vote.method must be one of {main}, got "
                     f"{cfg.method!r}")
  bad = [m for m in cfg.also if m not in RULES]
  if bad or len(set(cfg.also)) != len(cfg.also):
    raise ValueError(f"vote.also: distinct names from {tuple(RULES)}, got "
                     f"{tuple(cfg.also)!r}")
  if cfg.poe_candidates < 1:
    raise ValueError("vote.poe_candidates must be >= 1")


def rules(cfg: VoteConfig) -> tuple[str, ...]:
  """The rules a run selects with: `vote.method`, then `vote.also`."""
  return (cfg.method, *cfg.also)


def rescores(cfg: VoteConfig) -> bool:
  """Whether any chosen rule reads the model's scores (needs the model)."""
  return any(RULES[m].rescored for m in rules(cfg))


# --- product-of-experts scoring ----------------------------------------------


def make_row_scorer(graphdef):
  """`score(base, adapters[T], slots[R], batch[R, L]) -> float32[R]`.

  The teacher-forced log-likelihood of each row's loss-mask tokens under
  adapter `slots[r]` (`batch`: a `ttt.data.TTTDataset` with leaves [R, L]);
  rows with `valid` False score -inf. Jitted once; each (R, L) compiles
  once.
  """

  def score_row(base, adapter, row):
    batch = jax.tree.map(lambda x: x[None], row)
    ll, weights = model_lib.target_logprobs(
        lora.merge(graphdef, adapter, base), batch)
    return jnp.where(row.valid, (ll * weights).sum(), -jnp.inf)

  return common.with_slot(score_row)


# rows x L^2 per device in one call of the row scorer (`score_candidates`):
# its attention scores are [rows, heads, L, L]; 2^25 keeps them near 0.5 GB
# per layer with 4 heads (ARC-AGI-2 rows are up to 3072 tokens: 3 a call)
SCORE_ELEMENTS = 1 << 25


def rows_per_call(length: int, mesh) -> int:
  """Rows of `length` tokens one call of the row scorer takes at most."""
  return sharding.axis_size(mesh) * max(1, SCORE_ELEMENTS
                                        // (length * length))


def score_candidates(scorer, base, mesh, spec: SelectSpec, poe_candidates: int,
                     queries, slots, predictions, adapters) -> list[Scored]:
  """Per query its distinct candidates (the `poe_candidates` most
  frequent), their counts, and each one's log-likelihood under each
  distinct view: every row of the chunk in one scoring program, called on
  at most `SCORE_ELEMENTS / L^2` rows per device at a time.

  Args:
    scorer: `make_row_scorer`'s program.
    base: the replicated base weights.
    mesh: the task mesh.
    spec: the selection shapes.
    poe_candidates: candidates per query rescored.
    queries, slots, predictions: per query its `Query`, adapter slot and
      predictions (aligned with `query.views`, views repeated `per_view`).
    adapters: the chunk's adapters [T].
  """
  max_len, rep = spec.max_len, spec.per_view  # views repeat
  codec = codec_lib.default(spec.codec)  # a candidate in the codec's format
  pools, rows, row_slot = [], [], []
  for q, s, preds in zip(queries, slots, predictions, strict=True):
    pools.append(vote.distinct(preds)[:poe_candidates])
    for c, _ in pools[-1]:
      for v in q.views[::rep]:
        vt = views.view_task(q.task, q.test_index, v, answer=c)
        fits = codec.sequence_length(vt) <= max_len
        rows.append(codec.encode_task(vt, max_len, loss="query")
                    if fits else None)
        row_slot.append(s)
  scores = np.zeros(0, np.float32)
  if rows:
    longest = max((r.length for r in rows if r is not None), default=1)
    length = data.bucket_length(longest, spec.length_bucket, max_len)
    # 8 row-count buckets per octave: at most 12.5% padding, and few
    # shapes (each compiles once) -- in calls of at most `per_call` rows:
    # the scorer holds every row's [heads, L, L] attention at once
    per_call = rows_per_call(length, mesh)
    step = min(1 << max(len(rows).bit_length() - 4, 0), per_call)
    total = sharding.padded_count(-(-len(rows) // step) * step,
                                  sharding.axis_size(mesh))
    if total > per_call:
      total = -(-len(rows) // per_call) * per_call
    batch = data.stack_rows(rows, total, length, codec.pad)
    slot = np.zeros(total, np.int32)
    slot[:len(rows)] = row_slot
    call = min(total, per_call)
    scores = np.concatenate([sharding.gather(scorer(
        base, adapters, *sharding.shard_tasks(
            jax.tree.map(lambda x, i=i: x[i:i + call], (slot, batch)), mesh)))
        for i in range(0, total, call)])
  out, at = [], 0
  for q, pool in zip(queries, pools, strict=True):
    num_v = len(q.views[::rep])
    m = len(pool) * num_v
    out.append(Scored([g for g, _ in pool], [n for _, n in pool],
                      scores[at:at + m].reshape(len(pool), num_v)))
    at += m
  return out


# --- the stage --------------------------------------------------------------


class Selection(NamedTuple):
  """The selection stage, built once per run.

  Attributes:
    select: `(queries, slots, predictions, adapters) -> (attempts,
      timings)`: attempts {rule: per query [attempt_1, attempt_2]} for
      every chosen rule (`rules(cfg)`, the main one first); timings
      {'voting_<rule>': s, 'rescoring': s (once for all rules that read
      the model's scores)}.
    programs: {name: jitted program}.
    inputs: `(adapters, length) -> {name: args}`: the row scorer's
      arguments for its largest call on rows of `length` tokens, padding
      rows (`ttt.memory`'s analysis; {} when no rule rescores).
  """

  select: Callable
  programs: dict
  inputs: Callable


def make_selection(cfg: VoteConfig, weights, mesh,
                   spec: SelectSpec) -> Selection:
  """Builds the chosen rules' programs once.

  Args:
    cfg: the vote group.
    weights: a `ttt.weights.Weights` (None only where no rule rescores:
      a test double's stages, `ttt.pipeline.make_stages`).
    mesh: the task mesh.
    spec: the run's selection shapes.
  """
  chosen = rules(cfg)
  programs: dict = {}
  picks = {m: RULES[m].make(spec, programs) for m in chosen}
  scorer = None
  if rescores(cfg):
    scorer = programs["score"] = make_row_scorer(weights.graphdef)

  def select_fn(queries, slots, predictions, adapters):
    scored, out, times = None, {}, {}
    if scorer is not None:  # once, for every rule that reads the scores
      t0 = time.perf_counter()
      scored = score_candidates(scorer, weights.base, mesh, spec,
                                cfg.poe_candidates, queries, slots,
                                predictions, adapters)
      times["rescoring"] = time.perf_counter() - t0
    for m in chosen:
      t0 = time.perf_counter()
      out[m] = picks[m](queries, predictions, scored)
      times[f"voting_{m}"] = time.perf_counter() - t0
    return out, times

  def inputs(adapters, length):
    if scorer is None:
      return {}
    call = rows_per_call(length, mesh)
    batch = data.stack_rows([], call, length)
    return {"score": (weights.base, adapters, *sharding.shard_tasks(
        (np.zeros(call, np.int32), batch), mesh))}

  return Selection(select_fn, programs, inputs)
