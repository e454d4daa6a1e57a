"""Teacher-forced held-out loss of base models: which checkpoint to ship.

For each checkpoint in --models, on sequences none of them trained on:

* `heldout`: the `pretrain.heldout_tasks` (16) ARC-AGI-1 training tasks that
  initial training leaves out, as re-ARC examples (--re_arc_dir): --sequences
  sequences drawn like training ones (`pretrain_data.sample_sequence` with
  the training defaults: 2-6 demonstrations, a random group element; the
  same sequences for every model), with the
  loss on the query output only; without re-ARC, the tasks' own test pairs.
* `table`: the first --table_tasks tasks of the table's committed ARC-AGI-1
  evaluation list (`configs/table_tasks/`), each test pair after all its
  demonstrations, loss on the test output (evaluation data as a measure
  only: never trained on).

Per set: loss per output token (nats) and teacher-forced exact outputs (the
argmax right at every output token). Lower loss = the better base model
before TTT; the table's headline row says what it is worth after TTT.

Prints one JSON line: {"models": {path: {...}}, "workload": {...}}.

`--long_context` (issue 42: what the model does past the 1,024 positions
it was trained at): the sample list's tasks (`configs/table_tasks/
arc1_evaluation_random100.txt`) whose full sequence needs 1,025-2,048
tokens, each test pair scored twice -- `long_all`: after all its
demonstrations (positions up to 2,048), `long_cut`: after the
demonstrations that fit 1,024 (dropped from the end) -- on the pairs both
can score, plus `short`: the sample's tasks that fit 1,024 whole.

CPU (about 2 minutes per model):
  python benchmarks/model_eval.py --models checkpoints/tiny,/tmp/pt/model \\
      --re_arc_dir /path/to/re_arc/tasks
"""

import argparse
import dataclasses
import json
import os
import platform
import time

import jax
import ml_collections
import numpy as np
from flax import nnx

from configs import common
from configs import table as table_config
from ttt import arc, ckpt, configlib, data, pretrain, pretrain_data, sharding
from ttt import model as model_lib


def heldout_sequences(re_arc_dir: str, n: int, max_len: int, seed: int
                      ) -> list:
  """`n` query-loss sequences from the held-out tasks (see module doc)."""
  cfg = configlib.from_config(pretrain.PretrainConfig, ml_collections
                              .ConfigDict(dict(max_len=max_len, loss="query",
                                               seed=seed)))
  held = pretrain_data.heldout_ids(cfg.heldout_tasks)
  if not re_arc_dir:
    tasks = [t for t in arc.load_arc(1, "training") if t.id in set(held)]
    return pretrain_data.heldout_rows(tasks, max_len)
  every = {os.path.basename(p).split(".")[0] for p in os.listdir(re_arc_dir)}
  sources = pretrain_data.load_re_arc(re_arc_dir, 1000,
                                      exclude=every - set(held))
  rng = np.random.default_rng(seed)
  return [pretrain_data.sample_sequence(rng, sources, cfg) for _ in range(n)]


def table_sequences(num_tasks: int, max_len: int) -> list:
  ids = table_config.task_ids(1)[:num_tasks]
  by_id = {t.id: t for t in arc.load_arc(1, "evaluation")}
  return pretrain_data.heldout_rows([by_id[i] for i in ids], max_len)


def long_context_sequences(long_len: int = 2048, short_len: int = 1024
                           ) -> dict:
  """{'long_all', 'long_cut', 'short'} rows (see module docstring)."""
  from ttt import tokens
  by_id = {t.id: t for t in arc.load_arc(1, "evaluation")}
  sets = dict(long_all=[], long_cut=[], short=[])
  for i in table_config.task_ids(1, sample=True):
    t = by_id[i]
    for q, a in t.test:
      whole = arc.Task(t.id, list(t.train), [(q, a)])
      n = tokens.sequence_length(whole)
      if n <= short_len:
        sets["short"].append(tokens.encode_task(whole, short_len,
                                                loss="query"))
        continue
      if n > long_len:
        continue
      train = list(t.train)
      while train and tokens.sequence_length(
          arc.Task(t.id, train, [(q, a)])) > short_len:
        train = train[:-1]
      if not train:
        continue  # the query alone does not fit 1024: no pair
      sets["long_all"].append(tokens.encode_task(whole, long_len,
                                                 loss="query"))
      sets["long_cut"].append(tokens.encode_task(
          arc.Task(t.id, train, [(q, a)]), short_len, loss="query"))
  return sets


def load(path: str):
  """(graphdef, params) of a stored base model (float32 compute)."""
  stored = ckpt.load_weights_config(path)["model"]
  names = {f.name for f in dataclasses.fields(model_lib.ModelConfig)}
  cfg = {k: v for k, v in stored.items() if k in names}
  model = model_lib.make_model(dict(cfg, dtype="float32"), None,
                               jax.random.key(0))
  graphdef, params = nnx.split(model, nnx.Param)
  return graphdef, ckpt.load_weights(path, params)


def score(path: str, sets: dict, batch: int, mesh) -> dict:
  graphdef, params = load(path)
  step = pretrain.make_eval_step(graphdef)
  params = sharding.replicate(params, mesh)
  out = {}
  for name, rows in sets.items():
    length = data.bucket_length(max(r.length for r in rows), 128,
                                max(r.length for r in rows) + 128)
    batches = [data.stack_rows(rows[s:s + batch], batch, length)
               for s in range(0, len(rows), batch)]
    m = pretrain.evaluate(step, params, batches, mesh)
    out[name] = dict(loss=round(m["eval_loss"], 4),
                     exact=round(m["eval_exact"], 4),
                     sequences=m["eval_pairs"])
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--models", default=common.checkpoint_path("tiny"),
                 help="comma-separated checkpoint directories")
  p.add_argument("--re_arc_dir", default=os.environ.get("TTT_RE_ARC_DIR",
                                                        ""))
  p.add_argument("--sequences", type=int, default=256)
  p.add_argument("--table_tasks", type=int, default=100)
  p.add_argument("--max_len", type=int, default=1024)
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--long_context", action="store_true",
                 help="score the sample's long tasks past 1024 positions "
                 "(module docstring)")
  a = p.parse_args()
  t0 = time.perf_counter()
  sets = (long_context_sequences() if a.long_context else
          dict(heldout=heldout_sequences(a.re_arc_dir, a.sequences,
                                         a.max_len, a.seed),
               table=table_sequences(a.table_tasks, a.max_len)))
  mesh = sharding.make_mesh(axis=sharding.DATA_AXIS)
  batch = sharding.padded_count(a.batch, mesh.size)
  models = {m: score(m, sets, batch, mesh)
            for m in a.models.split(",") if m}
  print(json.dumps(dict(
      device=jax.devices()[0].device_kind, jax=jax.__version__,
      python=platform.python_version(), models=models,
      workload=dict(heldout="re-ARC" if a.re_arc_dir else "ARC test pairs",
                    sequences=a.sequences, table_tasks=a.table_tasks,
                    max_len=a.max_len, seed=a.seed,
                    long_context=a.long_context,
                    seconds=round(time.perf_counter() - t0, 1)))))


if __name__ == "__main__":
  main()
