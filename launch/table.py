r"""The accuracy table: `python -m launch.table --config=configs/table.py:cpu
--workdir=...` (see configs/table.py). Every row is a main job under
--workdir/<row>, resumed when rerun; table.md, table.json and
ttt_steps.png are written after every row. `--render_only` rewrites them
from the rows finished so far and runs nothing (a look at a table still
running in another process).
"""

from absl import flags

from launch import common
from ttt import job, sharding, table

_CONFIG = common.define_config("table.py:cpu")
_WORKDIR = flags.DEFINE_string("workdir", "workdir_table",
                               "Outputs (resumed when present).")
_RENDER_ONLY = flags.DEFINE_bool(
    "render_only", False, "Only rewrite table.md / table.json / "
    "ttt_steps.png from the rows finished in --workdir; run nothing.")


def parse(config) -> None:
  """The table's fields and every row's main-job config, before any row
  runs (a bad value fails now, not after the rows before it)."""
  table.check_table_config(config.table)
  for name in config.table.rows:
    job.parse(table.row_config(config.job, table.ROWS[name][1]))


def main(argv):
  del argv
  common.start()
  if _RENDER_ONLY.value:
    out = table.render_table(_CONFIG.value, _WORKDIR.value)
  else:
    out = table.run_table(_CONFIG.value, _WORKDIR.value)
  if sharding.is_main():
    print(table.markdown(out))
  common.end()


if __name__ == "__main__":
  common.run(main, parse=parse)
