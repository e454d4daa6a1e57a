"""Tests for sampling/: exact tools, samplers, instances (float64 on CPU)."""

import ast
import json
import math
import pathlib

import jax
import numpy as np
import pytest

import sampling
from sampling import bounded, exact, trees

KEY = jax.random.key(0)


def _table(S=2, n=3, target="product", pattern="combo", alpha=2.0, **kw):
  if target == "product" and "p" not in kw and S == 2:
    kw["p"] = 0.3
  return exact.node_table(trees.make_instance(S, n, target, pattern, alpha,
                                              **kw))


# --- §6.7 deterministic regression targets ---------------------------------

REGRESSION = {
    "D1": (dict(n=8, target="uniform", pattern="sibling", alpha=2.0),
           0.625406,
           [(0.0022, 0.3421), (0.0332, 0.1617), (0.0507, 0.0246),
            (0.0513, 0.0002)],
           [(0.0040, 0.3538), (0.1789, 0.2381), (0.5532, 0.1172),
            (0.6386, 0.0204)],
           [(0.1046, 0.3953), (0.4155, 0.2314), (0.5534, 0.0610),
            (0.5688, 0.0032)]),
    "D2": (dict(n=8, target="uniform", pattern="combo", alpha=1.5),
           0.402995,
           [(0.0037, 0.1978), (0.0448, 0.0820), (0.0581, 0.0090),
            (0.0583, 0.0000)],
           [(0.0066, 0.2046), (0.2321, 0.1313), (0.5693, 0.0554),
            (0.6070, 0.0061)],
           [(0.2697, 0.2220), (0.5281, 0.1089), (0.5523, 0.0123),
            (0.5535, 0.0001)]),
    "D3": (dict(n=10, target="product", pattern="combo", alpha=2.0, p=0.3),
           0.623210,
           [(0.0001, 0.3901), (0.0145, 0.2064), (0.0379, 0.0463),
            (0.0398, 0.0015)],
           [(0.0002, 0.3943), (0.0717, 0.2602), (0.4400, 0.1376),
            (0.6231, 0.0338)],
           [(0.0261, 0.4494), (0.2719, 0.2717), (0.5120, 0.0899),
            (0.5499, 0.0084)]),
}


@pytest.mark.parametrize("name", sorted(REGRESSION))
def test_regression_numbers_of_the_spec(name):
  kw, td_tv, sj0, sjl, lifted = REGRESSION[name]
  inst = trees.make_instance(2, **kw)
  t = exact.node_table(inst)
  mu = exact.target_law(t)
  assert exact.tv(exact.topdown_law(t), mu) == pytest.approx(td_tv,
                                                             abs=1e-6)
  lam = 2 * inst.alpha * inst.n
  for chain, want, window in ((exact.sj_chain(t, 0.0), sj0, False),
                              (exact.sj_chain(t, lam), sjl, False),
                              (exact.lifted_chain(t, lam), lifted, True)):
    for steps, (p_leaf, tv) in zip((16, 64, 256, 1024), want, strict=True):
      w = exact.walk_law(t, chain, steps, window)
      assert w.p_leaf == pytest.approx(p_leaf, abs=6e-5)
      assert w.tv == pytest.approx(tv, abs=6e-5)


def test_d4_depth_pattern_is_exact_at_every_horizon():
  t = exact.node_table(trees.make_instance(2, 10, "product", "depth", 2.0,
                                           p=0.3))
  want = [0.0001, 0.0174, 0.0427, 0.0435]
  for chain, window in ((exact.sj_chain(t, 0.0), False),
                        (exact.sj_chain(t, 40.0), False),
                        (exact.lifted_chain(t, 40.0), True)):
    for steps in (16, 64, 256):
      # zero up to the float32 rounding of the oracle's log values
      assert exact.walk_law(t, chain, steps, window).tv < 1e-6
  for steps, p in zip((16, 64, 256, 1024), want, strict=True):
    assert exact.walk_law(t, exact.sj_chain(t, 0.0), steps).p_leaf == \
        pytest.approx(p, abs=6e-5)


def test_topdown_tv_on_uniform_sibling_matches_the_binomial_table():
  for alpha, tv4 in ((1.1, 0.071), (1.5, 0.274), (2.0, 0.396)):
    t = exact.node_table(trees.make_instance(2, 4, "uniform", "sibling",
                                             alpha))
    assert exact.tv(exact.topdown_law(t), exact.target_law(t)) == \
        pytest.approx(tv4, abs=6e-4)


# --- stationary laws, balance, lifting ---------------------------------------


@pytest.mark.parametrize("pattern", ["exact", "sibling", "combo", "random",
                                     "adv_td"])
def test_stationary_laws_and_leaf_exactness(pattern):
  t = _table(n=4, pattern=pattern, alpha=1.7)
  mu = exact.target_law(t)
  for chain in (exact.sj_chain(t, 0.0), exact.sj_chain(t, 3.0),
                exact.lifted_chain(t, 3.0), exact.mh_chain(t, 0.0),
                exact.mh_chain(t, 2.0)):
    pi = exact.stationary(chain)
    np.testing.assert_allclose(exact.evolve(chain, pi), pi, atol=1e-12)
    nodes = len(t.logmu)
    leaf = pi[t.first_leaf:nodes] + (pi[nodes + t.first_leaf:]
                                     if len(pi) > nodes else 0)
    np.testing.assert_allclose(leaf / leaf.sum(), mu, atol=1e-10)


