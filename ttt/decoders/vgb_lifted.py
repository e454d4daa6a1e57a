"""'vgb_lifted': answers sampled by the balanced lifted walk over the
answer's token tree.

The same tree, oracle and chains as 'vgb' (`ttt.decoders.vgb`): μ̂(y) =
exp(mean_k log p_k(σ_k(y))) over the query's K identity-geometry views (π_ref
times the views' agreement V̂), 0 off well-formed answers, exact at complete
answers (ending in EOS). Each chain carries a direction bit and runs
`sampling.walks.lifted_move` (METHOD_SAMPLING §2d, our reconstruction of a
Hayes–Sinclair lifting): with a = μ̂(y), b = Σ_a μ̂(y·a), m = max(a, b),
heading down it goes to child y·a w.p. μ̂(y·a) / m and else turns up;
heading up it goes to the parent w.p. a / m and else turns down (the root
always turns); internal states never idle; a complete answer holds
Geom(2 / (1 + λ)) steps in each direction (λ = `leaf_loop` >= 1). A prefix
of `max_new` tokens without EOS has no children: the walk turns there and
goes back up. The stationary law is π̂(y, ↓) = π̂(y, ↑) ∝ W(y), W = 2m at
prefixes and (1 + λ) μ̂(x) at complete answers, so on complete answers it is

    π(x) ∝ Π_k p_k(σ_k(x))^(1/K)   (well-formed x, |x| <= max_new),

the views' geometric mean -- the same target as 'vgb', whatever μ̂'s error
at prefixes. What the lifting changes is the speed: between turns the walk
moves ballistically, so on a locally consistent μ̂ (Σ_a μ̂(y·a) ≈ μ̂(y)) it
needs of the order of n moves per sample for answers of n tokens, against
the reversible walk's n² (METHOD_SAMPLING §2d, §6.5); it turns at y w.p. the
local inconsistency |a − b| / m, so locally inconsistent views bring it
back towards n².

On this oracle B(y) = μ̂(y) Σ_a Π_k p_k(a|y)^(1/K) <= μ̂(y) at every prefix
(Hölder; the grammar mask only removes mass), so heading up never turns
before the root: a turn (w.p. ι(y) = 1 − B(y)/μ̂(y), heading down) sends
the chain back to the root, and a descent from the root reaches complete
answer x w.p. μ̂(x) / B(∅) exactly. The walk is then a renewal sequence of
exact top-down proposals, each accepted w.p. Σ_x μ̂(x) / B(∅) (the views'
agreement on whole answers): about 2n / that probability moves per answer
-- linear in n while the views agree, exponential in their summed local
disagreement Σ_k ι(x_{1:k}) otherwise.

Read-out as in the sampling half: each chain stops at T* uniform on
⌊T/2⌋..T (T = `max_steps`, 0: 2 x `max_new_tokens`; steps, not lazy steps)
and returns its node if it is a complete answer, else None -- the chain is
nearly periodic, so a fixed T could land where no chain sits on an answer.
Moving up moves the write index of the chain's KV caches back;
start='greedy' first descends along the constrained-greedy answer heading
down (no time passes). Everything else (the compiled program over chains
and queries, the slots it fills) is 'vgb''s.
"""

from __future__ import annotations

import jax

from sampling import walks
from ttt.decoders import common, vgb


def _lifted_move(st: vgb.Walker, log_hold_leaf: float):
  """One transition of the lifted walk (`sampling.walks.lifted_move`)."""
  key, kh, ku, kc = jax.random.split(st.key, 4)
  leaf, log_parent, kids = vgb.node(st)
  h, to_child, to_parent, turn, a = walks.lifted_move(
      kh, ku, kc, leaf, st.heading_down, log_parent, kids, log_hold_leaf)
  return vgb.advance(st, key, leaf, kids, h, to_child, to_parent, turn, a)


def make_query_fn(graphdef, max_new: int, chains: int, horizon: int,
                  leaf_loop: float, start: str):
  """`vgb_lifted_query(base, adapter, prompts[K, P], lengths[K], coords[K,
  P, 3], segments[K], usable[K], tmaps[K, vocab], key) -> (answers int32[C,
  max_new], ok bool[C], calls int32[C])`, unjitted; each chain reads out
  at T* uniform on ⌊horizon/2⌋..horizon."""
  log_hold_leaf = walks.lifted_hold(leaf_loop)

  def until(k):
    k, kt = jax.random.split(k)
    return k, jax.random.randint(kt, (), horizon // 2, horizon + 1)

  return vgb.make_walk_fn(graphdef, max_new, chains, start, until,
                          lambda st: _lifted_move(st, log_hold_leaf),
                          "vgb_lifted_query")


def make_program(graphdef, max_new: int, chains: int, horizon: int,
                 leaf_loop: float = 1.0, start: str = "greedy"):
  """`vgb_lifted(base, adapters[T], slots[Q], prompts[Q, K, P], lengths[Q,
  K], coords[Q, K, P, 3], segments[Q, K], usable[Q, K], tmaps[Q, K, vocab],
  keys[Q]) -> (answers int32[Q, C, max_new], ok bool[Q, C], calls int32[Q,
  C])`, jitted once; C = `chains`."""
  return common.with_slot(make_query_fn(graphdef, max_new, chains, horizon,
                                        leaf_loop, start))


METHOD = common.Method(
    per_view=lambda cfg: cfg.samples, views_of=vgb.prefix_views,
    validate=lambda cfg: vgb.validate_walk(cfg, 1.0),
    describe=lambda cfg: f"vgb_lifted ({cfg.samples} chains)",
    make=vgb.make_walk_decoder(make_program),
    needs_grammar=True)  # the walk's tree is the cell grammar's
