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
import time
from typing import Any

import jax
import numpy as np
from absl import logging

from ttt import files


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
        f.write(json.dumps(files.strict(record), allow_nan=False) + "\n")
      if self.echo:
        logging.info("metrics %s", json.dumps(record))
    return record


def truncate(path: str, last_step: int) -> int:
  """Drops records after `last_step` (a run resumed from that step logs them
  again: one record per step). Returns how many were dropped."""
  records = read(path)
  keep = [r for r in records if r.get("step", 0) <= last_step]
  if len(keep) < len(records) and jax.process_index() == 0:
    files.write_text(path, "".join(json.dumps(r) + "\n" for r in keep))
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

