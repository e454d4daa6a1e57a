"""Instances: a tree Σ^{≤n}, a target μ* on its leaves and an oracle μ̂.

An `Instance` (frozen, hashable by identity) holds the alphabet size S, the
depth n, a target family and an oracle (error pattern or table), all in log
space. Targets (`../shared/docs/METHOD_SAMPLING.md` §3.2):

* 'uniform'  U: w ≡ 1, log M(v) = (n − |v|) log S.
* 'product'  P(p): w(x) = Π p(x_i), M(v) = Π_{i ≤ |v|} p(v_i).
* 'ar'       AR(β): conditionals c(v, ·) = softmax(β g(hash(v), ·)), g
             Gumbel noise from a counter-based hash of the prefix; M(v) =
             Π c (exact prefix marginals of an autoregressive model).
* 'dfa'      DFA tilt: π_ref = U or P(p), τ = 1[automaton accepts];
             M(v) = π_ref(v) · V[|v|, state(v)] with V from a backward DP.
             Automata: 'dyck' (ballot: height ≥ 0 always, = 0 at the end;
             S = 2, symbol 0 opens), 'parity' (even number of symbol 1),
             'at_least' (at least m symbols 1), 'avoid' (never symbol a).
* 'table'    explicit log leaf weights, float[S^n] (small trees; leaves
             indexed by the base-S integer of the sequence, first symbol
             most significant).

Oracles: μ̂(v) = M(v) · α^{s(v)} at internal non-root nodes, exact at the
root and at leaves (E0), with error pattern s (§3.2): 'exact', 'depth',
'slow', 'sibling', 'combo', 'random', 'randsign', 'adv_td' -- or an explicit
table of log μ̂ for internal nodes in level order (root first).

Walks carry a `Prefix` state (arrays over depth 0..n: tokens, rolling hash,
log π_ref, log M, log μ̂, DFA state, base-S value) updated in O(1) per push;
a pop only decrements the depth.

The oracle itself -- log M, log μ̂ and log π_ref of a node's children from
its prefix state -- is `sampling.oracles.children`.

`load_instance(path_or_dict)` reads the JSON form (see `instance_from_json`);
bad instances raise `InstanceError` naming the problem (a parameter or a
derived log mass beyond float32's range included: the samplers compute in
float32).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

TARGETS = ("uniform", "product", "ar", "dfa", "table")
PATTERNS = ("exact", "depth", "slow", "sibling", "combo", "random",
            "randsign", "adv_td")
AUTOMATA = ("dyck", "parity", "at_least", "avoid")
MAX_DEPTH = 64
MAX_TABLE_LEAVES = 1 << 22
MAX_SEED = (1 << 32) - 1  # seeds are hashed as uint32
# The parameters each target takes (`make_instance(**params)`, the JSON
# target object besides "kind").
TARGET_PARAMS = {"uniform": (), "product": ("p",),
                 "ar": ("beta", "target_seed"),
                 "dfa": ("automaton", "m", "avoid", "p"),
                 "table": ("log_weights",)}
INSTANCE_KEYS = ("alphabet_size", "depth", "target", "oracle")
PATTERN_ORACLE_KEYS = ("pattern", "alpha", "seed")
TABLE_ORACLE_KEYS = ("kind", "log_mu_hat", "alpha")


# |log μ̂| above this is not a log mass (float32 walks overflow on it).
MAX_LOG_MASS = 1e6
# The samplers compute in float32: every parameter, and every log mass they
# derive from it, must be finite there.
F32_MAX = float(np.finfo(np.float32).max)


class InstanceError(ValueError):
  """An instance that cannot be used, with what is wrong (an input error:
  the launches print it as one line)."""


# --- strict field checks (bool is not an int, 1.7 is not a seed) ------------


def _what(v) -> str:
  """The JSON name of a value's type, for messages."""
  if v is None:
    return "null"
  for t, name in ((bool, "a boolean"), (str, "a string"),
                  ((int, np.integer), "an integer"),
                  ((float, np.floating), "a number"),
                  ((list, tuple), "a list"), (dict, "an object")):
    if isinstance(v, t):
      return name
  return type(v).__name__


def _is_int(v) -> bool:
  return isinstance(v, (int, np.integer)) and not isinstance(v, (bool,
                                                                 np.bool_))


def _is_real(v) -> bool:
  return _is_int(v) or isinstance(v, (float, np.floating))


