"""The main job's config schema: typed groups, parsed and validated once.

`parse(config) -> Job` turns the ConfigDict of `configs/arc_ttt.py` (or a
`Job`) into frozen dataclasses, one per group, and checks the method names
against their registries (`ttt.decoders.METHODS`, `ttt.select.RULES`) when
the config is read, so a typo fails before any work. `fingerprint(job)` is
what determines a run's results (a resumed run must match it);
`describe(job, ...)` is the report's one-line description of the run.

This module reads files only to fingerprint them (the base model and the
challenges / solutions files, by content); it loads nothing else.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import NamedTuple

from ttt import (
  adapt,
  codec,
  configlib,
  data,
  decoders,
  files,
  inner_loop,
  select,
  views,
  weights,
)
from ttt import model as model_lib

DecodeConfig = decoders.DecodeConfig  # the `config.decode` group
VoteConfig = select.VoteConfig  # the `config.vote` group


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """What to run on, and how it is cut into chunks (the `config.run` group)."""

  version: int = 1  # ARC-AGI version (1 or 2) when no challenges file
  split: str = "evaluation"  # 'evaluation' or 'training'
  challenges: str = ""  # Kaggle-format challenges JSON (overrides split)
  solutions: str = ""  # optional solutions JSON for scoring
  task_ids: tuple[str, ...] = ()  # only these tasks, in this order
  num_tasks: int = 0  # keep this many tasks after selection (0: all)
  # 'first' (file order, or task_ids' order) or 'shortest' sequences
  select: str = "first"
  chunk_size: int = 32  # tasks per compiled chunk, at most (see memory_gb)
  # GiB the run may use (0: 90% of the machine's memory, or the cgroup's
  # limit, or on GPU/TPU of a device's): chunks shrink below chunk_size
  # until XLA's memory analysis of the programs fits; a run that cannot
  # fit one task is refused before any work (ttt.memory.fit_memory)
  memory_gb: float = 0.0
  # 'run': chunks follow the run's order; 'length': tasks of similar length
  # share a chunk (by their longest TTT row, else prompt), so with
  # fixed_shapes=False each chunk pads to its own length (outputs stay in
  # the run's order; results are the same up to float summation order)
  chunk_order: str = "run"
  seed: int = 0  # TTT data, adapters, views
  num_renderings: int = 8  # tasks drawn in report.md
  length_bucket: int = 32  # sequence lengths padded up to a multiple
  fixed_shapes: bool = True  # one set of shapes for the whole run
  overwrite: bool = False  # discard a workdir's chunks of another config
  # devices per model group: the mesh is (tasks, model) of shape (n / M, M)
  # and the frozen base is split over `model` (ttt.sharding: tensor
  # parallelism); 1: every device holds the whole base (the 1-D task mesh);
  # 0 ('auto'): the smallest M at which the TTT program of one task per
  # task-axis device fits run.memory_gb (ttt.memory.fit_model_axis). The
  # memory plan is per device: XLA's analysis of the partitioned programs
  model_parallel: int = 1

  def validate(self) -> None:
    if self.select not in ("first", "shortest"):
      raise ValueError("run.select must be 'first' or 'shortest'")
    if self.chunk_size < 1:
      raise ValueError("run.chunk_size must be >= 1")
    if (isinstance(self.model_parallel, bool)
        or not isinstance(self.model_parallel, int)
        or self.model_parallel < 0):
      raise ValueError("run.model_parallel must be an integer >= 1 (devices "
                       "per model group) or 0 (auto: the smallest that "
                       f"fits), got {self.model_parallel!r}")
    if not self.memory_gb >= 0 or self.memory_gb == float("inf"):
      raise ValueError(f"run.memory_gb must be a finite number >= 0 (0: "
                       f"what the machine has), got {self.memory_gb!r}")
    if self.chunk_order not in ("run", "length"):
      raise ValueError(f"run.chunk_order must be 'run' or 'length', got "
                       f"{self.chunk_order!r}")
    if self.num_tasks < 0:
      raise ValueError(f"run.num_tasks must be >= 0 (0: all), got "
                       f"{self.num_tasks}")
    if self.length_bucket < 1:
      raise ValueError("run.length_bucket must be >= 1")
    if self.version not in (1, 2):
      raise ValueError(f"run.version must be 1 or 2, got {self.version}")
    if self.num_renderings < 0:
      raise ValueError("run.num_renderings must be >= 0")


class Job(NamedTuple):
  """Every group of the main job's config, parsed and validated once."""

  init_from: str
  run: RunConfig
  model: model_lib.ModelConfig
  adapter: model_lib.AdapterConfig
  data: data.DataConfig
  ttt: inner_loop.TTTConfig
  views: views.ViewConfig
  decode: decoders.DecodeConfig
  vote: select.VoteConfig


JobConfig = Job  # the name before the stages refactor


