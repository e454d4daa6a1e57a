r"""Sampling experiments: `python -m launch.sample --config=... --workdir=...`.

See `configs/sampling/scaling.py` for commands, runtimes and expected
results. Writes results.json, report.md and PNG plots to --workdir.
Several hosts: add `--multihost` (see `launch/common.py`).
"""

from absl import flags

from launch import common
from sampling import experiments
from ttt import sharding

_CONFIG = common.define_config("sampling/scaling.py:tiny")
_WORKDIR = flags.DEFINE_string("workdir", "workdir_sampling",
                               "Outputs: results.json, report.md, plots.")


def parse(config) -> None:
  """The sweep's fields (each within the limits the sweep can run with:
  depths the exact tools enumerate, float32 masses, int32 horizons, at
  least one chain) and the instances it builds (target, pattern, alpha,
  seed, p at every depth), before the first sweep starts
  (`sampling.experiments.parse`)."""
  experiments.parse(config.sampling)


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