def _integer(name: str, v, low: int, high: int | None = None) -> int:
  """`v` as an int, refused unless it is an integer in low..high."""
  span = f" >= {low}" if high is None else f" in {low}..{high}"
  if not _is_int(v):
    raise InstanceError(f"{name} must be an integer{span}, got {v!r} "
                        f"({_what(v)})")
  if v < low or (high is not None and v > high):
    raise InstanceError(f"{name} must be an integer{span}, got {v!r}")
  return int(v)


def _real(name: str, v, low: float | None = None) -> float:
  """`v` as a float, refused unless it is a finite number >= low."""
  span = "" if low is None else f" >= {low:g}"
  if not _is_real(v):
    raise InstanceError(f"{name} must be a finite number{span}, got {v!r} "
                        f"({_what(v)})")
  if not math.isfinite(v) or (low is not None and v < low):
    raise InstanceError(f"{name} must be a finite number{span}, got {v!r}")
  return float(v)


def _num(v: float) -> str:
  """A number as messages write it: 1e308, -2.5, 3.4e38."""
  return f"{v:.3g}".replace("e+", "e")


def _beyond_f32(what: str) -> str:
  return (f"{what} is beyond float32's range (±{_num(F32_MAX)}), the "
          "precision the samplers compute in")


def _within_f32(name: str, v: float) -> float:
  """`v`, refused when float32 cannot hold it (|v| > its largest
  finite value)."""
  if abs(v) > F32_MAX:
    raise InstanceError(_beyond_f32(f"{name} {_num(v)}"))
  return v


def _name(what: str, v, known) -> str:
  """`v`, refused unless it is one of the strings `known`."""
  if not isinstance(v, str):
    raise InstanceError(f"{what} must be a string, one of {tuple(known)}, "
                        f"got {v!r} ({_what(v)})")
  if v not in known:
    raise InstanceError(f"unknown {what} {v!r}{_did_you_mean(v, known)}; "
                        f"known: {tuple(known)}")
  return v


def _did_you_mean(key, known) -> str:
  close = difflib.get_close_matches(str(key), [str(k) for k in known], n=1)
  return f" (did you mean {close[0]!r}?)" if close else ""


def _no_unknown(what: str, keys, known) -> None:
  """Refuses the first key not in `known`, with a did-you-mean."""
  unknown = sorted((k for k in keys if k not in known), key=str)
  if unknown:
    k = unknown[0]
    raise InstanceError(
        f"unknown {what} {k!r}{_did_you_mean(k, known)}; known: "
        f"{', '.join(map(str, known)) or 'none'}")


# --- hashing -----------------------------------------------------------------

_GOLDEN = np.uint32(0x9E3779B1)


def mix32(x):
  """A 32-bit integer finaliser (xor-shift-multiply); works on jnp/np."""
  xp = jnp if isinstance(x, jax.Array) else np
  x = xp.asarray(x, xp.uint32)
  x = x ^ (x >> 16)
  x = x * xp.uint32(0x7FEB352D)
  x = x ^ (x >> 15)
  x = x * xp.uint32(0x846CA68B)
  return x ^ (x >> 16)


def child_hash(h, a):
  """Rolling prefix hash: hash(v·a) from hash(v)."""
  xp = jnp if isinstance(h, jax.Array) else np
  return mix32(xp.asarray(h, xp.uint32) * _GOLDEN
               + xp.asarray(a, xp.uint32) + xp.uint32(1))


# The largest float32 below 1: (2^24 − 1 + ½) / 2^24 rounds to 1.0 in
# float32, where the Gumbel noise −log(−log u) would be +inf.
_BELOW_ONE = float(np.nextafter(np.float32(1), np.float32(0)))
# The range of the 'ar' target's Gumbel noise g = −log(−log u), u from
# `hash_uniform` in [2^-25, 1 − 2^-24] (a float32 rounding's margin added).
GUMBEL_LOW = -math.log(-math.log(2.0 ** -25)) - 1e-3
GUMBEL_HIGH = -math.log(-math.log(_BELOW_ONE)) + 1e-3


def hash_uniform(h):
  """A float32 in (0, 1) from a hash (never 0 or 1)."""
  xp = jnp if isinstance(h, jax.Array) else np
  u = ((h >> 8).astype(xp.float32) + xp.float32(0.5)) * xp.float32(
      1.0 / (1 << 24))
  return xp.minimum(u, xp.float32(_BELOW_ONE))