def parse(config) -> Job:
  """The typed groups of `config` (a ConfigDict, or a `Job` as it is).

  Raises:
    ValueError: an unknown field, a bad value, or a method name that is
      not in its registry (naming the known ones).
  """
  if isinstance(config, Job):
    return config
  get = config.get if hasattr(config, "get") else (
      lambda k, d=None: getattr(config, k, d))
  job = Job(
      init_from=get("init_from", "") or "",
      run=configlib.from_config(RunConfig, get("run")),
      model=configlib.from_config(model_lib.ModelConfig, get("model")),
      adapter=configlib.from_config(model_lib.AdapterConfig, get("adapter")),
      data=configlib.from_config(data.DataConfig, get("data")),
      ttt=configlib.from_config(inner_loop.TTTConfig, get("ttt")),
      views=configlib.from_config(views.ViewConfig, get("views")),
      decode=configlib.from_config(decoders.DecodeConfig, get("decode")),
      vote=configlib.from_config(select.VoteConfig, get("vote")))
  decoders.method(job.decode)  # registry checks: decode.method, vote rules
  select.check(job.vote)
  codec.check(job.data, decoders.method(job.decode).needs_grammar,
              job.decode.method)  # data.codec, its style, the method
  adapt.check(job.ttt, job.adapter)  # ttt.protocol; a task embedding
  return job


def as_test_double(job: Job) -> Job:
  """The job a test double (`predictor`) runs: it answers each view once
  and nothing trains (a rule that rescores with the model is refused:
  `ttt.pipeline.make_stages`), so its decode group -- and its fingerprint
  -- is greedy, one sample, TTT off."""
  return job._replace(
      decode=dataclasses.replace(job.decode, method="greedy",
                                 temperature=0.0, samples=1),
      ttt=dataclasses.replace(job.ttt, enabled=False))


# What determines a run's results (a resumed run must match it); the
# rest (renderings) may change between a run and its resumption.
# memory_gb: it sets chunk sizes only, and results do not depend on those
# (tasks are keyed by their index in the run; a resumed chunk must hold
# the same tasks, `ttt.workdir.stored_chunk`)
_COSMETIC = {("run", "num_renderings"), ("run", "overwrite"),
             ("run", "memory_gb")}


def file_digest(path: str) -> str:
  """'sha256:<hex>' of a file's bytes ('' for no path); an unreadable file
  gives its path back (the run fails on reading it later, by name)."""
  if not path:
    return ""
  h = hashlib.sha256()
  try:
    with open(path, "rb") as f:
      for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
  except OSError:
    return path
  return "sha256:" + h.hexdigest()


# Fields added after workdirs existed, left out of the fingerprint at the
# value that reproduces the runs made before them (so those resume); any
# other value is fingerprinted. `ttt.workdir.open_workdir` drops them from
# a stored fingerprint likewise (`ttt.shared_adapter`, gone since
# `ttt.protocol`: False was per_task).
NEUTRAL = {"ttt.protocol": "per_task", "ttt.shared_adapter": False,
           "ttt.run_wide_batch": 0, "run.model_parallel": 1}


def fingerprint(job: Job) -> dict:
  """The fields of `job` that determine the results, flattened.

  The base model is known by its content (`weights.digest`), not its path: a
  moved checkout resumes, a checkpoint replaced in place does not; the
  challenges and solutions files likewise by the hash of their bytes, so
  a file edited in place and the same command rerun starts afresh
  instead of reusing predictions and scores of the old content.
  """
  out = {"init_from": weights.digest(job.init_from)}
  for group, value in job._asdict().items():
    if dataclasses.is_dataclass(value):
      for k, v in dataclasses.asdict(value).items():
        name = f"{group}.{k}"
        if (group, k) not in _COSMETIC and not (
            name in NEUTRAL and NEUTRAL[name] == v):
          out[name] = list(v) if isinstance(v, tuple) else v
  for k in ("challenges", "solutions"):
    out[f"run.{k}"] = file_digest(getattr(job.run, k))
  return out


def describe(job: Job, model_calls: int, untrained: bool,
             base: str = "") -> str:
  """The report's one-line description of the run (markdown; the paths in
  it escaped, the challenges file by its name; `base`: what the base model
  is, e.g. a pretrained LM's token mapping)."""
  rc = job.run
  ttt_text = (f"TTT on ({job.ttt.steps} steps per task, protocol "
              f"{job.ttt.protocol})" if job.ttt.enabled else "TTT off")
  data_text = (files.md_code(os.path.basename(rc.challenges))
               if rc.challenges else f"ARC-AGI-{rc.version} {rc.split}")
  text = (f"Model: {files.md_code(job.init_from or 'UNTRAINED')}; "
          f"adapter {job.adapter.mode}; {ttt_text}; decode "
          f"{decoders.method(job.decode).describe(job.decode)} "
          f"({model_calls} model calls); vote {job.vote.method}; data "
          f"{data_text}.")
  if job.ttt.enabled:
    text += adapt.protocol(job.ttt).report
  if base:  # what the base is (a pretrained LM's token mapping)
    text += f" Base: {files.md_text(base)}."
  if untrained:
    text += " **The base model is untrained: accuracy is meaningless.**"
  return text
