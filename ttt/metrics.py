"""Metrics as JSON lines: `workdir/metrics.jsonl`, written by process 0.

Every record is one JSON object per line with at least `step`; values are
plain floats/ints/strings (arrays are converted). Records are echoed by absl
logging. `check_finite` raises `FloatingPointError` naming the step when a
loss goes non-finite, so a diverging run stops loudly instead of writing
NaNs for hours.
"""

from __future__ import annotations

import json
import math
import os
import re
import resource
import sys
import threading
import time
from typing import Any

import jax
import numpy as np
from absl import logging

from ttt import evaluate


def _plain(value: Any):
  if isinstance(value, (str, bool, int)) or value is None:
    return value
  if isinstance(value, dict):
    return {k: _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  arr = np.asarray(value)
  if arr.ndim == 0:
    item = arr.item()
    return float(item) if isinstance(item, float) else item
  return arr.tolist()


class MetricsWriter:
  """Appends JSON lines to `path`; a no-op on processes other than 0."""

  def __init__(self, path: str, *, enabled: bool | None = None,
               echo: bool = True):
    self.path = path
    self.enabled = (jax.process_index() == 0) if enabled is None else enabled
    self.echo = echo
    if self.enabled:
      os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)

  def write(self, step: int, **values) -> dict:
    """Writes one record `{step, time, **values}` and returns it."""
    record = dict(step=int(step), time=round(time.time(), 3),
                  **{k: _plain(v) for k, v in values.items()})
    if self.enabled:
      with open(self.path, "a", encoding="utf-8") as f:
        f.write(json.dumps(evaluate.strict(record), allow_nan=False) + "\n")
      if self.echo:
        logging.info("metrics %s", json.dumps(record))
    return record


def truncate(path: str, last_step: int) -> int:
  """Drops records after `last_step` (a run resumed from that step logs them
  again: one record per step). Returns how many were dropped."""
  records = read(path)
  keep = [r for r in records if r.get("step", 0) <= last_step]
  if len(keep) < len(records) and jax.process_index() == 0:
    evaluate.write_text(path, "".join(json.dumps(r) + "\n" for r in keep))
  return len(records) - len(keep)


def read(path: str) -> list[dict]:
  """All records of a metrics file ([] when it does not exist)."""
  if not os.path.exists(path):
    return []
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def check_finite(name: str, value, step: int) -> None:
  """Raises FloatingPointError when `value` (a scalar) is NaN or infinite."""
  v = float(np.asarray(value))
  if not math.isfinite(v):
    raise FloatingPointError(f"{name} is {v} at step {step}; stopping (the "
                             "last checkpoint is intact)")


# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity), for MFU.
PEAK_TFLOPS = (("H100 PCIe", 756.0), ("H100", 989.4), ("H200", 989.4),
               ("A100", 312.0))


def peak_tflops(override: float | None = None) -> float | None:
  """The first device's dense bf16 peak (None when unknown, e.g. CPU)."""
  if override:
    return override
  kind = jax.devices()[0].device_kind
  for name, peak in PEAK_TFLOPS:
    if name in kind:
      return peak
  return None


def peak_memory_gb() -> float | None:
  """Peak device memory in use so far (GiB), where the backend reports it."""
  stats = jax.devices()[0].memory_stats() or {}
  peak = stats.get("peak_bytes_in_use")
  return None if peak is None else round(peak / 2**30, 2)


# --- memory ----------------------------------------------------------------

GB = 2**30


def rss_bytes() -> int:
  """The process's resident memory now (bytes; its peak where the current
  value is not readable)."""
  try:
    with open("/proc/self/statm", encoding="ascii") as f:
      return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
  except (OSError, ValueError, IndexError):
    return peak_rss_bytes()


