"""What every decoding method shares: the config, the face, the kernels.

A decoding method is a `Method` (what the plan needs before anything is
built: answer slots per view, which views a query's program rows hold,
validation, a description) whose `make` builds a `Decoder` once per run:

    decoder.decode(queries, slots, adapters) -> Decoded(predictions,
                                                        model_calls,
                                                        prompt_tokens)

`predictions` holds, per query, a tuple aligned with `query.views` of grids
in the task's frame (None: malformed, or -- where `Decoder.empty_slots` --
an unused answer slot). The jitted kernels below (`prefill`,
`answer_coords`, `answer_mask`) and the combinator `with_slot` (each
query's adapter gathered inside the program from the chunk's adapters by a
task-slot index) are the pieces the method files compose; `prompt_rows`
builds a call's prompts on the host.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ttt import arc, data, sharding, tokens, views
from ttt import codec as codec_lib


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
  """Decoding settings (the `config.decode` group).

  `method` names a member of `ttt.decoders.METHODS`; the method checks the
  fields it reads (`Method.validate`).
  """

  method: str = "greedy"  # a key of ttt.decoders.METHODS
  max_new_tokens: int = tokens.MAX_ANSWER_TOKENS  # per view, at most 931
  temperature: float = 0.0  # 'sample': softmax(logits / temperature)
  samples: int = 1  # 'sample': answers per view; 'vgb*': chains per view
  min_prob: float = 0.1  # 'dfs': keep every answer with p >= min_prob
  max_candidates: int = 8  # 'dfs': answers kept per view, at most
  max_steps: int = 0  # 'dfs': model calls per view (0: no cap); 'vgb':
  #   the walk's horizon in lazy steps, 'vgb_lifted': in steps, read out
  #   at a uniform time in its second half (0: 2 x max_new_tokens)
  leaf_loop: float = 64.0  # 'vgb*': loop weight λ at complete answers (~2 x
  #   answer length keeps chains at answers; 'vgb': 0 is the plain walk;
  #   'vgb_lifted' needs >= 1)
  start: str = "greedy"  # 'vgb*': chains start at 'root' or 'greedy' answer

  def validate(self) -> None:
    """The fields every method shares; the method's own are checked by
    its registry entry (`ttt.decoders.method`, when the job is parsed)."""
    for name in ("temperature", "leaf_loop"):
      v = getattr(self, name)
      if not np.isfinite(v) or v < 0:
        raise ValueError(f"decode.{name} must be a finite number >= 0, got "
                         f"{v!r}")
    if self.samples < 1:
      raise ValueError(f"decode.samples must be >= 1, got {self.samples!r}")
    if self.max_new_tokens < 1:
      raise ValueError("decode.max_new_tokens must be >= 1")
    if not 0 < self.min_prob <= 1:
      raise ValueError(f"decode.min_prob must be in (0, 1], got "
                       f"{self.min_prob!r}")
    if self.max_candidates < 1 or self.max_steps < 0:
      raise ValueError("decode.max_candidates must be >= 1 and "
                       "decode.max_steps >= 0")

  @property
  def max_new(self) -> int:
    """Tokens a view may write: the field, at most the largest answer."""
    return min(self.max_new_tokens, tokens.MAX_ANSWER_TOKENS)


class Decoded(NamedTuple):
  """One decoding call's output.

  Attributes:
    predictions: per query, a tuple aligned with `query.views` of grids
      (int numpy, task frame) or None.
    model_calls: single-token model calls over all views (the cost).
    prompt_tokens: (real, computed) prompt tokens of the call.
  """

  predictions: list[tuple]
  model_calls: int = 0
  prompt_tokens: tuple[int, int] = (0, 0)


class DecodeSpec(NamedTuple):
  """The run-wide shapes and keys a decoder is built with.

  Attributes:
    rows: Q, query rows per program call (the chunk's query capacity,
      a multiple of the mesh size).
    views: K, view rows per query (`Method.views_of`'s longest).
    prompt_len: P; 0 buckets each call's prompts to `length_bucket`.
    length_bucket: bucket of per-call prompt lengths.
    max_len: the context (`data.max_len`).
    seed: the run's seed (query keys fold in task and test index).
    codec: the run's `ttt.codec.Codec` (prompts, stop tokens, answers;
      None: the cell codec).
  """

  rows: int
  views: int
  prompt_len: int
  length_bucket: int
  max_len: int
  seed: int
  codec: Any = None


class Decoder(NamedTuple):
  """A decoding method built for a run.

  Attributes:
    decode: `(queries, slots, adapters) -> Decoded`: queries (`Query`),
      each one's task slot in the chunk's adapters [T], the adapters.
    empty_slots: a None prediction is an unused answer slot, not a
      malformed decode (enumerating methods).
    programs: {name: jitted program} (compile guards, export).
    inputs: `(adapters, prompt_len) -> {name: args}`: each program's
      arguments for a call of padding rows with prompts of `prompt_len`
      (a call's shapes and shardings: `ttt.memory`'s analysis); every
      program the plan must fit has its entry ({} for none).
  """

  decode: Callable[[list, list[int], Any], Decoded]
  empty_slots: bool
  programs: dict
  inputs: Callable


class Method(NamedTuple):
  """A registry entry: what a method needs to be planned and built.

  Attributes:
    per_view: cfg -> answer slots per view in the vote (queries repeat
      each view this many times).
    views_of: (query, per_view) -> the views its program rows hold.
    validate: cfg -> None, raising ValueError on the fields it reads.
    describe: cfg -> a few words for logs and the report.
    make: (cfg, weights, mesh, spec) -> Decoder (weights: a
      `ttt.weights.Weights`).
    needs_grammar: the method walks the cell codec's answer grammar
      (`answer_mask`); a codec without one is refused when the config is
      parsed.
  """

  per_view: Callable[[DecodeConfig], int]
  views_of: Callable[[views.Query, int], list]
  validate: Callable[[DecodeConfig], None]
  describe: Callable[[DecodeConfig], str]
  make: Callable[..., Decoder]
  needs_grammar: bool = False


def each_view(query: views.Query, per_view: int) -> list:
  """Every entry of `query.views` (repeats included): one row each."""
  del per_view
  return list(query.views)


def distinct_views(query: views.Query, per_view: int) -> list:
  """Each view once (a row that returns `per_view` answers)."""
  return list(query.views[::per_view])


def single_answer(cfg: DecodeConfig) -> None:
  """Validation of a method that writes one answer per view, unsampled."""
  if cfg.temperature > 0:
    raise ValueError(f"decode.temperature > 0 samples answers: set "
                     f"decode.method='sample' (not {cfg.method!r})")


def spec_codec(spec: DecodeSpec):
  """The spec's codec (the cell codec when it names none)."""
  return codec_lib.default(spec.codec)


