r"""The main job: `python -m launch.ttt [--config=... --workdir=...]`.

With no flags: the embedded default (`configs/arc_ttt.py:tiny`) into
`./workdir_ttt`. A workdir that already holds finished chunks is resumed.
Several hosts: add `--multihost` (see `launch/common.py`).
"""

from absl import flags, logging

from launch import common
from ttt import job, pipeline, sharding

_CONFIG = common.define_config("arc_ttt.py:tiny")
_WORKDIR = flags.DEFINE_string("workdir", "workdir_ttt",
                               "Outputs (resumed when present).")


def main(argv):
  del argv
  common.start()
  summary = pipeline.run(_CONFIG.value, _WORKDIR.value)
  if sharding.is_main():
    print(f"pass@2: {summary['pass2_tasks']}/{summary['scored_tasks']} "
          f"tasks ({100 * summary['pass2']:.1f}%), coverage "
          f"{100 * summary['coverage']:.1f}%; outputs in {_WORKDIR.value}/")
  logging.info("done")
  common.end()


if __name__ == "__main__":
  common.run(main, parse=job.parse)
