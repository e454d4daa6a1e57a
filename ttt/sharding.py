"""The TTT side's one mesh helper: a `task` axis over devices, hosts, and
an optional `model` axis that shards the frozen base.

Every per-task input (adapters, datasets, keys) goes through `shard_tasks`,
shared inputs through `replicate`; `pad_tasks` pads a task count to the
task axis with a validity mask; `local_rows` / `put_rows` / `gather` /
`is_main` / `barrier` are the several-hosts side (see `sampling.mesh`, where
these helpers live: a leaf module of jax and numpy that the samplers use
too, so `sampling/` imports nothing of `ttt/`). This module re-exports them
and adds `initialize_distributed`, the runtime start, and the 2-D mesh.

The 2-D mesh (`make_mesh(model_parallel=M)`, `run.model_parallel`): the
devices form `(tasks, model)` of shape `(n / M, M)`. The task axis keeps its
meaning (tasks, their adapters, optimizer states and data split over it);
the base weights are split over `model` by `param_spec` / `param_shardings`,
tensor parallelism in Megatron's layout:

* q, k, v, gate, up: column-split (each device holds whole heads, a slice
  of the MLP's hidden units); o, down: row-split (their inputs arrive split
  the same way, so a block needs one all-reduce after attention and one
  after the MLP);
* the embedding over the model width, the output head over the vocabulary
  when that is an LLM's full one (`SPLIT_VOCAB`; a 16-token head stays
  whole); a tied embedding (the head of Llama-3.2 1B/3B) over the
  vocabulary then, so that its logits come out split too (over the width
  they came out whole on every device: 25.3 GB at M = 8 for 1B under
  MARC's preset, split 7.9 GB, benchmarks/RESULTS.md);
* LoRA factors follow their base matrix on its split side -- B of q, k, v,
  gate, up by columns, A of o, down by rows -- and the other factor (rank x
  width) is replicated; norms, biases of row-split layers and prefixes
  replicated.

Why tensor parallelism and not FSDP: a task's batch is 1-2 rows, so the
batch cannot carry a weight sharding -- FSDP would all-gather every layer's
whole weights for each of those rows (8B: 15 GB of bf16 traffic per forward
pass per task), while the Megatron layout moves only activations (two
all-reduces of [rows, length, d] per layer). LoRA factors split with their
base matrix (the split side's factor is the one whose product is already
split): replicated, a task's factors took 5.2 GB per device for 70B at
M = 16 under MARC's rank 128, split 1.83 GB (the peak 42.0 -> 38.6 GB;
XLA kept their gradients and AdamW moments split either way:
benchmarks/RESULTS.md). Full fine-tuning ('full' modes) copies the
base per task: those copies follow the base's specs.

A dimension that does not divide by M stays whole (replicated over
`model`), logged once naming the numbers -- notably GQA models whose
key/value heads are fewer than M (Llama-3-8B: 8 KV heads; M = 16 keeps
k and v replicated). Nothing in the model code names a collective: the
specs go on the parameters as `NamedSharding`s and XLA's partitioner
inserts the all-reduces and all-gathers.

Several hosts: the model axis is the mesh's last, fastest-varying axis, so
a model group is M consecutive devices of `jax.devices()` (process-major):
it stays inside a host whenever M divides the host's device count, and a
group of several whole hosts when M is a multiple of it; any other M is
refused up front (a group would straddle hosts unevenly).
"""

from __future__ import annotations

import os

import jax
import numpy as np
from absl import logging
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from sampling import mesh as mesh_lib
from sampling.mesh import (  # noqa: F401  (re-exported: the one helper)
  DATA_AXIS,
  TASK_AXIS,
  axis_size,
  barrier,
  broadcast,
  gather,
  global_max,
  global_sum,
  is_main,
  local_rows,
  pad_tasks,
  padded_count,
  put_rows,
  replicate,
  replicated,
  shard_batch,
  shard_tasks,
  task_sharding,
)
from ttt.errors import InputError

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


MODEL_AXIS = "model"


