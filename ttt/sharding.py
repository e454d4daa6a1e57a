"""The TTT side's one mesh helper: a `task` axis over devices, hosts.

Every per-task input (adapters, datasets, keys) goes through `shard_tasks`,
which places its leading axis on the mesh's `task` axis; shared inputs (the
base weights) go through `replicate`. Task counts that do not divide the
device count are padded by `pad_tasks`, which returns a validity mask:
padding tasks get no data (so they never train) and must never report.

Several hosts (JAX's multi-controller runtime): `initialize_distributed()`
starts it (a no-op unless asked for); every host runs the same program and
builds the same mesh from all devices. A host builds only the rows of a
task-sharded array that its own devices hold (`local_rows`) and `put_rows`
assembles the global array with `jax.make_array_from_process_local_data`;
`shard_tasks` does the same from a full host array. `gather` brings a
global array back to every host; `is_main()` says who writes files;
`barrier` keeps hosts together. With one process all of it reduces to the
single-host behaviour.

The helpers themselves live in `sampling.mesh` (a leaf module of jax and
numpy, which the samplers use too: `sampling/` imports nothing of `ttt/`);
this module re-exports them and adds the runtime start.
"""

from __future__ import annotations

import os

import jax

from sampling.mesh import (  # noqa: F401  (re-exported: the one helper)
  DATA_AXIS,
  TASK_AXIS,
  barrier,
  broadcast,
  gather,
  global_max,
  global_sum,
  is_main,
  local_rows,
  make_mesh,
  pad_tasks,
  padded_count,
  put_rows,
  replicate,
  replicated,
  shard_batch,
  shard_tasks,
  task_sharding,
)

MULTIHOST_ENV = "TTT_MULTIHOST"


def initialize_distributed(enabled: bool | None = None,
                           coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None) -> bool:
  """Starts JAX's multi-controller runtime when asked for; else a no-op.

  Asked for by `enabled=True` or, when `enabled` is None, by the environment
  variable `TTT_MULTIHOST=1`. Call it before anything touches a device. On
  TPU pods and under Slurm `jax.distributed.initialize()` finds the
  coordinator, process count and index itself (leave the three arguments
  None); elsewhere pass them (or set `JAX_COORDINATOR_ADDRESS`,
  `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`).

  Returns:
    True when the runtime was started by this call.
  """
  if enabled is None:
    enabled = os.environ.get(MULTIHOST_ENV, "").lower() in ("1", "true",
                                                            "yes")
  if not enabled:
    return False
  env = os.environ
  coordinator_address = (coordinator_address
                         or env.get("JAX_COORDINATOR_ADDRESS") or None)
  if num_processes is None and env.get("JAX_NUM_PROCESSES"):
    num_processes = int(env["JAX_NUM_PROCESSES"])
  if process_id is None and env.get("JAX_PROCESS_ID"):
    process_id = int(env["JAX_PROCESS_ID"])
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes,
                             process_id=process_id)
  return True
