"""Hostile files and faults (issue 46): planted links in the workdir, weight
data changed after saving, bad checkpoint fields, run files and table rows
of another run, a non-finite base, the memory plan's warning, every task
too long. Each test fails on the code before the fix it names."""

import errno
import gc
import json
import os
import shutil

import jax
import jax.numpy as jnp
import pytest

from configs import arc_ttt
from configs import table as table_config
from ttt import augment, ckpt, files, pipeline, table, workdir
from ttt import job as job_lib
from ttt import memory as memory_lib
from ttt import model as model_lib
from ttt import weights as weights_lib

SHIPPED = arc_ttt.get_config().init_from


def _oracle(task, test_index, view):
  return augment.apply(view.element, task.test[test_index][1])


def _config(**run):
  from conftest import tiny_job_config
  return tiny_job_config(**run)


# --- planted links ------------------------------------------------------------


def test_a_lock_link_planted_in_the_workdir_is_refused(tmp_path):
  """`.lock -> victim` was opened with 'a+' and truncated: the victim lost
  its content to the run's pid."""
  victim = tmp_path / "victim.txt"
  victim.write_text("precious")
  wd = tmp_path / "wd"
  wd.mkdir()
  os.symlink(victim, wd / ".lock")
  with pytest.raises(workdir.WorkdirError, match="symbolic link"):
    workdir.open_workdir(str(wd), {"a": 1}, False, "{}")
  assert victim.read_text() == "precious"


def test_atomic_writes_never_follow_a_planted_link(tmp_path):
  """`report.md.tmp -> victim` was written through (a fixed temporary
  name); now the temporary file is fresh (mkstemp) and a link at the
  target itself is replaced, not followed."""
  victim = tmp_path / "victim.txt"
  victim.write_text("precious")
  wd = tmp_path / "wd"
  wd.mkdir()
  os.symlink(victim, wd / "report.md.tmp")
  files.write_text(str(wd / "report.md"), "the report")
  assert victim.read_text() == "precious"
  assert (wd / "report.md").read_text() == "the report"
  os.symlink(victim, wd / "results.json")
  files.write_json(str(wd / "results.json"), {"a": 1})
  assert victim.read_text() == "precious"
  assert not (wd / "results.json").is_symlink()
  assert oct((wd / "report.md").stat().st_mode & 0o777) == oct(0o644)


def test_a_full_disk_names_the_file_and_leaves_no_temporary(tmp_path,
                                                            monkeypatch):
  """Disk full: the error named no file and left an empty
  `submission.json.tmp`."""
  real_fdopen = os.fdopen

  class Full:
    def __init__(self, f):
      self.f = f

    def __enter__(self):
      return self

    def __exit__(self, *a):
      self.f.close()

    def write(self, text):
      raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(os, "fdopen", lambda *a, **k: Full(real_fdopen(*a,
                                                                       **k)))
  target = tmp_path / "submission.json"
  with pytest.raises(OSError, match="could not write .*submission.json: No "
                     "space left"):
    files.write_json(str(target), {"a": 1})
  assert os.listdir(tmp_path) == []


# --- model checkpoints --------------------------------------------------------


def _tiny_params():
  from flax import nnx
  m = model_lib.make_model(dict(num_layers=1, d_model=32, num_heads=2,
                                mlp_dim=32))
  _, params = nnx.split(m, nnx.Param)
  return params


def test_changed_weight_data_is_named_and_old_checkpoints_warn(tmp_path,
                                                               caplog):
  """One changed byte of weight data loaded without complaint and changed
  the answers: the values' digest, stored at save, is checked at load."""
  params = _tiny_params()
  a, b = tmp_path / "a", tmp_path / "b"
  ckpt.save_weights(str(a), params, dict(d_model=32))
  assert json.loads((a / ckpt.VALUES_FILE).read_text())["sha256"].startswith(
      "sha256:")
  ckpt.load_weights(str(a), params)  # verified
  leaves, tree = jax.tree.flatten(params)
  leaves[0] = leaves[0].at[0, 0].add(1.0)
  changed = jax.tree.unflatten(tree, leaves)
  ckpt.save_weights(str(b), changed, dict(d_model=32))
  shutil.rmtree(a / ckpt.WEIGHTS_DIR)  # a's digest, b's data
  shutil.copytree(b / ckpt.WEIGHTS_DIR, a / ckpt.WEIGHTS_DIR)
  with pytest.raises(ValueError, match=r"do not match .*weights_sha256\.json"
                     r".*changed or corrupted"):
    ckpt.load_weights(str(a), params)
  # saved before digests: loads, with a warning naming the checkpoint
  (b / ckpt.VALUES_FILE).unlink()
  with caplog.at_level("WARNING"):
    ckpt.load_weights(str(b), params)
  assert "cannot be verified" in caplog.text and str(b) in caplog.text
  # the shipped model carries its digest (and matches it)
  assert os.path.exists(os.path.join(SHIPPED, ckpt.VALUES_FILE))