def max_new(cfg: DecodeConfig, spec: DecodeSpec) -> int:
  """Tokens a view may write: `decode.max_new_tokens`, at most the codec's
  longest answer (931 for cells: `DecodeConfig.max_new`)."""
  return min(cfg.max_new_tokens, spec_codec(spec).max_answer)


# --- kernels ------------------------------------------------------------------

ANSWER_TOKENS = np.zeros(tokens.VOCAB_SIZE, bool)
ANSWER_TOKENS[:10] = True
ANSWER_TOKENS[tokens.ROW_END] = True
ANSWER_TOKENS[tokens.EOS] = True


def answer_coords(tok, row, col, segment):
  """Coords of answer token `tok` and the (row, col) after it.

  Cells (r, c) sit at (r + 1, c + 1), a row's ROW_END at (r + 1, W + 1),
  EOS at (H + 1, 0) -- as `ttt.tokens` encodes an output grid.
  """
  is_eos = tok == tokens.EOS
  coords = jnp.stack([row + 1, jnp.where(is_eos, 0, col + 1), segment], -1)
  row_end = tok == tokens.ROW_END
  return (coords.astype(jnp.int32), jnp.where(row_end, row + 1, row),
          jnp.where(row_end, 0, col + 1))


def prefill(model, prompts, lengths, coords, max_new: int):
  """One forward pass over each row's prompt.

  Args:
    model: a merged `ttt.model.Transformer`.
    prompts: int32[V, P]; lengths: int32[V] real tokens; coords:
      int32[V, P, 3].
    max_new: room the cache keeps for new tokens.

  Returns:
    (logits float32[V, vocab] of the token after the prompt, the KV cache
    with room for `max_new` more positions: each leaf padded along its
    length axis, -2 in both of the model's layouts, [V, K, C, D] per layer
    or [N, V, K, C, D] stacked).
  """
  positions = jnp.broadcast_to(
      jnp.arange(prompts.shape[1], dtype=jnp.int32), prompts.shape)
  kv_valid = positions < lengths[:, None]
  logits, cache = model(prompts, positions, coords, kv_valid,
                        return_cache=True)
  cache = jax.tree.map(lambda c: jnp.pad(
      c, [(0, 0)] * (c.ndim - 2) + [(0, max_new), (0, 0)]), cache)
  last = logits[jnp.arange(prompts.shape[0]), jnp.maximum(lengths - 1, 0)]
  return last, cache


