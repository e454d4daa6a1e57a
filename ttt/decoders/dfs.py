"""'dfs': every well-formed answer with probability >= min_prob, exactly.

A depth-first walk over the answer's token tree under the query's adapter,
one model call per node visited, on the KV cache of the current path
(backtracking only moves the write index back: no cache copies). Only
well-formed prefixes are followed (`common.answer_mask`), and a child is
followed when its probability (the model's, over the whole vocabulary) is
at least `min_prob` -- or when it is the most probable well-formed child of
a node on the greedy path, so the constrained-greedy answer is always among
the results. The pending stack holds disjoint prefixes of probability >=
min_prob (plus one greedy one), so `1 / min_prob + 2` entries suffice and
the enumeration is exact: the answers are all well-formed completions with
p >= min_prob (at most 1 / min_prob of them), the C = `max_candidates` most
probable kept, most probable first. `max_steps` > 0 caps model calls per
view (`cut` says so). Each view is decoded once; its C answer slots fill
the view's `per_view` = C repeats in the vote (empty slots: None).

With a codec without a grammar (`ttt.codec`: MARC's text) every token is a
possible child, pruned by probability alone; a stop token (end-of-turn,
end-of-text, a token writing the `#` footer) ends an answer, the most
probable of a node's kept stop tokens only (answers that differ only in
how they stop parse to the same grid).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ttt import codec as codec_lib
from ttt import lora, sharding, tokens, views
from ttt.decoders import common


class _Search(NamedTuple):
  """Per-view state of the enumeration (leading axis V when batched)."""

  depth: jax.Array  # int32: tokens on the current path
  logits: jax.Array  # float32[vocab]: next-token logits after the path
  greedy: jax.Array  # bool: the path is the constrained-greedy one
  path: jax.Array  # int32[N]: the current path's tokens
  grammar: jax.Array  # int32[N + 1, 3]: (row, col, width) at each depth
  logp: jax.Array  # float32[N + 1]: the path's log-probability by depth
  stack: jax.Array  # int32[S, 2]: pending (depth, token)
  stack_logp: jax.Array  # float32[S]
  stack_greedy: jax.Array  # bool[S]
  size: jax.Array  # int32: items on the stack
  answers: jax.Array  # int32[C, N]: answers found (PAD-filled)
  answer_logp: jax.Array  # float32[C] (-inf: empty slot)
  found: jax.Array  # int32: answers found (may exceed C)
  overflow: jax.Array  # bool: the stack dropped an item
  steps: jax.Array  # int32: model calls
  done: jax.Array  # bool


def _rank(push, key, vocab):
  """Each pushed token's place among the pushed, ascending by `key` (ties
  by id): a [vocab, vocab] comparison for a small vocabulary, a sort for an
  LLM's (the same integers)."""
  if vocab.shape[0] <= 1024:
    below = (key[None, :] < key[:, None]) | (
        (key[None, :] == key[:, None]) & (vocab[None, :] < vocab[:, None]))
    return (below & push[None, :]).sum(1)
  order = jnp.lexsort((vocab, key, push))  # not pushed first, then by key
  place = jnp.zeros_like(vocab).at[order].set(vocab)
  return place - (~push).sum()