def test_bad_checkpoint_fields_and_another_width_are_one_line(tmp_path,
                                                              capfd):
  """`"dtype": "float17"` and `"num_layers": "4"` were tracebacks deep in
  the model; a checkpoint of another width printed ~80 lines of Orbax's
  task tracebacks before the message."""
  c = _config()

  def load(path):
    weights_lib.load(str(path), job_lib.parse(c).model,
                     job_lib.parse(c).adapter, 0)

  def edited(name, edit):
    path = tmp_path / name
    shutil.copytree(SHIPPED, path)
    meta = json.loads((path / ckpt.CONFIG_FILE).read_text())
    edit(meta)
    (path / ckpt.CONFIG_FILE).write_text(json.dumps(meta))
    return path

  with pytest.raises(ValueError, match="dtype 'float17'; a checkpoint "
                     "stores one of bfloat16"):
    load(edited("dtype", lambda m: m.update(dtype="float17")))
  with pytest.raises(ValueError, match=r"model_config\.json has "
                     r"model\.num_layers = '4' \(str\); it must be a int"):
    load(edited("layers", lambda m: m["model"].update(num_layers="4")))
  capfd.readouterr()
  with pytest.raises(ValueError, match=r"weight 'blocks/0/mlp/down/kernel/"
                     r"value' is \(384, 128\) in .*needs \(256, 128\)"):
    load(edited("width", lambda m: m["model"].update(mlp_dim=256)))
  gc.collect()
  assert "Traceback" not in capfd.readouterr().err


def test_a_non_finite_base_is_named(tmp_path):
  """A base with a NaN weight decoded nothing, and the report said only
  'no answer'."""
  c = job_lib.parse(_config())
  w, _ = weights_lib.load("", c.model, c.adapter, 0)
  weights_lib.check_finite(w, "")  # a finite one passes
  leaves, tree = jax.tree.flatten(w.base)
  leaves[1] = leaves[1].at[0, 0].set(jnp.nan)
  bad = w._replace(base=jax.tree.unflatten(tree, leaves))
  with pytest.raises(ValueError, match="1 weights are not finite .*logits "
                     "are not finite"):
    weights_lib.check_finite(bad, "the_model")


# --- run files and the plan ---------------------------------------------------


def test_a_chunk_plan_with_a_list_entry_is_planned_again(tmp_path):
  """A list inside `chunks/plan.json` raised `TypeError: unhashable` on
  every resume."""
  wd = workdir.open_workdir(str(tmp_path), {"a": 1}, False, "{}")
  try:
    workdir.write_plan(wd, (1.0, "run.memory_gb"), [["x", "y"]])
    assert workdir.stored_plan(wd, (1.0, "run.memory_gb"),
                               ["x", "y"]) == [[0, 1]]
    path = tmp_path / "chunks" / workdir.PLAN_FILE
    plan = json.loads(path.read_text())
    plan["chunks"] = [[["x"], "y"]]
    path.write_text(json.dumps(plan))
    assert workdir.stored_plan(wd, (1.0, "run.memory_gb"),
                               ["x", "y"]) is None
  finally:
    wd.close()


def test_every_task_too_long_is_a_finished_run_listing_them(tmp_path):
  """Every task longer than `data.max_len` raised `KeyError: 0` in the
  plan (one task too long was skipped cleanly)."""
  c = _config(num_tasks=2)
  c.data.max_len = 32
  s = pipeline.run(c, str(tmp_path), predictor=_oracle)
  assert s["tasks"] == 2 and s["skipped_tasks"] == 2
  res = json.loads((tmp_path / "results.json").read_text())
  assert all("data.max_len is 32" in t["skipped"] for t in res["tasks"])
  sub = json.loads((tmp_path / "submission.json").read_text())
  assert len(sub) == 2


def test_a_run_smaller_than_a_chunk_does_not_warn_about_memory():
  """Every run with fewer tasks than `run.chunk_size` warned that the
  chunk size 'does not fit' the budget, even at 1e9 GiB."""
  mem = memory_lib.Memory(budget=1e9, source="run.memory_gb", resident=1.0,
                        programs={}, need=2.0, chunk_size=10, rule="fits",
                        per_bucket=None)
  assert memory_lib.chunk_size_warning(mem, 25, 10) is None
  cut = mem._replace(chunk_size=4)
  assert "chunks of 4 tasks (run.chunk_size=25 does not fit" in \
      memory_lib.chunk_size_warning(cut, 25, 10)


# --- table rows ---------------------------------------------------------------


def test_table_rows_of_another_run_are_named_under_render_only(tmp_path):
  """A row's `results.json` without `tests` crashed `--render_only`; a row
  run on another task list silently shrank the table to the common tasks;
  `--render_only` never checked the rows' fingerprints."""
  config = table_config.get_config("cpu")
  config.job.init_from = ""
  config.job.run.task_ids = table_config.task_ids(1)[:3]
  config.table.rows = ("base", "views")
  config.table.bootstrap = 50
  table.run_table(config, str(tmp_path),
                  dict(base=lambda *a: None, views=_oracle))
  table.render_table(config, str(tmp_path))  # as made: fine
  views = tmp_path / "views" / "results.json"
  good = views.read_text()
  res = json.loads(good)
  # another task list: one task fewer
  res["tasks"] = res["tasks"][1:]
  views.write_text(json.dumps(res))
  first = config.job.run.task_ids[0]
  with pytest.raises(ValueError, match=f"row views .*lacks 1 of the "
                     f"table's 3 tasks \\('{first}'\\)"):
    table.render_table(config, str(tmp_path))
  # a scored task without its test records
  res = json.loads(good)
  del res["tasks"][0]["tests"]
  views.write_text(json.dumps(res))
  with pytest.raises(ValueError, match="is scored but has no test-input "
                     "records"):
    table.render_table(config, str(tmp_path))
  # another config's row
  views.write_text(good)
  fp = tmp_path / "views" / "fingerprint.json"
  stored = json.loads(fp.read_text())
  stored["ttt.steps"] = 7
  fp.write_text(json.dumps(stored))
  with pytest.raises(ValueError, match="row views .*another config "
                     r"\(changed: ttt\.steps\)"):
    table.render_table(config, str(tmp_path))