def test_detailed_balance_sj_and_mh_and_lifted_flows():
  t = _table(n=4, pattern="random", alpha=1.5)
  for chain in (exact.sj_chain(t, 2.0), exact.mh_chain(t, 1.0)):
    pi = exact.stationary(chain)
    up_src, up_dst, up_p = chain.moves["up"]
    dn_src, dn_dst, dn_p = chain.moves["down"]
    edges = list(zip(up_src, up_dst, strict=True))
    flow_up = dict(zip(edges, pi[up_src] * up_p, strict=True))
    for s, d, p in zip(dn_src, dn_dst, dn_p, strict=True):
      assert flow_up[(d, s)] == pytest.approx(pi[s] * p, abs=1e-14)
  # the lifted chain: down flow (v↓ -> c↓) = up flow (c↑ -> v↑) = μ̂(c)/ΣW
  # (ΣW over one copy), the flow of the SJ edge it lifts
  lam = 3.0
  lc = exact.lifted_chain(t, lam)
  pi = exact.stationary(lc)
  n_nodes = len(t.logmu)
  mu_hat = np.exp(t.logmu - t.logmu[0])
  total = lc.weights[:n_nodes].sum()
  dn_src, dn_dst, dn_p = lc.moves["down"]
  np.testing.assert_allclose(pi[dn_src] * dn_p, mu_hat[dn_dst] / total,
                             rtol=1e-12)
  up_src, up_dst, up_p = lc.moves["up"]
  np.testing.assert_allclose(pi[up_src] * up_p,
                             mu_hat[up_src - n_nodes] / total, rtol=1e-12)
  # non-reversible: (c↑ -> v↑) has no reverse move (v↑ -> c↑)
  ups = set(zip(up_src, up_dst, strict=True))
  assert not {(d, s) for s, d in ups} & ups


def test_vgb_is_the_sj_walk_with_mu_hat_equal_pi_ref_times_v_hat():
  inst = trees.make_instance(3, 3, "dfa", "random", 1.5, automaton="parity",
                             p=[0.5, 0.3, 0.2])
  t = exact.node_table(inst)
  # VGB built from (π_ref, V̂): child ∝ π_ref(a|y) V̂(y·a), parent ∝ V̂(y)
  log_ref_path = np.zeros(len(t.logmu))
  for v in range(1, len(t.logmu)):
    log_ref_path[v] = log_ref_path[t.parent[v]] + t.logref[v]
  log_vhat = t.logmu - log_ref_path
  sj = exact.sj_chain(t, 0.0)
  src, dst, p = sj.moves["down"]
  for v in range(t.first_leaf):
    kids = dst[src == v]
    child = np.exp(t.logref[kids] + log_vhat[kids])
    parent = np.exp(log_vhat[v]) if v else 0.0
    vgb = 0.5 * child / (child.sum() + parent)
    np.testing.assert_allclose(p[src == v], vgb, rtol=1e-12, atol=1e-16)


def test_omega_is_w_over_q_and_rejection_is_exact():
  inst = trees.make_instance(2, 5, "product", "combo", 2.0, p=0.3)
  t = exact.node_table(inst)
  q = exact.topdown_law(t)
  w = np.exp(t.logmu[t.first_leaf:])
  xs, st = sampling.sample(inst, "top_down", KEY, 64)
  idx = (xs * 2 ** np.arange(4, -1, -1)).sum(1)
  np.testing.assert_allclose(np.exp(st["log_omega"]), w[idx] / q[idx],
                             rtol=1e-4)
  law, p_acc = exact.rejection_law(t, 2.0)
  np.testing.assert_allclose(law, exact.target_law(t), atol=1e-12)
  b_root = np.exp(t.logmu[1:3]).sum()
  assert p_acc == pytest.approx(w.sum() / (b_root * 2.0 ** 7), rel=1e-10)
  assert p_acc >= 2.0 ** -(2 * 5 - 2)


# --- Lemma S ----------------------------------------------------------------


def test_lumped_chains_equal_the_tree_chains_and_the_spec_costs():
  n, alpha = 5, 1.5
  inst = trees.make_instance(2, n, "uniform", "depth", alpha)
  t = exact.node_table(inst)
  g = exact.depth_factors("depth", n, alpha)
  lam = 2 * alpha * n
  for walk, chain, window in (("js", exact.sj_chain(t, lam), False),
                              ("lifted", exact.lifted_chain(t, lam), True)):
    lump = exact.lumped_cost(g, walk, lam, max_steps=300)
    best = min(w.moves / w.p_leaf for w in (
        exact.walk_law(t, chain, s, window) for s in range(2, 301))
        if w.p_leaf > 0)
    assert lump["moves_per_sample"] == pytest.approx(best, rel=1e-6)
  # §6.5, SJ + loops: exact 26, 111, 457; depth α=1.5: 25, 112, 474
  for pattern, a, want in (("exact", 1.0, (26, 111, 457)),
                           ("depth", 1.5, (25, 112, 474))):
    got = [exact.lumped_cost(exact.depth_factors(pattern, m, a), "js",
                             2 * a * m)["moves_per_sample"]
           for m in (4, 8, 16)]
    np.testing.assert_allclose(got, want, rtol=0.02)


# --- samplers vs exact laws (Monte Carlo) ------------------------------------

# Every sampler of `sampling.METHODS` against its exact law, with the
# parameter variants worth checking (default: the defaults); the ones with
# no exact law of this kind are named with where they are tested instead.
VARIANTS = {"js": [dict(steps=48), dict(steps=48, leaf_loop=12.0)],
            "lifted": [dict(steps=48)],
            "vgb": [dict(steps=48, form="mh", leaf_loop=4.0),
                    dict(steps=48)]}
NO_EXACT_LAW = {"sir": "an importance-resampling estimate "
                       "(test_sir_is_consistent_and_counts_its_calls)",
                "ttt_elim": "a law of its family "
                            "(test_ttt_elim_identifies_the_target...)"}
MC = [(m, p) for m in sampling.METHODS if m not in NO_EXACT_LAW
      for p in VARIANTS.get(m, [{}])]


def test_every_sampler_is_checked_against_an_exact_law_or_said_why():
  assert set(NO_EXACT_LAW) <= set(sampling.METHODS)
  assert set(VARIANTS) <= set(sampling.METHODS)
  assert {m for m, _ in MC} | set(NO_EXACT_LAW) == set(sampling.METHODS)