# --- the instance ------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class Instance:
  """A sampling problem (see module docstring). Build with `make_instance`.

  Attributes:
    S, n: alphabet size and depth.
    target: the target family name; params: its parameters (JSON-able).
    pattern: the oracle's error pattern ('table' for an explicit oracle).
    alpha: the multiplicative error parameter α ≥ 1; seed: the oracle's.
    arrays: numpy constants the oracle needs (tables, DP values).
  """

  S: int
  n: int
  target: str
  params: dict
  pattern: str
  alpha: float
  seed: int
  arrays: dict

  @property
  def log_alpha(self) -> float:
    return math.log(self.alpha)

  @property
  def num_nodes(self) -> int:
    return num_nodes(self.S, self.n)

  def to_json(self) -> dict:
    """The JSON form (`instance_from_json` reads it back)."""
    target = dict(kind=self.target, **self.params)
    if self.target == "table":
      target["log_weights"] = _floats(self.arrays["leaf_logw"])
    if self.pattern == "table":
      oracle = dict(kind="table", log_mu_hat=_floats(
          self.arrays["oracle_internal"]))
    else:
      oracle = dict(pattern=self.pattern, alpha=self.alpha, seed=self.seed)
    return dict(alphabet_size=self.S, depth=self.n, target=target,
                oracle=oracle)


def _floats(a) -> list:
  return [None if not np.isfinite(x) else float(x) for x in np.asarray(a)]


def num_nodes(S: int, n: int) -> int:
  """(S^{n+1} − 1) / (S − 1): nodes of the full tree, root included."""
  return (S ** (n + 1) - 1) // (S - 1)


def level_offset(S: int, d: int) -> int:
  """Index of the first depth-d node in level order."""
  return (S ** d - 1) // (S - 1)


def _dfa(name: str, S: int, m: int, avoid: int):
  """(transition int32[Q, S], accepting bool[Q], start state)."""
  if name == "dyck":
    if S != 2:
      raise InstanceError("the 'dyck' automaton needs alphabet_size 2")
    # states: heights 0..D plus a dead state D+1
    depth_cap = 65
    q = depth_cap + 2
    dead = q - 1
    trans = np.full((q, 2), dead, np.int32)
    for h in range(depth_cap + 1):
      trans[h, 0] = min(h + 1, dead)
      trans[h, 1] = h - 1 if h > 0 else dead
    acc = np.zeros(q, bool)
    acc[0] = True
    return trans, acc, 0
  if name == "parity":
    trans = np.zeros((2, S), np.int32)
    for s in range(2):
      for a in range(S):
        trans[s, a] = s ^ int(a == 1)
    return trans, np.array([True, False]), 0
  if name == "at_least":
    q = m + 1
    trans = np.zeros((q, S), np.int32)
    for s in range(q):
      for a in range(S):
        trans[s, a] = min(s + int(a == 1), m)
    acc = np.zeros(q, bool)
    acc[m] = True
    return trans, acc, 0
  if name == "avoid":
    trans = np.zeros((2, S), np.int32)
    trans[0] = 0
    trans[0, avoid] = 1
    trans[1] = 1
    return trans, np.array([True, False]), 0
  hint = _did_you_mean(name, AUTOMATA)
  raise InstanceError(f"unknown automaton {name!r}{hint}; known: {AUTOMATA}")


def _log_p(S: int, p) -> np.ndarray:
  """Log symbol probabilities from `p` (a float for symbol 1 when S = 2,
  else a list of S numbers summing to 1)."""
  if p is None:
    probs = np.full(S, 1.0 / S)
  elif _is_real(p):
    if S != 2:
      raise InstanceError("a scalar p needs alphabet_size 2 (else give S "
                          "probabilities)")
    probs = np.array([1.0 - float(p), float(p)])
  elif isinstance(p, (list, tuple, np.ndarray)) and all(
      _is_real(x) for x in np.asarray(p, object).ravel()):
    probs = np.asarray(p, np.float64)
  else:
    raise InstanceError(f"target p must be a number (alphabet_size 2) or a "
                        f"list of {S} numbers, got {p!r} ({_what(p)})")
  if probs.shape != (S,) or not np.isfinite(probs).all() or (
      probs <= 0).any() or abs(probs.sum() - 1) > 1e-6:
    raise InstanceError(f"p must give {S} positive probabilities summing "
                        f"to 1, got {p!r}")
  return np.log(probs)


