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

`make_scorer(config, graphdef)` returns the teacher-forced log-likelihood of
given answers: `(base, adapters[Q], batch) -> float32[Q, M]` summed over the
loss-mask tokens of M full sequences per query (prompt + candidate answer +
EOS, e.g. every candidate under every view), for product-of-experts
selection and coverage reports.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ttt import lora, tokens

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


def make_greedy_decoder(config: Any, graphdef, prompt_len: int,
                        max_new: int, temperature: float = 0.0):
  """The jitted decoder over Q queries x V views (see module docstring).

  Args:
    config: unused beyond documentation symmetry (the graphdef fixes the
      model); kept so callers pass the same config everywhere.
    graphdef: from `ttt.lora.split` of the model in use.
    prompt_len: P, the padded prompt length.
    max_new: tokens generated at most per row (<= 931 is the largest grid).
    temperature: 0 decodes greedily; T > 0 samples each token from
      softmax(logits / T) over the answer tokens, and the decoder then takes
      a last argument `keys`: PRNG keys [Q, V], one per row (token t of a
      row uses `fold_in(key, t)`).
  """
  del config
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
    num_views = prompts.shape[0]
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

  axes = (None, 0, 0, 0, 0, 0, 0) + ((0,) if temperature > 0 else ())
  return jax.jit(jax.vmap(decode_query, in_axes=axes))


def make_scorer(config: Any, graphdef):
  """`score(base, adapters[Q], batch) -> float32[Q, M]` (jitted).

  batch: a `ttt.data.TTTDataset` with leaves [Q, M, L]: full sequences
  (prompt, answer, EOS) with the answer tokens and EOS in `mask`; rows with
  `valid` False score -inf.
  """
  del config

  def score_query(base, adapter, batch):
    model = lora.merge(graphdef, adapter, base)
    logits = model(batch.tokens, batch.positions, batch.coords)[:, :-1]
    logp = jax.nn.log_softmax(logits, -1)
    targets = batch.tokens[:, 1:]
    ll = jnp.take_along_axis(logp, targets[..., None], -1)[..., 0]
    total = (ll * batch.mask[:, 1:]).sum(-1)
    return jnp.where(batch.valid, total, -jnp.inf)

  return jax.jit(jax.vmap(score_query, in_axes=(None, 0, 0)))

