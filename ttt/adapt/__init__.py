"""The TTT stage: a registry of protocols (`PROTOCOLS`) with one face.

`ttt.protocol` picks how the stage adapts; each entry is a `Protocol` whose
`make(...)` captures the ttt, adapter, model and data groups and the run's
capacities, builds its programs once and returns an `Adapt` whose
per-chunk calls take data only:

    seconds = adapt.prepare(plan, directory)  # run-wide protocols: adapt
    chunk = adapt.build(plan, task_indices)  # ChunkData: rows, keys, slots
    adapters, metrics = adapt.train(chunk)   # adapters [T] on the mesh

* `per_task` (`per_task.py`): a fresh adapter per task, trained on that
  task's rows alone (MARC, the ARChitects' PoE paper).
* `shared`, `joint` (`run_wide.py`): one adaptation over the rows of every
  task of the run, the shared part alone or with a learned prefix per task
  (`Protocol.task_embedding`).

`no_model` (`none.py`) is the stage beside a test double's decoder. The
main job never branches on a protocol's name: a new protocol is a module
here returning an `Adapt` plus one line in `PROTOCOLS`
(`tests/protocol_test.py` registers one and runs the main job with it).
"""

from __future__ import annotations

from ttt.adapt import per_task, run_wide
from ttt.adapt.common import (  # noqa: F401  (the face)
  PAD_INDEX,
  Adapt,
  ChunkData,
  Protocol,
)
from ttt.adapt.none import no_model  # noqa: F401  (the test double's)

# ttt.protocol -> its entry (checked when the config is parsed)
PROTOCOLS: dict[str, Protocol] = {
    "per_task": per_task.PROTOCOL,
    "shared": run_wide.SHARED,
    "joint": run_wide.JOINT,
}


def protocol(ttt) -> Protocol:
  """The registry entry of `ttt.protocol` (ValueError naming the known)."""
  if ttt.protocol not in PROTOCOLS:
    raise ValueError(f"ttt.protocol must be one of {tuple(PROTOCOLS)}, got "
                     f"{ttt.protocol!r}")
  return PROTOCOLS[ttt.protocol]


def check(ttt, adapter) -> None:
  """Raises ValueError for an unknown protocol, or one the adapter mode
  cannot run (a task embedding needs a prefix adapter mode)."""
  if protocol(ttt).task_embedding and not adapter.num_prefix:
    raise ValueError(
        f"ttt.protocol={ttt.protocol!r} learns an embedding per task: it "
        "needs a prefix adapter mode ('prefix', 'lora+prefix' or "
        f"'full+prefix'), got adapter.mode={adapter.mode!r}")


def make_adapt(**kwargs) -> Adapt:
  """The TTT stage of `kwargs['ttt'].protocol` (the arguments of
  `per_task.make`)."""
  return protocol(kwargs["ttt"]).make(**kwargs)
