"""Several processes: the launches under JAX's multi-controller runtime.

Each test starts two CPU processes (2 devices each) that join through
`jax.distributed` on localhost -- by `launch/run_tpu.sh` (the README's pod
command with the coordinator flags), by `--multihost` flags, or by
environment variables -- and one process with 4 devices, and checks the
outputs are the same: per-task and per-chain keys come from the task or
chain index, never from the process.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEVICES = 4
PROCESSES = 2


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _env(devices: int) -> dict:
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  env.pop("TTT_MULTIHOST", None)
  return env


def _launch(module: str, args: list[str], workdir, processes: int,
            via: str = "flags"):
  """Runs `python -m module args` as `processes` processes; returns their
  (returncode, stdout, stderr). One process runs without --multihost.

  via: how the processes join -- 'flags' (`--multihost
  --coordinator_address=... --num_processes --process_id`), 'env'
  (`TTT_MULTIHOST=1` and `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`,
  `JAX_PROCESS_ID`) or 'run_tpu' (`bash launch/run_tpu.sh <name>` with the
  same flags, set-up skipped).
  """
  base = [sys.executable, "-m", module, *args, f"--workdir={workdir}"]
  env = _env(DEVICES // processes)
  port = _free_port()
  addr = f"localhost:{port}"
  runs = []
  for i in range(processes):
    e = dict(env)
    if processes == 1:
      cmd = base
    elif via == "env":
      cmd = base
      e.update(TTT_MULTIHOST="1", JAX_COORDINATOR_ADDRESS=addr,
               JAX_NUM_PROCESSES=str(processes), JAX_PROCESS_ID=str(i))
    else:
      flags = [f"--coordinator_address={addr}",
               f"--num_processes={processes}", f"--process_id={i}"]
      if via == "run_tpu":
        cmd = ["bash", "launch/run_tpu.sh", module.split(".")[-1], *args,
               f"--workdir={workdir}", *flags]
        e.update(TTT_SKIP_SETUP="1", TTT_PYTHON=sys.executable)
      else:
        cmd = base + ["--multihost", *flags]
    runs.append((cmd, e))
  procs = [subprocess.Popen(c, cwd=ROOT, env=e, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
           for c, e in runs]
  outs = []
  for p in procs:
    try:
      out, err = p.communicate(timeout=600)
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      pytest.fail(f"{module} timed out with {processes} processes")
    outs.append((p.returncode, out, err))
  for i, (rc, _, err) in enumerate(outs):
    assert rc == 0, f"process {i}: {err[-3000:]}"
  return outs


TTT_ARGS = ["--config.init_from=", "--config.run.num_tasks=3",
            "--config.run.chunk_size=3", "--config.ttt.steps=2",
            "--config.data.num_sequences=4",
            "--config.decode.max_new_tokens=8", "--config.model.num_layers=1",
            "--config.model.dtype=float32", "--config.views.orders=1",
            "--config.vote.method=product_of_experts"]


def test_ttt_pipeline_on_two_processes_equals_one(tmp_path):
  one, two = tmp_path / "one", tmp_path / "two"
  _launch("launch.ttt", TTT_ARGS, one, 1)
  outs = _launch("launch.ttt", TTT_ARGS, two, PROCESSES, via="run_tpu")
  assert "pass@2" in outs[0][1] and "pass@2" not in outs[1][1]
  assert "process 1 of 2; 2 local devices of 4" in outs[1][2]
  # process 0 writes everything, once
  a = json.loads((one / "results.json").read_text())
  b = json.loads((two / "results.json").read_text())
  assert (json.loads((one / "submission.json").read_text())
          == json.loads((two / "submission.json").read_text()))
  assert len(b["tasks"]) == 3
  for ta, tb in zip(a["tasks"], b["tasks"], strict=True):
    assert ta["id"] == tb["id"]
    assert ta["tests"] == tb["tests"]  # attempts, candidates, views
    assert ta["ttt"]["rows"] == tb["ttt"]["rows"] > 0
    np.testing.assert_allclose(ta["ttt"]["final_loss"],
                               tb["ttt"]["final_loss"], rtol=1e-5)
  assert a["summary"]["pass2"] == b["summary"]["pass2"]


def test_ttt_pipeline_on_a_2x2_mesh_over_two_processes_equals_one(tmp_path):
  """`run.model_parallel=2`: each process's 2 devices are one model group
  (the base split over them), the task axis spans the processes; the
  records equal one process's (2,2) mesh."""
  args = TTT_ARGS + ["--config.run.model_parallel=2"]
  one, two = tmp_path / "one", tmp_path / "two"
  _launch("launch.ttt", args, one, 1)
  _launch("launch.ttt", args, two, PROCESSES)
  a = json.loads((one / "results.json").read_text())
  b = json.loads((two / "results.json").read_text())
  assert (json.loads((one / "submission.json").read_text())
          == json.loads((two / "submission.json").read_text()))
  for ta, tb in zip(a["tasks"], b["tasks"], strict=True):
    assert ta["tests"] == tb["tests"]
    np.testing.assert_allclose(ta["ttt"]["final_loss"],
                               tb["ttt"]["final_loss"], rtol=1e-5)


def test_sampling_sweep_on_two_processes_equals_one(tmp_path):
  args = ["--config=configs/sampling/scaling.py:tiny",
          "--config.sampling.ns_tree=(4,)",
          "--config.sampling.ns_lumped=(4,)",
          "--config.sampling.ns_topdown=(4,)",
          "--config.sampling.num_horizons=8",
          "--config.sampling.mc_chains=1001",
          "--config.sampling.mc_ns=(8,)", "--config.sampling.mc_samples=501",
          "--config.sampling.mc_horizons=(1.0,)",
          "--config.sampling.mc_bootstrap=5"]
  one, two = tmp_path / "one", tmp_path / "two"
  _launch("launch.sample", args, one, 1)
  outs = _launch("launch.sample", args, two, PROCESSES, via="env")
  assert "process 1 of 2" in outs[1][2]
  a = json.loads((one / "results.json").read_text())
  b = json.loads((two / "results.json").read_text())
  # the sharded Monte-Carlo chains: same samples, so the same figures
  assert a["monte_carlo"] == b["monte_carlo"]
  assert a["lumped"] == b["lumped"] and a["tree"] == b["tree"]
  assert a["mc_large"] == b["mc_large"]  # sharded exact draws and scores
  assert (two / "report.md").exists()


def test_pretrain_on_two_processes_equals_one_and_resumes(tmp_path):
  args = ["--config=configs/pretrain.py:tiny,steps=3",
          "--config.pretrain.batch_size=4", "--config.pretrain.max_len=256",
          "--config.pretrain.log_every=1", "--config.pretrain.eval_every=0",
          "--config.pretrain.checkpoint_every=2",
          "--config.model.num_layers=1"]
  one, two = tmp_path / "one", tmp_path / "two"
  _launch("launch.pretrain", args, one, 1)
  # two hosts: stop after 2 steps (checkpointed by both through Orbax),
  # then resume to the end
  _launch("launch.pretrain", args + ["--config.pretrain.stop_after_steps=2"],
          two, PROCESSES)
  assert (two / "checkpoints" / "2").is_dir()
  outs = _launch("launch.pretrain", args, two, PROCESSES)
  assert "resumed from" in outs[1][2]

  def losses(workdir):
    rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text()
            .splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}

  a, b = losses(one), losses(two)
  assert sorted(a) == sorted(b) == [1, 2, 3]
  np.testing.assert_allclose([a[s] for s in a], [b[s] for s in a],
                             rtol=1e-4)
  assert (two / "model" / "model_config.json").exists()
