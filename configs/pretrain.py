r"""Initial training of the base transformer from scratch (`launch.pretrain`).

Commands (the part after `:` picks a preset, `key=value` pairs override):

  # CPU smoke run, about 5 minutes on 2 cores; loss falls from ~2.7 to ~1.3
  # (the shipped checkpoints/tiny is this preset run for 1500 steps):
  python -m launch.pretrain --config=configs/pretrain.py:tiny \
      --workdir=/tmp/pt_tiny
  # GPU run of the ~27M `base` model on re-ARC + ARC-AGI-1 training tasks;
  # time-boxed pieces of 9 minutes, rerun the same command to resume:
  python -m launch.pretrain --config=configs/pretrain.py:base \
      --config.pretrain.re_arc_dir=/path/to/re_arc/tasks \
      --config.pretrain.time_limit_s=540 --workdir=/tmp/pt_base

Presets:
  tiny   ~0.86M params, batch 8 x 1024 tokens, 100 steps (CPU, ~2.5 s/step).
  small  ~5M params, batch 32 x 1024 tokens, 5000 steps.
  base   ~27M params, batch 64 x 2048 tokens, 20000 steps (GPU).

Data: re-ARC examples from `pretrain.re_arc_dir` (default: the environment
variable TTT_RE_ARC_DIR, else none) plus the ARC-AGI-1 training tasks' own
pairs, minus 16 held-out ARC-AGI-1 training tasks used for the teacher-forced
evaluation. ARC evaluation tasks are never read. Outputs in --workdir:
`checkpoints/` (Orbax, resumable), `metrics.jsonl`, `config.json`, and at the
end `model/` (bf16 weights + model config, loadable by `launch.ttt`).
"""

import os

import ml_collections

from configs import common

PRESETS = {
    "tiny": dict(steps=100, batch_size=8, max_len=1024, lr=2e-3,
                 warmup_steps=10, eval_every=50, checkpoint_every=50,
                 log_every=20, re_arc_examples=200),
    "small": dict(steps=5000, batch_size=32, max_len=1024, lr=1e-3,
                  warmup_steps=200, eval_every=500, checkpoint_every=500,
                  log_every=50),
    "base": dict(steps=20000, batch_size=64, max_len=2048, lr=6e-4,
                 warmup_steps=500, eval_every=1000, checkpoint_every=500,
                 log_every=50),
}


def get_config(arg=None) -> ml_collections.ConfigDict:
  a = common.parse_arg(arg, preset="tiny", steps=0, batch_size=0)
  if a.preset not in PRESETS:
    raise ValueError(f"unknown preset {a.preset!r}; known: {sorted(PRESETS)}")
  config = ml_collections.ConfigDict()
  config.model = common.model_config(a.preset)
  p = dict(
      steps=1000,  # total optimizer steps of the whole run
      batch_size=32,  # global sequences per step (multiple of the devices)
      max_len=1024,  # tokens per sequence
      lr=3e-4,  # peak learning rate
      warmup_steps=100,  # linear warm-up steps
      end_lr_frac=0.1,  # cosine decays to lr * end_lr_frac
      weight_decay=0.05,  # AdamW decoupled weight decay
      b1=0.9,  # Adam beta1
      b2=0.95,  # Adam beta2
      clip_norm=1.0,  # global gradient-norm clip (0: off)
      min_demos=2,  # demonstrations per sampled task, at least
      max_demos=6,  # ... at most
      p_inputs_only=0.1,  # group element applied to the inputs only
      p_outputs_only=0.1,  # ... to the outputs only (else to both)
      dihedral=True,  # sample the D8 part of the group element
      colours=True,  # sample colour permutations (0 stays fixed)
      loss="marc",  # loss on outputs but the first ('outputs', 'query')
      re_arc_dir=os.environ.get("TTT_RE_ARC_DIR", ""),  # '' = no re-ARC
      re_arc_examples=1000,  # re-ARC examples per task, at most
      arc_training=True,  # add ARC-AGI-1 training tasks' own pairs
      heldout_tasks=16,  # ARC-AGI-1 training tasks kept out for eval
      eval_every=200,  # steps between held-out evaluations (0: never)
      checkpoint_every=200,  # steps between checkpoints
      keep_checkpoints=2,  # newest checkpoints kept
      log_every=20,  # steps between progress lines
      seed=0,  # data order and initial weights
      prefetch=4,  # batches built ahead on the host
      stop_after_steps=0,  # stop (checkpointed) after this many steps
      time_limit_s=0.0,  # stop (checkpointed) after this many seconds
      init_from="",  # start from these weights (ckpt.save_weights format)
      export_dir="",  # final weights ('' = workdir/model)
  )
  p.update(PRESETS[a.preset])
  if a.steps:
    p["steps"] = a.steps
  if a.batch_size:
    p["batch_size"] = a.batch_size
  config.pretrain = p
  return config