def _expand(st: _Search, log_min: float, max_new: int, codec) -> _Search:
  """Children of the current node: a stop token (the cells' EOS) ends an
  answer -- the most probable kept one, if several --, the others with
  log p >= log_min (and the constrained-argmax child of a greedy node) go
  on the stack, most probable on top. The codec's grammar (if it has one)
  decides which children are well-formed."""
  vocab = jnp.arange(codec.vocab_size)
  stop = jnp.asarray(codec.stop_tokens)
  row, col, width = (st.grammar[st.depth, i] for i in range(3))
  mask = common.next_mask(codec, row, col, width, st.depth, max_new)
  logp = jax.nn.log_softmax(st.logits.astype(jnp.float32))
  child = st.logp[st.depth] + logp
  best = jnp.argmax(jnp.where(mask, logp, -jnp.inf))
  greedy_child = st.greedy & (vocab == best) & mask.any()
  keep = mask & ((child >= log_min) | greedy_child) & ~st.done
  # an answer: the path + its stop token; when C are held, it replaces the
  # least likely
  cap = st.answers.shape[0]
  ends = keep & stop
  emit = ends.any()
  end = jnp.argmax(jnp.where(ends, child, -jnp.inf))
  slot = jnp.where(st.found < cap, st.found, jnp.argmin(st.answer_logp))
  take = emit & ((st.found < cap) | (child[end] > st.answer_logp[slot]))
  n = jnp.arange(max_new)
  answer = jnp.where(n < st.depth, st.path,
                     jnp.where(n == st.depth, end, codec.pad))
  answers = st.answers.at[slot].set(jnp.where(take, answer, st.answers[slot]))
  answer_logp = st.answer_logp.at[slot].set(
      jnp.where(take, child[end], st.answer_logp[slot]))
  # the rest, ascending by log p so the most probable is popped first
  push = keep & ~stop
  key = jnp.where(push, child, -jnp.inf)
  rank = _rank(push, key, vocab)
  count = push.sum()
  room = st.stack.shape[0]
  excess = jnp.maximum(st.size + count - room, 0)  # drop the least likely
  ok = push & (rank >= excess)
  at = jnp.where(ok, st.size + rank - excess, room)
  item = jnp.stack([jnp.full_like(vocab, st.depth), vocab], -1)
  return st._replace(
      answers=answers, answer_logp=answer_logp,
      found=st.found + emit.astype(jnp.int32),
      stack=st.stack.at[at].set(item, mode="drop"),
      stack_logp=st.stack_logp.at[at].set(child, mode="drop"),
      stack_greedy=st.stack_greedy.at[at].set(greedy_child, mode="drop"),
      size=st.size + count - excess, overflow=st.overflow | (excess > 0))


def _pop(st: _Search, segment):
  """Moves to the top of the stack; returns (state, token, its coords,
  the cache index it is written at relative to the prompt)."""
  has = st.size > 0
  top = jnp.maximum(st.size - 1, 0)
  depth, tok = st.stack[top, 0], st.stack[top, 1]
  row, col, width = (st.grammar[depth, i] for i in range(3))
  coords, row2, col2 = common.answer_coords(tok, row, col, segment)
  width2 = jnp.where((tok == tokens.ROW_END) & (width == 0), col, width)
  done = st.done | ~has
  st = st._replace(
      depth=jnp.where(done, st.depth, depth + 1),
      greedy=st.stack_greedy[top],
      path=st.path.at[depth].set(jnp.where(done, st.path[depth], tok)),
      grammar=st.grammar.at[depth + 1].set(
          jnp.where(done, st.grammar[depth + 1],
                    jnp.stack([row2, col2, width2]))),
      logp=st.logp.at[depth + 1].set(
          jnp.where(done, st.logp[depth + 1], st.stack_logp[top])),
      size=st.size - has.astype(jnp.int32), done=done)
  return st, tok, coords, depth