@pytest.mark.parametrize("method,params", MC)
def test_sampler_matches_its_exact_output_law(method, params):
  inst = trees.make_instance(2, 4, "uniform", "combo", 2.0)
  xs, st = sampling.sample(inst, method, KEY, 30000, **params)
  law = sampling.exact_output_law(inst, method, **params)
  emp = sampling.empirical_law(xs, 2, st["accepted"])
  n_acc = int(st["accepted"].sum())
  # TV of an empirical law on 16 cells: about 0.8 * sqrt(16 / N) / 2 at most
  assert exact.tv(emp, law) < 2.5 * np.sqrt(16 / n_acc) / 2
  assert (st["oracle_calls"] >= 0).all() and (st["moves"] >= 0).all()


def test_sir_is_consistent_and_counts_its_calls():
  """SIR resamples top-down proposals by their importance weights: with
  many proposals its law nears the target's (the bias is O(1 / proposals)),
  which the top-down law it starts from is not."""
  inst = trees.make_instance(2, 4, "uniform", "combo", 2.0)
  target = exact.target_law(exact.node_table(inst))
  xs, st = sampling.sample(inst, "sir", KEY, 20000, proposals=128)
  emp = sampling.empirical_law(xs, 2, st["accepted"])
  top = sampling.exact_output_law(inst, "top_down")
  assert exact.tv(emp, target) < 0.03 < exact.tv(top, target)
  assert (st["oracle_calls"] > 0).all()


def test_ttt_elim_identifies_the_target_and_samples_for_free():
  inst = trees.make_instance(2, 6, "product", "sibling", 2.0, p=0.3)
  mu = exact.target_law(exact.node_table(inst))
  for kind, size in (("generic", 40), ("nested", 20), ("needle", 12)):
    fam = bounded.make_family(inst, kind, size, seed=3)
    e = bounded.eliminate(inst, fam, delta=0.0)
    assert e.queries <= size
    np.testing.assert_allclose(np.exp(fam.log_probs[e.index]), mu,
                               atol=1e-12)
    if kind == "generic":
      assert e.queries == 2
  xs, st = sampling.sample(inst, "ttt_elim", KEY, 20000, family=fam)
  assert (st["oracle_calls"] == 0).all()
  assert exact.tv(sampling.empirical_law(xs, 2), mu) < 0.04
  # the IMH add-on with a wrong model still targets μ*
  wrong = bounded.Family(np.log(np.full((1, 64), 1 / 64)))
  chain, _ = bounded.make_sampler(inst, wrong, imh_steps=60)
  xs, st = jax.jit(jax.vmap(chain))(jax.random.split(KEY, 20000))
  assert exact.tv(sampling.empirical_law(np.asarray(xs), 2), mu) < 0.04
  assert int(st["oracle_calls"][0]) == 60


@pytest.mark.parametrize("alpha", [1.0, 2.0])
def test_interval_tests_at_internal_nodes_stay_correct_and_help(alpha):
  inst = trees.make_instance(2, 5, "product", "sibling", alpha, p=0.3)
  mu = exact.target_law(exact.node_table(inst))
  for kind, size in (("generic", 40), ("nested", 20), ("needle", 32)):
    fam = bounded.make_family(inst, kind, size, seed=3)
    leaf = bounded.eliminate(inst, fam, delta=0.0)
    both = bounded.eliminate(inst, fam, delta=0.0, internal=True)
    for e in (leaf, both):
      np.testing.assert_allclose(np.exp(fam.log_probs[e.index]), mu,
                                 atol=1e-12)
    # greedy over a larger pool: never worse on these families
    assert both.queries <= leaf.queries
    if kind == "needle" and alpha == 1.0:
      # exact internal answers binary-search the needle: 2 instead of 31
      assert (leaf.queries, both.queries) == (31, 2)
    if kind == "needle" and alpha == 1.1:
      assert both.queries < leaf.queries
  law = sampling.exact_output_law(inst, "ttt_elim", family=fam, delta=0.0,
                                  internal=True)
  np.testing.assert_allclose(law, mu, atol=1e-12)
  xs, _ = sampling.sample(inst, "ttt_elim", KEY, 4000, family=fam, delta=0.0,
                          internal=True)
  assert exact.tv(sampling.empirical_law(xs, 2), mu) < 0.1


def test_vmapped_equals_one_chain_and_keys_are_deterministic():
  inst = trees.make_instance(2, 6, "ar", "random", 1.5, beta=1.0)
  chain = sampling.make_chain(inst, "lifted", steps=40)
  keys = jax.random.split(KEY, 5)
  xs, st = jax.vmap(chain)(keys)
  for i in range(5):
    x, s = jax.jit(chain)(keys[i])
    np.testing.assert_array_equal(x, xs[i])
    assert int(s["moves"]) == int(st["moves"][i])
  a, _ = sampling.sample(inst, "js", KEY, 100, steps=30)
  b, _ = sampling.sample(inst, "js", KEY, 100, steps=30)
  np.testing.assert_array_equal(a, b)


# --- the sampler registry ----------------------------------------------------

# The shortest runs worth making on a depth-3 tree, per method (default: the
# defaults); every form of VGB.
TINY = {"js": [dict(steps=12)], "lifted": [dict(steps=12)],
        "vgb": [dict(steps=12, form=f) for f in sampling.VGB_FORMS]}
REGISTRY = [(m, p) for m in sampling.METHODS for p in TINY.get(m, [{}])]


@pytest.mark.parametrize("method,params", REGISTRY)
def test_every_registered_sampler_builds_runs_and_has_its_law(method,
                                                              params):
  """Through the entry's own face: a chain runs; an exact law sums to 1 and
  is matched by the samples here unless `MC` above already matches it."""
  entry = sampling.METHODS[method]
  inst = trees.make_instance(2, 3, "uniform", "combo", 2.0)
  chain = entry.make_chain(inst, dict(sampling.DEFAULTS, **params))
  num = 4000
  xs, st = jax.jit(jax.vmap(chain))(jax.random.split(KEY, num))
  xs, st = np.asarray(xs), jax.tree.map(np.asarray, st)
  assert xs.shape == (num, 3) and xs.dtype == np.int32
  assert ((xs >= 0) & (xs < 2)).all()
  assert {"accepted", "oracle_calls", "moves"} <= set(st)
  assert st["accepted"].any()
  if entry.exact_law is None:
    assert method in NO_EXACT_LAW
    with pytest.raises(ValueError, match="has no exact law here"):
      sampling.exact_output_law(inst, method, **params)
    return
  law = sampling.exact_output_law(inst, method, **params)
  assert law.shape == (8,) and law.dtype == np.float64
  assert abs(law.sum() - 1) < 1e-9
  if method not in {m for m, _ in MC}:
    emp = sampling.empirical_law(xs, 2, st["accepted"])
    n_acc = int(st["accepted"].sum())
    assert exact.tv(emp, law) < 2.5 * np.sqrt(8 / n_acc) / 2


