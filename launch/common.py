"""What every launch shares: the multi-host flags, start-up and the end.

`start()` (first thing in every main) starts JAX's multi-controller runtime
when `--multihost` is given or `TTT_MULTIHOST=1` is set -- a no-op
otherwise -- and logs the topology; `end()` is the final barrier, so no host
exits while others still work. On TPU pods and under Slurm the coordinator,
process count and index are found by JAX itself; elsewhere pass
`--coordinator_address=host:port --num_processes=P --process_id=i` (or the
`JAX_COORDINATOR_ADDRESS` / `JAX_NUM_PROCESSES` / `JAX_PROCESS_ID`
environment variables). See the README, "Running on a TPU pod or several GPU
hosts", and `launch/run_tpu.sh`.

Two defaults for speed on the machine people run first:
* CPU: one JAX CPU device per core (at most 8; `TTT_CPU_DEVICES=n` sets n,
  0 leaves JAX's single device), set when this module is imported -- before
  JAX starts its CPU backend -- unless `XLA_FLAGS` already names a count.
  The task axis is sharded over them, so every core works (XLA:CPU leaves
  most of a second core idle inside one device's small matmuls).
* A persistent compilation cache (`--compilation_cache`, default
  `~/.cache/ttt-jax/xla` or under `$XDG_CACHE_HOME`; '' turns it off): a
  second run of the same programs loads them instead of compiling.
"""

import os
import sys

from absl import app, flags, logging

from ttt import sharding

_COUNT_FLAG = "--xla_force_host_platform_device_count"


def _cpu_devices() -> None:
  xla = os.environ.get("XLA_FLAGS", "")
  if _COUNT_FLAG in xla:
    return
  n = int(os.environ.get("TTT_CPU_DEVICES", min(8, os.cpu_count() or 1)))
  if n > 1:
    os.environ["XLA_FLAGS"] = f"{xla} {_COUNT_FLAG}={n}".strip()


_cpu_devices()

_CACHE = flags.DEFINE_string(
    "compilation_cache",
    os.path.join(os.environ.get("XDG_CACHE_HOME")
                 or os.path.join(os.path.expanduser("~"), ".cache"),
                 "ttt-jax", "xla"),
    "Persistent XLA compilation cache directory ('' = off).")

_VERBOSE = flags.DEFINE_bool(
    "verbose", False, "Show the traceback of errors caused by the input "
    "(bad config value, missing file, invalid task file); also "
    "TTT_VERBOSE=1.")

# Errors a user causes (a bad value, a missing or invalid file): one line.
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError,
               IsADirectoryError, PermissionError)

_MULTIHOST = flags.DEFINE_bool(
    "multihost", False, "Start jax.distributed (one process per host); also "
    f"by {sharding.MULTIHOST_ENV}=1.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None,
    "host:port of process 0 (not needed on TPU pods / Slurm).")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "Number of processes (not needed on TPU / Slurm).")
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "This process's index (not needed on TPU / Slurm).")


def start() -> None:
  """Distributed init (when asked for), verbose logging, the topology."""
  logging.set_verbosity(logging.INFO)
  import jax

  if _CACHE.value:
    jax.config.update("jax_compilation_cache_dir", _CACHE.value)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  sharding.initialize_distributed(
      True if _MULTIHOST.value else None, _COORDINATOR.value,
      _NUM_PROCESSES.value, _PROCESS_ID.value)

  logging.info("process %d of %d; %d local devices of %d: %s",
               jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count(),
               jax.local_devices())


def end() -> None:
  """Waits for every host (no-op with one process)."""
  sharding.barrier("launch.end")


def run(main) -> None:
  """`app.run(main)`, where an error caused by the input prints one line
  `error: ...` on stderr and exits with status 2 (bugs keep their
  traceback; `--verbose` or TTT_VERBOSE=1 shows it for input errors too)."""

  def guarded(argv):
    try:
      return main(argv)
    except USER_ERRORS as e:
      if _VERBOSE.value or os.environ.get("TTT_VERBOSE") == "1":
        raise
      print(f"error: {e}\n(--verbose shows the traceback)", file=sys.stderr)
      sys.exit(2)

  app.run(guarded)


def config_path(relative: str) -> str:
  """`configs/<relative>` of the installed package (absolute), so the
  default `--config` works from any directory."""
  import configs

  return os.path.join(os.path.dirname(os.path.abspath(configs.__file__)),
                      relative)

