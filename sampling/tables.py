"""The node table: every node of a small tree with its masses (float64).

The one base the exact tools share -- the samplers' exact laws
(`sampling.exact`), TTT_ELIM's elimination (`sampling.bounded`) and the
sweeps (`sampling.experiments`) -- so that none of them imports another
for it:

* `node_table(inst)` enumerates every node in level order (node =
  offset(d) + base-S value of the prefix) and evaluates log M and log μ̂
  with the SAME JAX oracle the samplers use (`sampling.oracles.children`);
* `target_law(table)`: μ* as float64[S^n]; `tv(p, q)`: total variation.

It imports `trees` and `oracles` only and knows no sampler. Trees with
more than `MAX_EXACT_NODES` nodes are refused (Monte-Carlo tools for them:
`sampling.montecarlo`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sampling import oracles, trees

MAX_EXACT_NODES = 1 << 16


class NodeTable(NamedTuple):
  """Every node of a small tree, level order (float64 numpy).

  Attributes:
    depth: int[N]; parent: int[N] (−1 at the root); symbol: int[N] the last
      symbol (−1 at the root); logm: log M(v); logmu: log μ̂(v) (exact at
      leaves); logref: log π_ref(last symbol | parent); first_leaf: index of
      the first leaf; S, n.
  """

  depth: np.ndarray
  parent: np.ndarray
  symbol: np.ndarray
  logm: np.ndarray
  logmu: np.ndarray
  logref: np.ndarray
  first_leaf: int
  S: int
  n: int


def node_table(inst: trees.Instance) -> NodeTable:
  """Evaluates the oracle at every node (level by level, vmapped).

  Args:
    inst: a tree of at most `MAX_EXACT_NODES` nodes, N = (S^{n+1} − 1) /
      (S − 1).

  Returns:
    The `NodeTable`, every field [N] in level order (root first).

  Raises:
    ValueError: the tree has more than `MAX_EXACT_NODES` nodes.
  """
  S, n = inst.S, inst.n
  total = trees.num_nodes(S, n)
  if total > MAX_EXACT_NODES:
    raise ValueError(f"exact tools enumerate the tree: {total} nodes is "
                     f"more than {MAX_EXACT_NODES}")
  pre0 = trees.root(inst)

  def expand(pre, d):
    logm, logmu, ref = oracles.children(inst, pre, d)
    kids = jax.vmap(lambda a: trees.push(inst, pre, d, a, logm, logmu, ref)
                    )(jnp.arange(S))
    return kids, logm, logmu, ref

  level = jax.tree.map(lambda x: x[None], pre0)
  depth, parent, symbol = [0], [-1], [-1]
  logm, logmu, logref = [trees.log_z(inst)], [float(pre0.logmu[0])], [0.0]
  for d in range(n):
    kids, lm, lmu, ref = jax.jit(jax.vmap(lambda p, d=d: expand(p, d)))(level)
    count = S ** d
    off = trees.level_offset(S, d)
    depth += [d + 1] * (count * S)
    parent += list(np.repeat(np.arange(off, off + count), S))
    symbol += list(np.tile(np.arange(S), count))
    logm += list(np.asarray(lm, np.float64).ravel())
    logmu += list(np.asarray(lmu, np.float64).ravel())
    logref += list(np.asarray(ref, np.float64).ravel())
    level = jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), kids)
  return NodeTable(np.array(depth), np.array(parent), np.array(symbol),
                   np.array(logm), np.array(logmu), np.array(logref),
                   trees.level_offset(S, n), S, n)


def target_law(table: NodeTable) -> np.ndarray:
  """μ* as float64[S^n] (leaves by base-S index)."""
  lw = table.logm[table.first_leaf:]
  p = np.exp(lw - np.max(lw))
  return p / p.sum()


def tv(p, q) -> float:
  """The total variation ½ Σ |p − q| of two laws float[K]."""
  return 0.5 * float(np.abs(np.asarray(p) - np.asarray(q)).sum())