def make_query_fn(graphdef, max_new: int, min_prob: float,
                  max_candidates: int, max_steps: int, codec=None):
  """`dfs_query(base, adapter, prompts[V, P], lengths[V], coords[V, P, 3],
  segments[V], valid[V]) -> (int32[V, C, max_new], float32[V, C],
  int32[V], bool[V])`: answers, their log-probabilities (most probable
  first, -inf for empty slots), model calls, and whether the search was cut
  (stack or step cap), unjitted. `codec`: the run's `ttt.codec.Codec`
  (default the cells')."""
  codec = codec_lib.default(codec)
  log_min = float(np.log(min_prob))
  room = int(1 / min_prob) + 2  # disjoint prefixes with p >= min_prob, + 1

  def dfs_query(base, adapter, prompts, lengths, coords, segments, valid):
    model = lora.merge(graphdef, adapter, base)
    num_v = prompts.shape[0]
    last, cache = common.prefill(model, prompts, lengths, coords, max_new)
    zeros = jnp.zeros(num_v, jnp.int32)
    st = _Search(
        depth=zeros, logits=last.astype(jnp.float32),
        greedy=jnp.ones(num_v, bool),
        path=jnp.full((num_v, max_new), codec.pad, jnp.int32),
        grammar=jnp.zeros((num_v, max_new + 1, 3), jnp.int32),
        logp=jnp.zeros((num_v, max_new + 1), jnp.float32),
        stack=jnp.zeros((num_v, room, 2), jnp.int32),
        stack_logp=jnp.zeros((num_v, room), jnp.float32),
        stack_greedy=jnp.zeros((num_v, room), bool), size=zeros,
        answers=jnp.full((num_v, max_candidates, max_new), codec.pad,
                         jnp.int32),
        answer_logp=jnp.full((num_v, max_candidates), -jnp.inf),
        found=zeros, overflow=jnp.zeros(num_v, bool), steps=zeros,
        done=~valid)
    expand = jax.vmap(lambda s: _expand(s, log_min, max_new, codec))
    pop = jax.vmap(_pop)

    def body(carry):
      st, cache = carry
      st, tok, tok_coords, depth = pop(expand(st), segments)
      index = lengths + depth
      logits, cache = model.step(tok, index, tok_coords, cache, index)
      steps = st.steps + (~st.done).astype(jnp.int32)
      cut = (steps >= max_steps) & ~st.done if max_steps else False
      return st._replace(logits=logits, steps=steps,
                         overflow=st.overflow | cut,
                         done=st.done | cut), cache

    st, _ = jax.lax.while_loop(lambda c: ~c[0].done.all(), body, (st, cache))
    order = jnp.argsort(-st.answer_logp, axis=-1)
    answers = jnp.take_along_axis(st.answers, order[..., None], 1)
    return (answers, jnp.take_along_axis(st.answer_logp, order, 1),
            st.steps, st.overflow | (st.found > max_candidates))

  return dfs_query


def make_program(graphdef, max_new: int, min_prob: float,
                 max_candidates: int, max_steps: int = 0, codec=None):
  """`dfs(base, adapters[T], slots[Q], prompts[Q, V, P], lengths[Q, V],
  coords[Q, V, P, 3], segments[Q, V], valid[Q, V]) -> (answers int32[Q, V,
  C, max_new], logp float32[Q, V, C], steps int32[Q, V], cut bool[Q, V])`,
  jitted once (C = `max_candidates`)."""
  return common.with_slot(make_query_fn(graphdef, max_new, min_prob,
                                        max_candidates, max_steps, codec))


def _make(cfg: common.DecodeConfig, weights, mesh,
          spec: common.DecodeSpec) -> common.Decoder:
  codec = common.spec_codec(spec)
  program = make_program(weights.graphdef, common.max_new(cfg, spec),
                         cfg.min_prob, cfg.max_candidates, cfg.max_steps,
                         codec)
  rep = cfg.max_candidates

  def decode(queries, slots, adapters) -> common.Decoded:
    if not queries:
      return common.Decoded([])
    rows = common.prompt_rows(
        queries, slots, lambda q: common.distinct_views(q, rep), spec, mesh)
    args, _ = common.put(rows, (), spec, mesh)
    answers, _, steps, _ = sharding.gather(program(weights.base, adapters,
                                                   *args))
    predictions = [
        tuple(views.to_original(v, codec.decode_grid(answers[i, j, k]))
              for j, v in enumerate(common.distinct_views(q, rep))
              for k in range(rep))
        for i, q in enumerate(queries)]
    return common.Decoded(predictions, int(steps[:len(queries)].sum()),
                          rows.prompt_tokens)

  def inputs(adapters, prompt_len):
    rows = common.padding_rows(spec, mesh, prompt_len)
    return {"decode": (weights.base, adapters,
                       *common.put(rows, (), spec, mesh)[0])}

  return common.Decoder(decode, empty_slots=True,
                        programs={"decode": program}, inputs=inputs)


def _validate(cfg: common.DecodeConfig) -> None:
  common.single_answer(cfg)
  if cfg.samples > 1:
    raise ValueError("decode.samples > 1 needs decode.method='sample' or "
                     "'vgb' ('dfs' enumerates: decode.max_candidates)")


METHOD = common.Method(
    per_view=lambda cfg: cfg.max_candidates, views_of=common.distinct_views,
    validate=_validate,
    describe=lambda cfg: (f"dfs (p >= {cfg.min_prob}, <= "
                          f"{cfg.max_candidates} per view)"),
    make=_make)
