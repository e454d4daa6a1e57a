"""The TTT side's one mesh helper: a `task` axis over devices, hosts.

Every per-task input (adapters, datasets, keys) goes through `shard_tasks`,
shared inputs (the base weights) through `replicate`; `pad_tasks` pads a
task count to the mesh with a validity mask; `local_rows` / `put_rows` /
`gather` / `is_main` / `barrier` are the several-hosts side (see
`sampling.mesh`, where these helpers live: a leaf module of jax and numpy
that the samplers use too, so `sampling/` imports nothing of `ttt/`). This
module re-exports them and adds `initialize_distributed`, the runtime start.
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
