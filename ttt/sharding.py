"""The one mesh helper: a `task` axis over devices, and task padding.

Every per-task input (adapters, datasets, keys) goes through `shard_tasks`,
which places its leading axis on the mesh's `task` axis; shared inputs (the
base weights) go through `replicate`. Task counts that do not divide the
device count are padded by `pad_tasks`, which returns a validity mask:
padding tasks get no data (so they never train) and must never report.
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


def task_sharding(mesh) -> NamedSharding:
  """Leading axis split over the mesh's axis, the rest replicated."""
  return NamedSharding(mesh, P(mesh.axis_names[0]))


def shard_batch(tree, mesh):
  """`shard_tasks` for a data batch: leading (batch) axis over the mesh."""
  return shard_tasks(tree, mesh)


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def shard_tasks(tree, mesh):
  """Places every leaf's leading (task) axis on the mesh's task axis."""
  sharding = task_sharding(mesh)
  return jax.tree.map(lambda x: jax.device_put(x, sharding), tree)


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
