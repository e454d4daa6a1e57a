"""Checkpoints: a thin wrapper over Orbax's `CheckpointManager`.

A checkpoint directory holds one sub-directory per step, each with a pytree
item `state` (`StandardSave`) and a JSON item `meta`. Orbax writes a step to
a temporary directory and renames it when complete, so a run killed during a
save never leaves a half-written step that a later run would restore;
incomplete temporaries are cleaned up on the next start. Saves are
synchronous here (a save returns when it is on disk).

`save_weights`/`load_weights` store only model weights (bf16 by default) and
the model config: the form a trained base model ships in (`checkpoints/`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from ttt.errors import InputError


@contextlib.contextmanager
def _quiet():
  """Orbax logs every save at INFO; keep the run's own log readable."""
  old = logging.get_verbosity()
  logging.set_verbosity(min(old, logging.WARNING))
  try:
    yield
  finally:
    logging.set_verbosity(old)


class Checkpointer:
  """Saves and restores `(state, meta)` by step in `directory`."""

  def __init__(self, directory: str, *, max_to_keep: int = 3):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=True,
        enable_async_checkpointing=False, cleanup_tmp_directories=True)
    with _quiet():
      self._mgr = ocp.CheckpointManager(self.directory, options=options,
                                        item_names=("state", "meta"))

  def latest_step(self) -> int | None:
    """The newest complete step, or None."""
    return self._mgr.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._mgr.all_steps())

  def save(self, step: int, state: Any, meta: dict | None = None) -> None:
    """Writes `state` (a pytree) and `meta` (JSON) as `step`, atomically."""
    with _quiet():
      self._mgr.save(int(step), args=ocp.args.Composite(
          state=ocp.args.StandardSave(state),
          meta=ocp.args.JsonSave(meta or {})), force=True)
      self._mgr.wait_until_finished()

  def restore(self, abstract_state: Any, step: int | None = None
              ) -> tuple[Any, dict]:
    """Restores `(state, meta)` of `step` (default: the latest).

    Args:
      abstract_state: a pytree of `jax.ShapeDtypeStruct` (or arrays) with
        the structure, dtypes and shardings to restore into.
      step: which step; None for the latest.

    Raises:
      FileNotFoundError: no checkpoint in the directory.
    """
    if step is None and self.latest_step() is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
    # The newest readable step: a corrupt latest step (e.g. a disk fault)
    # falls back to the one before, with a warning.
    steps = [step] if step is not None else sorted(self.all_steps(),
                                                   reverse=True)
    for n, s in enumerate(steps):
      try:
        with _quiet():
          out = self._mgr.restore(s, args=ocp.args.Composite(
              state=ocp.args.StandardRestore(abstract),
              meta=ocp.args.JsonRestore()))
        return out["state"], dict(out["meta"] or {})
      except Exception as e:  # noqa: BLE001 -- reported, then the next one
        if step is not None or n == len(steps) - 1:
          raise InputError(f"checkpoint step {s} in {self.directory} cannot "
                           f"be read: {type(e).__name__}: "
                           f"{str(e).splitlines()[0][:300]}") from e
        logging.warning("checkpoint step %d in %s cannot be read (%s: %s); "
                        "falling back to step %d", s, self.directory,
                        type(e).__name__, str(e).splitlines()[0][:200],
                        steps[n + 1])
    raise AssertionError("unreachable")

  def close(self) -> None:
    with _quiet():
      self._mgr.close()


WEIGHTS_DIR = "weights"
CONFIG_FILE = "model_config.json"
# beside model_config.json: the SHA-256 of the weights' values, verified at
# load (a changed byte in the weight data is named, not run); outside
# `digest`'s files, so adding it to an older checkpoint keeps the run
# fingerprints that name it
VALUES_FILE = "weights_sha256.json"
DTYPES = ("bfloat16", "float16", "float32")  # what a checkpoint may store


