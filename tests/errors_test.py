"""Tests for the launches' error handling (launch/common.py, ttt/errors.py).

Input problems are one line `error: ...` and exit status 2; anything else,
a JAX error inside a compiled program included, keeps its traceback.
"""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest
from absl import flags

from launch import common
from sampling import trees
from ttt import arc, errors, job, plan, workdir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _launch(module, *args):
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  env.pop("TTT_VERBOSE", None)
  return subprocess.run(
      [sys.executable, "-m", module, *args, "--compilation_cache=",
       "--workdir=/nonexistent/never_written"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("module,args,first_line", [
    # a misspelled field with an explicit --config (the README's form)
    ("launch.ttt", ("--config=configs/arc_ttt.py", "--config.run.typo=1"),
     "error: --config.run.typo=1: no such config field."),
    ("launch.table", ("--config=configs/table.py:cpu",
                      "--config.job.ttt.stepz=1"),
     "error: --config.job.ttt.stepz=1: no such config field. Did you mean "
     "'steps' instead of 'stepz'?"),
    # an unknown preset (was an absl FATAL with the config's traceback)
    ("launch.pretrain", ("--config=configs/pretrain.py:nopreset",),
     "error: --config=configs/pretrain.py:nopreset: unknown preset "
     "'nopreset'; known: ['base', 'llm', 'small', 'tiny']"),
    ("launch.sample", ("--config=configs/sampling/nothere.py",),
     "error: --config=configs/sampling/nothere.py: cannot load the config "
     "file: [Errno 2] No such file or directory: "
     "'configs/sampling/nothere.py'"),
    # a bad value, found by the launch's parse before anything starts
    ("launch.ttt", ("--config.decode.temperature=nan",),
     "error: decode.temperature must be a finite number >= 0, got nan"),
    ("launch.sample", ("--config.sampling.pattern=comb",),
     "error: config.sampling (the depth-4 instance): unknown error pattern "
     "'comb' (did you mean 'combo'?); known: ('exact', 'depth', 'slow', "
     "'sibling', 'combo', 'random', 'randsign', 'adv_td', 'table')"),
])
def test_config_errors_are_one_line_and_status_2(module, args, first_line):
  out = _launch(module, *args)
  assert out.returncode == 2, out.stderr[-3000:]
  lines = [ln for ln in out.stderr.splitlines()
           if ln[:1] not in ("W", "I") or ln.startswith("error")]
  assert lines[0] == first_line, out.stderr[-3000:]
  assert "Traceback" not in out.stderr and "FATAL" not in out.stderr


def test_the_empty_workdir_is_one_line(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  env.pop("TTT_VERBOSE", None)
  out = subprocess.run([sys.executable, "-m", "launch.ttt", "--workdir=",
                        "--compilation_cache="], cwd=str(tmp_path), env=env,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 2, out.stderr[-3000:]
  assert "error: --workdir is empty" in out.stderr
  assert "Traceback" not in out.stderr
  assert os.listdir(tmp_path) == []


def _run_in_process(monkeypatch, main, *argv):
  """`common.run(main)` in this process; (exit status or None, error)."""
  monkeypatch.setattr(sys, "argv", ["launch", *argv])
  monkeypatch.delenv("TTT_VERBOSE", raising=False)
  flags.FLAGS.unparse_flags()  # no --verbose left from a previous call
  try:
    common.run(main)
  except SystemExit as e:
    return e.code, None
  except Exception as e:  # noqa: BLE001 (the test looks at it)
    return None, e
  finally:
    flags.FLAGS.unparse_flags()
  return 0, None


def test_a_jax_value_error_in_a_compiled_program_keeps_its_traceback(
    monkeypatch, capsys):
  def main(argv):
    del argv
    # a shape error inside jit: a ValueError raised by JAX, not the input
    jax.jit(lambda x: jnp.broadcast_to(x, (4,)))(jnp.ones(3))

  code, error = _run_in_process(monkeypatch, main)
  assert code is None and isinstance(error, ValueError)
  assert not common.is_user_error(error)
  assert "error:" not in capsys.readouterr().err


@pytest.mark.parametrize("error", [
    errors.InputError("run.task_ids not found: ['x']"),
    arc.TaskError("t1", "has no test input"),
    workdir.WorkdirError("--workdir is empty"),
    trees.InstanceError("depth must be an integer"),
    FileNotFoundError(2, "No such file or directory"),
])
def test_input_errors_are_one_line_with_status_2(monkeypatch, capsys,
                                                 error):
  def main(argv):
    del argv
    raise error

  code, raised = _run_in_process(monkeypatch, main)
  assert (code, raised) == (2, None)
  err = capsys.readouterr().err
  assert err.startswith(f"error: {error}\n") and "Traceback" not in err
  # --verbose shows the traceback (the error propagates)
  code, raised = _run_in_process(monkeypatch, main, "--verbose")
  assert raised is error


def test_which_errors_are_the_users():
  assert issubclass(arc.TaskError, errors.InputError)
  assert issubclass(workdir.WorkdirError, errors.InputError)
  assert issubclass(errors.InputError, ValueError)
  assert issubclass(trees.InstanceError, ValueError)
  assert not common.is_user_error(ValueError("Incompatible shapes"))
  assert not common.is_user_error(TypeError("dot_general"))
  try:  # a file that could not be read, wrapped (ttt.arc's read errors)
    try:
      open("/nonexistent/x.json", encoding="utf-8")
    except OSError as e:
      raise ValueError(f"cannot read challenges file: {e}") from e
  except ValueError as wrapped:
    assert common.is_user_error(wrapped)


def test_solutions_without_challenges_are_refused(tmp_path):
  sols = tmp_path / "solutions.json"
  sols.write_text("{}")
  run = job.parse(_config(solutions=str(sols))).run
  with pytest.raises(errors.InputError, match=r"run.solutions=.* needs "
                     r"run.challenges"):
    plan.load_tasks(run)


def _config(**run):
  from configs import arc_ttt

  c = arc_ttt.get_config("tiny")
  with c.unlocked():
    c.run.update(run)
  return c
