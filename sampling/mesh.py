"""Mesh helpers: a `task` axis over devices, task padding, hosts.

A leaf module (jax and numpy only) shared by both halves: the samplers
split their chains over it, and `ttt.sharding` -- the TTT side's one mesh
helper -- re-exports it, so neither half imports the other's internals.

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
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

TASK_AXIS = "task"
DATA_AXIS = "data"  # initial training: the batch axis


def make_mesh(num_devices: int | None = None, devices=None,
              axis: str = TASK_AXIS) -> jax.sharding.Mesh:
  """A 1-D mesh over `num_devices` (default: all) devices.

  The axis is named `task` (TTT, decoding) or `data` (initial training).
  The axis is `AxisType.Auto`: inputs are placed explicitly (`shard_tasks`,
  `replicate`) and XLA propagates the task sharding through the vmapped
  program (tasks never communicate). Explicit axes reject the embedding
  gather of task-sharded tokens from a replicated table.
  """
  devices = list(devices if devices is not None else jax.devices())
  n = len(devices) if num_devices is None else num_devices
  return jax.make_mesh((n,), (axis,), devices=devices[:n],
                       axis_types=(jax.sharding.AxisType.Auto,))


def axis_size(mesh) -> int:
  """Devices along the mesh's first axis (tasks, chains or the batch): the
  whole mesh on a 1-D one; a 2-D mesh's second axis (`ttt.sharding`'s
  `model`) holds copies of the same rows."""
  return dict(mesh.shape)[mesh.axis_names[0]]


def task_sharding(mesh) -> NamedSharding:
  """Leading axis split over the mesh's axis, the rest replicated."""
  return NamedSharding(mesh, P(mesh.axis_names[0]))


def shard_batch(tree, mesh):
  """`shard_tasks` for a data batch: leading (batch) axis over the mesh."""
  return shard_tasks(tree, mesh)


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def shard_tasks(tree, mesh):
  """Places every leaf's leading (task) axis on the mesh's task axis.

  Host leaves (numpy, or arrays on one local device) hold the full task
  axis, the same on every host; each host hands over only its own rows
  (`put_rows`). Leaves that already are global arrays are resharded.
  """
  sharding = task_sharding(mesh)

  def put(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return jax.device_put(x, sharding)
    total = x.shape[0]
    rows = local_rows(total, mesh)
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(
        x.dtype, jax.dtypes.prng_key):
      data = np.asarray(jax.random.key_data(x))[rows]
      return jax.random.wrap_key_data(put_rows(data, total, mesh),
                                      impl=jax.random.key_impl(x))
    return put_rows(np.asarray(x)[rows], total, mesh)

  return jax.tree.map(put, tree)


def replicate(tree, mesh):
  """Places a copy of every leaf on every device of the mesh."""
  sharding = replicated(mesh)
  return jax.tree.map(lambda x: jax.device_put(x, sharding), tree)


def padded_count(n: int, multiple: int) -> int:
  """The smallest multiple of `multiple` that is >= max(n, 1)."""
  return max(1, -(-n // multiple)) * multiple


def pad_tasks(tree, multiple: int):
  """Pads the leading task axis of every leaf to a multiple of `multiple`.

  Numeric leaves are padded with zeros (a zero `valid` means no data);
  PRNG-key leaves repeat their last key.

  Returns:
    (padded tree, bool[T_padded] True for real tasks).
  """
  leaves = jax.tree.leaves(tree)
  n = leaves[0].shape[0]
  total = padded_count(n, multiple)

  def pad(x):
    extra = total - x.shape[0]
    if extra == 0:
      return x
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      return jnp.concatenate([x, jnp.repeat(x[-1:], extra, axis=0)])
    xp = jnp if isinstance(x, jax.Array) else np
    return xp.concatenate([x, xp.zeros((extra,) + x.shape[1:], x.dtype)])

  return jax.tree.map(pad, tree), np.arange(total) < n


# --- several hosts -----------------------------------------------------------

def is_main() -> bool:
  """True on the process that writes results (process 0)."""
  return jax.process_index() == 0


def local_rows(total: int, mesh) -> np.ndarray:
  """The rows of a task-sharded `[total, ...]` array held by this host's
  devices, in the order `make_array_from_process_local_data` reads them.

  `total` must be a multiple of the mesh size (see `pad_tasks`).
  """
  if total % axis_size(mesh):
    raise ValueError(f"{total} rows do not split over {axis_size(mesh)} "
                     "devices; pad them first (pad_tasks)")
  index = task_sharding(mesh).addressable_devices_indices_map((total,))
  spans = sorted({(s[0].start or 0, total if s[0].stop is None
                   else s[0].stop) for s in index.values()})
  return np.concatenate([np.arange(a, b) for a, b in spans])


def put_rows(local_tree, total: int, mesh):
  """Global task-sharded arrays `[total, ...]` from this host's rows: in
  every leaf, `local[i]` is global row `local_rows(total, mesh)[i]`."""
  sharding = task_sharding(mesh)

  def put(local):
    local = np.asarray(local)
    return jax.make_array_from_process_local_data(
        sharding, local, (total,) + local.shape[1:])

  return jax.tree.map(put, local_tree)


def gather(tree):
  """Every leaf as a full numpy array on every host."""
  if jax.process_count() == 1:
    return jax.tree.map(np.asarray, tree)
  from jax.experimental import multihost_utils

  def one(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)

  return jax.tree.map(one, tree)


def _over_hosts(value, reduce):
  if jax.process_count() == 1:
    return value
  from jax.experimental import multihost_utils

  return reduce(multihost_utils.process_allgather(np.asarray([value])))


def global_max(value: int) -> int:
  """The largest `value` over hosts."""
  return int(_over_hosts(int(value), np.max))


def global_sum(value: float) -> float:
  """The sum of `value` over hosts (e.g. tokens each host fed)."""
  return float(_over_hosts(float(value), np.sum))


def broadcast(value):
  """Process 0's `value` (a number or numpy array) on every host."""
  if jax.process_count() == 1:
    return value
  from jax.experimental import multihost_utils

  return multihost_utils.broadcast_one_to_all(np.asarray(value))


def barrier(name: str) -> None:
  """Waits until every host reaches the barrier `name` (no-op alone)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)
