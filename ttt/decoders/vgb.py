"""'vgb': answers sampled by the SJ walk over the answer's token tree.

The K views of a query are its prefix-compatible ones (identity geometry:
demonstration orders and subsets, colour permutations), so an answer
prefix y in the task's frame is the prefix σ_k(y) in view k's. The oracle
is μ̂(y) = exp(mean_k log p_k(σ_k(y))) -- π_ref (the identity view) times
the process verifier V̂(y) = μ̂(y) / π_ref(y), i.e. the views' agreement on
the prefix -- with μ̂ = 0 off well-formed answers. At a complete answer x
(ending in EOS) this is exact by construction (E0), so the walk's
stationary law on complete answers is

    π(x) ∝ Π_k p_k(σ_k(x))^(1/K)   (well-formed x, |x| <= max_new),

the normalised geometric mean of the views' answer laws, whatever the
error of μ̂ at prefixes (it changes only how fast the walk mixes). Each
chain runs `sampling.walks.sj_move` (laziness 1/2, leaf loop λ =
`leaf_loop`) on the KV caches of its K views (moving up only moves the
write index back), for `horizon` lazy steps, and returns its node at that
time if it is a complete answer (read-out R1; else None). start='root' is
the textbook walk; 'greedy' first descends along the constrained-greedy
answer (no time passes), so short horizons explore around it; the
stationary law is the same. The chains' answers (task frame) fill the
query's first view's `decode.samples` slots; the other slots stay empty.

The walk's kernel (`make_walk_fn`: chain state `Walker`, `node`, `advance`,
the KV-cache loop) and host side (`make_walk_decoder`) take the transition
rule as an argument; `ttt.decoders.vgb_lifted` runs the lifted rule on them.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sampling import walks
from ttt import lora, sharding, tokens
from ttt.decoders import common


def prefix_views(query, per_view: int) -> list:
  """The query's distinct views of identity geometry (orders, subsets,
  colours): their answer prefixes are the task frame's, recoloured."""
  return [v for v in query.views[::per_view]
          if int(v.element.dihedral) == 0]


class Walker(NamedTuple):
  """Per-chain state of a walk over the answer tree (leading axis C when
  batched); shared by 'vgb' and 'vgb_lifted'."""

  depth: jax.Array  # int32: tokens on the current node
  path: jax.Array  # int32[N]
  grammar: jax.Array  # int32[N + 1, 3]: (row, col, width) by depth
  logmu: jax.Array  # float32[N + 1]: log μ̂ of the path's prefixes
  child: jax.Array  # float32[N + 1, vocab]: log μ̂(y·a) − log μ̂(y)
  time: jax.Array  # int32: steps taken (lazy steps for the SJ walk)
  until: jax.Array  # int32: the read-out time (the horizon, or T*)
  heading_down: jax.Array  # bool: the lifted walk's direction (SJ: True)
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
  return jnp.where(common.answer_mask(row, col, width, depth, max_new), mean,
                   -jnp.inf)


def node(st: Walker):
  """(leaf bool[], log μ̂(y) (−inf at the root), log μ̂(y·a) float[vocab]
  (−inf: malformed, or y is a complete answer)) at the chain's node."""
  d = st.depth
  leaf = (d > 0) & (st.path[jnp.maximum(d - 1, 0)] == tokens.EOS)
  kids = jnp.where(leaf, -jnp.inf, st.logmu[d] + st.child[d])
  return leaf, jnp.where(d > 0, st.logmu[d], -jnp.inf), kids


