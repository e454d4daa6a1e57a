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
"""

from absl import flags, logging

from ttt import sharding

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
  sharding.initialize_distributed(
      True if _MULTIHOST.value else None, _COORDINATOR.value,
      _NUM_PROCESSES.value, _PROCESS_ID.value)
  import jax

  logging.info("process %d of %d; %d local devices of %d: %s",
               jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count(),
               jax.local_devices())


def end() -> None:
  """Waits for every host (no-op with one process)."""
  sharding.barrier("launch.end")
