r"""Sampling experiments: `python -m launch.sample --config=... --workdir=...`.

See `configs/sampling/scaling.py` for commands, runtimes and expected
results. Writes results.json, report.md and PNG plots to --workdir.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from sampling import experiments

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/sampling/scaling.py:tiny",
    "Config file (`file.py:arg`).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "workdir_sampling",
                               "Outputs: results.json, report.md, plots.")


def main(argv):
  del argv
  logging.set_verbosity(logging.INFO)
  import jax

  logging.info("devices: %s", jax.devices())
  res = experiments.run(_CONFIG.value.sampling, _WORKDIR.value)
  lumped = res["lumped"]
  print("slopes: " + ", ".join(f"{k} {v['slope']:.2f}"
                               for k, v in lumped.items()))
  print(f"TTT_ELIM queries per n: {res['ttt_elim_queries']}; report: "
        f"{_WORKDIR.value}/report.md")


if __name__ == "__main__":
  app.run(main)
