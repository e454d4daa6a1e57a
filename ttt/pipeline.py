"""The main job: TTT -> augmented inference -> voting -> evaluation.

`run(config, workdir)` adapts a base model to every task of an ARC split (or
a Kaggle JSON file), predicts each test input under several views, votes and
scores, leaving in `workdir`:

* `submission.json` (ARC Prize format), `results.json` (per task: correct?,
  attempts, candidates with counts and views, TTT losses, skip reasons),
  `metrics.jsonl` (one record per chunk, then the summary), `config.json`,
  `report.md` with PNG renderings under `renderings/`;
* `chunks/NNNNN.json`: each finished chunk of tasks, written atomically. A
  killed run started again with the same workdir skips the chunks already
  there, so it resumes where it stopped.

Per chunk of `run.chunk_size` tasks (sized to device memory):
1. data: per task, the TTT dataset (`ttt.data`, key `fold_in(key, task
   index)`), built by the host whose devices hold the task (several hosts:
   each tokenizes only its slice; `ttt.sharding.put_rows` assembles the
   global array); a task whose identity prompt does not fit `data.max_len`
   is skipped and reported, never truncated.
2. TTT: the vmapped inner loop (`ttt.inner_loop`) over the chunk's tasks,
   task axis sharded over the mesh and padded with tasks that never report;
   or one adapter shared by the chunk (`ttt.shared_adapter`), or none
   (`ttt.enabled=False`).
3. inference: every test input x view (`ttt.views`) decoded greedily under
   its task's adapter (`ttt.decode`) -- or, with `decode.temperature > 0`,
   `decode.samples` answers sampled per view (keys from the task and test
   indices), every one voting --, malformed decodes counted, predictions
   mapped back to the task's frame.
4. voting (`vote.method`): 'hierarchical' (views grouped by category),
   'flat', 'reference' (MARC-exact) or 'product_of_experts' (distinct
   candidates rescored by teacher-forced log-likelihood under every view).

Model: `init_from` names a checkpoint written by `ttt.ckpt.save_weights`
(its model config wins over `config.model`); an empty `init_from` runs an
UNTRAINED model, said loudly in the log and the report.

A `predictor(task, test_index, view) -> grid | None` may replace the model's
decoding (a test double: e.g. an oracle returning the true answer in the
view's frame), so voting, inversion and scoring are exercised for real.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from ttt import (
  arc,
  augment,
  ckpt,
  configlib,
  data,
  decode,
  evaluate,
  inner_loop,
  lora,
  metrics,
  sharding,
  tokens,
  views,
  vote,
)
from ttt import model as model_lib

VOTE_METHODS = ("hierarchical", "flat", "reference", "product_of_experts")


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """What to run on (fields mirror `config.run`)."""

  version: int = 1  # ARC-AGI version (1 or 2) when no challenges file
  split: str = "evaluation"  # 'evaluation' or 'training'
  challenges: str = ""  # Kaggle-format challenges JSON (overrides split)
  solutions: str = ""  # optional solutions JSON for scoring
  task_ids: tuple[str, ...] = ()  # only these tasks (empty: all)
  num_tasks: int = 0  # keep this many tasks after selection (0: all)
  select: str = "first"  # 'first' (file order) or 'shortest' sequences
  chunk_size: int = 32  # tasks per compiled chunk
  seed: int = 0  # TTT data, adapters, views
  num_renderings: int = 8  # tasks drawn in report.md

  def validate(self) -> None:
    if self.select not in ("first", "shortest"):
      raise ValueError("run.select must be 'first' or 'shortest'")
    if self.chunk_size < 1:
      raise ValueError("run.chunk_size must be >= 1")


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
  """Decoding settings (fields mirror `config.decode`)."""

  max_new_tokens: int = tokens.MAX_ANSWER_TOKENS  # per view, at most 931
  prompt_bucket: int = 128  # prompt lengths padded up to a multiple
  temperature: float = 0.0  # 0: greedy; > 0: sampled answers
  samples: int = 1  # answers sampled per view (each one votes)

  def validate(self) -> None:
    if self.temperature < 0 or self.samples < 1:
      raise ValueError("decode.temperature must be >= 0 and decode.samples "
                       ">= 1")
    if self.samples > 1 and self.temperature == 0:
      raise ValueError("decode.samples > 1 needs decode.temperature > 0 "
                       "(greedy copies are identical)")


@dataclasses.dataclass(frozen=True)
class VoteConfig:
  """Voting settings (fields mirror `config.vote`)."""

  method: str = "hierarchical"  # one of VOTE_METHODS
  poe_candidates: int = 8  # product of experts: candidates rescored

  def validate(self) -> None:
    if self.method not in VOTE_METHODS:
      raise ValueError(f"vote.method must be one of {VOTE_METHODS}, got "
                       f"{self.method!r}")


@dataclasses.dataclass(frozen=True)
class TTTSwitches:
  """The ablation switches of `config.ttt` beyond the inner loop's."""

  enabled: bool = True  # run TTT at all
  shared_adapter: bool = False  # one adapter for the whole chunk