def test_a_new_sampler_is_one_registry_entry(monkeypatch):
  """Registered, it is checked, sampled and given its law by name with no
  other change (here: top-down under a second name)."""
  inst = trees.make_instance(2, 3, "product", "combo", 2.0, p=0.3)
  top = sampling.METHODS["top_down"]
  monkeypatch.setitem(sampling.METHODS, "top_down_again",
                      top._replace(params=("proposals",)))
  a, _ = sampling.sample(inst, "top_down", KEY, 64)
  b, _ = sampling.sample(inst, "top_down_again", KEY, 64, proposals=3)
  np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(
      sampling.exact_output_law(inst, "top_down_again"),
      sampling.exact_output_law(inst, "top_down"))
  with pytest.raises(TypeError, match=r"top_down_again takes no parameter "
                     r"\['steps'\]; it takes \['proposals'\]"):
    sampling.sample(inst, "top_down_again", KEY, 4, steps=3)


def _import_graph(package: pathlib.Path) -> dict:
  """{module: the modules of `sampling` it imports}, read with `ast` from
  every `*.py` in `package` -- imports inside functions included."""
  def target(name: str) -> str:
    """`sampling.x` for a module x of the package, else `sampling`."""
    leaf = name.split(".")[1] if "." in name else ""
    return f"sampling.{leaf}" if (package / f"{leaf}.py").exists() \
        else "sampling"

  graph = {}
  for path in sorted(package.glob("*.py")):
    name = ("sampling" if path.stem == "__init__"
            else f"sampling.{path.stem}")
    deps = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
      if isinstance(node, ast.Import):
        deps |= {target(a.name) for a in node.names
                 if a.name.split(".")[0] == "sampling"}
      elif isinstance(node, ast.ImportFrom):
        base = ("sampling" + (f".{node.module}" if node.module else "")
                if node.level else node.module or "")
        if base == "sampling":  # from sampling import x (a module or not)
          deps |= {target(f"sampling.{a.name}") for a in node.names}
        elif base.split(".")[0] == "sampling":
          deps.add(target(base))
    graph[name] = deps - {name}
  return graph


def _cycle(graph: dict) -> list | None:
  """One import cycle [a, b, ..., a] of `graph`, or None."""
  state = {}  # module -> 1 on the current path, 2 done

  def visit(m, path):
    state[m] = 1
    for d in sorted(graph.get(m, ())):
      if state.get(d) == 1:
        return path[path.index(d):] + [d]
      if d not in state and (found := visit(d, path + [d])):
        return found
    state[m] = 2
    return None

  for m in sorted(graph):
    if m not in state and (found := visit(m, [m])):
      return found
  return None


def test_the_sampling_package_has_no_import_cycle():
  graph = _import_graph(pathlib.Path(sampling.__file__).parent)
  assert {"sampling", "sampling.trees", "sampling.tables"} <= set(graph)
  assert _cycle(graph) is None, " -> ".join(_cycle(graph))
  assert graph["sampling.trees"] == set()  # instances need no exact tool


def test_the_import_check_sees_imports_inside_functions(tmp_path):
  (tmp_path / "__init__.py").write_text("from sampling import a\n")
  (tmp_path / "a.py").write_text("from sampling.b import f\n")
  (tmp_path / "b.py").write_text("def f():\n  from sampling import a\n")
  graph = _import_graph(tmp_path)
  assert graph == {"sampling": {"sampling.a"}, "sampling.a": {"sampling.b"},
                   "sampling.b": {"sampling.a"}}
  assert _cycle(graph) == ["sampling.a", "sampling.b", "sampling.a"]


# --- instances ---------------------------------------------------------------


@pytest.mark.parametrize("target,kw", [
    ("uniform", {}), ("product", dict(p=0.3)), ("ar", dict(beta=2.0)),
    ("dfa", dict(automaton="dyck")), ("dfa", dict(automaton="at_least",
                                                  m=3)),
    ("dfa", dict(automaton="avoid", avoid=1))])
def test_targets_are_consistent_masses(target, kw):
  t = exact.node_table(trees.make_instance(2, 6, target, "exact", **kw))
  internal = np.arange(t.first_leaf)
  kids = 1 + internal[:, None] * 2 + np.arange(2)
  with np.errstate(divide="ignore"):
    parent = np.log(np.exp(t.logm[kids]).sum(1))
  np.testing.assert_allclose(np.exp(parent), np.exp(t.logm[internal]),
                             rtol=1e-5, atol=1e-30)
  np.testing.assert_allclose(t.logmu, t.logm)  # exact oracle


def test_dyck_samples_are_balanced():
  inst = trees.make_instance(2, 8, "dfa", "sibling", 2.0, automaton="dyck")
  xs, st = sampling.sample(inst, "js", KEY, 2000, steps=200, leaf_loop=32.0)
  for x in xs[st["accepted"]][:200]:
    h = np.cumsum(np.where(x == 0, 1, -1))
    assert (h >= 0).all() and h[-1] == 0


def test_error_patterns_respect_e1_and_e0():
  for pattern in trees.PATTERNS:
    t = _table(S=3, n=4, target="ar", pattern=pattern, alpha=1.8, beta=1.0)
    ratio = t.logmu - t.logm
    assert np.abs(ratio).max() <= np.log(1.8) + 1e-5
    assert np.abs(ratio[t.first_leaf:]).max() < 1e-6  # leaves exact
    assert abs(ratio[0]) < 1e-6  # root exact


