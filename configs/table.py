r"""The accuracy table (`launch.table`): what TTT buys, with intervals.

Commands (each row is its own resumable main job under --workdir/<row>;
rerun the same command to resume a killed table):

  # CPU: the shipped model on the 100 committed ARC-AGI-1 evaluation tasks,
  # all rows (~2 core-hours per 128-step row with TTT on the 2-core machine
  # of 2026-12-01, twice that for the 256-step headline and full_token_256,
  # 4x for steps_512; the table of 2026-12-01, benchmarks/table/
  # arc1_lora128/, took 7.6 h on both cores: base 1/100, views 1/100,
  # headline_lora128 9/100, full_ft 13/100, steps_512 18/100; the new
  # headline's rows: benchmarks/table/arc1/); rows can be run a few
  # at a time with --config.table.rows='("base","views","headline")'; kill
  # and rerun freely, finished chunks are kept; --render_only rewrites the
  # report from the rows finished so far):
  python -m launch.table --config=configs/table.py:cpu --workdir=/tmp/table
  # ARC-AGI-2: the headline rows on the 50 committed evaluation tasks
  # (3.1 h on both cores; expected: base 0/50 in 5 min, views 0/50 in
  # 38 min, headline 0/50 in 2.4 h -- benchmarks/table/arc2/)
  python -m launch.table --config=configs/table.py:cpu,version=2 \
      --workdir=/tmp/table2
  # All 400 ARC-AGI-1 evaluation tasks, estimated from an unbiased sample
  # (issue 42): base, views and the headline (+ its flat / PoE selections)
  # on 100 ids drawn uniformly (seed 0, `draw_sample`); tasks whose prompt
  # does not fit the CPU context of 1024 tokens (56 of the 100) count as
  # failures; table.md adds the estimate for all 400 with its exact
  # interval (2.6 h on both cores of the 2-core machine of 2026-12-07, with
  # tests running beside it; expected: base 0/100, views 0/100, headline
  # 8/100 = 32/400 [4.2%, 14.0%], vote_poe 9/100; benchmarks/table/sample/,
  # the README's "What to expect")
  python -m launch.table --config=configs/table.py:cpu,sample \
      --workdir=/tmp/table_sample
  # GPU: the same rows with the `gpu` job (a trained base model required)
  python -m launch.table --config=configs/table.py:gpu \
      --config.job.init_from=/path/to/model --workdir=/tmp/table_gpu
  # A pretrained language model as the base (the `llm` job; a GPU/TPU for
  # anything past SmolLM2-135M): the same rows and tasks
  python -m launch.table --config=configs/table.py:llm \
      --config.job.init_from=/path/to/snapshot_or.gguf --workdir=/tmp/tllm

Task lists (committed, `configs/table_tasks/`): the 100 ARC-AGI-1
evaluation tasks with the shortest full sequence (every demonstration, the
test input and its answer; ties by id) -- all fit 1024 tokens (144 of the
400 do; 269 fit 2048); the 50 shortest ARC-AGI-2 evaluation tasks by the
same rule (8 of 120 fit 1024 tokens, 34 fit 2048, 96 fit 4096; these 50
need up to 2481, so max_len is 3072 there). The held-out selection list
(`arc1_evaluation_select.txt`, `configs/table.py:cpu,select`): ranks 101-200
by the same rule that fit 1024 tokens, i.e. ranks 101-144 (44 tasks, 864-1021
tokens) -- where the default recipe is chosen; the table never reports it.

Rows: `ttt.table.ROWS` (vote_flat, vote_poe and headline_identity are
selections of the headline run's own candidates, `ttt.table.DERIVED`); each
ablation is compared with the headline
(paired bootstrap interval and McNemar's exact test), `views` with `base`
and the headline with `views`.
"""

import os

import ml_collections

from configs import arc_ttt, common

# in run order, cheapest information first (a table killed part-way has
# its main rows): the selections of the headline run cost nothing extra;
# then the previous headline (128 steps) and the rows measured against it
# (pinned to its 128 steps); steps_512 is 2x the headline's TTT
ALL_ROWS = ("base", "views", "headline", "vote_flat", "vote_poe",
            "headline_identity", "headline_lora128", "full_token", "joint",
            "steps_32", "end_to_end", "shared", "prefix", "full_ft",
            "full_token_256", "steps_512")
# the candidate recipes compared on the selection list (issue 33): the
# previous headline (LoRA, 128 steps), full fine-tuning with and without a
# task token, twice the steps (LoRA -- the chosen one, now the headline --
# and every weight + task token: both within the 2x wall-time rule on the
# default job), and the joint protocol (LoRA + a prefix per task)
SELECT_ROWS = ("headline_lora128", "full_ft", "full_token", "steps_256",
               "full_token_256", "joint")
# the selection rule (issue 42): the headline recipe (steps_256's) rerun on
# the selection list recording every rule of `ttt.select.RULES`; the
# default job's `vote.method` is the best of them there
SELECT_RULE_ROWS = ("headline", "vote_flat", "vote_poe", "vote_reference",
                    "vote_count_poe", "headline_identity")
