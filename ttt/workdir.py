"""The main job's workdir: the lock, the resume check, chunk files.

A workdir holds `fingerprint.json` (what determines the results, from
`ttt.job.fingerprint`), `config.json`, and `chunks/NNNNN.json`, one per
finished chunk, written atomically. `open_workdir` takes an advisory lock
(released when the process dies, however it dies) so two runs never write
one workdir, refuses to resume chunks made under another config (or clears
them with `run.overwrite`), and records the fingerprint. `stored_chunk`
reads a finished chunk back when it holds exactly the expected tasks; a
truncated or foreign file is redone, with a warning naming it.
Process 0 decides and writes; every host learns its decision.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
from typing import NamedTuple

import jax
import numpy as np
from absl import logging

from ttt import errors, files, sharding


class WorkdirError(errors.InputError):
  """The workdir cannot be used as asked (names the workdir and why)."""


class Workdir(NamedTuple):
  """An open workdir.

  Attributes:
    path: the directory.
    lock: the open lock file (held until closed or the process exits);
      None on hosts other than process 0.
  """

  path: str
  lock: object | None

  def chunk_path(self, index: int) -> str:
    return os.path.join(self.path, "chunks", f"{index:05d}.json")

  def file(self, name: str) -> str:
    return os.path.join(self.path, name)

  def close(self) -> None:
    if self.lock is not None:
      self.lock.close()


def _lock(path: str):
  """An exclusive advisory lock on `path/.lock` (WorkdirError naming the
  holder's pid when another process holds it). The lock file is opened
  with O_NOFOLLOW: a symbolic link planted at `.lock` (a workdir under a
  shared folder) is refused, never followed and overwritten."""
  name = os.path.join(path, ".lock")
  try:
    fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
  except OSError as e:
    if os.path.islink(name):
      raise WorkdirError(
          f"{name} is a symbolic link (to {os.readlink(name)!r}): refusing "
          "to follow it; remove it, or use another --workdir") from None
    raise WorkdirError(f"{name}: cannot open the lock file ({e.strerror})"
                       ) from None
  if not os.path.isfile(name) or os.path.islink(name):
    os.close(fd)
    raise WorkdirError(f"{name} is not a regular file; remove it, or use "
                       "another --workdir")
  f = os.fdopen(fd, "r+", encoding="utf-8")
  try:
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError:
    f.seek(0)
    holder = f.read().strip() or "unknown"
    f.close()
    raise WorkdirError(
        f"{path} is in use by another run (pid {holder}); wait for it, or "
        "use another --workdir") from None
  f.seek(0)
  f.truncate()
  f.write(str(os.getpid()))
  f.flush()
  return f


def read_json(path: str, what: str):
  """The JSON in `path`; WorkdirError naming the file and the remedy when
  it is not JSON (truncated, zeroed)."""
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise WorkdirError(
        f"{path} ({what}) is not valid JSON ({e}); delete it to start "
        "that part over") from None


def open_workdir(path: str, fingerprint: dict, overwrite: bool,
                 config_json: str, neutral: dict | None = None) -> Workdir:
  """Locks `path` (created if needed) and checks it can resume.

  Args:
    path: the workdir.
    fingerprint: what determines the results (`ttt.job.fingerprint`).
    overwrite: discard finished chunks made under another fingerprint
      instead of refusing.
    config_json: the config as given, written to `config.json`.
    neutral: {field: value} left out of a stored fingerprint at that value
      (`ttt.job.NEUTRAL`: fields added or removed since it was written).

  Raises:
    WorkdirError: another run holds the workdir, or it holds chunks of
      another config and `overwrite` is False (naming what changed).
  """
  if not path:
    raise WorkdirError("--workdir is empty: name a directory for the "
                       "outputs")
  chunks = os.path.join(path, "chunks")
  os.makedirs(chunks, exist_ok=True)
  main = sharding.is_main()
  lock = _lock(path) if main else None
  try:
    fp_path = os.path.join(path, "fingerprint.json")
    now = json.loads(json.dumps(files.strict(fingerprint)))
    before, changed = {}, []
    if main and os.path.exists(fp_path) and os.listdir(chunks):
      try:
        before = read_json(fp_path, "the resume fingerprint")
      except WorkdirError as e:  # unreadable: the chunks' config unknown
        before = {"unreadable": str(e)}
      if not isinstance(before, dict):
        before = {"unreadable": repr(before)[:80]}
      before = {k: v for k, v in before.items()
                if k not in (neutral or {}) or neutral[k] != v}
      changed = sorted(k for k in set(before) | set(now)
                       if before.get(k) != now.get(k))
    if bool(sharding.broadcast(np.int32(bool(changed)))):
      if not overwrite:
        what = (", ".join(f"{k}: {before.get(k)!r} -> {now.get(k)!r}"
                          for k in changed[:8]) if changed
                else "see process 0's message")
        raise WorkdirError(
            f"{path} holds finished chunks of a run with another config "
            f"({what}); use another --workdir, or set run.overwrite=True "
            "to start over (--config.run.overwrite=True; in launch.table "
            "--config.job.run.overwrite=True)")
      if main:
        logging.warning("run.overwrite: discarding the finished chunks in "
                        "%s (changed: %s)", path, ", ".join(changed))
        for name in os.listdir(chunks):
          os.remove(os.path.join(chunks, name))
      sharding.barrier("workdir.overwrite")
    if main:
      files.write_json(fp_path, now)
      files.write_text(os.path.join(path, "config.json"), config_json)
  except BaseException:
    if lock is not None:
      lock.close()
    raise
  return Workdir(path, lock)


def state_dir(wd: Workdir, fingerprint: dict) -> str:
  """`<workdir>/protocol/<digest of the run's fingerprint>`: where a
  run-wide adaptation keeps its state, so that only the same config ever
  resumes it (a run killed before its first chunk has no chunk for
  `open_workdir` to check; the state file records the digest too, so a
  state copied into another config's folder is refused). Other configs'
  states are kept: nothing here deletes."""
  digest = hashlib.sha256(json.dumps(files.strict(fingerprint),
                                     sort_keys=True).encode()).hexdigest()
  return os.path.join(wd.file("protocol"), digest[:16])


def stored_chunk(wd: Workdir, index: int, ids: list[str],
                 slots: int | None = None) -> dict | None:
  """Finished chunk `index` if its file holds exactly the tasks `ids`
  (records, timings, padding) and, given `slots`, was run on that many
  task slots (a file without the count passes); None to redo it
  (missing, or a file that is truncated, not a chunk, of other tasks or
  of another slot count: said in a warning)."""
  path = wd.chunk_path(index)
  if not os.path.exists(path):
    return None
  try:
    stored = read_json(path, "a finished chunk")
  except WorkdirError as e:
    logging.warning("%s; redoing that chunk", e)
    return None
  ok = (isinstance(stored, dict) and isinstance(stored.get("records"), list)
        and all(isinstance(r, dict) and "id" in r for r in stored["records"])
        and isinstance(stored.get("timings", {}), dict))
  if not ok:
    logging.warning("%s is not a finished chunk (no records); redoing that "
                    "chunk", path)
    return None
  if [r["id"] for r in stored["records"]] != list(ids):
    logging.warning("%s holds other tasks; redoing that chunk", path)
    return None
  if slots is not None and stored.get("slots", slots) != slots:
    logging.warning("%s ran on %s task slots, the plan has %d (chunks "
                    "planned for another memory budget); redoing that "
                    "chunk", path, stored.get("slots"), slots)
    return None
  return stored


PLAN_FILE = "plan.json"  # under chunks/: cleared with them


def stored_plan(wd: Workdir, budget: tuple[float, str], ids: list[str]
                ) -> list[list[int]] | None:
  """The chunks (task indices) a resumed run planned, when it planned them
  for this same budget (to the MiB) and these task ids, so a resumed run
  cuts the same chunks (`ttt.memory.fit_memory`'s `stored`); None
  otherwise, with a warning when the budget changed. One host only (other
  hosts may not read process 0's files: they plan again)."""
  path = os.path.join(wd.path, "chunks", PLAN_FILE)
  if jax.process_count() > 1 or not os.path.exists(path):
    return None
  try:
    got = read_json(path, "the chunk plan")
  except WorkdirError as e:
    logging.warning("%s; planning the chunks again", e)
    return None
  at = {i: n for n, i in enumerate(ids)}
  if not (isinstance(got, dict) and isinstance(got.get("chunks"), list)
          and all(isinstance(c, list)
                  and all(isinstance(i, str) and i in at for i in c)
                  for c in got["chunks"])):
    logging.warning("%s is not a chunk plan of these tasks; planning the "
                    "chunks again", path)
    return None
  if (_mib(got.get("budget_gb")) != _mib(budget[0])
      or got.get("budget_source") != budget[1]):
    logging.warning("memory: the budget changed (%s GiB, %s -> %.3f GiB, "
                    "%s): chunks planned again; finished chunks of other "
                    "tasks or slot counts are redone",
                    got.get("budget_gb"), got.get("budget_source"),
                    budget[0], budget[1])
    return None
  return [[at[i] for i in c] for c in got["chunks"]]


def write_plan(wd: Workdir, budget: tuple[float, str],
               chunks: list[list[str]] | None) -> None:
  """Records the run's chunks (task ids) and the budget they were planned
  for (process 0; `stored_plan` reads them back); None: the run's chunks
  are the configured ones (a plan recorded before is removed)."""
  path = os.path.join(wd.path, "chunks", PLAN_FILE)
  if sharding.is_main() and chunks is None:
    if os.path.exists(path):
      os.remove(path)
  elif sharding.is_main():
    gb = budget[0] if _mib(budget[0]) is not None else None
    files.write_json(path, dict(budget_gb=gb, budget_source=budget[1],
                                   chunks=chunks))


def _mib(gb) -> int | None:
  ok = isinstance(gb, (int, float)) and math.isfinite(gb)
  return round(gb * 1024) if ok else None


def write_chunk(wd: Workdir, index: int, chunk: dict) -> None:
  """Writes a finished chunk atomically (process 0)."""
  if sharding.is_main():
    files.write_json(wd.chunk_path(index), chunk)


def add_into(total: dict, part: dict) -> None:
  """Sums the numbers of `part` into `total`, key by key (timings and
  token counts of chunks, resumed ones included)."""
  for k, v in part.items():
    if isinstance(v, (int, float)):
      total[k] = total.get(k, 0.0) + v


def max_into(total: dict, part: dict) -> None:
  """`total[k] = max(total[k], part[k])` for every key of `part`."""
  for k, v in part.items():
    total[k] = max(total.get(k, 0.0), v)


class Tally:
  """What the run's chunks add up to: their task records, seconds per
  stage (added into `timings`), token and call counts, peak resident GiB
  per stage; `add(chunk)` takes a chunk file's dict (`write_chunk`)."""

  def __init__(self, timings: dict):
    self.results: list[dict] = []
    self.timings, self.counts, self.peaks = timings, {}, {}

  def add(self, chunk: dict) -> None:
    self.results += chunk["records"]
    add_into(self.timings, chunk.get("timings", {}))
    add_into(self.counts, chunk.get("padding", {}))
    max_into(self.peaks, chunk.get("memory_gb", {}))