def test_json_round_trip_and_user_tables(tmp_path):
  inst = trees.make_instance(2, 5, "product", "randsign", 1.5, seed=7,
                             p=0.3)
  again = sampling.load_instance(inst.to_json())
  a, b = exact.node_table(inst), exact.node_table(again)
  np.testing.assert_array_equal(a.logmu, b.logmu)
  # the user's table form
  rng = np.random.default_rng(0)
  lw = np.log(rng.random(8))
  lw[3] = -np.inf
  user = dict(alphabet_size=2, depth=3,
              target=dict(kind="table", log_weights=[
                  None if not np.isfinite(x) else x for x in lw]),
              oracle=dict(kind="table", log_mu_hat=[0.1, -0.5, 0.2, 0.0,
                                                    -1.0, 0.3, 0.1]))
  path = tmp_path / "inst.json"
  path.write_text(json.dumps(user))
  inst = sampling.load_instance(str(path))
  t = exact.node_table(inst)
  mu = np.exp(lw - np.logaddexp.reduce(lw[np.isfinite(lw)]))
  np.testing.assert_allclose(exact.target_law(t), mu, atol=1e-12)
  np.testing.assert_allclose(t.logmu[:7], user["oracle"]["log_mu_hat"],
                             atol=1e-6)
  law = sampling.exact_output_law(inst, "js", steps=400, leaf_loop=8.0)
  assert exact.tv(law, mu) < 0.02 and law[3] == 0.0
  # the same instance from a pattern oracle
  user["oracle"] = dict(pattern="combo", alpha=2.0, seed=1)
  assert sampling.load_instance(user).pattern == "combo"


@pytest.mark.parametrize("change,match", [
    (dict(alphabet_size=1), "alphabet_size must be"),
    (dict(depth=65), "depth must be"),
    (dict(oracle=dict(pattern="combo", alpha=0.5)), "alpha must be"),
    (dict(oracle=dict(pattern="wobble")), "unknown error pattern"),
    (dict(target=dict(kind="table", log_weights=[0.0] * 7)),
     "must have S\\^n = 8"),
    (dict(target=dict(kind="table", log_weights=[0.0] * 7 + ["x"])),
     "not a number"),
    (dict(oracle=dict(kind="table", log_mu_hat=[0.0] * 6)),
     "must have \\(S\\^n - 1\\)/\\(S - 1\\) = 7"),
    (dict(oracle=dict(kind="table", log_mu_hat=[0.0, None, 0.0, 0.0, 0.0,
                                                0.0, 0.0])),
     "reachable and has mu_hat = 0"),
    (dict(target=dict(kind="product", p=1.5)), "p must give"),
    # strict schema: exact types (a boolean is not an integer), no
    # unknown key (a typo gets a did-you-mean), strings named
    (dict(depth=True), r"depth must be an integer in 1\.\.64, got True "
     r"\(a boolean\)"),
    (dict(alphabet_size=2.0), r"alphabet_size must be an integer >= 2, got "
     r"2\.0 \(a number\)"),
    (dict(depth="3"), r"depth must be an integer .*got '3' \(a string\)"),
    (dict(oracle=dict(pattern="combo", alpha=2.0, seed=1.7)),
     r"oracle seed must be an integer in 0\.\.4294967295, got 1\.7"),
    (dict(oracle=dict(pattern="combo", alpha=2.0, seed=True)),
     "oracle seed must be an integer"),
    (dict(oracle=dict(pattern="combo", alpha="2")),
     r"oracle alpha must be a finite number >= 1, got '2' \(a string\)"),
    (dict(orcale=dict(pattern="combo")),
     r"unknown instance key 'orcale' \(did you mean 'oracle'\?\)"),
    (dict(oracle=dict(pattern="combo", alpah=2.0)),
     r"unknown oracle key 'alpah' \(did you mean 'alpha'\?\)"),
    (dict(oracle=dict(kind="table", log_mu_hat=[0.0] * 7, seed=3)),
     "unknown table-oracle key 'seed'"),
    (dict(oracle=dict(kind="tabel")), "oracle kind must be 'table'"),
    (dict(oracle="combo"), "oracle must be a JSON object, got a string"),
    (dict(oracle=dict(pattern="comb")),
     r"unknown error pattern 'comb' \(did you mean 'combo'\?\)"),
    (dict(target=dict(kind="unifrom")),
     r"unknown target 'unifrom' \(did you mean 'uniform'\?\)"),
    (dict(target="uniform"), "target must be a JSON object"),
    (dict(target=dict(kind="ar", bta=1.0)),
     r"unknown target 'ar' key 'bta' \(did you mean 'beta'\?\)"),
    (dict(target=dict(kind="uniform", p=0.3)),
     "unknown target 'uniform' key 'p'"),
    (dict(target=dict(kind="ar", beta="1.0")),
     r"target beta must be a finite number, got '1\.0' \(a string\)"),
    (dict(target=dict(kind="ar", target_seed=2.5)),
     "target target_seed must be an integer"),
    (dict(target=dict(kind="product", p="0.3")),
     "target p must be a number .* got '0.3' \\(a string\\)"),
    (dict(target=dict(kind="product", p=True)), "target p must be a number"),
    (dict(target=dict(kind="dfa", automaton="parity", m=True)),
     "target m must be an integer"),
    (dict(target=dict(kind="dfa", automaton="dyk")),
     r"unknown automaton 'dyk' \(did you mean 'dyck'\?\)"),
    (dict(target=dict(kind="table", log_weights="0 0 0")),
     "target log_weights must be a list of numbers, got a string"),
])
def test_bad_instances_get_clear_errors(change, match):
  base = dict(alphabet_size=2, depth=3,
              target=dict(kind="table", log_weights=[0.0] * 8),
              oracle=dict(pattern="exact"))
  base.update(change)
  with pytest.raises(sampling.InstanceError, match=match):
    sampling.load_instance(base)
  with pytest.raises(ValueError):
    trees.make_instance(2, 4, "table", log_weights=[float("nan")] * 16)