def make_instance(S: int = 2, n: int = 8, target: str = "uniform",
                  pattern: str = "exact", alpha: float = 1.0, seed: int = 0,
                  **params) -> Instance:
  """Builds and validates an instance.

  Args:
    S, n: alphabet size (≥ 2) and depth (1..64).
    target: one of TARGETS; params: `p` (product, dfa base), `beta` and
      `target_seed` (ar), `automaton`, `m`, `avoid` (dfa), `log_weights`
      (table, float[S^n]).
    pattern: one of PATTERNS, or 'table' with `log_mu_hat` (float[(S^n −
      1)/(S − 1)], internal nodes in level order, root first).
    alpha: α ≥ 1; seed: seeds the 'random'/'randsign' patterns.

  Raises:
    InstanceError: naming what is wrong -- among it a parameter float32
      cannot hold (alpha, beta, a log weight beyond ±3.4e38) or one whose
      derived log masses it cannot (`_check_log_masses`): the samplers
      compute in float32.
  """
  S = _integer("alphabet_size", S, 2)
  n = _integer("depth", n, 1, MAX_DEPTH)
  target = _name("target", target, TARGETS)
  alpha = _within_f32("oracle alpha", _real("oracle alpha", alpha, 1.0))
  seed = _integer("oracle seed", seed, 0, MAX_SEED)
  log_mu_hat = params.pop("log_mu_hat", None)
  _no_unknown(f"target {target!r} parameter", params,
              TARGET_PARAMS[target])
  arrays: dict[str, Any] = {}
  kept: dict[str, Any] = {}
  if target == "product":
    arrays["log_p"] = _log_p(S, params.get("p", 0.3 if S == 2 else None))
    kept["p"] = params.pop("p", 0.3 if S == 2 else None)
  elif target == "ar":
    kept["beta"] = _within_f32("target beta", _real(
        "target beta", params.pop("beta", 1.0)))
    kept["target_seed"] = _integer("target target_seed",
                                   params.pop("target_seed", 0), 0, MAX_SEED)
  elif target == "dfa":
    name = _name("automaton", params.pop("automaton", "dyck"), AUTOMATA)
    m = _integer("target m", params.pop("m", max(1, n // 2)), 0)
    avoid = _integer("target avoid", params.pop("avoid", S - 1), 0)
    if not 0 <= avoid < S:
      raise InstanceError(f"avoid must be a symbol in 0..{S - 1}")
    p = params.pop("p", None)
    kept.update(automaton=name, m=m, avoid=avoid, p=p)
    trans, acc, start = _dfa(name, S, m, avoid)
    log_p = _log_p(S, p)
    logv = np.full((n + 1, trans.shape[0]), -np.inf)
    logv[n] = np.where(acc, 0.0, -np.inf)
    for k in range(n - 1, -1, -1):
      terms = log_p[None, :] + logv[k + 1][trans]
      logv[k] = _logsumexp(terms, axis=1)
    if not np.isfinite(logv[0, start]):
      raise InstanceError(f"the '{name}' automaton accepts no sequence of "
                          f"length {n}: the target has no mass")
    arrays.update(trans=trans, logv=logv, log_p=log_p,
                  start=np.int32(start))
  elif target == "table":
    lw = _parse_floats(params.pop("log_weights", None),
                       "target log_weights")
    if lw.ndim != 1 or lw.shape[0] != S ** n:
      raise InstanceError(f"target log_weights must have S^n = {S ** n} "
                          f"entries, got {lw.shape}")
    if S ** n > MAX_TABLE_LEAVES:
      raise InstanceError("table targets are for small trees (S^n <= "
                          f"{MAX_TABLE_LEAVES})")
    if np.isnan(lw).any() or (lw == np.inf).any():
      raise InstanceError("target log_weights contain NaN or +inf")
    if not np.isfinite(lw).any():
      raise InstanceError("target log_weights are all -inf: no mass")
    big = np.isfinite(lw) & (np.abs(lw) > F32_MAX)
    if big.any():
      k = int(np.flatnonzero(big)[0])
      raise InstanceError(_beyond_f32(
          f"target log-weight {_num(lw[k])} at leaf {k} (log_weights[{k}])"
          ) + " (null for a zero weight)")
    arrays["leaf_logw"] = lw
    arrays["node_logm"] = _subtree_logm(lw, S, n)
  if pattern == "table" or log_mu_hat is not None:
    pattern = "table"
    if S ** n > MAX_TABLE_LEAVES:
      raise InstanceError("table oracles are for small trees")
    lm = _parse_floats(log_mu_hat, "oracle log_mu_hat")
    internal = num_nodes(S, n) - S ** n
    if lm.ndim != 1 or lm.shape[0] != internal:
      raise InstanceError(f"oracle log_mu_hat must have (S^n - 1)/(S - 1) "
                          f"= {internal} entries, got {lm.shape}")
    if np.isnan(lm).any() or (lm == np.inf).any():
      raise InstanceError("oracle log_mu_hat contains NaN or +inf")
    big = np.isfinite(lm) & (np.abs(lm) > MAX_LOG_MASS)
    if big.any():
      k = int(np.flatnonzero(big)[0])
      raise InstanceError(
          f"oracle log_mu_hat[{k}] = {lm[k]:g} is out of range: log masses "
          f"must lie within +-{MAX_LOG_MASS:g} (float32 walks; null for 0)")
    arrays["oracle_internal"] = lm
  else:
    _name("error pattern", pattern, PATTERNS + ("table",))
  _check_log_masses(S, n, target, kept, arrays, pattern, alpha)
  inst = Instance(S, n, target, kept, pattern, alpha, seed, arrays)
  if pattern == "table":
    _check_table_oracle(inst)
  return inst


def _check_log_masses(S: int, n: int, target: str, kept: dict,
                      arrays: dict, pattern: str, alpha: float) -> None:
  """Refuses parameters whose derived log masses float32 cannot hold.

  The walks keep log M(v), log μ̂(v) = log M(v) ± log α and log π_ref(v) in
  float32 and add and subtract them; a bound on their magnitude over every
  node with mass must stay within float32's range, else the samplers draw
  from infinities (or NaNs) and still flag every chain accepted.
  """
  log_s = math.log(S)
  if target == "ar":  # |log c(v, a)| <= |β| (g_max − g_min) + log S
    bound = n * (abs(kept["beta"]) * (GUMBEL_HIGH - GUMBEL_LOW) + log_s)
    source = (f"target beta {_num(kept['beta'])} at depth {n} (|log M| up "
              "to depth * (|beta| * the Gumbel noise's span + log S))")
  elif target == "table":
    logm = arrays["node_logm"]
    bound = float(np.abs(logm[np.isfinite(logm)]).max())
    source = "target log_weights (their subtree log masses)"
  else:  # uniform, product, dfa: n times a log probability, or n log S
    logp = arrays.get("log_p", np.array([-log_s]))
    bound = n * max(log_s, float(np.abs(logp).max()))
    source = f"target {target!r} at depth {n}"
  if pattern != "table":  # log μ̂ = log M ± log α
    bound += math.log(alpha)
  if not bound <= F32_MAX:
    raise InstanceError(_beyond_f32(
        f"{source} gives log masses of magnitude {_num(bound)}, which"))


def _logsumexp(x, axis):
  m = np.max(x, axis=axis, keepdims=True)
  m = np.where(np.isfinite(m), m, 0.0)
  with np.errstate(divide="ignore"):
    return np.squeeze(m, axis) + np.log(np.sum(np.exp(x - m), axis=axis))


def _subtree_logm(leaf_logw: np.ndarray, S: int, n: int) -> np.ndarray:
  """log M(v) for every node, level order."""
  levels = [leaf_logw]
  cur = leaf_logw
  for _ in range(n):
    cur = _logsumexp(cur.reshape(-1, S), axis=1)
    levels.append(cur)
  return np.concatenate(levels[::-1])


def _has_mass(inst: Instance) -> np.ndarray:
  """bool[(S^n − 1)/(S − 1)]: M(v) > 0 at each internal node, level order.

  Read off what the instance holds (no oracle call, any size): a table
  target's subtree masses; a DFA target's backward values V[|v|,
  state(v)], the automaton run level by level; the other targets have
  full support (p > 0, a softmax, uniform).
  """
  S, n = inst.S, inst.n
  internal = num_nodes(S, n) - S ** n
  if inst.target == "table":
    return np.isfinite(inst.arrays["node_logm"][:internal])
  if inst.target != "dfa":
    return np.ones(internal, bool)
  trans, logv = inst.arrays["trans"], inst.arrays["logv"]
  state = np.array([int(inst.arrays["start"])])
  levels = []
  for d in range(n):  # children in level order: parent * S + symbol
    levels.append(np.isfinite(logv[d, state]))
    state = trans[state].ravel()
  return np.concatenate(levels)


def _check_table_oracle(inst: Instance) -> None:
  """A reachable node with μ̂ = 0 while its subtree has mass is an error."""
  S, n = inst.S, inst.n
  mass = _has_mass(inst)
  lm = inst.arrays["oracle_internal"]
  reach = np.array([True])
  for d in range(n):
    off = level_offset(S, d)
    mu = lm[off:off + S ** d]
    bad = reach & ~np.isfinite(mu) & mass[off:off + S ** d]
    if bad.any():
      k = int(np.flatnonzero(bad)[0])
      raise InstanceError(
          f"oracle: node {_prefix(k, d, S)} (depth {d}) is reachable and "
          "has mu_hat = 0 while its subtree has mass")
    reach = np.repeat(reach & np.isfinite(mu), S)


def _prefix(value: int, d: int, S: int) -> str:
  digits = []
  for _ in range(d):
    digits.append(value % S)
    value //= S
  return "(" + ",".join(str(x) for x in digits[::-1]) + ")"


# --- JSON --------------------------------------------------------------------


def instance_from_json(obj: dict) -> Instance:
  """Builds an instance from its JSON form.

  `{"alphabet_size": S, "depth": n, "target": {"kind": ..., params},
  "oracle": {"kind": "table", "log_mu_hat": [...]} | {"pattern": name,
  "alpha": α, "seed": k}}`; `null` or "-inf" stand for -inf. The schema is
  strict: exact types (a boolean is not an integer, 1.7 is not a seed, "8"
  is not a depth) and no unknown key (a typo gets a did-you-mean).
  """
  if not isinstance(obj, dict):
    raise InstanceError(f"an instance must be a JSON object, got "
                        f"{_what(obj)}")
  _no_unknown("instance key", obj, INSTANCE_KEYS)
  for key in ("alphabet_size", "depth", "target"):
    if key not in obj:
      raise InstanceError(f"instance JSON lacks {key!r}")
  if not isinstance(obj["target"], dict):
    raise InstanceError("target must be a JSON object {\"kind\": ...}, got "
                        f"{_what(obj['target'])}")
  target = dict(obj["target"])
  if "kind" not in target:
    raise InstanceError(f"target lacks 'kind' (one of {TARGETS})")
  kind = _name("target", target.pop("kind"), TARGETS)
  _no_unknown(f"target {kind!r} key", target, TARGET_PARAMS[kind])
  oracle = obj.get("oracle", {"pattern": "exact"})
  if not isinstance(oracle, dict):
    raise InstanceError("oracle must be a JSON object, got "
                        f"{_what(oracle)}")
  kw: dict[str, Any] = {}
  if "kind" in oracle:
    if oracle["kind"] != "table":
      raise InstanceError(
          f"oracle kind must be 'table' (a table of log mu_hat), got "
          f"{oracle['kind']!r}; an error-pattern oracle gives 'pattern' "
          "and no 'kind'")
    _no_unknown("table-oracle key", oracle, TABLE_ORACLE_KEYS)
    if "log_mu_hat" not in oracle:
      raise InstanceError("a table oracle lacks 'log_mu_hat'")
    kw["log_mu_hat"] = oracle["log_mu_hat"]
    pattern, alpha, seed = "table", oracle.get("alpha", 1.0), 0
  else:
    _no_unknown("oracle key", oracle, PATTERN_ORACLE_KEYS)
    pattern = oracle.get("pattern", "exact")
    alpha = oracle.get("alpha", 1.0)
    seed = oracle.get("seed", 0)
  return make_instance(obj["alphabet_size"], obj["depth"], kind, pattern,
                       alpha, seed, **target, **kw)


def _parse_floats(values, what) -> np.ndarray:
  """float64[k] from a list of numbers (null or "-inf" for -inf) or a real
  numpy array."""
  if isinstance(values, np.ndarray) and values.dtype.kind in "iuf":
    return values.astype(np.float64)
  if not isinstance(values, (list, tuple, np.ndarray)):
    raise InstanceError(f"{what} must be a list of numbers, got "
                        f"{_what(values)}")
  out = np.empty(len(values))
  for i, v in enumerate(values):
    if v is None or v == "-inf":
      out[i] = -np.inf
    elif _is_real(v):
      out[i] = float(v)
    else:
      raise InstanceError(f"{what}[{i}] is not a number: {v!r}")
  return out


def load_instance(path_or_dict) -> Instance:
  """An instance from a JSON file path, a JSON string or a parsed dict."""
  if isinstance(path_or_dict, dict):
    return instance_from_json(path_or_dict)
  if isinstance(path_or_dict, str) and not os.path.exists(path_or_dict) \
      and path_or_dict.lstrip().startswith("{"):
    try:
      obj = json.loads(path_or_dict)
    except json.JSONDecodeError as e:
      raise InstanceError(f"the instance string is not JSON: {e}") from e
    return instance_from_json(obj)
  try:
    with open(path_or_dict, encoding="utf-8") as f:
      obj = json.load(f)
  except OSError as e:
    raise InstanceError(f"cannot read instance file {path_or_dict}: {e}"
                        ) from e
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise InstanceError(f"instance file {path_or_dict} is not JSON: {e}"
                        ) from e
  return instance_from_json(obj)


# --- the prefix state and the oracle (JAX) -----------------------------------


class Prefix(NamedTuple):
  """A node as a stack over depths 0..n (entries beyond the depth unused).

  Attributes:
    tokens: int32[n] symbols v_1..v_d.
    hash: uint32[n+1] rolling prefix hashes.
    logref: float32[n+1] log π_ref(v_{1:k}) (the proposal / reference).
    logm: float32[n+1] log M(v_{1:k}) (subtree mass).
    logmu: float32[n+1] log μ̂(v_{1:k}).
    state: int32[n+1] DFA state (0 for other targets).
    value: int32[n+1] base-S integer of the prefix (table lookups).
  """

  tokens: jax.Array
  hash: jax.Array
  logref: jax.Array
  logm: jax.Array
  logmu: jax.Array
  state: jax.Array
  value: jax.Array


def log_z(inst: Instance) -> float:
  """log Z = log M(∅)."""
  if inst.target == "uniform":
    return inst.n * math.log(inst.S)
  if inst.target in ("product", "ar"):
    return 0.0
  if inst.target == "dfa":
    return float(inst.arrays["logv"][0, int(inst.arrays["start"])])
  return float(inst.arrays["node_logm"][0])


def root(inst: Instance) -> Prefix:
  n = inst.n
  start = int(inst.arrays["start"]) if inst.target == "dfa" else 0
  z = jnp.float32(log_z(inst))
  mu0 = (jnp.float32(inst.arrays["oracle_internal"][0])
         if inst.pattern == "table" else z)
  return Prefix(
      tokens=jnp.zeros(n, jnp.int32),
      hash=jnp.zeros(n + 1, jnp.uint32).at[0].set(
          mix32(jnp.uint32(inst.params.get("target_seed", 0)))),
      logref=jnp.zeros(n + 1, jnp.float32),
      logm=jnp.zeros(n + 1, jnp.float32).at[0].set(z),
      logmu=jnp.zeros(n + 1, jnp.float32).at[0].set(mu0),
      state=jnp.full(n + 1, start, jnp.int32),
      value=jnp.zeros(n + 1, jnp.int32))


def push(inst: Instance, pre: Prefix, d, a, logm_c, logmu_c, ref_c
         ) -> Prefix:
  """The prefix of v·a from v (depth d) and v's `children(...)` values."""
  st = pre.state[d]
  if inst.target == "dfa":
    st = jnp.asarray(inst.arrays["trans"])[st, a]
  return Prefix(
      tokens=pre.tokens.at[d].set(a),
      hash=pre.hash.at[d + 1].set(child_hash(pre.hash[d], a)),
      logref=pre.logref.at[d + 1].set(pre.logref[d] + ref_c[a]),
      logm=pre.logm.at[d + 1].set(logm_c[a]),
      logmu=pre.logmu.at[d + 1].set(logmu_c[a]),
      state=pre.state.at[d + 1].set(st),
      value=pre.value.at[d + 1].set(pre.value[d] * inst.S + a))