def advance(st: Walker, key, leaf, kids, h, to_child, to_parent, turn, a):
  """Applies a transition drawn at the chain's node -- to child `a`, to the
  parent, or a turn of the direction bit, at `h` steps -- or, while forced,
  one greedy step (no time passes); a transition past `st.until` ends the
  chain where it is. Returns (state, token, depth it is written at, moved
  down)."""
  d = st.depth
  forced = st.forced & ~leaf & jnp.isfinite(kids).any()
  a = jnp.where(forced, jnp.argmax(kids), a).astype(jnp.int32)
  over = ~forced & (st.time + h > st.until)
  move = ~st.done & ~over
  down = move & (forced | to_child)
  up = move & ~forced & to_parent
  turn = move & ~forced & turn
  row, col, width = (st.grammar[d, i] for i in range(3))
  _, row2, col2 = common.answer_coords(a, row, col, 0)
  width2 = jnp.where((a == tokens.ROW_END) & (width == 0), col, width)
  nxt = jnp.minimum(d + 1, st.path.shape[0])
  st = st._replace(
      depth=d + down.astype(jnp.int32) - up.astype(jnp.int32),
      path=st.path.at[d].set(jnp.where(down, a, st.path[d]), mode="drop"),
      grammar=st.grammar.at[nxt].set(jnp.where(
          down, jnp.stack([row2, col2, width2]), st.grammar[nxt])),
      logmu=st.logmu.at[nxt].set(jnp.where(
          down, st.logmu[d] + st.child[d, a], st.logmu[nxt])),
      time=jnp.where(forced, st.time,
                     jnp.where(over, st.until, st.time + h)),
      heading_down=st.heading_down ^ turn,
      key=key, forced=forced, done=st.done | over)
  return st, a, d, down


def _vgb_move(st: Walker, holds):
  """One jump of the SJ walk (`sampling.walks.sj_move`)."""
  key, kh, km = jax.random.split(st.key, 3)
  leaf, log_parent, kids = node(st)
  h, go_up, a = walks.sj_move(kh, km, leaf, log_parent, kids, holds)
  return advance(st, key, leaf, kids, h, ~go_up, go_up, False, a)


def make_query_fn(graphdef, max_new: int, chains: int, horizon: int,
                  leaf_loop: float, start: str):
  """`vgb_query(base, adapter, prompts[K, P], lengths[K], coords[K, P, 3],
  segments[K], usable[K], tmaps[K, vocab], key) -> (answers int32[C,
  max_new], ok bool[C], calls int32[C])`, unjitted."""
  holds = walks.sj_holds(0.5, leaf_loop)
  return make_walk_fn(graphdef, max_new, chains, start,
                      lambda k: (k, jnp.int32(horizon)),
                      lambda st: _vgb_move(st, holds), "vgb_query")


