"""Batched greedy decoding under per-task adapters, and candidate scoring.

`make_greedy_decoder(config, graphdef, prompt_len, max_new, temperature=0)`
returns ONE jitted function

    (base, adapters[Q], prompts[Q, V, P], lengths[Q, V], coords[Q, V, P, 3],
     segments[Q, V], valid[Q, V]) -> tokens int32[Q, V, max_new]

(with `temperature > 0`, a last argument: PRNG keys [Q, V], tokens sampled)
written for one query (a test input of a task, under that task's adapter)
over its V views, and vmapped over Q queries (shard Q with
`ttt.sharding.shard_tasks`). Each row is prefilled with a full forward pass
over its prompt (padded to P; `lengths` real tokens ending at the query's
OUTPUT marker), which also fills a KV cache; then one token per step
(`Transformer.step`) until every row has written `EOS` or `max_new` tokens.
Generation is restricted to answer tokens (colours, ROW_END, EOS); the 3-D
coordinates of each generated token are computed from the rows and columns
written so far, exactly as `ttt.tokens` lays out an answer grid. Parse the
output with `ttt.tokens.decode_grid` (malformed -> None).

The main job uses `make_decoder(graphdef, max_new, temperature)`, the same
kernel with each query's adapter gathered INSIDE the program from the
chunk's adapters by a task-slot index (no per-query copies on the host):

    (base, adapters[T], slots[Q], prompts[Q, V, P], lengths[Q, V],
     coords[Q, V, P, 3], segments[Q, V], valid[Q, V], keys[Q])
        -> tokens int32[Q, V, max_new]

(keys: one PRNG key per query, view v samples with `fold_in(key, v)`;
ignored when greedy), and `make_row_scorer(graphdef)`: `(base, adapters[T],
slots[R], batch[R, L]) -> float32[R]`, one sequence per row. Both are built
once per run; P, Q, R are fixed capacities chosen by the caller.

`make_scorer(config, graphdef)` returns the teacher-forced log-likelihood of
given answers: `(base, adapters[Q], batch) -> float32[Q, M]` summed over the
loss-mask tokens of M full sequences per query (prompt + candidate answer +
EOS, e.g. every candidate under every view), for product-of-experts
selection and coverage reports.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ttt import lora, tokens
from ttt import model as model_lib


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
  """Decoding settings (the `config.decode` group)."""

  max_new_tokens: int = tokens.MAX_ANSWER_TOKENS  # per view, at most 931
  temperature: float = 0.0  # 0: greedy; > 0: sampled answers
  samples: int = 1  # answers sampled per view (each one votes)

  def validate(self) -> None:
    if self.temperature < 0 or self.samples < 1:
      raise ValueError("decode.temperature must be >= 0 and decode.samples "
                       ">= 1")
    if self.samples > 1 and self.temperature == 0:
      raise ValueError("decode.samples > 1 needs decode.temperature > 0 "
                       "(greedy copies are identical)")
    if self.max_new_tokens < 1:
      raise ValueError("decode.max_new_tokens must be >= 1")


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


def _decode_query_fn(graphdef, max_new: int, temperature: float):
  """`decode_query(base, adapter, prompts[V, P], lengths[V], coords[V, P, 3],
  segments[V], valid[V], keys[V] | None) -> int32[V, max_new]`, unjitted."""
  allowed = jnp.asarray(ANSWER_TOKENS)

  def pick(logits, keys, t):
    logits = jnp.where(allowed, logits.astype(jnp.float32), -jnp.inf)
    if temperature <= 0:
      return jnp.argmax(logits, -1).astype(jnp.int32)
    step_keys = jax.vmap(lambda k: jax.random.fold_in(k, t))(keys)
    return jax.vmap(jax.random.categorical)(
        step_keys, logits / temperature).astype(jnp.int32)

  def decode_query(base, adapter, prompts, lengths, coords, segments, valid,
                   keys=None):
    model = lora.merge(graphdef, adapter, base)
    num_views, prompt_len = prompts.shape
    positions = jnp.broadcast_to(jnp.arange(prompt_len, dtype=jnp.int32),
                                 prompts.shape)
    kv_valid = positions < lengths[:, None]
    logits, cache = model(prompts, positions, coords, kv_valid,
                          return_cache=True)
    cache = jax.tree.map(
        lambda c: jnp.pad(c, ((0, 0), (0, max_new), (0, 0), (0, 0))), cache)
    rows = jnp.arange(num_views)
    first = pick(logits[rows, jnp.maximum(lengths - 1, 0)], keys, 0)
    zeros = jnp.zeros(num_views, jnp.int32)
    out = jnp.full((num_views, max_new), tokens.PAD, jnp.int32)
    init = (jnp.int32(0), first, lengths.astype(jnp.int32), zeros, zeros,
            ~valid, out, cache)

    def cond(state):
      t, _, _, _, _, done, _, _ = state
      return (t < max_new) & ~done.all()

    def body(state):
      t, tok, index, row, col, done, out, cache = state
      out = out.at[:, t].set(jnp.where(done, tokens.PAD, tok))
      tok_coords, row, col = answer_coords(tok, row, col, segments)
      done = done | (tok == tokens.EOS)
      logits, cache = model.step(tok, index, tok_coords, cache, index)
      return (t + 1, pick(logits, keys, t + 1), index + 1, row, col, done,
              out, cache)

    return jax.lax.while_loop(cond, body, init)[6]

  return decode_query


def make_greedy_decoder(config: Any, graphdef, prompt_len: int,
                        max_new: int, temperature: float = 0.0):
  """The jitted decoder over Q queries x V views (see module docstring).

  Args:
    config: unused beyond documentation symmetry (the graphdef fixes the
      model); kept so callers pass the same config everywhere.
    graphdef: from `ttt.lora.split` of the model in use.
    prompt_len: P, the padded prompt length (the prompts' shape decides;
      kept for callers).
    max_new: tokens generated at most per row (<= 931 is the largest grid).
    temperature: 0 decodes greedily; T > 0 samples each token from
      softmax(logits / T) over the answer tokens, and the decoder then takes
      a last argument `keys`: PRNG keys [Q, V], one per row (token t of a
      row uses `fold_in(key, t)`).
  """
  del config, prompt_len
  decode_query = _decode_query_fn(graphdef, max_new, temperature)
  axes = (None, 0, 0, 0, 0, 0, 0) + ((0,) if temperature > 0 else ())
  return jax.jit(jax.vmap(decode_query, in_axes=axes))


def make_decoder(graphdef, max_new: int, temperature: float = 0.0):
  """The main job's decoder: adapters gathered by slot inside the program.

  Returns `decode(base, adapters[T], slots[Q], prompts[Q, V, P],
  lengths[Q, V], coords[Q, V, P, 3], segments[Q, V], valid[Q, V],
  keys[Q]) -> int32[Q, V, max_new]`, jitted once; each new (Q, V, P)
  shape compiles once. Query q decodes under adapter `slots[q]`; view v of
  a sampled decode draws from `fold_in(keys[q], v)`.
  """
  decode_query = _decode_query_fn(graphdef, max_new, temperature)

  def decode_with_slot(base, adapters, slot, prompts, lengths, coords,
                       segments, valid, key):
    adapter = jax.tree.map(lambda a: a[slot], adapters)
    keys = jax.vmap(lambda v: jax.random.fold_in(key, v))(
        jnp.arange(prompts.shape[0]))
    return decode_query(base, adapter, prompts, lengths, coords, segments,
                        valid, keys if temperature > 0 else None)

  return jax.jit(jax.vmap(decode_with_slot,
                          in_axes=(None, None, 0, 0, 0, 0, 0, 0, 0)))


def make_row_scorer(graphdef):
  """`score(base, adapters[T], slots[R], batch[R, L]) -> float32[R]`.

  The teacher-forced log-likelihood of each row's loss-mask tokens under
  adapter `slots[r]` (`batch`: a `ttt.data.TTTDataset` with leaves [R, L]);
  rows with `valid` False score -inf. Jitted once; each (R, L) compiles once.
  """

  def score_with_slot(base, adapters, slot, row):
    adapter = jax.tree.map(lambda a: a[slot], adapters)
    batch = jax.tree.map(lambda x: x[None], row)
    ll, weights = model_lib.target_logprobs(
        lora.merge(graphdef, adapter, base), batch)
    return jnp.where(row.valid, (ll * weights).sum(), -jnp.inf)

  return jax.jit(jax.vmap(score_with_slot, in_axes=(None, None, 0, 0)))


def make_scorer(config: Any, graphdef):
  """`score(base, adapters[Q], batch) -> float32[Q, M]` (jitted).

  batch: a `ttt.data.TTTDataset` with leaves [Q, M, L]: full sequences
  (prompt, answer, EOS) with the answer tokens and EOS in `mask`; rows with
  `valid` False score -inf.
  """
  del config

  def score_query(base, adapter, batch):
    ll, weights = model_lib.target_logprobs(
        lora.merge(graphdef, adapter, base), batch)
    total = (ll * weights).sum(-1)
    return jnp.where(batch.valid, total, -jnp.inf)

  return jax.jit(jax.vmap(score_query, in_axes=(None, 0, 0)))

