"""benchmarks/gpu_oneshot.py --smoke: every stage at toy sizes on CPU."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_gpu_oneshot_smoke(tmp_path):
  out, work = tmp_path / "out", tmp_path / "work"
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  p = subprocess.run(
      [sys.executable, "benchmarks/gpu_oneshot.py", "--smoke",
       f"--out={out}", f"--work={work}", "--budget_s=500",
       "--re_arc=/nonexistent"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert p.returncode == 0, p.stderr[-3000:]
  summary = json.loads((out / "summary.json").read_text())
  stages = summary["stages"]
  assert set(stages) == {"smoke", "throughput", "pretrain", "table"}
  for name, rec in stages.items():
    assert rec["rc"] == 0, (name, rec.get("stderr_tail"))
  assert stages["smoke"]["result"]["pipeline"]["tasks"] == 2
  assert all(r["rc"] == 0 and "result" in r
             for r in stages["throughput"]["result"])
  assert stages["pretrain"]["result"]["steps"] == 4
  rows = stages["table"]["result"]["rows"]
  assert [r["row"] for r in rows[:3]] == ["1_no_ttt_identity",
                                          "2_views_vote", "3_ttt"]
  # what comes back: the summary and the model, few small files
  files = sorted(os.listdir(out))
  assert "summary.json" in files and len(files) <= 8
  assert all(os.path.getsize(out / f) <= 16 << 20 for f in files)
  # the returned model reassembles and loads in the main job
  model = subprocess.run(
      [sys.executable, "benchmarks/gpu_oneshot.py", f"--join={out}",
       f"--out={tmp_path / 'back'}"], cwd=ROOT, env=env,
      capture_output=True, text=True, timeout=120)
  assert model.returncode == 0, model.stderr[-2000:]
  from ttt import ckpt

  cfg = ckpt.load_weights_config(str(tmp_path / "back" / "model"))
  assert cfg["trained_steps"] == 4
