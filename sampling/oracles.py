"""The oracle μ̂: log masses and error patterns of a node's children.

`children(inst, prefix, d)` is the batched oracle call: for the depth-d node
v (a `trees.Prefix`) it returns, for its S children v·a, the exact log
subtree mass log M(v·a), the oracle's log μ̂(v·a) and the proposal
log π_ref(a | v) -- S queries in one pure JAX function. A single node's
log μ̂ is kept on the prefix stack when the walk pushes it (`trees.push`),
so a walk never recomputes it.

μ̂(v) = M(v) · α^{s(v)} at internal non-root nodes with s from the error
pattern (`error_signs`, METHOD_SAMPLING §3.2); leaves are exact (E0); a
'table' oracle looks values up by level-order index.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from sampling.trees import (
  Instance,
  Prefix,
  child_hash,
  hash_uniform,
  level_offset,
  mix32,
)


def _gumbel(h):
  u = hash_uniform(h)
  return -jnp.log(-jnp.log(u))


def children_ref(inst: Instance, pre: Prefix, d):
  """log π_ref(a | v) float32[S] for the depth-d node v."""
  S = inst.S
  if inst.target in ("product", "dfa"):
    return jnp.asarray(inst.arrays["log_p"], jnp.float32)
  if inst.target == "ar":
    hs = child_hash(pre.hash[d], jnp.arange(S))
    g = _gumbel(hs)
    # log_softmax(β g), shifted by the top logit before the product: its
    # entry is then exactly 0. (jax.nn.log_softmax subtracts max(β g), which
    # XLA may round apart from β g itself -- by far more than exp's float32
    # range once |β g| is large, e.g. 168 at β g = 1.6e10: inf, NaN.)
    beta = inst.params["beta"]
    top = jnp.max(g) if beta >= 0 else jnp.min(g)
    shifted = beta * (g - top)
    return shifted - jnp.log(jnp.sum(jnp.exp(shifted)))
  return jnp.full(S, -math.log(S), jnp.float32)


def children(inst: Instance, pre: Prefix, d):
  """(log M, log μ̂, log π_ref(a|v)) of the S children of the depth-d node.

  d must be < n. One call = S oracle queries. Leaves (depth n) are exact.
  """
  S, n = inst.S, inst.n
  a = jnp.arange(S)
  ref = children_ref(inst, pre, d)
  child_d = d + 1
  if inst.target == "uniform":
    logm = jnp.full(S, (n - child_d) * math.log(S), jnp.float32)
  elif inst.target in ("product", "ar"):
    logm = pre.logm[d] + ref
  elif inst.target == "dfa":
    nxt = jnp.asarray(inst.arrays["trans"])[pre.state[d]]
    logv = jnp.asarray(inst.arrays["logv"], jnp.float32)
    logm = pre.logref[d] + ref + logv[child_d, nxt]
  else:
    offs = jnp.asarray([level_offset(S, k) for k in range(n + 1)],
                       jnp.int32)
    logm = jnp.asarray(inst.arrays["node_logm"], jnp.float32)[
        offs[child_d] + pre.value[d] * S + a]
  if inst.pattern == "table":
    offs = jnp.asarray([level_offset(S, k) for k in range(n + 1)], jnp.int32)
    table = jnp.asarray(inst.arrays["oracle_internal"], jnp.float32)
    idx = jnp.minimum(offs[child_d] + pre.value[d] * S + a,
                      table.shape[0] - 1)
    logmu = jnp.where(child_d < n, table[idx], logm)
    return logm, logmu, ref
  s = error_signs(inst, pre, d, logm)
  internal = child_d < n
  logmu = logm + jnp.where(internal, s, 0.0) * inst.log_alpha
  return logm, logmu, ref


def error_signs(inst: Instance, pre: Prefix, d, child_logm):
  """s(v·a) ∈ [−1, 1] for the children of the depth-d node (§3.2)."""
  S, n = inst.S, inst.n
  a = jnp.arange(S)
  k = d + 1  # the children's depth
  parity = jnp.where(k % 2 == 0, 1.0, -1.0)
  sib = jnp.where(a == S - 1, 1.0, -1.0)
  p = inst.pattern
  if p == "exact":
    return jnp.zeros(S)
  if p == "depth":
    return jnp.full(S, parity)
  if p == "slow":
    return jnp.full(S, jnp.sin(2 * math.pi * k / n))
  if p == "sibling":
    return sib
  if p == "combo":
    return sib * parity
  hs = child_hash(pre.hash[d], a) ^ mix32(jnp.uint32(inst.seed) + 0x5bd1e995)
  u = hash_uniform(mix32(hs))
  if p == "random":
    return 2.0 * u - 1.0
  if p == "randsign":
    return jnp.where(u < 0.5, -1.0, 1.0)
  # adv_td: inflate children lighter than the mean sibling mass
  mean = jax.nn.logsumexp(child_logm) - math.log(S)
  return jnp.where(child_logm < mean, 1.0, -1.0)