def _split_ttt(group) -> tuple[inner_loop.TTTConfig, TTTSwitches]:
  d = dict(group.to_dict() if hasattr(group, "to_dict") else group or {})
  sw = {k: d.pop(k) for k in ("enabled", "shared_adapter") if k in d}
  return (configlib.from_config(inner_loop.TTTConfig, d),
          configlib.from_config(TTTSwitches, sw))


# --- tasks and model ---------------------------------------------------------


def load_tasks(cfg: RunConfig) -> tuple[list[arc.Task], list[dict]]:
  """(valid tasks, skipped records) as configured; bad tasks are skipped."""
  errors: list[arc.TaskError] = []
  if cfg.challenges:
    tasks = arc.load_json(cfg.challenges, cfg.solutions or None,
                          errors=errors)
  else:
    tasks = arc.load_arc(cfg.version, cfg.split, errors=errors)
  skipped = [dict(id=str(e.task_id), skipped=e.problem, num_tests=1)
             for e in errors]
  if cfg.task_ids:
    wanted = set(cfg.task_ids)
    missing = wanted - {t.id for t in tasks} - {s["id"] for s in skipped}
    if missing:
      raise ValueError(f"run.task_ids not found: {sorted(missing)}")
    tasks = [t for t in tasks if t.id in wanted]
    skipped = [s for s in skipped if s["id"] in wanted]
  if cfg.select == "shortest":
    tasks = sorted(tasks, key=lambda t: max(
        tokens.sequence_length(t, k, include_answer=False)
        for k in range(len(t.test))))
  if cfg.num_tasks:
    tasks = tasks[:cfg.num_tasks]
  return tasks, skipped


def load_model(config) -> tuple[Any, Any, Any, dict]:
  """(graphdef, adapter template, base, model config dict) for the run.

  The adapter template is one task's fresh adapter (LoRA/prefix) or, in
  'full' mode, the loaded weights themselves.
  """
  model_cfg = dict(config.model.to_dict())
  path = config.get("init_from", "")
  if path:
    # The checkpoint's shape wins; the compute dtype stays the config's.
    stored = ckpt.load_weights_config(path)["model"]
    fields = {f.name for f in dataclasses.fields(model_lib.ModelConfig)}
    model_cfg.update({k: v for k, v in stored.items()
                      if k in fields and k != "dtype"})
  model = model_lib.make_model(model_cfg, config.adapter,
                               jax.random.key(config.run.seed))
  graphdef, adapters, base = lora.split(model)
  if path:
    if config.adapter.mode == "full":
      adapters = ckpt.load_weights(path, adapters)
    else:
      base = ckpt.load_weights(path, base)
  else:
    logging.warning("init_from is empty: this run uses an UNTRAINED base "
                    "model; expect 0%% accuracy")
  return graphdef, adapters, base, model_cfg


# --- one chunk --------------------------------------------------------------


def _stack(items):
  return jax.tree.map(lambda *x: np.stack(x), *items)


def _fits(task: arc.Task, max_len: int) -> str | None:
  for k in range(len(task.test)):
    n = tokens.sequence_length(task, k, include_answer=False)
    if n >= max_len:
      return (f"sequence needs {n} tokens before the answer, data.max_len "
              f"is {max_len} (not truncated: skipped)")
  return None


class _Query:
  """One test input of one task: its views, their prompt lengths and (after
  decoding) predictions. Prompts are encoded only by the host that decodes
  them (`encode`)."""

  def __init__(self, task_slot, task, test_index, view_list, max_len):
    self.task_slot = task_slot
    self.task = task
    self.test_index = test_index
    self.max_len = max_len
    self.views = []
    self.lengths = []  # real prompt tokens per kept view
    self.too_long = 0
    for v in view_list:
      n = tokens.sequence_length(views.view_task(task, test_index, v),
                                 include_answer=False)
      if n >= max_len:  # no room for an answer token (views.prompt's rule)
        self.too_long += 1
        continue
      self.views.append(v)
      self.lengths.append(n)
    self.predictions: list[np.ndarray | None] = []  # task frame

  def encode(self) -> list[tokens.Encoded]:
    """The kept views' prompts."""
    return [views.prompt(self.task, self.test_index, v, self.max_len)
            for v in self.views]