def make_mesh(num_devices: int | None = None, devices=None,
              axis: str = TASK_AXIS, model_parallel: int = 1
              ) -> jax.sharding.Mesh:
  """The run's mesh: 1-D over `axis` (`model_parallel` = 1, the layout of
  every run before the model axis existed), else `(axis, 'model')` of
  shape `(n / model_parallel, model_parallel)` (module docstring)."""
  devices = list(devices if devices is not None else jax.devices())
  n = len(devices) if num_devices is None else num_devices
  mp = int(model_parallel)
  if mp == 1:
    return mesh_lib.make_mesh(n, devices, axis)
  if mp < 1 or n % mp:
    raise InputError(f"run.model_parallel={mp} must divide the {n} "
                     "devices")
  local = jax.local_device_count()
  if jax.process_count() > 1 and local % mp and mp % local:
    raise InputError(
        f"run.model_parallel={mp} would split a model group unevenly over "
        f"hosts of {local} devices each: use a divisor or a multiple of "
        f"{local}")
  auto = jax.sharding.AxisType.Auto
  return jax.make_mesh((n // mp, mp), (axis, MODEL_AXIS),
                       devices=devices[:n], axis_types=(auto, auto))


def model_size(mesh) -> int:
  """The model axis' size (1 on a 1-D mesh)."""
  return dict(mesh.shape).get(MODEL_AXIS, 1)


# (module, parameter) -> which axis of the [din, dout] / [n] leaf is split
# and the config count that must divide by the model axis for it
_COLUMN, _ROW = -1, -2
_RULES = {
    ("q", "kernel"): (_COLUMN, "heads"), ("q", "bias"): (-1, "heads"),
    ("k", "kernel"): (_COLUMN, "kv_heads"), ("k", "bias"): (-1, "kv_heads"),
    ("v", "kernel"): (_COLUMN, "kv_heads"), ("v", "bias"): (-1, "kv_heads"),
    ("o", "kernel"): (_ROW, "heads"),
    ("gate", "kernel"): (_COLUMN, "mlp"), ("up", "kernel"): (_COLUMN, "mlp"),
    ("down", "kernel"): (_ROW, "mlp"),
    ("embed", "embedding"): (-1, "width"),
    ("head", "kernel"): (_COLUMN, "vocab"),
    # LoRA: the factor on the split side follows its base matrix (x A B:
    # B [r, dout] by columns where the kernel is, A [din, r] by rows where
    # the kernel is); the other factor is rank x width, replicated
    **{(name, "lora_b"): (_COLUMN, count) for name, count in (
        ("q", "heads"), ("k", "kv_heads"), ("v", "kv_heads"),
        ("gate", "mlp"), ("up", "mlp"))},
    ("o", "lora_a"): (_ROW, "heads"), ("down", "lora_a"): (_ROW, "mlp"),
}


def _names(path) -> tuple:
  return tuple(k.key for k in path if isinstance(k, jax.tree_util.DictKey))


def _counts(config) -> dict:
  return dict(heads=config.num_heads, kv_heads=config.kv_heads,
              mlp=config.mlp_dim, width=config.d_model,
              vocab=config.vocab_size)


_WARNED: set = set()
# the output head splits over the vocabulary from this size (an LLM's full
# vocabulary: the TTT loss's [rows, length, vocab] logits are the largest
# activation, 8.4 GB per task in float32 for Llama-3 at 8,191 tokens);
# below it (the cells' 16 tokens) it stays whole, so the decoders' logits
# are never split (see `ttt.decoders.common.answer_mask`)
SPLIT_VOCAB = 1024


def param_spec(path, shape, config, model_parallel: int) -> P:
  """The `PartitionSpec` of one base leaf (its own shape, no task axis)
  under a model axis of `model_parallel` devices (module docstring);
  fully replicated at 1 and for every leaf without a rule."""
  names = _names(path)
  rule = _RULES.get(names[-2:]) if len(names) >= 2 else None
  if model_parallel == 1 or rule is None:
    return P()
  dim, count = rule
  counts = _counts(config)
  big_vocab = (counts["vocab"] >= SPLIT_VOCAB
               and not counts["vocab"] % model_parallel)
  if names[-2:] == ("head", "kernel") and not big_vocab:
    return P()  # a small head stays whole: its logits come out whole
  if (names[-2:] == ("embed", "embedding") and big_vocab
      and getattr(config, "tie_embeddings", False)):
    dim, count = _ROW, "vocab"  # a tied head's logits split by vocabulary
  if counts[count] % model_parallel:
    key = (names[-2], count, counts[count], model_parallel)
    if key not in _WARNED:
      _WARNED.add(key)
      logging.warning("model axis: %s stays replicated (%s = %d does not "
                      "divide by run.model_parallel = %d)", names[-2], count,
                      counts[count], model_parallel)
    return P()
  spec = [None] * len(shape)
  spec[dim] = MODEL_AXIS
  return P(*spec)


def param_shardings(tree, mesh, config, per_task: bool = False):
  """A `NamedSharding` per leaf of a (single-task) parameter tree:
  `param_spec`'s; with `per_task`, those of the tree stacked on a leading
  task axis `[T, ...]` (per-task copies: 'full' mode's adapters), that
  axis on the mesh's task axis."""
  mp = model_size(mesh)

  def one(path, x):
    spec = tuple(param_spec(path, x.shape, config, mp))
    spec += (None,) * (len(x.shape) - len(spec))
    return NamedSharding(mesh, P(mesh.axis_names[0], *spec) if per_task
                         else P(*spec))

  return jax.tree_util.tree_map_with_path(one, tree)


def place_params(tree, mesh, config):
  """Every leaf of a (single-task) parameter tree placed on the mesh by
  `param_shardings`: replicated on a 1-D mesh, split over `model` else.
  A host leaf is sliced on the host for each device (`make_array_from_
  callback`), so no device receives more than its shard; a leaf already
  on its sharding (loaded split: `ttt.pretrained.load_base`) stays put."""
  where = param_shardings(tree, mesh, config)

  def put(x, s):
    if isinstance(x, jax.Array) and x.sharding.is_equivalent_to(s, x.ndim):
      return x
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return jax.device_put(x, s)
    if s.is_fully_replicated:
      return jax.device_put(x, s)
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, s, lambda i: host[i])

  return jax.tree.map(put, tree, where)
