"""'greedy' and 'sample': one answer per view row, token by token.

Each row is prefilled with a full forward pass over its prompt (padded to
P; its real tokens end at the query's OUTPUT marker), which also fills a
KV cache; then one token per step (`Transformer.step`) until every row has
written `EOS` or `max_new` tokens. Generation is restricted to answer
tokens (colours, ROW_END, EOS); the 3-D coordinates of each generated
token follow from the rows and columns written so far, exactly as
`ttt.tokens` lays out an answer grid. 'greedy' takes the argmax; 'sample'
draws from softmax(logits / temperature), `decode.samples` answers per
view (each repeat of a view in `query.views` is a row with its own key:
`fold_in(query key, row)`, token t `fold_in(row key, t)`).

With MARC's text codec (`ttt.codec`) any token may be written, an answer
ends at a stop token (end-of-turn, end-of-text, or a token that writes the
`#` footer) and its text is parsed (`ttt.text.parse_answer`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ttt import codec as codec_lib
from ttt import lora, sharding, views
from ttt.decoders import common


def make_query_fn(graphdef, max_new: int, temperature: float, codec=None):
  """The kernel for ONE query, unjitted (`codec`: the run's
  `ttt.codec.Codec`, default the cells': which tokens it may write, which
  end an answer, the padding id).

  Returns:
    `decode_query(base, adapter, prompts int32[V, P], lengths int32[V],
    coords int32[V, P, 3], segments int32[V], valid bool[V], key) ->
    int32[V, max_new]` answer tokens (the codec's pad after the stop token
    and on invalid rows);
    `key` (one per query) is ignored when `temperature` is 0.
  """
  codec = codec_lib.default(codec)
  allowed = jnp.asarray(codec.answer_tokens)
  stop = jnp.asarray(codec.stop_tokens)
  pad = codec.pad

  def pick(logits, keys, t):
    logits = jnp.where(allowed, logits.astype(jnp.float32), -jnp.inf)
    if temperature <= 0:
      return jnp.argmax(logits, -1).astype(jnp.int32)
    step_keys = jax.vmap(lambda k: jax.random.fold_in(k, t))(keys)
    return jax.vmap(jax.random.categorical)(
        step_keys, logits / temperature).astype(jnp.int32)

  def decode_query(base, adapter, prompts, lengths, coords, segments, valid,
                   key):
    model = lora.merge(graphdef, adapter, base)
    num_views = prompts.shape[0]
    keys = jax.vmap(lambda v: jax.random.fold_in(key, v))(
        jnp.arange(num_views))
    last, cache = common.prefill(model, prompts, lengths, coords, max_new)
    first = pick(last, keys, 0)
    zeros = jnp.zeros(num_views, jnp.int32)
    out = jnp.full((num_views, max_new), pad, jnp.int32)
    init = (jnp.int32(0), first, lengths.astype(jnp.int32), zeros, zeros,
            ~valid, out, cache)

    def cond(state):
      t, _, _, _, _, done, _, _ = state
      return (t < max_new) & ~done.all()

    def body(state):
      t, tok, index, row, col, done, out, cache = state
      out = out.at[:, t].set(jnp.where(done, pad, tok))
      tok_coords, row, col = common.answer_coords(tok, row, col, segments)
      done = done | stop[tok]
      logits, cache = model.step(tok, index, tok_coords, cache, index)
      return (t + 1, pick(logits, keys, t + 1), index + 1, row, col, done,
              out, cache)

    return jax.lax.while_loop(cond, body, init)[6]

  return decode_query


def make_program(graphdef, max_new: int, temperature: float = 0.0,
                 codec=None):
  """`decode(base, adapters[T], slots[Q], prompts[Q, V, P], lengths[Q, V],
  coords[Q, V, P, 3], segments[Q, V], valid[Q, V], keys[Q]) -> int32[Q, V,
  max_new]`, jitted once (each new (Q, V, P) compiles once)."""
  return common.with_slot(make_query_fn(graphdef, max_new, temperature,
                                        codec))


def _make(cfg: common.DecodeConfig, weights, mesh,
          spec: common.DecodeSpec) -> common.Decoder:
  codec = common.spec_codec(spec)
  program = make_program(weights.graphdef, common.max_new(cfg, spec),
                         cfg.temperature, codec)

  def decode(queries, slots, adapters) -> common.Decoded:
    if not queries:
      return common.Decoded([])
    rows = common.prompt_rows(queries, slots, lambda q: list(q.views), spec,
                              mesh)
    args, keys = common.put(rows, (), spec, mesh)
    out = sharding.gather(program(weights.base, adapters, *args, keys))
    predictions = [tuple(views.to_original(v, codec.decode_grid(out[i, j]))
                         for j, v in enumerate(q.views))
                   for i, q in enumerate(queries)]
    return common.Decoded(predictions,
                          int((out[:len(queries)] != codec.pad).sum()),
                          rows.prompt_tokens)

  def inputs(adapters, prompt_len):
    rows = common.padding_rows(spec, mesh, prompt_len)
    args, keys = common.put(rows, (), spec, mesh)
    return {"decode": (weights.base, adapters, *args, keys)}

  return common.Decoder(decode, empty_slots=False,
                        programs={"decode": program}, inputs=inputs)


def _greedy_validate(cfg: common.DecodeConfig) -> None:
  common.single_answer(cfg)
  if cfg.samples > 1:
    raise ValueError("decode.samples > 1 needs decode.method='sample' "
                     "(greedy copies are identical) or 'vgb'")


def _sample_validate(cfg: common.DecodeConfig) -> None:
  if cfg.temperature <= 0:
    raise ValueError("decode.method='sample' needs decode.temperature > 0")


GREEDY = common.Method(
    per_view=lambda cfg: 1, views_of=common.each_view,
    validate=_greedy_validate, describe=lambda cfg: "greedy", make=_make)

SAMPLE = common.Method(
    per_view=lambda cfg: cfg.samples, views_of=common.each_view,
    validate=_sample_validate,
    describe=lambda cfg: (f"sampled (T={cfg.temperature}, {cfg.samples} per "
                          "view)"),
    make=_make)