def answer_mask(row, col, width, depth, max_new: int):
  """bool[vocab]: the tokens that keep a partial answer well-formed.

  The prefix so far has `depth` tokens, is in grid row `row`, column `col`,
  and its first row had `width` cells (0 while the first row is open). A
  colour fits while the row is short of the width (of 30 in the first row)
  and fewer than 30 rows are done; ROW_END closes a non-empty row of the
  right width; EOS follows a ROW_END. Nothing fits at `depth >= max_new`.
  """
  side = arc.MAX_SIDE
  colour = (row < side) & jnp.where(width == 0, col < side, col < width)
  row_end = (col >= 1) & ((width == 0) | (col == width))
  eos = (col == 0) & (row >= 1)
  # elementwise over the vocabulary, not chained `.at[].set`s: under vmap
  # with the logits split over a `model` axis, XLA's SPMD partitioner
  # (jax 0.10.2, CPU) wrote those updates wrongly -- it dropped the last
  # element of every shard (issue 44)
  v = jnp.arange(tokens.VOCAB_SIZE)
  mask = jnp.where(v < 10, colour, jnp.where(
      v == tokens.ROW_END, row_end, (v == tokens.EOS) & eos))
  return mask & (depth < max_new)


def next_mask(codec, row, col, width, depth, max_new: int):
  """bool[vocab]: the tokens a partial answer may continue with -- the
  cell grammar (`answer_mask`) for a codec with one, else any token while
  `depth < max_new` (pruning is by probability alone)."""
  if codec.grammar:
    return answer_mask(row, col, width, depth, max_new)
  return jnp.full(codec.vocab_size, True) & (depth < max_new)


def with_slot(query_fn: Callable) -> Callable:
  """The jitted program over Q queries of a one-query kernel.

  Args:
    query_fn: `query_fn(base, adapter, *args)` for ONE query (its `args`
      are that query's rows: prompts [V, P], ...).

  Returns:
    `program(base, adapters[T], slots int32[Q], *args[Q, ...])`, jitted:
    every `args` leaf is mapped over its leading Q axis, and query q runs
    under adapter `slots[q]`, gathered inside the program (no per-query
    adapter copies on the host); named after `query_fn`.
  """

  def per_query(base, adapters, slot, *args):
    adapter = jax.tree.map(lambda a: a[slot], adapters)
    return query_fn(base, adapter, *args)

  def program(base, adapters, slots, *args):
    return jax.vmap(per_query, in_axes=(None, None, 0) + (0,) * len(args))(
        base, adapters, slots, *args)

  program.__name__ = program.__qualname__ = query_fn.__name__
  return jax.jit(program)