ALL_RULES = ("flat", "reference", "product_of_experts", "count_poe",
             "identity")
TASK_FILES = {1: "arc1_evaluation_100.txt", 2: "arc2_evaluation_50.txt"}
# An unbiased sample of all 400 ARC-AGI-1 evaluation tasks (issue 42): 100
# ids drawn uniformly without replacement by `draw_sample` (seed 0), listed
# shortest full sequence first (ties by id) so the run's chunks go shortest
# first; 31 of them fit the CPU context of 1024 tokens, 67 fit 2048.
SAMPLE_FILE = "arc1_evaluation_random100.txt"
SAMPLE_SEED = 0
SAMPLE_ROWS = ("base", "views", "headline", "vote_flat", "vote_poe")


def draw_sample(seed: int = SAMPLE_SEED, n: int = 100) -> list[str]:
  """The sample list's ids: `n` of the 400 ARC-AGI-1 evaluation ids (sorted
  by id) drawn uniformly without replacement with numpy's
  `default_rng(seed).choice`, then ordered by full sequence length (every
  demonstration, the test input and its answer; the longest test input's;
  ties by id) -- the order the run's chunks take, not part of the draw."""
  import numpy as np

  from ttt import arc, tokens
  tasks = {t.id: t for t in arc.load_arc(1, "evaluation", errors=[])}
  ids = sorted(tasks)
  pick = [ids[i] for i in np.random.default_rng(seed).choice(
      len(ids), n, replace=False)]
  full = {i: max(tokens.sequence_length(tasks[i], k)
                 for k in range(len(tasks[i].test))) for i in pick}
  return sorted(pick, key=lambda i: (full[i], i))
# The held-out selection list (where the default recipe is chosen; never
# reported in the table): the ARC-AGI-1 evaluation tasks ranked 101-200 by
# the same rule that fit the CPU context of 1024 tokens -- ranks 101-144,
# 44 tasks (full sequences of 864-1021 tokens).
SELECT_FILE = "arc1_evaluation_select.txt"


def task_ids(version: int, select: bool = False, sample: bool = False
             ) -> tuple[str, ...]:
  name = (SELECT_FILE if select else SAMPLE_FILE if sample
          else TASK_FILES[version])
  if (select or sample) and version != 1:
    raise ValueError("the selection and sample lists are ARC-AGI-1's "
                     "(version=1)")
  if select and sample:
    raise ValueError("choose one of select and sample")
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                      "table_tasks", name)
  with open(path, encoding="utf-8") as f:
    return tuple(line.strip() for line in f if line.strip())


def get_config(arg=None) -> ml_collections.ConfigDict:
  a = common.parse_arg(arg, preset="cpu", version=1, select=False,
                       sample=False)
  if a.preset not in ("cpu", "gpu", "llm"):
    raise ValueError(f"unknown preset {a.preset!r}; known: ['cpu', 'gpu', "
                     "'llm']")
  if a.version not in TASK_FILES:
    raise ValueError(f"version must be 1 or 2, got {a.version}")
  job = arc_ttt.get_config({"cpu": "tiny"}.get(a.preset, a.preset))
  job.run.version = a.version
  job.run.task_ids = task_ids(a.version, a.select, a.sample)
  job.run.num_tasks = 0
  job.run.select = "first"
  # the table's rows were made with hierarchical voting (its `views` row
  # says so) and keep it, so their committed fingerprints hold; the other
  # rules are rows (vote_*), count_poe -- the default job's -- among them
  job.vote.method = "hierarchical"
  if a.preset == "cpu":
    job.run.chunk_size = 25
    # the lists are in length order, so a chunk's own length (bucketed to
    # 128 tokens, one compile per bucket) is below the run's longest
    # (measured, chunk 1: TTT rows of 384 tokens instead of 768)
    job.run.fixed_shapes = False
    job.run.length_bucket = 128
    if a.version == 2:
      job.data.max_len = 3072
      job.decode.max_new_tokens = 931
      # memory: TTT at 2560 tokens holds ~3 GB per task (XLA's
      # memory_analysis), the views' decode of the 4 longest tasks peaked
      # at 15 GB RSS; 4 tasks a chunk fits the 24 GB machine
      job.run.chunk_size = 4
      # chunks by TTT row length: 8% fewer padded tokens, 15% less
      # attention work than the list's order (benchmarks/chunk_padding.py)
      job.run.chunk_order = "length"
  config = ml_collections.ConfigDict()
  config.job = job
  config.table = ml_collections.ConfigDict(dict(
      rows=(SELECT_ROWS + SELECT_RULE_ROWS if a.select
            else SAMPLE_ROWS if a.sample
            else ALL_ROWS if a.version == 1
            else ("base", "views", "headline")),
      bootstrap=2000,  # resamples per interval
      seed=0,
      # vote_flat / vote_poe / headline_identity as selections of the
      # headline's candidates (ttt.table.DERIVED); False: separate runs
      derived=True))
  if a.select:  # every rule recorded beside the headline's own
    config.table.also = ALL_RULES
  if a.sample:  # a uniform sample of the 400: estimates for all of them
    config.table.population = 400
  return config
