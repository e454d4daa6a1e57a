r"""Initial training: `python -m launch.pretrain --config=... --workdir=...`.

Resumes from the checkpoint in --workdir when there is one (see
`configs/pretrain.py` for commands, runtimes and expected results).
Several hosts: add `--multihost` (see `launch/common.py`); every host saves
the checkpoints with Orbax.
"""

from absl import flags, logging

from launch import common
from ttt import configlib, pretrain
from ttt import model as model_lib

_CONFIG = common.define_config("pretrain.py:tiny")
_WORKDIR = flags.DEFINE_string("workdir", "/tmp/ttt_pretrain",
                               "Checkpoints, metrics and final weights.")


def parse(config) -> None:
  """The model and pretrain groups, before anything starts."""
  configlib.from_config(model_lib.ModelConfig, config.model)
  configlib.from_config(pretrain.PretrainConfig, config.pretrain)


def main(argv):
  del argv
  common.start()
  last = pretrain.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  logging.info("done: %s", last)
  common.end()


if __name__ == "__main__":
  common.run(main, parse=parse)
