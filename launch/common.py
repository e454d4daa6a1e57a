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

Errors (`run(main, parse)`): what the input causes is one line `error: ...`
and exit status 2 -- a bad flag, config file, preset or field, caught while
the flags are parsed; a bad config value, caught by the launch's `parse`
before anything starts; and in the run an input error (`is_user_error`:
`ttt.errors.InputError`, `sampling.trees.InstanceError`, a path that
cannot be read or written). Anything else, a JAX error inside a compiled
program included, keeps its traceback.
"""

import json
import logging as pylogging
import os
import re
import sys

from absl import app, flags, logging

from sampling.trees import InstanceError
from ttt import errors, sharding

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

# Errors a user causes in the run (an input named as wrong, a path that
# cannot be read or written, a file that is not JSON or UTF-8): one line.
USER_ERRORS = (errors.InputError, InstanceError, OSError,
               json.JSONDecodeError, UnicodeDecodeError)
# Errors of the config itself (parsing the flags, the launch's `parse`).
CONFIG_ERRORS = (ValueError, TypeError, KeyError, AttributeError, OSError,
                 flags.Error)

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


def is_user_error(e: BaseException) -> bool:
  """Whether `e` is caused by the input: one of `USER_ERRORS`, or a
  ValueError raised from one (`raise ValueError(...) from e`: a file that
  could not be read or parsed, named by the message)."""
  if isinstance(e, USER_ERRORS):
    return True
  return isinstance(e, ValueError) and e.__cause__ is not None and \
      is_user_error(e.__cause__)


def _verbose(argv=()) -> bool:
  return os.environ.get("TTT_VERBOSE") == "1" or "--verbose" in argv or (
      "verbose" in flags.FLAGS and flags.FLAGS.is_parsed()
      and _VERBOSE.value)


def _chain(e: BaseException) -> list:
  """`e` and the exceptions it was raised from or while handling."""
  out = []
  while e is not None and e not in out:
    out.append(e)
    e = e.__cause__ or e.__context__
  return out


def config_error_text(e: BaseException, argv) -> str:
  """One line for an error in the config flags: the offending arguments
  and the reason (a config field that does not exist with the nearest
  name; the config file's own error, e.g. an unknown preset; a file that
  cannot be loaded)."""
  chain = _chain(e)
  args = [a for a in argv[1:] if a.startswith("--config")]
  if any(isinstance(x, (AttributeError, KeyError)) for x in chain):
    key = next((str(x.args[0]).strip("'\"") for x in reversed(chain)
                if isinstance(x, KeyError) and x.args), "")
    hint = next((m.group(0).replace('"', "'") for m in (
        re.search(r"Did you mean[^?]*\?", str(x)) for x in chain) if m), "")
    bad = [a for a in args if key and "." in a
           and key in re.split(r"[.=]", a.split("=", 1)[0])[1:]]
    return (f"{' '.join(bad or args) or '--config'}: no such config "
            "field." + (" " + hint if hint else ""))
  root = chain[-1]
  lines = [ln.strip() for ln in str(root).splitlines() if ln.strip()]
  text = lines[-1] if lines else type(root).__name__
  if isinstance(root, OSError):
    text = f"cannot load the config file: {text}"
  flag = next((m.group(1) for m in (re.match(r"flag (--[^=\s]+=\S*): ",
                                             str(x)) for x in chain) if m),
              None)
  if isinstance(root, flags.Error) and not flag:
    return text  # e.g. an unknown flag
  if flag and text.startswith("flag "):
    return text[len("flag "):]  # absl's message names the flag already
  name = flag or " ".join(a for a in args if not a.startswith("--config."))
  return f"{name or '--config'}: {text}"


def _config_failure(e: BaseException, argv) -> None:
  """Prints the config error as one line and exits with status 2 (or
  re-raises it with its traceback under --verbose / TTT_VERBOSE=1)."""
  if _verbose(argv):
    raise e
  print(f"error: {config_error_text(e, argv)}\n(--help lists the config "
        "fields; --verbose shows the traceback)", file=sys.stderr)
  sys.exit(2)


def define_config(default: str):
  """The launch's `--config` flag (`config_flags.DEFINE_config_file`, the
  config locked so overrides must name existing fields). ml_collections
  may read `--config.<field>=` overrides from sys.argv right here (the
  default file) or while `run` parses the flags (`--config=` given); both
  turn a misspelled field, an unknown preset or a missing config file into
  one line `error: ...` and exit status 2 instead of a chained traceback."""
  from ml_collections import config_flags

  try:
    return config_flags.DEFINE_config_file(
        "config", config_path(default),
        "Config file (`file.py:arg`); fields: --config.<group>.<field>=... "
        "(--help lists them).", lock_config=True)
  except CONFIG_ERRORS as e:
    _config_failure(e, sys.argv)


def _parse_flags(argv):
  """absl's flag parsing, a bad flag or config one line (status 2)."""
  try:
    return flags.FLAGS(argv)
  except CONFIG_ERRORS as e:
    _config_failure(e, argv)


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


def run(main, parse=None) -> None:
  """`app.run(main)`, where an error caused by the input prints one line
  `error: ...` on stderr and exits with status 2 (bugs keep their
  traceback; `--verbose` or TTT_VERBOSE=1 shows it for input errors too).
  `--help` prints the usage with every config field and exits 0.

  Args:
    main: the launch's main(argv).
    parse: `parse(config)` builds and validates the launch's config groups
      (e.g. `ttt.job.parse`) before `main` runs, so that any bad value --
      a plain ValueError there, an unknown field, a NaN -- is one line and
      status 2; a ValueError from `main` is an input error only when
      `is_user_error` says so.
  """
  if any(a in HELP_FLAGS for a in sys.argv[1:]):
    _help()
    sys.exit(0)

  def guarded(argv):
    if parse is not None:
      config = flags.FLAGS["config"].value
      try:
        config.items()  # raises if the config file did not load
      except CONFIG_ERRORS as e:
        _config_failure(e, sys.argv)
      try:
        parse(config)
      except CONFIG_ERRORS as e:
        if _verbose():
          raise
        print(f"error: {e}\n(--help lists the config fields; --verbose "
              "shows the traceback)", file=sys.stderr)
        sys.exit(2)
    try:
      return main(argv)
    except Exception as e:  # noqa: BLE001 (re-raised unless an input error)
      if _verbose() or not is_user_error(e):
        raise
      print(f"error: {e}\n(--verbose shows the traceback)", file=sys.stderr)
      sys.exit(2)

  app.run(guarded, flags_parser=_parse_flags)


def config_path(relative: str) -> str:
  """`configs/<relative>` of the installed package (absolute), so the
  default `--config` works from any directory."""
  import configs

  return os.path.join(os.path.dirname(os.path.abspath(configs.__file__)),
                      relative)

