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

import logging as pylogging
import os
import re
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
USER_ERRORS = (ValueError, OSError)  # incl. missing files and configs

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
  # JAX probes for a TPU and logs the miss at INFO on every other machine
  pylogging.getLogger("jax._src.xla_bridge").setLevel(pylogging.WARNING)
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


HELP_FLAGS = ("--help", "-h", "--helpshort", "-?")


def define_config(default: str):
  """The launch's `--config` flag (`config_flags.DEFINE_config_file`, the
  config locked so overrides must name existing fields). ml_collections
  reads `--config.<field>=` overrides from sys.argv right here, so a
  misspelled field or a missing config file becomes one line `error: ...`
  and exit status 2 instead of a chained traceback."""
  from ml_collections import config_flags

  try:
    return config_flags.DEFINE_config_file(
        "config", config_path(default),
        "Config file (`file.py:arg`); fields: --config.<group>.<field>=... "
        "(--help lists them).", lock_config=True)
  except (AttributeError, KeyError, ValueError, TypeError, OSError) as e:
    if os.environ.get("TTT_VERBOSE") == "1":
      raise
    text = str(e)
    if isinstance(e, (AttributeError, KeyError)):
      hint = re.search(r"Did you mean[^?]*\?", text)
      text = "no such config field." + (
          " " + hint.group(0).replace('"', "'") if hint else "")
    bad = [a for a in sys.argv[1:] if a.startswith("--config")]
    print(f"error: {' '.join(bad) or '--config'}: {text}\n(--help lists the "
          "config fields)", file=sys.stderr)
    sys.exit(2)


def _flatten(config, prefix: str = ""):
  for k, v in config.items():
    if hasattr(v, "items"):
      yield from _flatten(v, f"{prefix}{k}.")
    else:
      yield f"{prefix}{k}", v


def _help() -> None:
  """Usage: the launch's docstring, its flags and every config field."""
  args = [a for a in sys.argv[1:] if a not in HELP_FLAGS]
  flags.FLAGS(sys.argv[:1] + args, known_only=True)
  doc = (sys.modules["__main__"].__doc__ or "").strip()
  print(doc + "\n" if doc else "", end="")
  print("\n" + flags.FLAGS.main_module_help())
  print("  --config: config file `file.py:arg` (default "
        f"{flags.FLAGS['config'].default_as_str}); a relative path is "
        "resolved from the working directory")
  if "config" in flags.FLAGS and hasattr(flags.FLAGS["config"].value,
                                         "items"):
    print(f"\nConfig fields of {flags.FLAGS['config'].config_filename} "
          "(override any with --config.<field>=<value>; each is documented "
          "where its dataclass declares it):")
    for k, v in _flatten(flags.FLAGS["config"].value):
      print(f"  --config.{k}={v!r}")
  print("\nCommon flags: --verbose (tracebacks), --compilation_cache, "
        "--multihost; --helpfull lists every flag.")


def run(main) -> None:
  """`app.run(main)`, where an error caused by the input prints one line
  `error: ...` on stderr and exits with status 2 (bugs keep their
  traceback; `--verbose` or TTT_VERBOSE=1 shows it for input errors too).
  `--help` prints the usage with every config field and exits 0."""
  if any(a in HELP_FLAGS for a in sys.argv[1:]):
    _help()
    sys.exit(0)

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