# --- host side ------------------------------------------------------------


def query_key(seed: int, query: views.Query) -> np.ndarray:
  """uint32[2]: the query's key data, `fold_in(fold_in(fold_in(key(seed),
  task index), test index), 7)` (independent of chunking and hosts)."""
  key = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(
      jax.random.key(seed), query.task_index), query.test_index), 7)
  return np.asarray(jax.random.key_data(key))


class PromptRows(NamedTuple):
  """A call's inputs for this host's query rows (padded to the capacity).

  Attributes:
    rows: the global row index of each local row.
    args: (slots int32[Qh], prompts int32[Qh, K, P], lengths int32[Qh, K],
      coords int32[Qh, K, P, 3], segments int32[Qh, K], valid bool[Qh, K]).
    keys: uint32[Qh, 2] key data per row.
    views: per local row, its view list ([] for a padding row).
    prompt_tokens: (real, computed) prompt tokens over all rows.
  """

  rows: np.ndarray
  args: tuple
  keys: np.ndarray
  views: list
  prompt_tokens: tuple[int, int]


def prompt_rows(queries: list[views.Query], slots: list[int], views_of,
                spec: DecodeSpec, mesh) -> PromptRows:
  """Prompts of each query's views (`views_of(query) -> views`), for the
  query rows this host's devices hold (`sharding.local_rows`)."""
  longest = max((n for q in queries for n in q.lengths), default=1)
  plen = spec.prompt_len or data.bucket_length(longest, spec.length_bucket,
                                               spec.max_len)
  mine = sharding.local_rows(spec.rows, mesh)
  num_v = spec.views
  codec = spec_codec(spec)
  prompts = np.full((len(mine), num_v, plen), codec.pad, np.int32)
  coords = np.zeros((len(mine), num_v, plen, 3), np.int32)
  lengths = np.ones((len(mine), num_v), np.int32)
  segs = np.zeros((len(mine), num_v), np.int32)
  valid = np.zeros((len(mine), num_v), bool)
  slot = np.zeros(len(mine), np.int32)
  keys = np.zeros((len(mine), 2), np.uint32)
  row_views, real = [], 0
  for i, r in enumerate(mine):
    if r >= len(queries):
      row_views.append([])
      continue  # padding row
    q = queries[r]
    slot[i] = slots[r]
    keys[i] = query_key(spec.seed, q)
    vs = views_of(q)[:num_v]
    row_views.append(vs)
    for j, v in enumerate(vs):
      p = views.prompt(q.task, q.test_index, v, spec.max_len, codec)
      prompts[i, j] = p.tokens[:plen]
      coords[i, j] = p.coords[:plen]
      lengths[i, j] = p.length
      segs[i, j] = 2 * len(v.demos) + 1
      valid[i, j] = True
      real += p.length
  return PromptRows(mine, (slot, prompts, lengths, coords, segs, valid),
                    keys, row_views, (real, spec.rows * num_v * plen))


def padding_rows(spec: DecodeSpec, mesh, prompt_len: int) -> PromptRows:
  """A call's rows with no query (every row padding), prompts of
  `prompt_len`: the shapes of a real call (`Decoder.inputs`)."""
  return prompt_rows([], [], lambda q: [],
                     spec._replace(prompt_len=prompt_len), mesh)


def put(rows: PromptRows, extra: tuple, spec: DecodeSpec, mesh):
  """(args, keys) of a call as global task-sharded arrays: `rows.args` +
  `extra` (more per-row host arrays), and the rows' PRNG keys."""
  args = sharding.put_rows(rows.args + extra, spec.rows, mesh)
  keys = jax.random.wrap_key_data(sharding.put_rows(rows.keys, spec.rows,
                                                    mesh))
  return args, keys