def test_make_instance_takes_exact_types_too():
  with pytest.raises(sampling.InstanceError, match="depth must be an "
                     "integer"):
    trees.make_instance(2, True)
  with pytest.raises(sampling.InstanceError, match="oracle seed must be"):
    trees.make_instance(2, 4, "uniform", "random", 1.5, seed=1.7)
  with pytest.raises(sampling.InstanceError, match="oracle alpha must be"):
    trees.make_instance(2, 4, "uniform", "combo", "2")
  with pytest.raises(sampling.InstanceError, match="did you mean 'beta'"):
    trees.make_instance(2, 4, "ar", bta=1.0)
  # numpy scalars are numbers; a numpy array is a table
  inst = trees.make_instance(np.int64(2), np.int32(3), "table",
                             alpha=np.float32(1.5), seed=np.uint8(3),
                             log_weights=np.zeros(8))
  assert (inst.S, inst.n, inst.seed) == (2, 3, 3)
  assert isinstance(inst.seed, int) and isinstance(inst.alpha, float)


@pytest.mark.parametrize("method,params", [
    ("js", dict(steps=3, leaf_loop=0.0)), ("lifted", dict(steps=3)),
    ("vgb", dict(steps=2, form="mh")), ("js", dict(steps=1))])
def test_a_walk_shorter_than_the_depth_has_no_law(method, params):
  """It never reaches a leaf: refused by name, never an all-zero "law"."""
  inst = trees.make_instance(2, 4, "uniform", "combo", 2.0)
  with pytest.raises(ValueError, match=rf"{method} with steps="
                     rf"{params['steps']} never reaches a leaf of a "
                     r"depth-4 tree .*give steps >= 4"):
    sampling.exact_output_law(inst, method, **params)
  law = sampling.exact_output_law(inst, method, **dict(params, steps=4))
  assert abs(law.sum() - 1) < 1e-9 and (law >= 0).all()


def test_every_exact_law_sums_to_one_or_is_refused(monkeypatch):
  inst = trees.make_instance(2, 3, "uniform", "combo", 2.0)
  for method in sampling.METHODS:
    if method not in NO_EXACT_LAW:
      law = sampling.exact_output_law(inst, method,
                                      **VARIANTS.get(method, [{}])[0])
      assert abs(law.sum() - 1) < 1e-9, method
  # a method whose output is no law (here forced) is refused by name
  monkeypatch.setattr(exact, "topdown_law", lambda table: np.zeros(8))
  with pytest.raises(ValueError, match=r"top_down's output on this "
                     r"instance is not a law \(it sums to 0, not 1\)"):
    sampling.exact_output_law(inst, "top_down")