def real_length(ds: data.TTTDataset) -> int:
  """1 + the last sequence position holding a real token in any row."""
  real = (ds.tokens != tokens.PAD).any(axis=tuple(range(ds.tokens.ndim - 1)))
  return int(np.flatnonzero(real).max()) + 1 if real.any() else 1


def trim_length(ds: data.TTTDataset, bucket: int,
                longest: int | None = None) -> data.TTTDataset:
  """Cuts the sequence axis of [T, N, L] datasets to the longest real row
  (or `longest`, e.g. the longest over hosts), rounded up to a multiple of
  `bucket` (padding costs compute, not accuracy: it is masked out of the
  loss and never attended to)."""
  longest = real_length(ds) if longest is None else longest
  length = min(ds.tokens.shape[-1], -(-longest // bucket) * bucket)
  return data.TTTDataset(ds.tokens[..., :length], ds.mask[..., :length],
                         ds.positions[..., :length],
                         ds.coords[..., :length, :], ds.valid)


def _blank(data_cfg: data.DataConfig) -> data.TTTDataset:
  """A task with no data (padding rows of the task axis)."""
  n, length = data_cfg.num_sequences, data_cfg.max_len
  return data.TTTDataset(np.full((n, length), tokens.PAD, np.int32),
                         np.zeros((n, length), np.int32),
                         np.zeros((n, length), np.int32),
                         np.zeros((n, length, 3), np.int32),
                         np.zeros(n, bool))


def _groups(config, ttt_fields: dict) -> ml_collections.ConfigDict:
  """The model/adapter/ttt groups the inner loop reads."""
  return ml_collections.ConfigDict(dict(
      model=config.model.to_dict(), adapter=config.adapter.to_dict(),
      ttt=ttt_fields))


def _train_adapters(config, ttt_cfg, switches, graphdef, base, template,
                    datasets, keys, mesh):
  """Adapters [T] for the chunk (and per-task TTT metrics).

  `datasets` maps a task slot to its TTT dataset: every slot with a shared
  adapter, otherwise only the slots this host holds (`_my_slots`); the
  others' rows are built by their own hosts.
  """
  n = len(keys)
  full = config.adapter.mode == "full"
  init = lora.init_adapters(config, jax.random.fold_in(
      jax.random.key(config.run.seed), 1), n, template if full else None)
  if not switches.enabled:
    return init, dict(final_loss=[None] * n, nonfinite=[False] * n,
                      rows=[0] * n)
  bucket = config.decode.get("prompt_bucket", 128)
  if switches.shared_adapter:
    ds = trim_length(_stack([datasets[i] for i in range(n)]), bucket)
    rows = jax.tree.map(lambda x: x.reshape((1, -1) + x.shape[2:]), ds)
    shared_cfg = dict(dataclasses.asdict(ttt_cfg))
    shared_cfg["steps"] = ttt_cfg.steps * n
    fn = inner_loop.make_inner_loop(_groups(config, shared_cfg), graphdef)
    one = jax.tree.map(lambda x: x[:1], init)
    out, m = fn(base, one, rows, keys[:1])
    adapters = jax.tree.map(lambda x: jnp.repeat(x, n, 0), out)
    loss = float(np.asarray(m["loss"])[0, -1])
    return adapters, dict(final_loss=[loss] * n,
                          nonfinite=[bool(m["nonfinite"][0])] * n,
                          rows=[int(d.valid.sum()) for d in ds_list(ds)])
  fn = inner_loop.make_inner_loop(
      _groups(config, dataclasses.asdict(ttt_cfg)), graphdef)
  total = sharding.padded_count(n, mesh.size)
  mine = sharding.local_rows(total, mesh)
  blank = _blank(data.DataConfig.make(config.data))
  local = _stack([datasets.get(int(r), blank) for r in mine])
  local = trim_length(local, bucket, sharding.global_max(real_length(local)))
  p_ds = sharding.put_rows(local, total, mesh)
  (p_init, p_keys), _ = sharding.pad_tasks((init, keys), mesh.size)
  out, m = fn(sharding.replicate(base, mesh),
              sharding.shard_tasks(p_init, mesh), p_ds,
              sharding.shard_tasks(p_keys, mesh))
  adapters = jax.tree.map(lambda x: x[:n], out)
  m = sharding.gather(dict(loss=m["loss"], nonfinite=m["nonfinite"],
                           rows=sharding.put_rows(local.valid.sum(-1), total,
                                                  mesh)))
  return adapters, dict(
      final_loss=[float(x) for x in m["loss"][:n, -3:].mean(-1)],
      nonfinite=[bool(x) for x in m["nonfinite"][:n]],
      rows=[int(x) for x in m["rows"][:n]])


def ds_list(ds: data.TTTDataset) -> list[data.TTTDataset]:
  """[T, N, ...] -> T one-task datasets."""
  return [jax.tree.map(lambda x, i=i: x[i], ds) for i in range(len(ds.valid))]


def _my_slots(n: int, mesh, everything: bool) -> list[int]:
  """The task slots (< n) whose TTT data this host builds."""
  if everything:
    return list(range(n))
  rows = sharding.local_rows(sharding.padded_count(n, mesh.size), mesh)
  return [int(r) for r in rows if r < n]


def _decode_queries(queries, adapters, graphdef, base, dec_cfg, mesh,
                    decoder_cache, seed: int = 0):
  """Greedy predictions for every query x view (fills q.predictions).

  Queries are the rows of a task-sharded batch; each host encodes only the
  prompts of the rows its devices hold.
  """
  if not queries:
    return
  longest = max(n for q in queries for n in q.lengths)
  plen = min(queries[0].max_len,
             -(-longest // dec_cfg.prompt_bucket) * dec_cfg.prompt_bucket)
  num_v = max(len(q.views) for q in queries)
  max_new = min(dec_cfg.max_new_tokens, tokens.MAX_ANSWER_TOKENS)
  n_q = len(queries)
  total = sharding.padded_count(n_q, mesh.size)
  mine = sharding.local_rows(total, mesh)
  prompts = np.full((len(mine), num_v, plen), tokens.PAD, np.int32)
  coords = np.zeros((len(mine), num_v, plen, 3), np.int32)
  lengths = np.ones((len(mine), num_v), np.int32)
  segs = np.zeros((len(mine), num_v), np.int32)
  valid = np.zeros((len(mine), num_v), bool)
  for i, r in enumerate(mine):
    if r >= n_q:
      continue  # padding row
    q = queries[r]
    for j, (v, p) in enumerate(zip(q.views, q.encode(), strict=True)):
      prompts[i, j] = p.tokens[:plen]
      coords[i, j] = p.coords[:plen]
      lengths[i, j] = p.length
      segs[i, j] = 2 * len(v.demos) + 1
      valid[i, j] = True
  slots = np.array([q.task_slot for q in queries])
  per_query = jax.tree.map(lambda a: a[slots], adapters)
  per_query, _ = sharding.pad_tasks(per_query, mesh.size)
  temperature = dec_cfg.temperature
  extra = ()
  if temperature > 0:  # one key per row, from the task and test indices
    keys = np.zeros((len(mine), num_v, 2), np.uint32)
    for i, r in enumerate(mine):
      if r < n_q:
        q = queries[r]
        k = jax.random.fold_in(jax.random.fold_in(
            jax.random.key(seed), q.task_index), q.test_index)
        keys[i] = np.asarray(jax.random.key_data(jax.random.split(
            jax.random.fold_in(k, 7), num_v)))
    extra = (jax.random.wrap_key_data(sharding.put_rows(keys, total, mesh)),)
  key = (plen, max_new, temperature)
  if key not in decoder_cache:
    decoder_cache[key] = decode.make_greedy_decoder(None, graphdef, plen,
                                                    max_new, temperature)
  out = decoder_cache[key](
      sharding.replicate(base, mesh), sharding.shard_tasks(per_query, mesh),
      *sharding.put_rows((prompts, lengths, coords, segs, valid), total,
                         mesh), *extra)
  out = sharding.gather(out)
  for i, q in enumerate(queries):
    for j, v in enumerate(q.views):
      q.predictions.append(views.to_original(v, tokens.decode_grid(out[i, j])))


def _pad_votes(groups: list[list[np.ndarray | None]], num_g: int, num_s: int):
  """Padded vote inputs from predictions grouped by view category."""
  grids = np.zeros((num_g, num_s, 30, 30), np.int8)
  shapes = np.ones((num_g, num_s, 2), np.int32)
  ok = np.zeros((num_g, num_s), bool)
  for g, preds in enumerate(groups):
    for s, p in enumerate(preds):
      if p is not None:
        grids[g, s], shapes[g, s] = augment.pad_grid(p)
        ok[g, s] = True
  return grids, shapes, ok


def _categories(q: _Query) -> list[str]:
  cats = []
  for v in q.views:
    if v.category not in cats:
      cats.append(v.category)
  return cats


def _vote_jitted(queries, method: str):
  """Hierarchical / flat votes for all queries in one vmapped call."""
  cats = [_categories(q) for q in queries]
  num_g = max(1, max(len(c) for c in cats))
  num_s = max(1, max(sum(v.category == c for v in q.views)
                     for q, cs in zip(queries, cats, strict=True)
                     for c in cs))
  batch = []
  for q, cs in zip(queries, cats, strict=True):
    groups = [[p for v, p in zip(q.views, q.predictions, strict=True)
               if v.category == c] for c in cs]
    g, s, ok = _pad_votes(groups, num_g, num_s)
    ident = np.array([c == views.IDENTITY for c in cs]
                     + [False] * (num_g - len(cs)))
    batch.append((g, s, ok, ident))
  g, s, ok, ident = (np.stack(x) for x in zip(*batch, strict=True))
  fn = vote.hierarchical_vote if method == "hierarchical" else vote.flat_vote
  res = vote.vmap_vote(fn)(g, s, ok, ident)
  out = []
  for i in range(len(queries)):
    found = np.asarray(res.found[i])
    grids = [augment.unpad_grid(np.asarray(res.grids[i, k]),
                                np.asarray(res.shapes[i, k]))
             if found[k] else None for k in range(2)]
    out.append(grids)
  return out


def _distinct(preds) -> list[tuple[np.ndarray, int]]:
  seen: dict = {}
  for p in preds:
    if p is None:
      continue
    k = (p.shape, p.tobytes())
    if k in seen:
      seen[k][1] += 1
    else:
      seen[k] = [p, 1]
  return sorted((tuple(x) for x in seen.values()), key=lambda x: -x[1])


def _vote_poe(queries, adapters, graphdef, base, config, mesh):
  """Product of experts: rescore distinct candidates under every view."""
  max_len = config.data.max_len
  cfg = configlib.from_config(VoteConfig, config.vote)
  per_query = []
  rows_all = []
  for q in queries:
    cands = [g for g, _ in _distinct(q.predictions)][:cfg.poe_candidates]
    rows = []
    for c in cands:
      for v in q.views:
        vt = views.view_task(q.task, q.test_index, v, answer=c)
        if tokens.sequence_length(vt) <= max_len:
          rows.append(tokens.encode_task(vt, max_len, loss="query"))
        else:
          rows.append(None)
    per_query.append(cands)
    rows_all.append(rows)
  width = max(1, max(len(r) for r in rows_all))
  n_q = len(queries)
  blank = tokens.Encoded(np.full(max_len, tokens.PAD, np.int32),
                         np.zeros(max_len, np.int32),
                         np.arange(max_len, dtype=np.int32),
                         np.zeros((max_len, 3), np.int32), 0)
  batch = data.TTTDataset(
      tokens=np.stack([[(r or blank).tokens for r in rows]
                       + [blank.tokens] * (width - len(rows))
                       for rows in rows_all]),
      mask=np.stack([[(r or blank).mask for r in rows]
                     + [blank.mask] * (width - len(rows))
                     for rows in rows_all]),
      positions=np.broadcast_to(np.arange(max_len, dtype=np.int32),
                                (n_q, width, max_len)).copy(),
      coords=np.stack([[(r or blank).coords for r in rows]
                       + [blank.coords] * (width - len(rows))
                       for rows in rows_all]),
      valid=np.array([[r is not None for r in rows]
                      + [False] * (width - len(rows)) for rows in rows_all]))
  slots = np.array([q.task_slot for q in queries])
  ad = jax.tree.map(lambda a: a[slots], adapters)
  (ad, batch), _ = sharding.pad_tasks((ad, batch), mesh.size)
  scores = sharding.gather(decode.make_scorer(None, graphdef)(
      sharding.replicate(base, mesh), *sharding.shard_tasks((ad, batch),
                                                            mesh)))
  out = []
  for i, (q, cands) in enumerate(zip(queries, per_query, strict=True)):
    if not cands:
      out.append([None, None])
      continue
    s = scores[i, :len(cands) * len(q.views)].reshape(len(cands),
                                                      len(q.views))
    usable = np.isfinite(s).all(0)  # views where every candidate fits
    s = s[:, usable] if usable.any() else s
    idx, _, found = vote.product_of_experts(jnp.asarray(s))
    idx, found = np.asarray(idx), np.asarray(found)
    out.append([cands[idx[0]] if found[0] else cands[0],
                cands[idx[1]] if found[1] else None])
  return out


def _vote(queries, method, adapters, graphdef, base, config, mesh):
  if not queries:
    return []
  if method in ("hierarchical", "flat"):
    return _vote_jitted(queries, method)
  if method == "product_of_experts":
    return _vote_poe(queries, adapters, graphdef, base, config, mesh)
  out = []
  for q in queries:
    preds = [(v.category, p) for v, p in zip(q.views, q.predictions,
                                              strict=True) if p is not None]
    cats = [c for c in _categories(q) if c != views.IDENTITY]
    a1, a2 = vote.reference_vote(preds, identity=views.IDENTITY,
                                 categories=cats)
    out.append([a1, a2])
  return out


def _query_record(q: _Query, attempts) -> dict:
  truth = q.task.test[q.test_index][1]
  cands: dict = {}
  malformed: dict[str, int] = {}
  for v, p in zip(q.views, q.predictions, strict=True):
    if p is None:
      malformed[v.category] = malformed.get(v.category, 0) + 1
      continue
    k = (p.shape, p.tobytes())
    c = cands.setdefault(k, dict(grid=evaluate.grid_list(p), count=0,
                                 views=[], categories={}))
    c["count"] += 1
    c["views"].append(v.label)
    c["categories"][v.category] = c["categories"].get(v.category, 0) + 1
  a1, a2 = attempts
  a2 = a2 if a2 is not None else a1
  rec = dict(
      attempt_1=None if a1 is None else evaluate.grid_list(a1),
      attempt_2=None if a2 is None else evaluate.grid_list(a2),
      truth=None if truth is None else evaluate.grid_list(truth),
      candidates=sorted(cands.values(), key=lambda c: -c["count"]),
      views=[v.label for v in q.views], views_too_long=q.too_long,
      malformed_by_category=malformed)
  rec["correct"] = (None if truth is None else
                    evaluate.same(a1, truth) or evaluate.same(a2, truth))
  return rec


def run_chunk(config, tasks: list[arc.Task], first_index: int, model,
              mesh, predictor: Callable | None = None,
              decoder_cache: dict | None = None) -> tuple[list[dict], dict]:
  """Runs one chunk of tasks; returns (task records, timings)."""
  graphdef, template, base = model
  run_cfg = configlib.from_config(RunConfig, config.run)
  data_cfg = data.DataConfig.make(config.data)
  view_cfg = configlib.from_config(views.ViewConfig, config.views)
  dec_cfg = configlib.from_config(DecodeConfig, config.decode)
  vote_cfg = configlib.from_config(VoteConfig, config.vote)
  ttt_cfg, switches = _split_ttt(config.ttt)
  decoder_cache = {} if decoder_cache is None else decoder_cache
  key = jax.random.key(run_cfg.seed)
  timings = dict(data=0.0, ttt=0.0, inference=0.0, voting=0.0)

  t0 = time.perf_counter()
  records: list[dict | None] = [None] * len(tasks)
  kept, keys = [], []
  for n, task in enumerate(tasks):
    why = _fits(task, data_cfg.max_len)
    if why:
      records[n] = dict(id=task.id, skipped=why, num_tests=len(task.test))
      logging.warning("skipping task %s: %s", task.id, why)
      continue
    keys.append(jax.random.fold_in(key, first_index + n))
    kept.append(n)
  build = switches.enabled and predictor is None
  datasets = {}  # slot -> dataset, for the slots this host builds
  if build:
    for slot in _my_slots(len(kept), mesh, switches.shared_adapter):
      datasets[slot] = data.build_ttt_dataset(tasks[kept[slot]], data_cfg,
                                              keys[slot])
  timings["data"] = time.perf_counter() - t0

  t0 = time.perf_counter()
  if predictor is None and kept:
    adapters, ttt_metrics = _train_adapters(
        config, ttt_cfg, switches if build else TTTSwitches(enabled=False),
        graphdef, base, template, datasets, jnp.stack(keys), mesh)
    jax.block_until_ready(adapters)
  else:
    adapters, ttt_metrics = None, dict(final_loss=[None] * len(kept),
                                       nonfinite=[False] * len(kept),
                                       rows=[0] * len(kept))
  timings["ttt"] = time.perf_counter() - t0

  t0 = time.perf_counter()
  queries = []
  for slot, n in enumerate(kept):
    task = tasks[n]
    for ti in range(len(task.test)):
      rng = np.random.default_rng([run_cfg.seed, first_index + n, ti])
      q = _Query(slot, task, ti, views.make_views(
          len(task.train), view_cfg, rng), data_cfg.max_len)
      q.task_index = first_index + n
      if predictor is None and dec_cfg.samples > 1:
        # each view decoded `samples` times (sampled answers), all voting
        q.views = [v for v in q.views for _ in range(dec_cfg.samples)]
        q.lengths = [k for k in q.lengths for _ in range(dec_cfg.samples)]
      queries.append(q)
  if predictor is not None:
    for q in queries:
      for v in q.views:
        q.predictions.append(views.to_original(
            v, predictor(q.task, q.test_index, v)))
  else:
    _decode_queries(queries, adapters, graphdef, base, dec_cfg, mesh,
                    decoder_cache, run_cfg.seed)
  timings["inference"] = time.perf_counter() - t0

  t0 = time.perf_counter()
  method = vote_cfg.method
  if predictor is not None and method == "product_of_experts":
    raise ValueError("product_of_experts needs the model (no predictor)")
  attempts = _vote(queries, method, adapters, graphdef, base, config, mesh)
  timings["voting"] = time.perf_counter() - t0

  by_slot: dict[int, list] = {}
  for q, a in zip(queries, attempts, strict=True):
    by_slot.setdefault(q.task_slot, []).append(_query_record(q, a))
  for slot, n in enumerate(kept):
    tests = by_slot.get(slot, [])
    known = [t["correct"] for t in tests if t["correct"] is not None]
    records[n] = dict(
        id=tasks[n].id, tests=tests,
        correct=all(known) if known and len(known) == len(tests) else None,
        decodes=sum(len(t["views"]) for t in tests),
        malformed=sum(sum(t["malformed_by_category"].values())
                      for t in tests),
        ttt=dict(rows=ttt_metrics["rows"][slot],
                 final_loss=ttt_metrics["final_loss"][slot],
                 nonfinite=ttt_metrics["nonfinite"][slot]))
    if ttt_metrics["nonfinite"][slot]:
      logging.warning("task %s: TTT loss went non-finite; its adapter was "
                      "reset to the initial one", tasks[n].id)
  return records, timings


# --- the whole run ----------------------------------------------------------


def _chunk_path(workdir, index):
  return os.path.join(workdir, "chunks", f"{index:05d}.json")


def run(config, workdir: str, predictor: Callable | None = None,
        stop_after_chunks: int = 0) -> dict:
  """The main job (see module docstring). Returns the summary dict.

  Args:
    config: ConfigDict with groups run, model, adapter, data, ttt, views,
      decode, vote and `init_from` (see `configs/arc_ttt.py`).
    workdir: output directory; an existing one is resumed.
    predictor: optional test double replacing the model's decoding.
    stop_after_chunks: stop after this many new chunks (0: run all) --
      how tests simulate a killed run.

  Several hosts (`ttt.sharding.initialize_distributed`): every host calls
  `run` with the same arguments; each builds the TTT data of its own tasks,
  process 0 writes every file and decides which chunks a resumed run skips.
  Hosts that cannot read process 0's workdir return a summary of the chunks
  they ran; process 0's is the run's.
  """
  run_cfg = configlib.from_config(RunConfig, config.run)
  configlib.from_config(VoteConfig, config.vote)
  configlib.from_config(views.ViewConfig, config.views)
  configlib.from_config(DecodeConfig, config.decode)
  os.makedirs(os.path.join(workdir, "chunks"), exist_ok=True)
  is_main = sharding.is_main()
  if is_main:
    with open(os.path.join(workdir, "config.json"), "w",
              encoding="utf-8") as f:
      f.write(config.to_json_best_effort(indent=2))
  writer = metrics.MetricsWriter(os.path.join(workdir, "metrics.jsonl"))

  tasks, skipped = load_tasks(run_cfg)
  for s in skipped:
    logging.warning("skipping task %s: %s", s["id"], s["skipped"])
  logging.info("%d tasks to run (%d skipped at load)", len(tasks),
               len(skipped))
  mesh = sharding.make_mesh()
  model = None
  untrained = not config.get("init_from", "")
  if predictor is None:
    graphdef, template, base, model_cfg = load_model(config)
    model = (graphdef, template, base)
    logging.info("model: %s, %d base parameters, adapter %s",
                 config.get("init_from", "") or "UNTRAINED",
                 model_lib.count_params(base if config.adapter.mode != "full"
                                        else template),
                 config.adapter.mode)
  else:
    model = (None, None, None)

  size = run_cfg.chunk_size
  chunks = [tasks[i:i + size] for i in range(0, len(tasks), size)]
  results: list[dict] = []
  timings = dict(data=0.0, ttt=0.0, inference=0.0, voting=0.0)
  decoder_cache: dict = {}
  new_chunks = 0
  t_start = time.perf_counter()
  done_tasks = 0
  for c, chunk in enumerate(chunks):
    path = _chunk_path(workdir, c)
    stored = _stored_chunk(path, chunk)
    # Process 0's files decide, so every host skips or runs the same chunks.
    if bool(sharding.broadcast(np.int32(stored is not None))):
      if stored is not None:  # hosts without process 0's files lack them
        results += stored["records"]
        for k, v in stored["timings"].items():
          timings[k] += v
      logging.info("chunk %d/%d: already done (resumed)", c + 1,
                   len(chunks))
      continue
    if stop_after_chunks and new_chunks >= stop_after_chunks:
      logging.info("stopping after %d chunks (resume with the same "
                   "workdir)", new_chunks)
      sharding.barrier("pipeline.run")
      return dict(stopped=True, chunks_done=c)
    records, t = run_chunk(config, chunk, c * size, model, mesh, predictor,
                           decoder_cache)
    if is_main:
      evaluate.write_json(path, dict(records=records, timings=t))
    new_chunks += 1
    done_tasks += len(chunk)
    results += records
    for k, v in t.items():
      timings[k] += v
    partial = evaluate.score(results)
    elapsed = time.perf_counter() - t_start
    remaining = sum(len(x) for x in chunks[c + 1:])
    eta = elapsed / max(done_tasks, 1) * remaining
    writer.write(c, chunk=c, tasks_done=len(results),
                 pass2=partial["pass2"], coverage=partial["coverage"],
                 **{f"time_{k}": v for k, v in t.items()})
    logging.info("chunk %d/%d: %d/%d tasks, pass@2 so far %d/%d (%.1f%%), "
                 "ETA %.0fs", c + 1, len(chunks), len(results), len(tasks),
                 partial["pass2_tasks"], partial["scored_tasks"],
                 100 * partial["pass2"], eta)

  results = skipped + results
  summary = evaluate.score(results)
  summary["timings_s"] = timings
  summary["untrained_model"] = untrained and predictor is None
  if is_main:
    sub = evaluate.submission(results)
    evaluate.check_submission(sub)
    evaluate.write_json(os.path.join(workdir, "submission.json"), sub)
    evaluate.write_json(os.path.join(workdir, "results.json"),
                        dict(summary=summary, tasks=results))
    header = (f"Model: `{config.get('init_from', '') or 'UNTRAINED'}`; "
              f"adapter {config.adapter.mode}; TTT "
              f"{'on' if config.ttt.get('enabled', True) else 'off'} "
              f"({config.ttt.get('steps')} steps); vote "
              f"{config.vote.method}; data "
              f"{run_cfg.challenges or f'ARC-AGI-{run_cfg.version}'} "
              f"{'' if run_cfg.challenges else run_cfg.split}.")
    if summary["untrained_model"]:
      header += " **The base model is untrained: accuracy is meaningless.**"
    evaluate.write_report(workdir, results,
                          summary, {t.id: t for t in tasks}, timings, header,
                          run_cfg.num_renderings)
    writer.write(len(chunks), final=True,
                 **{k: v for k, v in summary.items()
                    if k not in ("category_accuracy", "timings_s")},
                 category_accuracy=summary["category_accuracy"],
                 timings_s=timings)
  logging.info("done: pass@2 %d/%d tasks (%.1f%%), coverage %.1f%%, "
               "written to %s", summary["pass2_tasks"],
               summary["scored_tasks"], 100 * summary["pass2"],
               100 * summary["coverage"], workdir)
  sharding.barrier("pipeline.run")
  return summary


def _stored_chunk(path: str, chunk: list[arc.Task]) -> dict | None:
  """The finished chunk at `path` if it holds exactly `chunk`'s tasks."""
  if not os.path.exists(path):
    return None
  with open(path, encoding="utf-8") as f:
    stored = json.load(f)
  if [r["id"] for r in stored["records"]] != [t.id for t in chunk]:
    logging.warning("%s holds other tasks; redoing that chunk", path)
    return None
  return stored
