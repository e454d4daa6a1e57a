r"""The main job: `python -m launch.ttt [--config=... --workdir=...]`.

With no flags: the embedded default (`configs/arc_ttt.py:tiny`) into
`./workdir_ttt`. A workdir that already holds finished chunks is resumed.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from ttt import pipeline

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/arc_ttt.py:tiny", "Config file (`file.py:arg`).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "workdir_ttt",
                               "Outputs (resumed when present).")


def main(argv):
  del argv
  logging.set_verbosity(logging.INFO)
  import jax

  logging.info("devices: %s", jax.devices())
  summary = pipeline.run(_CONFIG.value, _WORKDIR.value)
  print(f"pass@2: {summary['pass2_tasks']}/{summary['scored_tasks']} tasks "
        f"({100 * summary['pass2']:.1f}%), coverage "
        f"{100 * summary['coverage']:.1f}%; outputs in {_WORKDIR.value}/")


if __name__ == "__main__":
  app.run(main)