def make_walk_fn(graphdef, max_new: int, chains: int, start: str, until,
                 move, name: str):
  """The one-query kernel of a walk over the answer tree, unjitted:
  `(base, adapter, prompts[K, P], lengths[K], coords[K, P, 3],
  segments[K], usable[K], tmaps[K, vocab], key) -> (answers int32[C,
  max_new], ok bool[C], calls int32[C])`.

  Args:
    until: `key -> (key, int32[])`: a chain's read-out time.
    move: `Walker -> (Walker, token, depth, moved down)` for one chain
      (`advance` applied to a transition drawn at `node`).
    name: the kernel's name (the program's, in compile logs).

  Every iteration moves every chain once, then feeds each chain x view its
  token at its depth (the KV cache of the chain's path: moving up only
  moves the write index back), and stores the children's μ̂ where a chain
  moved down.
  """

  def walk_query(base, adapter, prompts, lengths, coords, segments, usable,
                 tmaps, key):
    model = lora.merge(graphdef, adapter, base)
    num_k = prompts.shape[0]
    last, cache = common.prefill(model, prompts, lengths, coords, max_new)
    cache = jax.tree.map(lambda c: jnp.tile(c, (chains, 1, 1, 1)), cache)
    zero = jnp.zeros(3, jnp.int32)
    child0 = child_logmu(last, tmaps, usable, *zero, 0, max_new)

    def init(k):
      k, t_end = until(k)
      return Walker(
          depth=jnp.int32(0),
          path=jnp.full(max_new, tokens.PAD, jnp.int32),
          grammar=jnp.zeros((max_new + 1, 3), jnp.int32),
          logmu=jnp.zeros(max_new + 1, jnp.float32),
          child=jnp.zeros((max_new + 1, tokens.VOCAB_SIZE),
                          jnp.float32).at[0].set(child0),
          time=jnp.int32(0), until=t_end, heading_down=jnp.bool_(True),
          key=k, forced=jnp.bool_(start == "greedy"),
          done=~usable.any(), calls=jnp.int32(0))

    st = jax.vmap(init)(jax.random.split(key, chains))
    step = jax.vmap(move)
    n_use = usable.sum().astype(jnp.int32)

    def body(carry):
      st, cache = carry
      st, a, d, down = step(st)
      # every chain x view feeds its token (used only where it moved down)
      row = jnp.take_along_axis(st.grammar[:, :, 0], d[:, None], 1)[:, 0]
      col = jnp.take_along_axis(st.grammar[:, :, 1], d[:, None], 1)[:, 0]
      shape = (chains, num_k)
      tok_coords, _, _ = common.answer_coords(
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

  walk_query.__name__ = walk_query.__qualname__ = name
  return walk_query


def make_program(graphdef, max_new: int, chains: int, horizon: int,
                 leaf_loop: float = 0.0, start: str = "greedy"):
  """`vgb(base, adapters[T], slots[Q], prompts[Q, K, P], lengths[Q, K],
  coords[Q, K, P, 3], segments[Q, K], usable[Q, K], tmaps[Q, K, vocab],
  keys[Q]) -> (answers int32[Q, C, max_new], ok bool[Q, C], calls
  int32[Q, C])`, jitted once; C = `chains`."""
  return common.with_slot(make_query_fn(graphdef, max_new, chains, horizon,
                                        leaf_loop, start))


def make_walk_decoder(make_program_fn):
  """`Method.make` of a walk over the answer tree, around
  `make_program_fn(graphdef, max_new, chains, horizon, leaf_loop, start)`
  (`make_program`'s signature and program)."""

  def make(cfg: common.DecodeConfig, weights, mesh,
           spec: common.DecodeSpec) -> common.Decoder:
    program = make_program_fn(weights.graphdef, cfg.max_new, cfg.samples,
                              horizon(cfg), cfg.leaf_loop, cfg.start)
    return _walk_decoder(program, cfg.samples, weights, mesh, spec)

  return make


def _walk_decoder(program, rep: int, weights, mesh,
                  spec: common.DecodeSpec) -> common.Decoder:

  def decode(queries, slots, adapters) -> common.Decoded:
    if not queries:
      return common.Decoded([])
    rows = common.prompt_rows(queries, slots,
                              lambda q: prefix_views(q, rep), spec, mesh)
    tmaps = np.tile(np.arange(tokens.VOCAB_SIZE, dtype=np.int32),
                    (len(rows.rows), spec.views, 1))
    for i, vs in enumerate(rows.views):
      for j, v in enumerate(vs):
        tmaps[i, j, :10] = v.element.colours
    args, keys = common.put(rows, (tmaps,), spec, mesh)
    answers, ok, calls = sharding.gather(program(weights.base, adapters,
                                                 *args, keys))
    predictions = []
    for i, q in enumerate(queries):
      grids = [tokens.decode_grid(a) if good else None
               for a, good in zip(answers[i], ok[i], strict=True)]
      predictions.append(tuple(grids) + (None,) * (len(q.views)
                                                   - len(grids)))
    return common.Decoded(predictions, int(calls[:len(queries)].sum()),
                          rows.prompt_tokens)

  def inputs(adapters, prompt_len):
    rows = common.padding_rows(spec, mesh, prompt_len)
    tmaps = np.zeros((len(rows.rows), spec.views, tokens.VOCAB_SIZE),
                     np.int32)
    args, keys = common.put(rows, (tmaps,), spec, mesh)
    return {"decode": (weights.base, adapters, *args, keys)}

  return common.Decoder(decode, empty_slots=True,
                        programs={"decode": program}, inputs=inputs)


def horizon(cfg: common.DecodeConfig) -> int:
  """Lazy steps each chain walks: `max_steps`, else 2 x max_new_tokens."""
  return cfg.max_steps or 2 * cfg.max_new_tokens


def validate_walk(cfg: common.DecodeConfig, min_leaf_loop: float) -> None:
  """Validation of a walk's fields (`leaf_loop` >= min_leaf_loop)."""
  common.single_answer(cfg)
  if cfg.leaf_loop < min_leaf_loop or cfg.start not in ("root", "greedy"):
    raise ValueError(f"decode.leaf_loop must be >= {min_leaf_loop:g} for "
                     f"{cfg.method!r} (got {cfg.leaf_loop!r}) and "
                     f"decode.start 'root' or 'greedy' (got {cfg.start!r})")


METHOD = common.Method(
    per_view=lambda cfg: cfg.samples, views_of=prefix_views,
    validate=lambda cfg: validate_walk(cfg, 0.0),
    describe=lambda cfg: f"vgb ({cfg.samples} chains)",
    make=make_walk_decoder(make_program),
    needs_grammar=True)  # the walk's tree is the cell grammar's