def _named_leaves(tree: Any) -> list[tuple[str, Any]]:
  """(path 'a/0/b', leaf) of every leaf; the container types do not
  matter (a dict, an nnx State and Orbax's metadata tree agree)."""
  return [("/".join(str(getattr(k, "key", getattr(k, "name",
                                                  getattr(k, "idx", k))))
                    for k in key_path), leaf)
          for key_path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _check_shapes(path: str, abstract: Any) -> None:
  """InputError naming the first weight whose stored shape is not the
  model's (or that is missing), read from the checkpoint's metadata before
  any array is (a failed restore leaves pages of Orbax's tracebacks)."""
  try:
    with _quiet():
      meta = ocp.StandardCheckpointer().metadata(
          os.path.join(path, WEIGHTS_DIR))
    stored = {n: tuple(x.shape) for n, x in _named_leaves(
        getattr(meta, "item_metadata", meta)) if hasattr(x, "shape")}
  except Exception:  # noqa: BLE001 -- no metadata: the restore says why
    return
  for name, leaf in _named_leaves(abstract):
    if name not in stored and stored:
      raise InputError(
          f"model checkpoint {path}: the weights in "
          f"{os.path.join(path, WEIGHTS_DIR)} have no {name!r}: a "
          "checkpoint of another architecture")
    if name in stored and stored[name] != tuple(leaf.shape):
      raise InputError(
          f"model checkpoint {path}: weight {name!r} is "
          f"{stored[name]} in {os.path.join(path, WEIGHTS_DIR)}, this model "
          f"needs {tuple(leaf.shape)} ({CONFIG_FILE} and the weights "
          "disagree, or the model config overrides the checkpoint's shape)")


def values_digest(params: Any) -> str:
  """'sha256:<hex>' of a parameter pytree's values: every leaf's path,
  dtype, shape and bytes, in path order (the container types do not
  matter, so the tree saved and the tree restored into agree)."""
  items = [(name, np.asarray(leaf)) for name, leaf in _named_leaves(params)]
  h = hashlib.sha256()
  for name, x in sorted(items, key=lambda kv: kv[0]):
    h.update(f"{name}|{x.dtype}|{x.shape}".encode() + b"\0")
    h.update(np.ascontiguousarray(x).tobytes())
  return "sha256:" + h.hexdigest()


def save_weights(path: str, params: Any, model_config: dict, *,
                 dtype: str = "bfloat16", extra: dict | None = None) -> None:
  """Writes model weights (cast to `dtype`) and their config to `path`.

  Layout: `path/weights/` (an Orbax pytree) and `path/model_config.json`
  (`{"model": {...}, **extra}`). The weights are written to a temporary
  directory and renamed, so `path` is either complete or absent. With
  several hosts every host calls it (Orbax coordinates the write); process
  0 writes the JSON.
  """
  path = os.path.abspath(path)
  cast = jax.tree.map(lambda x: jnp.asarray(x, dtype), params)
  os.makedirs(path, exist_ok=True)
  target = os.path.join(path, WEIGHTS_DIR)
  with _quiet():
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(target, cast, force=True)
    ckptr.wait_until_finished()
  if jax.process_index() != 0:
    return
  from ttt import files
  try:  # (a parameter not held whole by this host: no digest)
    values = values_digest(cast)
  except (RuntimeError, ValueError):
    values = None
  if values:
    files.write_text(os.path.join(path, VALUES_FILE), json.dumps(
        dict(sha256=values), indent=2))
  files.write_text(os.path.join(path, CONFIG_FILE), json.dumps(
      dict(model=dict(model_config), dtype=dtype, **(extra or {})),
      indent=2, sort_keys=True))


# Orbax bookkeeping that differs between byte-identical weights (write
# timestamps; the path the checkpoint was written to)
_NOT_CONTENT = frozenset({"_CHECKPOINT_METADATA", "commit_success.txt"})


def digest(path: str) -> str:
  """'sha256:<hex>' of a `save_weights` checkpoint's content: its
  `model_config.json` and the files of its weights (names relative to
  `path`), not where it lies. A copy has the same digest, a checkpoint
  written over with other weights another one (the same weights saved
  again may differ too: Orbax names its data files per save).
  """
  path = os.path.abspath(path)
  load_weights_config(path)  # a clear error when there is no checkpoint
  h = hashlib.sha256()
  files = [CONFIG_FILE]
  for root, _, names in os.walk(os.path.join(path, WEIGHTS_DIR)):
    files += [os.path.relpath(os.path.join(root, n), path) for n in names
              if n not in _NOT_CONTENT]
  for rel in sorted(files):
    h.update(rel.replace(os.sep, "/").encode() + b"\0")
    with open(os.path.join(path, rel), "rb") as f:
      data = f.read()
    h.update(len(data).to_bytes(8, "little") + data)
  return "sha256:" + h.hexdigest()


def load_weights_config(path: str) -> dict:
  """The JSON written beside the weights by `save_weights`."""
  file = os.path.join(os.path.abspath(path), CONFIG_FILE)
  if not os.path.exists(file):
    raise FileNotFoundError(
        f"no model checkpoint at {path}: it is neither a ttt-jax checkpoint "
        f"(no {CONFIG_FILE}) nor a Hugging Face snapshot (no config.json)"
        if not os.path.exists(os.path.join(os.path.abspath(path),
                                           "config.json"))
        else f"no model checkpoint at {path} (missing {CONFIG_FILE})")
  try:
    with open(file, encoding="utf-8") as f:
      out = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise InputError(f"model checkpoint {path}: {file} is not valid JSON "
                     f"({e})") from e
  if not isinstance(out, dict) or not isinstance(out.get("model"), dict):
    raise InputError(f"model checkpoint {path}: {file} has no 'model' "
                     "config object")
  if out.get("dtype", "bfloat16") not in DTYPES:
    raise InputError(f"model checkpoint {path}: {file} has dtype "
                     f"{out.get('dtype')!r}; a checkpoint stores one of "
                     f"{', '.join(DTYPES)}")
  return out


def _verify_values(path: str, loaded: Any) -> None:
  """Checks the restored weights against `VALUES_FILE` (InputError naming
  the file when they differ; a warning when the checkpoint predates it)."""
  file = os.path.join(path, VALUES_FILE)
  if not os.path.exists(file):
    logging.warning("model checkpoint %s has no %s (saved before weight "
                    "digests): its weights cannot be verified", path,
                    VALUES_FILE)
    return
  try:
    with open(file, encoding="utf-8") as f:
      want = json.load(f)["sha256"]
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise InputError(f"model checkpoint {path}: {file} is not a weight "
                     f"digest ({type(e).__name__}: {e})") from e
  got = values_digest(loaded)
  if got != want:
    raise InputError(
        f"model checkpoint {path}: the weights in "
        f"{os.path.join(path, WEIGHTS_DIR)} do not match {file} (stored "
        f"{str(want)[:23]}..., read {got[:23]}...): the weight data was "
        "changed or corrupted after it was saved")


def load_weights(path: str, abstract_params: Any) -> Any:
  """Reads weights written by `save_weights` into `abstract_params`' dtypes.

  Args:
    path: the directory given to `save_weights`.
    abstract_params: pytree of arrays / ShapeDtypeStructs (e.g. the float32
      parameters of a freshly built model); the result has their dtypes.
  """
  path = os.path.abspath(path)
  stored = load_weights_config(path).get("dtype", "bfloat16")
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, stored),
                          abstract_params)
  _check_shapes(path, abstract)
  try:
    with _quiet():
      loaded = ocp.StandardCheckpointer().restore(
          os.path.join(path, WEIGHTS_DIR), abstract)
  except Exception as e:  # noqa: BLE001 -- one line naming file and problem
    raise InputError(
        f"model checkpoint {path}: the weights in "
        f"{os.path.join(path, WEIGHTS_DIR)} cannot be read into this model "
        f"(missing, truncated or of another shape: {type(e).__name__}: "
        f"{str(e).splitlines()[0][:300]})") from None
  _verify_values(path, loaded)
  return jax.tree.map(lambda x, a: jnp.asarray(x, a.dtype), loaded,
                      abstract_params)
