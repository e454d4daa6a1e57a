"""Decoding under per-task adapters, candidate search, and scoring.

`DecodeConfig.method` picks the decoder the main job builds once:
'greedy' / 'sample' (`make_decoder`), 'dfs' (`make_dfs_decoder`: every
well-formed answer with p >= min_prob, exactly) or 'vgb'
(`make_vgb_decoder`: SJ-walk chains over the answer's token tree, the
sampling half's transition rule with the model as π_ref). Each docstring
gives its shapes and what it returns.

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
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sampling import walks
from ttt import arc, lora, tokens
from ttt import model as model_lib

METHODS = ("greedy", "sample", "dfs", "vgb")


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
  """Decoding settings (the `config.decode` group)."""

  method: str = "greedy"  # one of METHODS (see the module docstring)
  max_new_tokens: int = tokens.MAX_ANSWER_TOKENS  # per view, at most 931
  temperature: float = 0.0  # 'sample': softmax(logits / temperature)
  samples: int = 1  # 'sample': answers per view; 'vgb': chains per view
  min_prob: float = 0.1  # 'dfs': keep every answer with p >= min_prob
  max_candidates: int = 8  # 'dfs': answers kept per view, at most
  max_steps: int = 0  # 'dfs': model calls per view (0: no cap); 'vgb':
  #   the walk's horizon in lazy steps (0: 2 x max_new_tokens)
  leaf_loop: float = 64.0  # 'vgb': loop weight λ at complete answers (~2 x
  #   answer length keeps chains at answers; 0: the plain walk)
  start: str = "greedy"  # 'vgb': chains start at 'root' or 'greedy' answer

  def validate(self) -> None:
    if self.method not in METHODS:
      raise ValueError(f"decode.method must be one of {METHODS}, got "
                       f"{self.method!r}")
    if self.temperature < 0 or self.samples < 1:
      raise ValueError("decode.temperature must be >= 0 and decode.samples "
                       ">= 1")
    if self.method == "sample" and self.temperature == 0:
      raise ValueError("decode.method='sample' needs decode.temperature > 0")
    if self.method != "sample" and self.temperature > 0:
      raise ValueError("decode.temperature > 0 samples answers: set "
                       "decode.method='sample'")
    if self.samples > 1 and self.method not in ("sample", "vgb"):
      raise ValueError("decode.samples > 1 needs decode.method='sample' "
                       "(greedy copies are identical) or 'vgb'")
    if self.max_new_tokens < 1:
      raise ValueError("decode.max_new_tokens must be >= 1")
    if not 0 < self.min_prob <= 1:
      raise ValueError("decode.min_prob must be in (0, 1]")
    if self.max_candidates < 1 or self.max_steps < 0:
      raise ValueError("decode.max_candidates must be >= 1 and "
                       "decode.max_steps >= 0")
    if self.leaf_loop < 0 or self.start not in ("root", "greedy"):
      raise ValueError("decode.leaf_loop must be >= 0 and decode.start "
                       "'root' or 'greedy'")

  @property
  def horizon(self) -> int:
    """'vgb': lazy steps each chain walks."""
    return self.max_steps or 2 * self.max_new_tokens

  @property
  def per_view(self) -> int:
    """Answer slots per view in the vote ('vgb': its chains fill the first
    view's)."""
    if self.method == "dfs":
      return self.max_candidates
    return self.samples


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
  """One forward pass over each row's prompt: (logits float32[V, vocab] of
  the token after the prompt, KV cache with room for `max_new` more)."""
  positions = jnp.broadcast_to(
      jnp.arange(prompts.shape[1], dtype=jnp.int32), prompts.shape)
  kv_valid = positions < lengths[:, None]
  logits, cache = model(prompts, positions, coords, kv_valid,
                        return_cache=True)
  cache = jax.tree.map(
      lambda c: jnp.pad(c, ((0, 0), (0, max_new), (0, 0), (0, 0))), cache)
  last = logits[jnp.arange(prompts.shape[0]), jnp.maximum(lengths - 1, 0)]
  return last, cache


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
    num_views = prompts.shape[0]
    last, cache = prefill(model, prompts, lengths, coords, max_new)
    first = pick(last, keys, 0)
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


# --- threshold enumeration ('dfs') -------------------------------------------


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
  mask = jnp.zeros(tokens.VOCAB_SIZE, bool)
  mask = mask.at[:10].set(colour).at[tokens.ROW_END].set(row_end)
  return mask.at[tokens.EOS].set(eos) & (depth < max_new)


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


def _expand(st: _Search, log_min: float, max_new: int) -> _Search:
  """Children of the current node: EOS becomes an answer, the others with
  log p >= log_min (and the constrained-argmax child of a greedy node) go
  on the stack, most probable on top."""
  vocab = jnp.arange(tokens.VOCAB_SIZE)
  row, col, width = (st.grammar[st.depth, i] for i in range(3))
  mask = answer_mask(row, col, width, st.depth, max_new)
  logp = jax.nn.log_softmax(st.logits.astype(jnp.float32))
  child = st.logp[st.depth] + logp
  best = jnp.argmax(jnp.where(mask, logp, -jnp.inf))
  greedy_child = st.greedy & (vocab == best) & mask.any()
  keep = mask & ((child >= log_min) | greedy_child) & ~st.done
  # an answer: the path + EOS; when C are held, it replaces the least likely
  cap = st.answers.shape[0]
  emit = keep[tokens.EOS]
  slot = jnp.where(st.found < cap, st.found, jnp.argmin(st.answer_logp))
  take = emit & ((st.found < cap) | (child[tokens.EOS] > st.answer_logp[slot]))
  n = jnp.arange(max_new)
  answer = jnp.where(n < st.depth, st.path,
                     jnp.where(n == st.depth, tokens.EOS, tokens.PAD))
  answers = st.answers.at[slot].set(jnp.where(take, answer, st.answers[slot]))
  answer_logp = st.answer_logp.at[slot].set(
      jnp.where(take, child[tokens.EOS], st.answer_logp[slot]))
  # the rest, ascending by log p so the most probable is popped first
  push = keep & (vocab != tokens.EOS)
  key = jnp.where(push, child, -jnp.inf)
  below = (key[None, :] < key[:, None]) | (
      (key[None, :] == key[:, None]) & (vocab[None, :] < vocab[:, None]))
  rank = (below & push[None, :]).sum(1)
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
  coords, row2, col2 = answer_coords(tok, row, col, segment)
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


def _dfs_query_fn(graphdef, max_new: int, min_prob: float,
                  max_candidates: int, max_steps: int):
  """`dfs_query(base, adapter, prompts[V, P], lengths[V], coords[V, P, 3],
  segments[V], valid[V]) -> (int32[V, C, max_new], float32[V, C],
  int32[V], bool[V])`: answers, their log-probabilities (most probable
  first, -inf for empty slots), model calls, and whether the search was cut
  (stack or step cap), unjitted."""
  log_min = float(np.log(min_prob))
  room = int(1 / min_prob) + 2  # disjoint prefixes with p >= min_prob, + 1

  def dfs_query(base, adapter, prompts, lengths, coords, segments, valid):
    model = lora.merge(graphdef, adapter, base)
    num_v = prompts.shape[0]
    last, cache = prefill(model, prompts, lengths, coords, max_new)
    zeros = jnp.zeros(num_v, jnp.int32)
    st = _Search(
        depth=zeros, logits=last.astype(jnp.float32),
        greedy=jnp.ones(num_v, bool),
        path=jnp.full((num_v, max_new), tokens.PAD, jnp.int32),
        grammar=jnp.zeros((num_v, max_new + 1, 3), jnp.int32),
        logp=jnp.zeros((num_v, max_new + 1), jnp.float32),
        stack=jnp.zeros((num_v, room, 2), jnp.int32),
        stack_logp=jnp.zeros((num_v, room), jnp.float32),
        stack_greedy=jnp.zeros((num_v, room), bool), size=zeros,
        answers=jnp.full((num_v, max_candidates, max_new), tokens.PAD,
                         jnp.int32),
        answer_logp=jnp.full((num_v, max_candidates), -jnp.inf),
        found=zeros, overflow=jnp.zeros(num_v, bool), steps=zeros,
        done=~valid)
    expand = jax.vmap(lambda s: _expand(s, log_min, max_new))
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


def make_dfs_decoder(graphdef, max_new: int, min_prob: float,
                     max_candidates: int, max_steps: int = 0):
  """Every answer with probability >= `min_prob`, per query x view.

  Returns `dfs(base, adapters[T], slots[Q], prompts[Q, V, P],
  lengths[Q, V], coords[Q, V, P, 3], segments[Q, V], valid[Q, V]) ->
  (answers int32[Q, V, C, max_new], logp float32[Q, V, C], steps
  int32[Q, V], cut bool[Q, V])`, jitted once (C = `max_candidates`).

  A depth-first walk over the answer's token tree under the query's
  adapter, one model call per node visited, on the KV cache of the current
  path (backtracking only moves the write index back: no cache copies).
  Only well-formed prefixes are followed (`answer_mask`), and a child is
  followed when its probability (the model's, over the whole vocabulary) is
  at least `min_prob` -- or when it is the most probable well-formed child
  of a node on the greedy path, so the constrained-greedy answer is always
  among the results. The pending stack holds disjoint prefixes of
  probability >= min_prob (plus one greedy one), so `1 / min_prob + 2`
  entries suffice and the enumeration is exact: the answers are all
  well-formed completions with p >= min_prob (at most 1 / min_prob of
  them), the C most probable kept. `max_steps` > 0 caps model calls per
  view (`cut` says so).
  """
  dfs_query = _dfs_query_fn(graphdef, max_new, min_prob, max_candidates,
                            max_steps)

  def dfs_with_slot(base, adapters, slot, prompts, lengths, coords,
                    segments, valid):
    adapter = jax.tree.map(lambda a: a[slot], adapters)
    return dfs_query(base, adapter, prompts, lengths, coords, segments,
                     valid)

  return jax.jit(jax.vmap(dfs_with_slot,
                          in_axes=(None, None, 0, 0, 0, 0, 0, 0)))


# --- VGB: the SJ walk over the answer's token tree ('vgb') -------------------


class _Walker(NamedTuple):
  """Per-chain state of the VGB walk (leading axis C when batched)."""

  depth: jax.Array  # int32: tokens on the current node
  path: jax.Array  # int32[N]
  grammar: jax.Array  # int32[N + 1, 3]: (row, col, width) by depth
  logmu: jax.Array  # float32[N + 1]: log μ̂ of the path's prefixes
  child: jax.Array  # float32[N + 1, vocab]: log μ̂(y·a) − log μ̂(y)
  time: jax.Array  # int32: lazy steps taken
  key: jax.Array
  forced: jax.Array  # bool: still in the greedy descent (no time passes)
  done: jax.Array  # bool
  calls: jax.Array  # int32: model calls (down moves x views)


def child_logmu(logits, tmaps, usable, row, col, width, depth,
                max_new: int):
  """log μ̂(y·a) − log μ̂(y) for every token a (original frame): the mean
  over usable views k of log p_k(σ_k(a) | σ_k(y)), −inf where a would make
  the answer malformed. logits [K, vocab] (view frames), tmaps int[K,
  vocab] (σ_k as a token map), usable bool[K]."""
  lp = jnp.take_along_axis(jax.nn.log_softmax(logits.astype(jnp.float32)),
                           tmaps, 1)
  w = usable.astype(jnp.float32)
  mean = (lp * w[:, None]).sum(0) / jnp.maximum(w.sum(), 1.0)
  return jnp.where(answer_mask(row, col, width, depth, max_new), mean,
                   -jnp.inf)


def _vgb_move(st: _Walker, horizon: int, holds):
  """One jump (sampling.walks.sj_move) or, while forced, one greedy step.
  Returns (state, token, depth it is written at, moved down)."""
  key, kh, km = jax.random.split(st.key, 3)
  d = st.depth
  leaf = (d > 0) & (st.path[jnp.maximum(d - 1, 0)] == tokens.EOS)
  kids = jnp.where(leaf, -jnp.inf, st.logmu[d] + st.child[d])
  h, go_up, a = walks.sj_move(kh, km, leaf, jnp.where(d > 0, st.logmu[d],
                                                      -jnp.inf), kids, holds)
  forced = st.forced & ~leaf & jnp.isfinite(kids).any()
  a = jnp.where(forced, jnp.argmax(kids), a).astype(jnp.int32)
  go_up = go_up & ~forced
  over = ~forced & (st.time + h > horizon)
  move = ~st.done & ~over
  down, up = move & ~go_up, move & go_up
  row, col, width = (st.grammar[d, i] for i in range(3))
  _, row2, col2 = answer_coords(a, row, col, 0)
  width2 = jnp.where((a == tokens.ROW_END) & (width == 0), col, width)
  nxt = jnp.minimum(d + 1, st.path.shape[0])
  st = st._replace(
      depth=d + down.astype(jnp.int32) - up.astype(jnp.int32),
      path=st.path.at[d].set(jnp.where(down, a, st.path[d]), mode="drop"),
      grammar=st.grammar.at[nxt].set(jnp.where(
          down, jnp.stack([row2, col2, width2]), st.grammar[nxt])),
      logmu=st.logmu.at[nxt].set(jnp.where(
          down, st.logmu[d] + st.child[d, a], st.logmu[nxt])),
      time=jnp.where(forced, st.time, jnp.where(over, horizon, st.time + h)),
      key=key, forced=forced, done=st.done | over)
  return st, a, d, down


def _vgb_query_fn(graphdef, max_new: int, chains: int, horizon: int,
                  leaf_loop: float, start: str):
  """`vgb_query(base, adapter, prompts[K, P], lengths[K], coords[K, P, 3],
  segments[K], usable[K], tmaps[K, vocab], key) -> (answers int32[C,
  max_new], ok bool[C], calls int32[C])`, unjitted."""
  holds = walks.sj_holds(0.5, leaf_loop)

  def vgb_query(base, adapter, prompts, lengths, coords, segments, usable,
                tmaps, key):
    model = lora.merge(graphdef, adapter, base)
    num_k = prompts.shape[0]
    last, cache = prefill(model, prompts, lengths, coords, max_new)
    cache = jax.tree.map(lambda c: jnp.tile(c, (chains, 1, 1, 1)), cache)
    zero = jnp.zeros(3, jnp.int32)
    child0 = child_logmu(last, tmaps, usable, *zero, 0, max_new)

    def init(k):
      return _Walker(
          depth=jnp.int32(0),
          path=jnp.full(max_new, tokens.PAD, jnp.int32),
          grammar=jnp.zeros((max_new + 1, 3), jnp.int32),
          logmu=jnp.zeros(max_new + 1, jnp.float32),
          child=jnp.zeros((max_new + 1, tokens.VOCAB_SIZE),
                          jnp.float32).at[0].set(child0),
          time=jnp.int32(0), key=k, forced=jnp.bool_(start == "greedy"),
          done=~usable.any(), calls=jnp.int32(0))

    st = jax.vmap(init)(jax.random.split(key, chains))
    move = jax.vmap(lambda s: _vgb_move(s, horizon, holds))
    n_use = usable.sum().astype(jnp.int32)

    def body(carry):
      st, cache = carry
      st, a, d, down = move(st)
      # every chain x view feeds its token (used only where it moved down)
      row = jnp.take_along_axis(st.grammar[:, :, 0], d[:, None], 1)[:, 0]
      col = jnp.take_along_axis(st.grammar[:, :, 1], d[:, None], 1)[:, 0]
      shape = (chains, num_k)
      tok_coords, _, _ = answer_coords(
          jnp.broadcast_to(a[:, None], shape),
          jnp.broadcast_to(row[:, None], shape),
          jnp.broadcast_to(col[:, None], shape),
          jnp.broadcast_to(segments[None, :], shape))
      toks = tmaps[:, a].T  # [C, K]: each view's frame
      index = (lengths[None, :] + d[:, None]).reshape(-1)
      logits, cache = model.step(toks.reshape(-1), index,
                                 tok_coords.reshape(-1, 3), cache, index)
      logits = logits.reshape(chains, num_k, -1)
      g = jax.vmap(lambda gr, dd: gr[jnp.minimum(dd + 1, max_new)])(
          st.grammar, d)
      new = jax.vmap(lambda lg, gg, dd: child_logmu(
          lg, tmaps, usable, gg[0], gg[1], gg[2], dd + 1, max_new))(
              logits, g, d)
      at = jnp.minimum(d + 1, max_new)
      child = jax.vmap(lambda c, i, v, ok: c.at[i].set(
          jnp.where(ok, v, c[i])))(st.child, at, new, down)
      return st._replace(child=child,
                         calls=st.calls + down.astype(jnp.int32) * n_use), cache

    st, _ = jax.lax.while_loop(lambda c: ~c[0].done.all(), body, (st, cache))
    ok = (st.depth > 0) & (jnp.take_along_axis(
        st.path, jnp.maximum(st.depth - 1, 0)[:, None], 1)[:, 0] == tokens.EOS)
    n = jnp.arange(max_new)
    answers = jnp.where(ok[:, None] & (n[None] < st.depth[:, None]), st.path,
                        tokens.PAD)
    return answers, ok, st.calls

  return vgb_query


def make_vgb_decoder(graphdef, max_new: int, chains: int, horizon: int,
                     leaf_loop: float = 0.0, start: str = "greedy"):
  """Answers sampled by VGB: the SJ walk over the answer's token tree.

  Returns `vgb(base, adapters[T], slots[Q], prompts[Q, K, P],
  lengths[Q, K], coords[Q, K, P, 3], segments[Q, K], usable[Q, K],
  tmaps[Q, K, vocab], keys[Q]) -> (answers int32[Q, C, max_new], ok
  bool[Q, C], calls int32[Q, C])`, jitted once; C = `chains`.

  The K views of a query are its prefix-compatible ones (identity
  geometry: demonstration orders and subsets, colour permutations), so an
  answer prefix y in the task's frame is the prefix σ_k(y) in view k's.
  The oracle is μ̂(y) = exp(mean_k log p_k(σ_k(y))) -- π_ref (the identity
  view) times the process verifier V̂(y) = μ̂(y) / π_ref(y), i.e. the views'
  agreement on the prefix -- with μ̂ = 0 off well-formed answers. At a
  complete answer x (ending in EOS) this is exact by construction (E0), so
  the walk's stationary law on complete answers is

      π(x) ∝ Π_k p_k(σ_k(x))^(1/K)   (well-formed x, |x| <= max_new),

  the normalised geometric mean of the views' answer laws, whatever the
  error of μ̂ at prefixes (it changes only how fast the walk mixes). Each
  chain runs `sampling.walks.sj_move` (laziness 1/2, leaf loop λ =
  `leaf_loop`) on the KV caches of its K views (moving up only moves the
  write index back), for `horizon` lazy steps, and returns its node at
  that time if it is a complete answer (read-out R1; else ok False).
  start='root' is the textbook walk; 'greedy' first descends along the
  constrained-greedy answer (no time passes), so short horizons explore
  around it; the stationary law is the same.
  """
  vgb_query = _vgb_query_fn(graphdef, max_new, chains, horizon, leaf_loop,
                            start)

  def vgb_with_slot(base, adapters, slot, prompts, lengths, coords,
                    segments, usable, tmaps, key):
    adapter = jax.tree.map(lambda a: a[slot], adapters)
    return vgb_query(base, adapter, prompts, lengths, coords, segments,
                     usable, tmaps, key)

  return jax.jit(jax.vmap(vgb_with_slot,
                          in_axes=(None, None, 0, 0, 0, 0, 0, 0, 0, 0)))


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

