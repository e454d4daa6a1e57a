"""sampling.montecarlo: exact samples, per-path densities, TV estimates."""

import jax
import numpy as np
import pytest

import sampling
from sampling import exact, montecarlo, trees


@pytest.fixture(scope="module")
def combo8():
  inst = trees.make_instance(2, 8, "product", "combo", 2.0, p=0.3)
  table = exact.node_table(inst)
  return inst, exact.target_law(table), exact.topdown_law(table)


def test_path_scores_equal_the_exact_laws(combo8):
  inst, mu, q = combo8
  leaves = np.arange(2 ** inst.n)
  xs = ((leaves[:, None] >> np.arange(inst.n - 1, -1, -1)) & 1).astype(
      np.int32)  # first symbol most significant, as empirical_law
  s = montecarlo.score_samples(inst, xs)
  np.testing.assert_allclose(np.exp(s["log_mu"]), mu, atol=1e-6)
  np.testing.assert_allclose(np.exp(s["log_q"]), q, atol=1e-6)


def test_dfa_scores_carry_the_final_state():
  inst = trees.make_instance(2, 6, "dfa", "sibling", 1.5, automaton="parity")
  xs = montecarlo.exact_samples(inst, jax.random.key(0), 64)
  s = montecarlo.score_samples(inst, xs)
  assert np.isfinite(s["log_mu"]).all()
  lb = montecarlo.tv_lower_bound(inst, xs, jax.random.key(1),
                                 config=montecarlo.StatsConfig(bootstrap=0))
  assert "dfa_state" in lb["per_statistic"]


def test_exact_sampler_draws_from_the_target(combo8):
  inst, mu, _ = combo8
  xs = montecarlo.exact_samples(inst, jax.random.key(1), 40000)
  # 256 leaves, 40k draws: the empirical TV's noise is about 0.03
  assert exact.tv(sampling.empirical_law(xs, 2), mu) < 0.045


def test_topdown_tv_is_unbiased(combo8):
  inst, mu, q = combo8
  xs, _ = sampling.sample(inst, "top_down", jax.random.key(2), 20000)
  est = montecarlo.topdown_tv(inst, xs)
  truth = exact.tv(q, mu)
  assert truth > 0.5
  assert abs(est["tv"] - truth) < 4 * est["stderr"]


def test_statistics_bound_the_tv_from_below_and_vanish_on_exact_samples(
    combo8):
  inst, mu, q = combo8
  cfg = montecarlo.StatsConfig(bootstrap=20)
  xs, _ = sampling.sample(inst, "top_down", jax.random.key(3), 20000)
  lb = montecarlo.tv_lower_bound(inst, xs, jax.random.key(4), config=cfg)
  truth = exact.tv(q, mu)
  assert 0.8 * truth < lb["tv"] <= truth + 0.01
  assert lb["ci95"][0] <= lb["tv"] <= lb["ci95"][1] + 1e-9
  xe = montecarlo.exact_samples(inst, jax.random.key(5), 20000)
  null = montecarlo.tv_lower_bound(inst, xe, jax.random.key(6), config=cfg)
  assert null["tv"] < 0.025 and null["ci95"][0] < 0.005


def test_rejected_chains_do_not_count():
  inst = trees.make_instance(2, 6, "product", "combo", 2.0, p=0.3)
  xs, st = sampling.sample(inst, "js", jax.random.key(7), 4000, steps=64,
                           leaf_loop=0.0)
  assert 0 < st["accepted"].mean() < 1
  lb = montecarlo.tv_lower_bound(inst, xs, jax.random.key(8), st["accepted"],
                                 montecarlo.StatsConfig(bootstrap=0))
  assert lb["samples"] == int(st["accepted"].sum())
  with pytest.raises(ValueError, match="at least 2 samples"):
    montecarlo.tv_lower_bound(inst, xs[:1], jax.random.key(9))
