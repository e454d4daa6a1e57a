"""The no-model TTT stage: what a test double runs beside its predictor
decoder (`ttt.pipeline.make_stages` picks it): the chunk's slots, no
programs, no adapters, nothing trains."""

from __future__ import annotations

import numpy as np

from ttt.adapt.common import Adapt, ChunkData, slot_index, untrained


def no_model(*, seed: int, caps, **unused) -> Adapt:
  """The stage beside a test double's decoder: the chunk's slots, no
  adapters (None), no programs; takes `make`'s arguments."""
  del unused

  def build(plan, chunk: list[int]) -> ChunkData:
    slots, index, keys = slot_index(plan, chunk, caps.tasks, seed)
    return ChunkData(slots, index, keys, None, np.zeros(caps.tasks, np.int32))

  return Adapt(build=build,
               train=lambda cd: (None, untrained(len(cd.slots))),
               tokens=lambda cd: dict(ttt_real=0.0, ttt_computed=0.0),
               programs={}, inputs=lambda length: {})