def test_launch_sample_smoke_reports_the_expected_slopes(tmp_path):
  import os
  import subprocess
  import sys

  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  cmd = [sys.executable, "-m", "launch.sample",
         "--config=configs/sampling/scaling.py:tiny",
         "--config.sampling.ns_tree=(4, 5)",
         "--config.sampling.ns_lumped=(4, 8, 16, 32)",
         "--config.sampling.num_horizons=16",
         "--config.sampling.mc_chains=4000",
         "--config.sampling.mc_ns=(16,)", "--config.sampling.mc_samples=4000",
         "--config.sampling.mc_horizons=(4.0,)",
         "--config.sampling.mc_bootstrap=10", f"--workdir={tmp_path}"]
  out = subprocess.run(cmd, cwd=root, env=env, capture_output=True,
                       text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  res = json.loads((tmp_path / "results.json").read_text())
  lumped = res["lumped"]
  assert abs(lumped["js/exact/alpha=1"]["slope"] - 2) < 0.15
  assert abs(lumped["lifted/exact/alpha=1"]["slope"] - 1) < 0.15
  assert abs(lumped["lifted/slow/alpha=2"]["slope"] - 1) < 0.15
  assert abs(res["ttt_elim_slope"]) < 1e-9
  tvs = res["topdown_tv_sibling"]["2"]
  assert tvs == sorted(tvs) and tvs[-1] > 0.99
  for r in res["monte_carlo"].values():
    assert r["tv_empirical_vs_exact"] < 0.08
  # §4.3 at n = 16: top-down is far off, the long walks are not
  mc = res["mc_large"]["16"]
  assert mc["top_down"]["unbiased"]["tv"] > 0.7
  assert mc["top_down"]["lower_bound"]["tv"] > 0.6
  for k in ("js/T=4096", "lifted/T=4096"):
    assert mc[k]["lower_bound"]["tv"] < 0.1, k
  report = (tmp_path / "report.md").read_text()
  assert "fitted slope" in report and "fig_b_cost_vs_n.png" in report
  assert "beyond enumeration" in report
  assert "*Each curve is parametric in the horizon T" in report  # captions
  assert (tmp_path / "fig_b_cost_vs_n.png").exists()
  assert (tmp_path / "fig_e_mc_tv.png").exists()


def test_unique_queries_match_a_host_count_on_a_small_tree():
  inst = trees.make_instance(2, 3, "uniform", "random", 1.5)
  u = sampling.unique_queries(inst, "js", KEY, 50, steps=200,
                              leaf_loop=0.0)
  assert (u["per_chain"] <= trees.num_nodes(2, 3) - 1).all()
  assert u["union"] == trees.num_nodes(2, 3) - 1  # every non-root node
  assert (u["per_chain"] <= u["raw_calls"]).all()
  assert not u["truncated"].any()
  lifted = sampling.unique_queries(inst, "lifted", KEY, 20, steps=40)
  assert (lifted["per_chain"] > 0).all()
  # a single move from the root queries exactly its S children
  one = sampling.unique_queries(inst, "js", KEY, 200, steps=1,
                                leaf_loop=0.0)
  assert set(one["per_chain"].tolist()) == {0, 2}
  two = sampling.unique_queries(inst, "js", KEY, 400, steps=2,
                                leaf_loop=0.0)  # down, then up or down
  assert set(two["per_chain"].tolist()) == {0, 2, 4}


def test_r3_records_a_long_chain_whose_leaves_follow_mu_star():
  inst = trees.make_instance(2, 4, "product", "combo", 2.0, p=0.3)
  mu = exact.target_law(exact.node_table(inst))
  xs, st = sampling.sample(inst, "js", KEY, 40000, steps=64, leaf_loop=8.0,
                           readout="r3", records=20, spacing=16)
  assert xs.shape == (40000, 4) and st["accepted"].shape == (40000,)
  # cumulative counters grow along each chain
  moves = st["moves"].reshape(-1, 20)
  assert (np.diff(moves, axis=1) >= 0).all()
  emp = sampling.empirical_law(xs, 2, st["accepted"])
  assert exact.tv(emp, mu) < 0.05  # correlated samples of the stationary law
  # R2 (first leaf) is biased under combo errors; the exact law says so
  r2 = sampling.sample(inst, "js", KEY, 20000, steps=10_000, readout="r2")
  assert r2[1]["accepted"].mean() > 0.99


@pytest.mark.parametrize("method, params, error, match", [
    ("rejection", dict(alpha=0.5), ValueError, "alpha must be a finite "
     "number >= 1"),
    ("js", dict(steps=0), ValueError, "steps must be an integer >= 1"),
    ("js", dict(steps=2.5), TypeError, "steps must be an integer"),
    ("js", dict(steps=8, leaf_loop=-1.0), ValueError, "leaf_loop"),
    ("lifted", dict(steps=8, leaf_loop=0.5), ValueError,
     "leaf_loop must be a finite number >= 1"),
    ("sir", dict(proposals=0), ValueError, "proposals must be an integer"),
    ("js", dict(stepz=5), TypeError, r"js takes no parameter \['stepz'\]"),
    ("vgb", dict(steps=8, form="xx"), ValueError, "form must be"),
])
def test_bad_run_time_parameters_are_named(method, params, error, match):
  inst = sampling.make_instance(2, 4, "uniform", "combo", alpha=2.0)
  with pytest.raises(error, match=match):
    sampling.sample(inst, method, KEY, 16, **params)
  if method != "sir":
    with pytest.raises(error, match=match):
      sampling.exact_output_law(inst, method, **params)
  with pytest.raises(ValueError, match="num_samples must be an integer"):
    sampling.sample(inst, "top_down", KEY, -1)


def test_invalid_table_oracles_are_refused():
  S, n = 2, 3
  internal = (S ** n - 1) // (S - 1)
  lm = [0.0] * internal
  lm[1] = None  # node (0) at depth 1 has mass under the uniform target
  with pytest.raises(sampling.InstanceError, match=r"node \(0\) \(depth 1\) "
                     "is reachable"):
    sampling.load_instance(dict(alphabet_size=S, depth=n,
                                target=dict(kind="uniform"),
                                oracle=dict(kind="table", log_mu_hat=lm)))
  lm = [0.0] * internal
  lm[2] = 1e308
  with pytest.raises(sampling.InstanceError, match="out of range"):
    sampling.load_instance(dict(alphabet_size=S, depth=n,
                                target=dict(kind="uniform"),
                                oracle=dict(kind="table", log_mu_hat=lm)))


# --- inputs the float32 samplers cannot hold, sweeps that cannot run -------

_F32 = r"is beyond float32's range \(±3\.4e38\)"


@pytest.mark.parametrize("change,match", [
    (dict(target=dict(kind="table", log_weights=[0.0] * 3 + [1e308]
                      + [0.0] * 4)),
     r"target log-weight 1e308 at leaf 3 \(log_weights\[3\]\) " + _F32),
    (dict(target=dict(kind="table", log_weights=[0.0] * 3 + [-1e308]
                      + [0.0] * 4)),
     r"target log-weight -1e308 at leaf 3 \(log_weights\[3\]\) " + _F32),
    (dict(target=dict(kind="ar", beta=1e300)), "target beta 1e300 " + _F32),
    (dict(target=dict(kind="ar", beta=-1e40)), "target beta -1e40 " + _F32),
    (dict(oracle=dict(pattern="combo", alpha=1e300)),
     "oracle alpha 1e300 " + _F32),
    (dict(oracle=dict(kind="table", log_mu_hat=[0.0] * 7, alpha=1e300)),
     "oracle alpha 1e300 " + _F32),
    # each within range, but the log masses derived from it are not:
    # |log c| up to |beta| * 19.5 per level, summed over the depth
    (dict(depth=8, target=dict(kind="ar", beta=1e37)),
     r"target beta 1e37 at depth 8 .* gives log masses of magnitude "
     r"1\.56e39, which " + _F32),
])
def test_masses_beyond_float32_are_refused_at_load(change, match):
  """They loaded, and top-down then drew one leaf for every chain from
  infinite log masses, each chain flagged accepted."""
  base = dict(alphabet_size=2, depth=3, target=dict(kind="uniform"),
              oracle=dict(pattern="exact"))
  base.update(change)
  with pytest.raises(sampling.InstanceError, match=match):
    sampling.load_instance(base)
  with pytest.raises(sampling.InstanceError, match=match):
    sampling.load_instance(json.dumps(base))


def test_large_but_float32_masses_still_load_and_sample_finite():
  """Within range they load and every sampler's masses stay finite: a
  near point-mass target gives its one leaf. (At beta = 1e10 the walks drew
  from NaN masses: XLA rounded beta * g apart from max(beta * g) by more
  than exp's float32 range inside jax.nn.log_softmax.)"""
  lw = [0.0] * 8
  lw[3] = 1e30  # all the mass on leaf 3
  table = sampling.load_instance(dict(
      alphabet_size=2, depth=3, target=dict(kind="table", log_weights=lw),
      oracle=dict(pattern="combo", alpha=3e38)))
  for inst in (table, trees.make_instance(2, 6, "ar", "combo", 2.0,
                                          beta=1e10),
               trees.make_instance(2, 6, "ar", "combo", 2.0, beta=-1e35)):
    t = exact.node_table(inst)
    assert np.isfinite(t.logm).all() and np.isfinite(t.logmu).all()
    mode = int(np.argmax(exact.target_law(t)))
    leaf = [mode >> (inst.n - 1 - i) & 1 for i in range(inst.n)]
    for method, kw in (("top_down", {}), ("lifted", dict(steps=64))):
      xs, st = sampling.sample(inst, method, KEY, 2000, **kw)
      assert all(np.isfinite(v).all() for v in st.values()
                 if v.dtype.kind == "f"), (inst.target, method)
      assert st["accepted"].sum() > 50, (inst.target, method)
      assert (xs[st["accepted"]] == leaf).all(), (inst.target, method)


def test_ar_masses_are_finite_where_a_child_hash_is_all_ones():
  """hash_uniform rounded (2^24 - 1/2) / 2^24 up to 1.0 in float32, so the
  Gumbel noise was +inf and both conditionals NaN: this seed's root hash
  (mix32(3887972423) = 1878698419) has child 0's hash 0xFFFFFFFF."""
  seed = 3887972423
  h = trees.mix32(np.array([seed], np.uint32))
  assert trees.child_hash(h, np.uint32(0))[0] == 0xFFFFFFFF
  ones = np.array([0xFFFFFFFF], np.uint32)
  assert trees.hash_uniform(ones)[0] < 1.0
  assert trees.hash_uniform(jax.numpy.asarray(ones))[0] < 1.0
  inst = trees.make_instance(2, 2, "ar", "combo", 2.0, beta=1.0,
                             target_seed=seed)
  t = exact.node_table(inst)
  assert np.isfinite(t.logm).all() and np.isfinite(t.logmu).all()
  assert abs(np.exp(t.logm[1:3]).sum() - 1) < 1e-5


@pytest.mark.parametrize("change,match", [
    (dict(alpha=1e300), r"sampling\.alpha must be a finite number in "
     r"\[1, 3\.4e38\] \(float32's range.*got 1e\+300"),
    (dict(alpha=float("nan")), r"sampling\.alpha must be a finite number"),
    (dict(small_alpha=1e39), r"sampling\.small_alpha must be a finite"),
    # α in range, but T = horizon_factor α² n² is no int32 step count
    (dict(alpha=1000.0), r"sampling\.alpha = 1000 with horizon_factor 40 "
     r"gives walks of T = .* = 1\.44e\+09 steps at n = 6; T must be in "
     r"1\.\.1073741824"),
    (dict(horizon_factor=1e-9), r"horizon_factor 1e-09 .* T must be in 1"),
    (dict(mc_horizons=(4.0, 0.0)), r"sampling\.mc_horizons must be a tuple "
     r"of finite numbers > 0"),
    # the exact tools enumerate the tree: 2^16 nodes at most
    (dict(ns_tree=(4, 16)), r"sampling\.ns_tree: depth 16 is too large for "
     r"the exact tools \(they enumerate the tree: 131071 nodes, more than "
     r"65536\); give depths <= 15"),
    (dict(ns_tree=()), r"sampling\.ns_tree must be a non-empty tuple"),
    (dict(mc_chains=0), r"sampling\.mc_chains must be an integer >= 1, got 0"),
    (dict(mc_samples=1), r"sampling\.mc_samples must be an integer >= 2"),
    (dict(delta=1.0), r"sampling\.delta must be a finite number in \[0, 1\)"),
    (dict(num_horizons=0), r"sampling\.num_horizons must be an integer"),
    (dict(mc_ns=(65,)), r"sampling\.mc_ns must be a tuple of depths in "
     r"1\.\.64, got \(65,\)"),
    (dict(pattern="comb"), r"config\.sampling \(the depth-4 instance\): "
     r"unknown error pattern 'comb'"),
])
def test_a_sweep_that_cannot_run_is_refused_before_any_work(
    tmp_path, change, match):
  """These ran the sweep for 20-45 s first (an OverflowError, or the
  exact tools' or sample's ValueError with its traceback)."""
  from sampling import experiments

  with pytest.raises(sampling.InstanceError, match=match):
    experiments.parse(change)
  with pytest.raises(sampling.InstanceError, match=match):
    experiments.run(change, str(tmp_path / "w"))  # the same check first
  assert not (tmp_path / "w").exists()


def test_sweep_limits_leave_the_presets_and_huge_small_alpha_alone():
  from configs.sampling import scaling
  from sampling import experiments

  for preset in scaling.PRESETS:
    experiments.parse(scaling.get_config(preset).sampling)
  assert experiments.MAX_EXACT_DEPTH == 15
  experiments.parse(dict(ns_tree=(4, 15), mc_ns=(), mc_samples=0))
  experiments.parse(dict(small_alpha=1e30))
  # top-down's TV on U + sibling: 1 − p rounded to 0 (math domain error)
  for n in (2, 8, 64):
    tv = experiments.topdown_tv_sibling(n, 1e30)
    assert tv == pytest.approx(1 - 0.5 ** (n - 1), abs=1e-12)
  assert experiments.topdown_tv_sibling(8, 2.0) == pytest.approx(
      0.5 * np.abs(
          np.array([math.comb(7, k) * 0.8 ** k * 0.2 ** (7 - k)
                    for k in range(8)])
          - np.array([math.comb(7, k) * 0.5 ** 7 for k in range(8)])).sum())


def test_launch_sample_refuses_an_overflowing_alpha_in_one_line(tmp_path):
  """`--config.sampling.alpha=1e300` ran the sweep for ~24 s, then raised
  an OverflowError (alpha ** 2) with its traceback."""
  import os
  import subprocess
  import sys

  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  env.pop("TTT_VERBOSE", None)
  out = subprocess.run(
      [sys.executable, "-m", "launch.sample",
       "--config.sampling.alpha=1e300", f"--workdir={tmp_path / 'w'}",
       "--compilation_cache="], cwd=root, env=env, capture_output=True,
      text=True, timeout=600)
  assert out.returncode == 2, out.stderr[-3000:]
  errors = [ln for ln in out.stderr.splitlines() if ln.startswith("error")]
  assert errors == ["error: sampling.alpha must be a finite number in [1, "
                    "3.4e38] (float32's range: the samplers compute in "
                    "float32), got 1e+300"], out.stderr[-3000:]
  assert "Traceback" not in out.stderr
  assert not (tmp_path / "w").exists()
