"""Decoding methods: a registry of `Method`s with one face.

`METHODS` maps `decode.method` to its entry (checked when the config is
parsed); `make(cfg, weights, mesh, spec)` builds the run's `Decoder` once,
and every chunk calls `decoder.decode(queries, slots, adapters) ->
Decoded`. The main job never branches on a method's name: a new method is
one file here (its kernel, its `Method`) plus one line in `METHODS`.

* 'greedy' / 'sample' (`sampled`): one answer per view row.
* 'dfs' (`dfs`): every well-formed answer with p >= min_prob, exactly.
* 'vgb' (`vgb`): SJ-walk chains over the answer's token tree, the sampling
  half's transition rule with the model as π_ref.
* 'vgb_lifted' (`vgb_lifted`): the same chains on the sampling half's
  balanced lifted (non-reversible) rule, read out at a random time.

`predictor_decoder(fn)` is the test double: the same face around a host
function instead of the model.
"""

from __future__ import annotations

from collections.abc import Callable

from ttt import views
from ttt.decoders import dfs, sampled, vgb, vgb_lifted
from ttt.decoders.common import (  # noqa: F401  (the face)
  DecodeConfig,
  Decoded,
  Decoder,
  DecodeSpec,
  Method,
)

METHODS: dict[str, Method] = {
    "greedy": sampled.GREEDY,
    "sample": sampled.SAMPLE,
    "dfs": dfs.METHOD,
    "vgb": vgb.METHOD,
    "vgb_lifted": vgb_lifted.METHOD,
}


def method(cfg: DecodeConfig) -> Method:
  """The registry entry of `cfg.method`, its own fields checked
  (`Method.validate`; ValueError naming the known methods or the bad
  field)."""
  if cfg.method not in METHODS:
    raise ValueError(f"decode.method must be one of {tuple(METHODS)}, got "
                     f"{cfg.method!r}")
  METHODS[cfg.method].validate(cfg)
  return METHODS[cfg.method]


def make(cfg: DecodeConfig, weights, mesh, spec: DecodeSpec) -> Decoder:
  """The run's decoder for `cfg.method`, built once.

  Args:
    cfg: the decode group.
    weights: a `ttt.weights.Weights` (graphdef and the replicated base).
    mesh: the task mesh.
    spec: the run's shapes (`DecodeSpec`).
  """
  return method(cfg).make(cfg, weights, mesh, spec)


def predictor_decoder(predictor: Callable) -> Decoder:
  """A test double in place of the model: `predictor(task, test_index,
  view) -> grid | None` in the view's frame (e.g. an oracle), one answer
  per view, so inversion, voting and scoring run for real."""

  def decode(queries, slots, adapters) -> Decoded:
    del slots, adapters
    return Decoded([tuple(views.to_original(v, predictor(q.task,
                                                         q.test_index, v))
                          for v in q.views) for q in queries])

  return Decoder(decode, empty_slots=False, programs={},
                 inputs=lambda adapters, prompt_len: {})
