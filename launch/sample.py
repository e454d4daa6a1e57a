r"""Sampling experiments: `python -m launch.sample --config=... --workdir=...`.

See `configs/sampling/scaling.py` for commands, runtimes and expected
results. Writes results.json, report.md and PNG plots to --workdir.
Several hosts: add `--multihost` (see `launch/common.py`).
"""

from absl import flags

from launch import common
from sampling import configlib, experiments, trees
from ttt import sharding

_CONFIG = common.define_config("sampling/scaling.py:tiny")
_WORKDIR = flags.DEFINE_string("workdir", "workdir_sampling",
                               "Outputs: results.json, report.md, plots.")


def parse(config) -> None:
  """The sweep's fields and the instances it builds (target, pattern,
  alpha, seed, p at every depth), before the first sweep starts."""
  cfg = configlib.from_config(experiments.ExperimentConfig, config.sampling)
  for n in sorted({*cfg.ns_tree, *cfg.mc_ns}):
    try:
      trees.make_instance(2, n, cfg.target, cfg.pattern, cfg.alpha,
                          seed=cfg.seed, p=cfg.p)
    except trees.InstanceError as e:
      raise trees.InstanceError(f"config.sampling (the depth-{n} instance): "
                                f"{e}") from e


def main(argv):
  del argv
  common.start()
  res = experiments.run(_CONFIG.value.sampling, _WORKDIR.value)
  if sharding.is_main():
    print("slopes: " + ", ".join(f"{k} {v['slope']:.2f}"
                                 for k, v in res["lumped"].items()))
    print(f"TTT_ELIM queries per n: {res['ttt_elim_queries']}; report: "
          f"{_WORKDIR.value}/report.md")
  common.end()


if __name__ == "__main__":
  common.run(main, parse=parse)