def peak_rss_bytes() -> int:
  """The process's peak resident memory (bytes) since it started (Linux:
  VmHWM; nothing here resets it)."""
  try:
    with open("/proc/self/status", encoding="ascii") as f:
      found = re.search(r"^VmHWM:\s+(\d+) kB", f.read(), re.M)
    if found:
      return int(found.group(1)) * 1024
  except OSError:
    pass
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return peak if sys.platform == "darwin" else peak * 1024  # (macOS: bytes)


class _RssSampler:
  """A daemon thread reading the process's resident memory every
  `interval` seconds; `take()` returns the largest value seen since the
  previous `take()` (or since it started). It never resets the kernel's
  own high-water mark (`VmHWM`, what `/usr/bin/time -v` reports), as
  writing `/proc/self/clear_refs` did."""

  def __init__(self, interval: float = 0.01):
    self._lock = threading.Lock()
    self._max = rss_bytes()
    self._interval = interval
    threading.Thread(target=self._run, daemon=True,
                     name="ttt-rss-sampler").start()

  def _run(self):
    while True:
      now = rss_bytes()
      with self._lock:
        self._max = max(self._max, now)
      time.sleep(self._interval)

  def take(self) -> int:
    now = rss_bytes()
    with self._lock:
      peak, self._max = max(self._max, now), now
    return peak


_SAMPLER: list = []  # the process's one sampler, started on first use


def _sampler() -> _RssSampler:
  with _SAMPLER_LOCK:
    if not _SAMPLER:
      _SAMPLER.append(_RssSampler())
  return _SAMPLER[0]


_SAMPLER_LOCK = threading.Lock()


def device_memory() -> dict[str, int]:
  """{'in_use', 'peak', 'limit'} bytes of the first local device, where
  its backend reports them (GPU, TPU); {} on CPU."""
  stats = jax.local_devices()[0].memory_stats() or {}
  names = dict(in_use="bytes_in_use", peak="peak_bytes_in_use",
               limit="bytes_limit")
  return {k: int(stats[v]) for k, v in names.items() if v in stats}


class MemoryMeter:
  """Peak memory per stage: `tick(stage)` after each stage records the
  process's peak resident memory since the previous tick (and, where the
  backend reports it, device memory in use), in GiB.

  The peak is the largest resident memory a sampling thread saw since the
  previous tick (every 10 ms, `_RssSampler`): each stage gets its own,
  and the kernel's high-water mark of the process is left alone, so
  `/usr/bin/time -v` still reports the whole run's peak. A spike shorter
  than the sampling interval can be missed (`exact` says the figures are
  sampled, not the kernel's mark).
  """

  def __init__(self):
    self._sampler = _sampler()
    self._sampler.take()  # this meter's first stage starts now
    self.exact = False
    self.stages: dict[str, float] = {}
    self.device: dict[str, float] = {}

  def tick(self, stage: str) -> None:
    peak = self._sampler.take() / GB
    self.stages[stage] = round(max(self.stages.get(stage, 0.0), peak), 3)
    dev = device_memory()
    if "in_use" in dev:
      self.device[stage] = round(dev["in_use"] / GB, 3)


class CompileClock:
  """Seconds JAX spends tracing, lowering and compiling while it is open.

  `clock = CompileClock()` starts listening to JAX's monitoring events;
  `clock.seconds` is the time so far, `clock.close()` stops listening.
  One per run: no state is shared between clocks.
  """

  EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
            "/jax/core/compile/jaxpr_to_mlir_module_duration",
            "/jax/core/compile/backend_compile_duration")

  def __init__(self):
    self.seconds = 0.0

    def listen(event, duration, **_):
      if event in self.EVENTS:
        self.seconds += duration

    self._listen = listen
    jax.monitoring.register_event_duration_secs_listener(listen)

  def close(self) -> float:
    """Stops listening (where this JAX can); returns the seconds."""
    unregister = getattr(jax.monitoring, "unregister_event_duration_listener",
                         None)
    if unregister is not None and self._listen is not None:
      unregister(self._listen)
      self._listen = None
    return self.seconds

