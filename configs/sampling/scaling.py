r"""The scaling experiments of METHOD_SAMPLING §4.4 (`launch.sample`).

Commands:

  # CPU, about 2.5 minutes on 2 cores (1 without the §4.3 Monte Carlo,
  # --config.sampling.mc_ns="()"); writes report.md + plots + results.json:
  python -m launch.sample --config=configs/sampling/scaling.py:tiny \
      --workdir=/tmp/sampling_tiny
  # larger trees and more Monte-Carlo chains (a GPU helps the Monte Carlo;
  # the exact tree chains run on the host, n = 12 takes a few minutes):
  python -m launch.sample --config=configs/sampling/scaling.py:full \
      --workdir=/tmp/sampling_full

Expected result (both presets; report.md states each): moves per exact sample
grow with slope ≈ 2 in n for SJ with leaf loops (≈ 3 without), ≈ 1 for the
lifted walk on consistent oracles (exact, slowly varying errors) and → 2 on
locally inconsistent ones at constant α; TTT_ELIM needs the same 2 queries at
every n (slope 0); top-down TV rises with n towards 1; the vectorised samplers
agree with the exact laws within Monte-Carlo error. §4.3 at n = 16, 32 (tiny;
64 too in full), combo errors at α = 2: top-down's unbiased TV 0.76 / 0.91
while SJ + loops and the lifted walk at T = 4α²n² leave debiased statistic
TVs of about 0.01 (zero within the bootstrap interval).
"""

import ml_collections

from configs import common

PRESETS = {
    "tiny": dict(ns_tree=(4, 6, 8), ns_lumped=(4, 8, 16, 32, 64),
                 num_horizons=32, mc_chains=20000, mc_ns=(16, 32),
                 mc_samples=20000, mc_horizons=(1.0, 4.0)),
    "full": dict(ns_tree=(4, 6, 8, 10, 12), ns_lumped=(4, 8, 16, 32, 64),
                 ns_topdown=(4, 16, 64, 256, 1024), num_horizons=48,
                 mc_chains=1_000_000, mc_ns=(16, 32, 64),
                 mc_samples=200_000, mc_horizons=(1.0, 4.0, 16.0),
                 mc_bootstrap=100),
}


def get_config(arg=None) -> ml_collections.ConfigDict:
  a = common.parse_arg(arg, preset="tiny")
  if a.preset not in PRESETS:
    raise ValueError(f"unknown preset {a.preset!r}; known: {sorted(PRESETS)}")
  from sampling import experiments
  from ttt import configlib

  # Every field of sampling.experiments.ExperimentConfig (its defaults and
  # comments are the one source); the preset names what it changes.
  return ml_collections.ConfigDict(dict(sampling=configlib.group(
      experiments.ExperimentConfig, **PRESETS[a.preset])))
