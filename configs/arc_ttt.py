r"""The main job: TTT -> augmented inference -> voting -> scores (`launch.ttt`).

Commands:

  # The default (embedded) run: the shipped tiny model on the 10 shortest
  # ARC-AGI-1 evaluation tasks, CPU, about 1 minute on 2 cores:
  python -m launch.ttt
  # The same with flags spelled out, writing to a chosen workdir:
  python -m launch.ttt --config=configs/arc_ttt.py:tiny --workdir=/tmp/ttt
  # All 400 ARC-AGI-1 evaluation tasks with the base model, on a GPU:
  python -m launch.ttt --config=configs/arc_ttt.py:gpu --workdir=/tmp/ttt_gpu
  # Your own Kaggle-format file:
  python -m launch.ttt --config=configs/arc_ttt.py:tiny \
      --config.run.challenges=my_challenges.json \
      --config.run.solutions=my_solutions.json --config.run.num_tasks=0

Presets:
  tiny  checkpoints/tiny (0.86M parameters, trained 1.6 CPU-hours, see
        checkpoints/tiny/README.md); 10 shortest evaluation tasks; LoRA rank
        16, 128 TTT steps at lr 2e-3. Measured on a 2-core CPU: about 90 s
        (TTT 69 s, inference 9 s); pass@2 2/10 (66e6c45b, e633a9e5),
        candidate coverage 18%; the same run without TTT
        (--config.ttt.enabled=False) solves 0/10.
  gpu   checkpoints/base (issue: a trained base model ships later); all 400
        ARC-AGI-1 evaluation tasks; max_len 4096.

Ablation switches (one field each): ttt.enabled, ttt.shared_adapter,
data.leave_out ('one' | 'end_to_end'), data.loss ('outputs' | 'query' |
'marc'), adapter.rank, adapter.mode ('lora' | 'prefix' | 'lora+prefix' |
'full'), views.*, vote.method.

Outputs in --workdir: submission.json, results.json, metrics.jsonl,
config.json, report.md (+ renderings/), chunks/ (resume state).
"""

import ml_collections

from configs import common

PRESETS = ("tiny", "gpu")


def get_config(arg=None) -> ml_collections.ConfigDict:
  a = common.parse_arg(arg, preset="tiny")
  if a.preset not in PRESETS:
    raise ValueError(f"unknown preset {a.preset!r}; known: {PRESETS}")
  gpu = a.preset == "gpu"
  c = ml_collections.ConfigDict()
  # Weights written by ttt.ckpt.save_weights; '' = untrained (said loudly).
  c.init_from = common.checkpoint_path("base" if gpu else "tiny")
  c.model = common.model_config("base" if gpu else "tiny")
  c.run = dict(
      version=1,  # ARC-AGI version when no challenges file is given
      split="evaluation",  # 'evaluation' or 'training'
      challenges="",  # Kaggle-format challenges JSON (overrides split)
      solutions="",  # its solutions JSON (optional; scores need it)
      task_ids=(),  # only these task ids (empty: all)
      num_tasks=0 if gpu else 10,  # keep this many tasks (0: all)
      select="first" if gpu else "shortest",  # or 'shortest' sequences
      chunk_size=64 if gpu else 10,  # tasks per compiled chunk
      seed=0,  # TTT data, adapters and views
      num_renderings=8,  # tasks drawn in report.md
  )
  c.adapter = dict(
      mode="lora",  # 'lora', 'prefix', 'lora+prefix' or 'full'
      rank=16,  # LoRA rank
      alpha=32.0,  # LoRA alpha (update scale alpha / rank)
      targets=("q", "k", "v", "o", "gate", "up", "down"),  # LoRA targets
      prefix_len=8,  # learned prefix vectors in the prefix modes
  )
  c.data = dict(
      max_len=4096 if gpu else 1024,  # tokens per sequence (longer: skip)
      num_sequences=250 if gpu else 64,  # TTT sequences per task (MARC 250)
      leave_out="one",  # 'one' (leave-one-out) or 'end_to_end' (ablation)
      fill_leave_two_out=True,  # leave-two-out tasks fill up to N
      oversample=2.0,  # candidates drawn per kept sequence
      dihedral=True,  # D8 augmentations of the TTT data
      colours=True,  # colour permutations (0 fixed)
      fix_background=True,  # keep colour 0 fixed
      shuffle=True,  # demonstration orders
      extra_augmenters=(),  # MARC's extras, e.g. ('upscale2',)
      loss="outputs",  # 'outputs' (all), 'marc', or 'query' (last only)
  )
  c.ttt = dict(
      enabled=True,  # False: no TTT (the base model's predictions)
      shared_adapter=False,  # True: one adapter for all tasks of a chunk
      steps=128,  # optimizer steps per task
      batch_size=4 if gpu else 2,  # sequences per step
      lr=5e-4 if gpu else 2e-3,  # peak learning rate
      warmup_frac=0.1,  # linear warm-up share
      weight_decay=0.01,  # AdamW weight decay
      b1=0.9,  # Adam beta1
      b2=0.999,  # Adam beta2
      clip_norm=1.0,  # per-task gradient-norm clip
  )
  c.views = dict(
      orders=2,  # extra shuffled demonstration orders (identity views)
      leave_one_out=False,  # add leave-one-out demonstration subsets
      transforms=("transpose", "flip_ud", "flip_lr", "rot90", "rot180"),
      colour_perms=0,  # views with a colour permutation
      max_views=0,  # cap on views per test input (0: none)
  )
  c.decode = dict(
      max_new_tokens=931 if gpu else 320,  # answer tokens at most
      prompt_bucket=128,  # prompt lengths padded to a multiple of this
      temperature=0.0,  # 0: greedy; > 0: sample answers at this temperature
      samples=1,  # answers sampled per view (needs temperature > 0)
  )
  c.vote = dict(
      method="hierarchical",  # 'hierarchical', 'flat', 'reference',
      # 'product_of_experts'
      poe_candidates=8,  # product of experts: candidates rescored
  )
  return c
