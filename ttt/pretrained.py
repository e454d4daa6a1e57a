"""Pretrained language models as the base: read their weights and tokenizer.

Two formats, one face (`FORMATS`, a registry picked by what the path is):

* a Hugging Face snapshot directory -- `config.json` with `model_type`
  llama, mistral, qwen2 or qwen3, and `model.safetensors` or shards listed in
  `model.safetensors.index.json`; `tokenizer.json` for the token mapping;
* a GGUF file (llama.cpp) of architecture `llama`, quantised or not, with
  its byte-level BPE tokenizer in the metadata.

Public functions (paths are either form):

* `is_pretrained(path) -> bool`;
* `model_config(path, vocab) -> dict` of `ttt.model.ModelConfig` fields
  (the architecture only: no `dtype` or `scan_layers`, which stay the
  caller's);
* `token_map(path) -> list[int]`: for each of the 16 project tokens
  (`ttt.tokens`: colours 0-9, ROW_END, INPUT, OUTPUT, BOS, EOS, PAD) its id
  in the language model's vocabulary;
* `load_base(path, template, vocab, shardings=None) -> state`: a template
  state (any part of the model's parameters, e.g. `ttt.lora.split(model)
  [2]`, in either layout of the blocks: per layer or stacked,
  `ModelConfig.scan_layers`) filled with the pretrained weights -- with
  `shardings`, each leaf built straight on its devices from the pieces
  they hold;
* `tokenizer(path) -> tokenizers.Tokenizer`.

Vocabulary: `vocab='cell'` keeps only the 16 rows of the embedding and the
output head that `token_map` names, in the project's token order (one token
per cell: the model then reads and writes `ttt.tokens` sequences directly);
`vocab='full'` keeps every row (the ids are the language model's). The cut
is exact: the cut model's logits equal the full model's at the kept ids, so
its log-probabilities are the full model's renormalised over those 16.

Tensors are read one at a time (safetensors opened lazily with
`framework="flax"`, which reads bfloat16; GGUF tensors memory-mapped and
dequantised one by one, the embedding only at the kept rows) and converted
to the template's dtype (float32 master weights; the model casts to its
compute dtype). A layer-stacked parameter is filled layer by layer into one
host array (the host holds it and one layer, never the model twice). With
`shardings` (a model axis: `ttt.sharding.param_shardings`) nothing is whole
on the host: safetensors are read by slice, one device's piece of one
tensor at a time; a GGUF tensor is read whole, converted, sliced for the
devices and dropped; stacked leaves are assembled on the devices layer by
layer. Peak host memory: about one tensor (`load_base`).
llama.cpp stores the q and k projections with the rows of each head
permuted for its interleaved RoPE; loading undoes that for this model's
rotate-half RoPE (`unpermute=False` keeps them as stored, for
tests).

Not handled: sliding-window attention (Mistral v0.1's 4096-token window:
exact only on shorter sequences; a warning says so), RoPE types other than
Llama-3's, biases on the output or MLP projections, SentencePiece ('llama')
GGUF tokenizers. Each raises a one-line error naming what it met.

Hostile or broken files: every refusal is a `ttt.errors.InputError` naming
the file (and the field or tensor): a JSON file that does not parse or is
not an object, a config field missing or of the wrong type, a truncated,
header-only or empty safetensors or GGUF file, a malformed tokenizer.json.
The shards named in `model.safetensors.index.json` must lie inside the
snapshot folder, symbolic links resolved (or, in a Hugging Face hub cache,
inside the repository's `blobs/`, where the snapshot's links point);
`source_files` lists every file a reader reads (what `ttt.weights.digest`
hashes).

CLI::

  python -m ttt.pretrained info DIR|FILE   # architecture and token mapping
  python -m ttt.pretrained check DIR       # logits vs transformers (exit 1
                                           # above 1e-4)

A bad input is one line `error: ...` and exit status 2 (as the launches);
`check` without transformers or torch says what to install.
"""

from __future__ import annotations

import functools
import json
import numbers
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec

from ttt import errors

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
GGUF_ARCHITECTURES = ("llama",)
VOCABS = ("cell", "full")
# The project's tokens 0..12 as text (ttt.tokens: colours, ROW_END, INPUT,
# OUTPUT); BOS, EOS and PAD (13..15) come from the model's special tokens.
CELL_STRINGS = tuple(str(c) for c in range(10)) + ("\n", "I", "O")
CHECK_PROMPT = "I\n0123\n4567\nO\n"  # `check`'s ARC-like text
CHECK_TOLERANCE = 1e-4
# What `check` needs beyond the llm extra (setup.py's test extra pins torch:
# its CPU build)
CHECK_INSTALL = "pip install transformers torch==2.13.0"
LLM_PACKAGES = ("safetensors", "tokenizers", "gguf", "jinja2")  # the extra
INDEX = "model.safetensors.index.json"


class Part(NamedTuple):
  """One stored tensor, read a slice at a time.

  Attributes:
    shape: the stored shape (Hugging Face layout: [out, in] / [n]).
    read: `read(index, rows=None) -> float32 numpy`: `x[index]` of the
      stored tensor `x` (`index` a tuple of slices), or `x[rows][index]`
      when `rows` (vocabulary ids) are given -- reading only those
      elements from the file, never the whole tensor.
  """

  shape: tuple
  read: Callable[..., np.ndarray]


class Source(NamedTuple):
  """An opened pretrained model, whatever its format.

  Attributes:
    path: the directory or file.
    arch: `ModelConfig` fields for the full vocabulary (rope='1d').
    info: facts for `info` (format, model type, context length, ...).
    tensor: `tensor(name, rows=None, unpermute=True) -> float32 [out, in]
      / [n]` (a jax or numpy array) by Hugging Face name
      (`model.layers.0.self_attn.q_proj.weight`), only the given rows when
      `rows` is a sequence of ids; `unpermute` (GGUF) undoes llama.cpp's
      q/k row order.
    has: `has(name) -> bool`.
    tokenizer: `tokenizer() -> tokenizers.Tokenizer`.
    specials: `specials() -> dict` with 'bos', 'eos', 'pad' (ids or None)
      and 'control' (every special token id, ascending).
    part: `part(name) -> Part`, a tensor read in slices (`load_base`'s
      sharded path), or None for a format whose tensors are converted
      whole (GGUF: quantised blocks, q/k row order).
  """

  path: str
  arch: dict
  info: dict
  tensor: Callable[..., Any]
  has: Callable[[str], bool]
  tokenizer: Callable[[], Any]
  specials: Callable[[], dict]
  part: Callable[[str], Part] | None = None


# --- Hugging Face snapshots --------------------------------------------------


def one_line(e: BaseException) -> str:
  """An exception's message on one line (whitespace runs collapsed)."""
  return " ".join(str(e).split()) or type(e).__name__


def read_json_object(path: str) -> dict:
  """A JSON file that holds an object.

  Raises:
    ttt.errors.InputError: the file is not valid JSON (or not UTF-8) or
      holds something else than an object, naming the file.
    OSError: the file cannot be read (its message names it).
  """
  try:
    with open(path, encoding="utf-8") as f:
      out = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
    raise errors.InputError(f"{path} is not valid JSON ({one_line(e)})"
                            ) from e
  if not isinstance(out, dict):
    raise errors.InputError(f"{path}: expected a JSON object, got "
                            f"{type(out).__name__} {_short(out)}")
  return out


def _short(value, n: int = 60) -> str:
  text = repr(value)
  return text if len(text) <= n else text[:n] + "..."


_REQUIRED = object()


def _whole(mapping: dict, key: str, path: str, default: Any = _REQUIRED,
           minimum: int = 1) -> int:
  """`mapping[key]` as an int >= `minimum` (a whole JSON number); absent
  (or null) gives `default`, or an error when there is none."""
  value = mapping.get(key)
  if value is None:
    if default is _REQUIRED:
      raise errors.InputError(f"{path}: no {key} (the model's architecture "
                              "needs it)")
    return default
  if (isinstance(value, numbers.Real) and not isinstance(value, bool)
      and float(value).is_integer() and value >= minimum):
    return int(value)
  raise errors.InputError(f"{path}: {key} is {_short(value)}, not a whole "
                          f"number >= {minimum}")


def _real(mapping: dict, key: str, path: str, default: Any = _REQUIRED
          ) -> float:
  """`mapping[key]` as a finite float; absent (or null) gives `default`."""
  value = mapping.get(key)
  if value is None:
    if default is _REQUIRED:
      raise errors.InputError(f"{path}: no {key}")
    return default
  if (isinstance(value, numbers.Real) and not isinstance(value, bool)
      and np.isfinite(float(value))):
    return float(value)
  raise errors.InputError(f"{path}: {key} is {_short(value)}, not a number")


def _object(mapping: dict, key: str, path: str) -> dict:
  """`mapping[key]` when it is an object, {} when absent or null."""
  value = mapping.get(key) or {}
  if not isinstance(value, dict):
    raise errors.InputError(f"{path}: {key} is {_short(value)}, not an "
                            "object")
  return value


def _rope(config: dict, path: str) -> tuple[float, tuple[float, ...]]:
  """(rope_theta, rope_scaling fields) from old or new config keys.

  transformers v5 writes `rope_parameters: {rope_theta, rope_type, ...}`;
  v4-era checkpoints have top-level `rope_theta` and `rope_scaling`.
  """
  params = _object(config, "rope_parameters", path)
  theta = _real(params, "rope_theta", path,
                _real(config, "rope_theta", path, 10000.0))
  scaling = params if "rope_type" in params else _object(
      config, "rope_scaling", path)
  kind = scaling.get("rope_type", scaling.get("type", "default"))
  if kind == "default":
    return theta, ()
  if kind == "llama3":
    return theta, tuple(_real(scaling, k, path) for k in (
        "factor", "low_freq_factor", "high_freq_factor",
        "original_max_position_embeddings"))
  raise errors.InputError(f"{path}: rope_type {_short(kind)} is not "
                          "supported; supported: default, llama3")


def hf_arch(config: dict, path: str = "config.json") -> tuple[dict, dict]:
  """`ModelConfig` fields (full vocabulary) and facts from a `config.json`.

  Args:
    config: the parsed `config.json`.
    path: named in errors.

  Returns:
    (fields, info).

  Raises:
    ttt.errors.InputError: (one line, naming `path`) an unsupported
      `model_type` or feature, a missing field or one of the wrong type.
  """
  if not isinstance(config, dict):
    raise errors.InputError(f"{path}: expected a JSON object, got "
                            f"{type(config).__name__}")
  kind = config.get("model_type")
  if kind not in SUPPORTED_MODEL_TYPES:
    raise errors.InputError(
        f"{path}: model_type {_short(kind)} is not supported; supported: "
        f"{', '.join(SUPPORTED_MODEL_TYPES)}")
  if config.get("hidden_act", "silu") != "silu":
    raise errors.InputError(f"{path}: hidden_act "
                            f"{_short(config['hidden_act'])} is not "
                            "supported; supported: silu")
  if config.get("mlp_bias"):
    raise errors.InputError(f"{path}: mlp_bias=true is not supported")
  if kind != "qwen2" and config.get("attention_bias"):
    raise errors.InputError(f"{path}: attention_bias=true (a bias on "
                            "o_proj) is not supported")
  if config.get("use_sliding_window"):
    raise errors.InputError(f"{path}: use_sliding_window=true is not "
                            "supported")
  d = _whole(config, "hidden_size", path)
  heads = _whole(config, "num_attention_heads", path)
  # 0 or null: the default (as transformers reads them)
  kv_heads = _whole(config, "num_key_value_heads", path, 0, 0) or heads
  head_dim = _whole(config, "head_dim", path, 0, 0)
  if not head_dim and d % heads:
    raise errors.InputError(f"{path}: hidden_size {d} is not a multiple of "
                            f"num_attention_heads {heads} (and no head_dim)")
  theta, scaling = _rope(config, path)
  fields = dict(
      vocab_size=_whole(config, "vocab_size", path),
      num_layers=_whole(config, "num_hidden_layers", path),
      d_model=d,
      num_heads=heads,
      num_kv_heads=kv_heads,
      head_dim_override=head_dim or d // heads,
      mlp_dim=_whole(config, "intermediate_size", path),
      rope="1d",
      rope_base=theta,
      rope_scaling=scaling,
      norm_eps=_real(config, "rms_norm_eps", path, 1e-6),
      qkv_bias=kind == "qwen2",
      qk_norm=kind == "qwen3",
      tie_embeddings=bool(config.get("tie_word_embeddings", False)),
  )
  window = (_whole(config, "sliding_window", path, None, 0)
            if kind == "mistral" else None)
  info = dict(model_type=kind,
              context=config.get("max_position_embeddings"),
              sliding_window=window)
  return fields, info


def _token_id(tok, value, where: str) -> int | None:
  """An id from a tokenizer_config entry (a string, {'content': ...} or an
  id) or a config.json id (an int or a list, first taken); `where` (the
  file and key) is named in the error for anything else."""
  if isinstance(value, list):
    value = value[0] if value else None
  if isinstance(value, dict):
    value = value.get("content")
  if isinstance(value, str):
    return tok.token_to_id(value)
  if value is None:
    return None
  if (isinstance(value, numbers.Real) and not isinstance(value, bool)
      and float(value).is_integer()):
    return int(value)
  raise errors.InputError(f"{where} is {_short(value)}: neither a token nor "
                          "a token id")


def _inside(file: str, root: str) -> bool:
  return os.path.commonpath([file, root]) == root


def _shard_roots(path: str) -> list[str]:
  """Where a snapshot's shards may lie, symbolic links resolved: the
  snapshot folder; in a Hugging Face hub cache
  (`models--org--name/snapshots/<revision>/`, whose files are links to
  `../../blobs/<hash>`) also that repository's `blobs/`."""
  real = os.path.realpath(path)
  roots = [real]
  parent = os.path.dirname(real)
  if os.path.basename(parent) == "snapshots":
    roots.append(os.path.realpath(os.path.join(os.path.dirname(parent),
                                               "blobs")))
  return roots


def _weight_map(path: str) -> dict[str, str]:
  """Tensor name -> shard file (`path` joined with the index's entry) of a
  sharded snapshot, every entry checked: a file name that lies inside the
  snapshot (`_shard_roots`) and exists."""
  index = os.path.join(path, INDEX)
  weight_map = read_json_object(index).get("weight_map")
  if not isinstance(weight_map, dict) or not weight_map:
    raise errors.InputError(f"{index}: no weight_map (an object of tensor "
                            "name -> shard file)")
  roots, out = _shard_roots(path), {}
  for name, file in weight_map.items():
    entry = (f"{index}: weight_map entry {_short(name, 200)}: "
             f"{_short(file, 300)}")
    if not isinstance(file, str) or not file.strip() or "\0" in file:
      raise errors.InputError(f"{entry} is not a file name")
    full = os.path.join(path, file)
    if not any(_inside(os.path.realpath(full), r) for r in roots):
      raise errors.InputError(f"{entry} lies outside the snapshot folder "
                              f"{path} (symbolic links resolved); refused")
    if not os.path.isfile(full):
      raise errors.InputError(f"{entry}: no such file in the snapshot")
    out[name] = full
  return out


def _safetensors_names(file: str) -> list[str]:
  """The tensor names in a safetensors file's header (the header checked
  against the file's size: a truncated, header-only or empty file is
  refused here, before any tensor is read)."""
  import safetensors

  try:
    with safetensors.safe_open(file, framework="flax") as f:
      return list(f.keys())
  except safetensors.SafetensorError as e:
    raise errors.InputError(f"{file} is not a readable safetensors file "
                            f"(truncated or corrupt: {one_line(e)})") from e


def source_files(path: str) -> list[str]:
  """Every file the reader of `path` reads (what a resume digest must
  cover): the .gguf file itself; of a snapshot, `config.json`, its weights
  (`model.safetensors`, or the index and each shard it names, checked to
  lie inside the snapshot), and `tokenizer.json` and
  `tokenizer_config.json` where present. Paths are `path` joined with the
  name (a link is not resolved)."""
  if _is_gguf(path):
    return [path]
  files = [os.path.join(path, "config.json")]
  if os.path.exists(os.path.join(path, INDEX)):
    files += [os.path.join(path, INDEX),
              *sorted(set(_weight_map(path).values()))]
  else:
    files.append(os.path.join(path, "model.safetensors"))
  return files + [f for f in (os.path.join(path, "tokenizer.json"),
                              os.path.join(path, "tokenizer_config.json"))
                  if os.path.exists(f)]


def open_snapshot(path: str) -> Source:
  """Opens a Hugging Face snapshot directory (nothing read but JSON and the
  safetensors headers)."""
  config_file = os.path.join(path, "config.json")
  config = read_json_object(config_file)
  fields, info = hf_arch(config, config_file)
  if os.path.exists(os.path.join(path, INDEX)):
    files = _weight_map(path)
    for shard in sorted(set(files.values())):
      stored = set(_safetensors_names(shard))
      missing = [n for n, f in files.items() if f == shard and n not in stored]
      if missing:
        raise errors.InputError(
            f"{os.path.join(path, INDEX)}: weight_map puts {_short(missing)} "
            f"in {shard}, which has no such tensor")
  else:
    single = os.path.join(path, "model.safetensors")
    files = dict.fromkeys(_safetensors_names(single), single)
  if "lm_head.weight" not in files:
    fields["tie_embeddings"] = True  # no separate head stored
  info.update(format="safetensors", files=len(set(files.values())))

  def tensor(name, rows=None, unpermute=True):
    del unpermute  # nothing is permuted in a snapshot
    import safetensors

    if name not in files:
      raise errors.InputError(f"{path}: no tensor {name!r} in the checkpoint")
    try:
      with safetensors.safe_open(files[name], framework="flax") as f:
        x = f.get_tensor(name)
    except safetensors.SafetensorError as e:
      raise errors.InputError(f"{files[name]}: cannot read tensor {name!r} "
                              f"({one_line(e)})") from e
    if rows is not None:
      _check_rows(rows, x.shape, name, files[name])
      x = x[jnp.asarray(rows)]
    return jnp.asarray(x, jnp.float32)

  def part(name):
    import safetensors

    if name not in files:
      raise errors.InputError(f"{path}: no tensor {name!r} in the checkpoint")
    file = files[name]

    def sliced(index, rows=None):
      """`get_slice` reads only the asked elements (a vocabulary cut: each
      kept row on its own, at the asked columns)."""
      with safetensors.safe_open(file, framework="flax") as f:
        stored = f.get_slice(name)
        if rows is None:
          return np.asarray(stored[tuple(index)], np.float32)
        _check_rows(rows, stored.get_shape(), name, file)
        rest = tuple(index[1:])
        return np.concatenate([
            np.asarray(stored[(slice(i, i + 1), *rest)], np.float32)
            for i in np.asarray(rows)[index[0]]])

    def read(index, rows=None):
      try:
        return sliced(index, rows)
      except safetensors.SafetensorError as e:
        raise errors.InputError(f"{file}: cannot read tensor {name!r} "
                                f"({one_line(e)})") from e

    try:
      with safetensors.safe_open(file, framework="flax") as f:
        shape = tuple(f.get_slice(name).get_shape())
    except safetensors.SafetensorError as e:
      raise errors.InputError(f"{file}: cannot read tensor {name!r} "
                              f"({one_line(e)})") from e
    return Part(shape, read)

  @functools.cache
  def tokenizer():
    import tokenizers

    file = os.path.join(path, "tokenizer.json")
    if not os.path.exists(file):
      raise errors.InputError(f"{path}: no tokenizer.json (the token "
                              "mapping needs it)")
    try:
      return tokenizers.Tokenizer.from_file(file)
    except Exception as e:  # tokenizers raises a bare Exception
      raise errors.InputError(f"{file} is not a valid tokenizer file "
                              f"({one_line(e)})") from e

  def specials():
    tok = tokenizer()
    extra = os.path.join(path, "tokenizer_config.json")
    tok_config = read_json_object(extra) if os.path.exists(extra) else {}
    out = {}
    for key in ("bos", "eos", "pad"):
      out[key] = _token_id(tok, tok_config.get(f"{key}_token"),
                           f"{extra}: {key}_token")
      if out[key] is None:
        out[key] = _token_id(tok, config.get(f"{key}_token_id"),
                             f"{config_file}: {key}_token_id")
    out["control"] = sorted(i for i, t in tok.get_added_tokens_decoder()
                            .items() if t.special)
    return out

  return Source(path, fields, info, tensor, files.__contains__, tokenizer,
                specials, part)


def _check_rows(rows, shape, name: str, file: str) -> None:
  """The vocabulary rows `token_map` keeps exist in the stored tensor (an
  index past the end would be clamped, silently, by a JAX gather)."""
  if len(shape) < 1 or max(rows) >= shape[0] or min(rows) < 0:
    raise errors.InputError(
        f"{file}: {name} has shape {tuple(shape)}; the token map needs rows "
        f"{min(rows)}..{max(rows)} (a vocab_size larger than the stored "
        "embedding?)")


# --- GGUF --------------------------------------------------------------------

_GGUF_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "lm_head.weight": "output.weight",
    "model.norm.weight": "output_norm.weight",
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
_CONTROL = 3  # gguf token_type of control (special) tokens


def gguf_name(name: str) -> str:
  """The GGUF tensor name of a Hugging Face Llama tensor name."""
  if name in _GGUF_NAMES:
    return _GGUF_NAMES[name]
  parts = name.split(".")
  if parts[:2] == ["model", "layers"] and len(parts) > 3:
    rest = ".".join(parts[3:])
    if rest in _GGUF_NAMES:
      return f"blk.{parts[2]}.{_GGUF_NAMES[rest]}"
  raise ValueError(f"no GGUF name for tensor {name!r}")


def unpermute_rows(w, num_heads: int):
  """Undoes llama.cpp's per-head row permutation of a q/k projection.

  Args:
    w: [num_heads * head_dim, d_in] as stored in GGUF (rows of each head
      interleaved as (even, odd) pairs).
    num_heads: query heads for q, key/value heads for k.

  Returns:
    [num_heads * head_dim, d_in] with each head's rows in rotate-half order
    (first halves of the pairs, then second halves), as Hugging Face stores
    them.
  """
  out, d_in = w.shape
  return (w.reshape(num_heads, out // num_heads // 2, 2, d_in)
          .swapaxes(1, 2).reshape(out, d_in))


def read_gguf(path: str, only: Sequence[str] | None = None,
              skip: Sequence[str] = ()):
  """A `gguf.GGUFReader` of `path` and its metadata `{key: value}` (only
  the keys `only` when given, none of `skip`), a truncated, header-only or
  corrupt file refused as one line naming it."""
  import gguf

  try:
    reader = gguf.GGUFReader(path)
    meta = {k: f.contents() for k, f in reader.fields.items()
            if (only is None or k in only) and k not in skip}
  except (OSError, MemoryError):
    raise
  except Exception as e:  # the reader fails in numpy, struct, indexing...
    raise errors.InputError(f"{path} is not a readable GGUF file (truncated "
                            f"or corrupt: {type(e).__name__}: "
                            f"{one_line(e)})") from e
  return reader, meta


def open_gguf(path: str) -> Source:
  """Opens a GGUF file of Llama architecture (memory-mapped)."""
  import gguf

  reader, meta = read_gguf(path, skip=("tokenizer.chat_template",))
  arch = meta.get("general.architecture")
  if arch not in GGUF_ARCHITECTURES:
    raise errors.InputError(
        f"{path}: GGUF architecture {_short(arch)} is not supported; "
        f"supported: {', '.join(GGUF_ARCHITECTURES)}")
  tensors = {t.name: t for t in reader.tensors}
  scaling = meta.get(f"{arch}.rope.scaling.type", "none")
  if "rope_freqs.weight" in tensors or scaling not in ("none", ""):
    raise errors.InputError(
        f"{path}: GGUF RoPE scaling ({scaling}, rope_freqs) is not "
        "supported; load the Hugging Face snapshot instead")
  where = f"{path} (GGUF metadata)"

  def whole(name, default=_REQUIRED, minimum=1):
    return _whole(meta, f"{arch}.{name}", where, default, minimum)

  def real(name, default):
    return _real(meta, f"{arch}.{name}", where, default)

  d, heads = whole("embedding_length"), whole("attention.head_count")
  kv = whole("attention.head_count_kv", heads)
  head_dim = (whole("attention.key_length", 0, 0)
              or whole("rope.dimension_count", 0, 0))
  if not head_dim and d % heads:
    raise errors.InputError(f"{where}: embedding_length {d} is not a "
                            f"multiple of attention.head_count {heads}")
  tokens = meta.get("tokenizer.ggml.tokens") or []
  if not isinstance(tokens, list):
    raise errors.InputError(f"{where}: tokenizer.ggml.tokens is not a list")
  fields = dict(
      vocab_size=whole("vocab_size", 0, 0) or len(tokens),
      num_layers=whole("block_count"),
      d_model=d,
      num_heads=heads,
      num_kv_heads=kv,
      head_dim_override=head_dim or d // heads,
      mlp_dim=whole("feed_forward_length"),
      rope="1d",
      rope_base=real("rope.freq_base", 10000.0),
      rope_scaling=(),
      norm_eps=real("attention.layer_norm_rms_epsilon", 1e-5),
      qkv_bias=False,
      qk_norm=False,
      tie_embeddings="output.weight" not in tensors,
  )
  info = dict(format="gguf", model_type=arch,
              context=meta.get(f"{arch}.context_length"), sliding_window=None,
              name=meta.get("general.name"),
              tokenizer=meta.get("tokenizer.ggml.model"))
  permuted = {"self_attn.q_proj.weight": heads, "self_attn.k_proj.weight": kv}

  def has(name):
    try:
      return gguf_name(name) in tensors
    except ValueError:
      return False

  def tensor(name, rows=None, unpermute=True):
    if not has(name):
      raise errors.InputError(f"{path}: no tensor {name!r} "
                              f"({gguf_name(name)}) in the GGUF file")
    t = tensors[gguf_name(name)]
    if rows is not None:
      _check_rows(rows, t.data.shape, t.name, path)
    data = t.data if rows is None else t.data[np.asarray(rows)]
    try:
      w = np.asarray(gguf.quants.dequantize(data, t.tensor_type), np.float32)
    except (NotImplementedError, ValueError) as e:
      raise errors.InputError(f"{path}: cannot dequantise tensor {t.name} "
                              f"({one_line(e)})") from e
    n = permuted.get(".".join(name.split(".")[3:]))
    if unpermute and n:
      if w.ndim != 2 or w.shape[0] % (2 * n):
        raise errors.InputError(
            f"{path}: {t.name} has shape {w.shape}; a q/k projection of {n} "
            "heads needs rows in whole pairs per head")
      w = unpermute_rows(w, n)
    return w  # host float32 (load_base places it)

  @functools.cache
  def tokenizer():
    kind = meta.get("tokenizer.ggml.model")
    if kind != "gpt2":
      raise errors.InputError(
          f"{path}: GGUF tokenizer model {_short(kind)} is not supported; "
          "supported: gpt2 (byte-level BPE)")
    try:
      return _bpe_tokenizer(tokens, meta.get("tokenizer.ggml.merges") or [],
                            meta.get("tokenizer.ggml.token_type") or [],
                            meta.get("tokenizer.ggml.pre"))
    except Exception as e:  # tokenizers raises a bare Exception
      raise errors.InputError(f"{where}: the tokenizer cannot be built "
                              f"({type(e).__name__}: {one_line(e)})") from e

  types = meta.get("tokenizer.ggml.token_type") or []
  specials = dict(
      bos=meta.get("tokenizer.ggml.bos_token_id"),
      eos=meta.get("tokenizer.ggml.eos_token_id"),
      pad=meta.get("tokenizer.ggml.padding_token_id"),
      control=[i for i, t in enumerate(types) if t == _CONTROL])
  return Source(path, fields, info, tensor, has, tokenizer, lambda: specials)


def _bpe_tokenizer(tokens, merges, types, pre):
  """A `tokenizers` byte-level BPE tokenizer from GGUF metadata.

  The pre-tokenizer is GPT-2's regex (with single digits for SmolLM's
  'smollm'); it only matters for multi-character text, not for the
  one-character strings `token_map` encodes.
  """
  import tokenizers
  from tokenizers import decoders, models, pre_tokenizers

  vocab = {t: i for i, t in enumerate(tokens)}
  bpe = models.BPE(vocab=vocab, merges=[tuple(m.split(" ", 1))
                                        for m in merges])
  tok = tokenizers.Tokenizer(bpe)
  byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False,
                                        use_regex=True)
  tok.pre_tokenizer = (pre_tokenizers.Sequence([
      pre_tokenizers.Digits(individual_digits=True), byte_level])
                       if pre == "smollm" else byte_level)
  tok.decoder = decoders.ByteLevel()
  tok.add_special_tokens([tokens[i] for i, t in enumerate(types)
                          if t == _CONTROL])
  return tok


# --- the registry and the public face ----------------------------------------


def why_not(path: str) -> str:
  """Why `path` is not a pretrained model (`is_pretrained` is False), in a
  few words: what is missing."""
  if not os.path.exists(path):
    return "no such file or folder"
  if not os.path.isdir(path):
    return "a file whose name does not end in .gguf"
  if not os.path.isfile(os.path.join(path, "config.json")):
    return "no config.json"
  return f"config.json but neither model.safetensors nor {INDEX}"


def _is_snapshot(path: str) -> bool:
  return (os.path.isfile(os.path.join(path, "config.json"))
          and (os.path.isfile(os.path.join(path, "model.safetensors"))
               or os.path.isfile(os.path.join(
                   path, INDEX))))


def _is_gguf(path: str) -> bool:
  return os.path.isfile(path) and path.endswith(".gguf")


# format -> (recognise(path) -> bool, open(path) -> Source)
FORMATS = {
    "safetensors": (_is_snapshot, open_snapshot),
    "gguf": (_is_gguf, open_gguf),
}


def format_of(path: str) -> str | None:
  """The `FORMATS` key of `path`, or None."""
  for name, (recognise, _) in FORMATS.items():
    if recognise(str(path)):
      return name
  return None


def is_pretrained(path: str) -> bool:
  """Whether `path` is a snapshot directory (config.json + safetensors) or a
  .gguf file -- rather than one of the project's own checkpoints."""
  return format_of(path) is not None


def open_source(path: str) -> Source:
  """Opens `path` with its format's reader (cached by absolute path: GGUF
  metadata takes seconds to parse)."""
  return _open_cached(os.path.abspath(os.fspath(path)))


@functools.lru_cache(maxsize=4)
def _open_cached(path: str) -> Source:
  name = format_of(path)
  if name is None:
    raise errors.InputError(
        f"{path} is neither a Hugging Face snapshot directory (config.json "
        "+ model.safetensors[.index.json]) nor a .gguf file: "
        f"{why_not(path)}")
  source = FORMATS[name][1](path)
  window = source.info.get("sliding_window")
  if window:
    logging.warning("%s: sliding-window attention (%d tokens) is not "
                    "implemented; attention is exact on sequences of at most "
                    "%d tokens", path, window, window)
  return source


def _check_vocab(vocab: str) -> None:
  if vocab not in VOCABS:
    raise errors.InputError(f"vocab must be one of {VOCABS}, got {vocab!r}")


def model_config(path: str, vocab: str = "cell") -> dict:
  """`ttt.model.ModelConfig` fields of the pretrained model at `path`.

  Args:
    path: a snapshot directory or a .gguf file.
    vocab: 'cell' (vocab_size 16, the project's tokens) or 'full'.

  Returns:
    A dict of every architecture field (rope='1d'). Not `dtype` nor
    `scan_layers` (how the layers run, not what they are): those stay the
    caller's, so `ttt.weights`, which updates the config's fields with
    these, keeps the config's choice (configs/arc_ttt.py:llm scans).
  """
  _check_vocab(vocab)
  fields = dict(open_source(path).arch)
  if vocab == "cell":
    fields["vocab_size"] = len(CELL_STRINGS) + 3
  return fields


def tokenizer(path: str):
  """The `tokenizers.Tokenizer` of the model at `path` (from
  `tokenizer.json`, or built from the GGUF metadata)."""
  return open_source(path).tokenizer()


def _single_token(tok, text: str, path: str) -> int:
  """The one id `text` encodes to (a bare leading word-start piece that a
  SentencePiece-style tokenizer prepends is dropped)."""
  enc = tok.encode(text, add_special_tokens=False)
  ids, pieces = list(enc.ids), list(enc.tokens)
  if len(ids) > 1 and pieces[0] in ("\u2581", "\u0120"):
    ids, pieces = ids[1:], pieces[1:]
  if len(ids) != 1:
    raise errors.InputError(f"{path}: {text!r} encodes to {len(ids)} tokens "
                            f"{pieces}; one token per cell needs exactly one")
  return ids[0]


def token_map(path: str) -> list[int]:
  """The language model's id of each of the 16 project tokens.

  Tokens 0-12 (colours '0'-'9', ROW_END '\\n', INPUT 'I', OUTPUT 'O') are
  looked up by encoding the string (byte-level BPE spells '\\n' as 'Ċ');
  each must be exactly one token. BOS and EOS are the model's own
  (tokenizer_config.json first, then config.json; GGUF metadata). PAD is
  the model's pad token -- unless it is missing or coincides with another
  kept id, which is common (SmolLM2: pad = eos), as BOS may be (Qwen base:
  bos = eos): then the highest-id special token not yet kept, else the
  embedding's last row. PAD (and BOS) are never targets and padded keys are
  masked, so only their output-head row matters, through the 16-way
  softmax; a duplicate of EOS's row would take half of EOS's probability,
  a rarely produced special token next to none.

  Returns:
    list of 16 distinct ints, indexed by `ttt.tokens` ids.
  """
  return _token_map(open_source(path))


def _token_map(source: Source) -> list[int]:
  path, tok = source.path, source.tokenizer()
  ids = [_single_token(tok, s, path) for s in CELL_STRINGS]
  if len(set(ids)) != len(ids):
    raise errors.InputError(f"{path}: the cell strings {CELL_STRINGS} map to "
                            f"repeated ids {ids}")
  vocab_size = source.arch["vocab_size"]
  if max(ids) >= vocab_size:
    raise errors.InputError(f"{path}: the tokenizer's ids {ids} of the cell "
                            f"strings reach past vocab_size {vocab_size}")
  specials = source.specials()
  eos = specials["eos"]
  if eos is None or eos in ids or not 0 <= eos < vocab_size:
    raise errors.InputError(f"{path}: no usable EOS token id ({eos})")
  used = [*ids, eos]

  def fallback(name):
    free = [i for i in specials["control"]
            if i not in used and i < vocab_size]
    if free:
      return free[-1]
    if vocab_size - 1 not in used:
      return vocab_size - 1
    raise errors.InputError(f"{path}: no free id for {name}")

  out = {}
  for name in ("bos", "pad"):
    value = specials[name]
    out[name] = (value if value is not None and value not in used
                 and 0 <= value < vocab_size else fallback(name))
    used.append(out[name])
  return [*ids, out["bos"], eos, out["pad"]]


def _key_name(entry) -> Any:
  for attr in ("key", "idx", "name"):
    if hasattr(entry, attr):
      return getattr(entry, attr)
  return entry


def hf_tensor_name(path: tuple) -> tuple[str, bool]:
  """(Hugging Face tensor name, transpose?) of a model state path.

  Args:
    path: keys of a leaf of the `ttt.model.Transformer` state, e.g.
      ('blocks', 0, 'attn', 'q', 'kernel').

  Raises:
    ValueError: a path with no pretrained counterpart (e.g. LoRA factors).
  """
  joined = ".".join(str(p) for p in path)
  top = {("embed", "embedding"): "model.embed_tokens.weight",
         ("head", "kernel"): "lm_head.weight",
         ("norm", "scale"): "model.norm.weight"}
  if tuple(path) in top:
    return top[tuple(path)], path[0] == "head"
  if len(path) >= 4 and path[0] == "blocks":
    layer, rest = f"model.layers.{path[1]}", tuple(path[2:])
    inner = {("norm1", "scale"): "input_layernorm.weight",
             ("norm2", "scale"): "post_attention_layernorm.weight",
             ("attn", "q_norm", "scale"): "self_attn.q_norm.weight",
             ("attn", "k_norm", "scale"): "self_attn.k_norm.weight"}
    if rest in inner:
      return f"{layer}.{inner[rest]}", False
    if len(rest) == 3 and rest[2] in ("kernel", "bias"):
      group = {"attn": ("self_attn", "q k v o"),
               "mlp": ("mlp", "gate up down")}.get(rest[0])
      if group and rest[1] in group[1].split():
        name = "weight" if rest[2] == "kernel" else "bias"
        return (f"{layer}.{group[0]}.{rest[1]}_proj.{name}",
                rest[2] == "kernel")
  raise ValueError(f"model state {joined!r} has no pretrained counterpart")


def _leaf_keys(key_path) -> tuple:
  """A template leaf's path as plain keys (nnx's `value` dropped)."""
  return tuple(_key_name(k) for k in key_path if _key_name(k) != "value")


def _stacked(keys: tuple) -> bool:
  """Whether a leaf holds every layer on a leading axis (`scan_layers`)."""
  return len(keys) > 1 and keys[0] == "blocks" and not isinstance(keys[1],
                                                                    int)


def load_base(path: str, template, vocab: str = "cell", *,
              unpermute: bool = True, shardings=None):
  """The template state filled with the pretrained weights at `path`.

  Two paths, the same values:

  * `shardings=None`: each leaf read whole onto the host (a stacked leaf
    filled layer by layer into one host array: the host holds that leaf
    once, plus one layer), then put on the template leaf's sharding, if it
    has one. Fine for a model that fits one host (every 1-D mesh).
  * `shardings` (a `NamedSharding` per leaf, e.g. `ttt.sharding.
    param_shardings(template, mesh, config)` on a `(task, model)` mesh):
    each leaf is built from its devices' pieces
    (`jax.make_array_from_single_device_arrays`), each piece read for the
    devices that hold it and put there before the next is read. A
    safetensors snapshot is read by slice (`safe_open(...).get_slice`):
    each piece's index mapped through the conversion (HF [out, in] ->
    our [in, out]; the 'cell' cut's rows read one by one at the piece's
    columns), so no read returns more than one device's piece of one
    tensor. A GGUF tensor (quantised blocks, llama.cpp's q/k row order)
    is read whole, converted, sliced for each device and dropped before
    the next tensor. A stacked leaf is assembled on the devices, one
    layer at a time (a per-layer sharded array written into the leaf,
    donated). Peak host memory: about one tensor (GGUF) or one device's
    piece of one tensor (safetensors), plus the pieces in flight -- never
    a stacked leaf, never the model. A multi-host run reads on each host
    only the pieces of its own devices.

  Args:
    path: a snapshot directory or a .gguf file.
    template: a state (or pytree) of some of the parameters of a
      `ttt.model.Transformer` built from `model_config(path, vocab)` --
      e.g. `ttt.lora.split(model)[2]` (the frozen base), `split(...)[1]` in
      'full' mode, or `nnx.state(model, nnx.Param)`; leaves are arrays or
      `jax.ShapeDtypeStruct`s. Its shapes are checked. Either layout of
      the blocks: per layer (`('blocks', l, ...)`) or stacked on a leading
      layer axis (`scan_layers`: `('blocks', ...)` [num_layers, ...], whose
      layers are read one at a time).
    vocab: 'cell' (the 16 rows `token_map` names, in the project's token
      order) or 'full'.
    unpermute: GGUF only: undo llama.cpp's q/k row permutation (False only
      to test that it matters).
    shardings: None, or a pytree of `jax.sharding.NamedSharding` of the
      template's structure (one per leaf; a stacked leaf's layer axis
      unsplit): where each leaf goes (above).

  Returns:
    The same structure; each leaf an array of the template leaf's dtype
    (float32 master weights) and sharding (`shardings`' leaf, else the
    template leaf's when it has one). The embedding is float32[V, d], the
    head (absent when tied) kernel float32[d, V].
  """
  _check_vocab(vocab)
  source = open_source(path)
  rows = _token_map(source) if vocab == "cell" else None

  def locate(keys):
    """(Hugging Face name, transpose?, vocabulary rows or None) of the
    per-layer (or top-level) tensor at `keys`."""
    name, transpose = hf_tensor_name(keys)
    if name == "lm_head.weight" and not source.has(name):
      name = "model.embed_tokens.weight"  # tied
    vocab_rows = rows if name in ("lm_head.weight",
                                  "model.embed_tokens.weight") else None
    return name, transpose, vocab_rows

  def check(keys, name, got, shape):
    if tuple(got) != tuple(shape):
      raise errors.InputError(
          f"{path}: {name} has shape {tuple(got)}; the model expects "
          f"{tuple(shape)} at {'.'.join(map(str, keys))} (a config of "
          "another size or vocab?)")

  def read(keys, shape):
    """One per-layer (or top-level) tensor, checked to be [shape]."""
    name, transpose, vocab_rows = locate(keys)
    x = source.tensor(name, vocab_rows, unpermute=unpermute)
    x = x.T if transpose else x
    check(keys, name, x.shape, shape)
    return x

  def fill(key_path, leaf):
    keys = _leaf_keys(key_path)
    if _stacked(keys):
      # stacked layers: the host holds this leaf once, plus one layer
      x = np.empty(leaf.shape, leaf.dtype)
      for layer in range(leaf.shape[0]):
        x[layer] = np.asarray(read(("blocks", layer, *keys[1:]),
                                   leaf.shape[1:]), leaf.dtype)
    else:
      x = read(keys, leaf.shape)
    x = jnp.asarray(x, leaf.dtype)
    sharding = getattr(leaf, "sharding", None)
    return x if sharding is None else jax.device_put(x, sharding)

  if shardings is None:
    return jax.tree_util.tree_map_with_path(fill, template)

  def reader(keys, shape):
    """`at(index)`: the tensor at `keys` ([shape], our layout) at `index`
    (a tuple of slices), read by slice where the format allows; else the
    tensor read whole and converted once, held by this reader (dropped
    with it)."""
    name, transpose, vocab_rows = locate(keys)
    if source.part is None:
      whole = np.asarray(read(keys, shape))
      return lambda index: whole[tuple(index)]
    part = source.part(name)
    stored = tuple(part.shape)
    if vocab_rows is not None:
      stored = (len(vocab_rows), *stored[1:])
    check(keys, name, stored[::-1] if transpose else stored, shape)

    def at(index):
      index = tuple(index)
      x = part.read(index[::-1] if transpose else index, vocab_rows)
      return x.T if transpose else x

    return at

  def place(key_path, leaf, where):
    keys, shape = _leaf_keys(key_path), tuple(leaf.shape)
    if not _stacked(keys):
      return _from_pieces(shape, leaf.dtype, where, reader(keys, shape))
    spec = tuple(where.spec) + (None,) * (len(shape) - len(where.spec))
    if spec[0] is not None:
      raise ValueError(f"{'.'.join(map(str, keys))}: a stacked leaf's layer "
                       f"axis cannot be split ({where.spec})")
    one = NamedSharding(where.mesh, PartitionSpec(*spec[1:]))
    out = jnp.zeros(shape, leaf.dtype, device=where)
    for layer in range(shape[0]):
      x = _from_pieces(shape[1:], leaf.dtype, one,
                       reader(("blocks", layer, *keys[1:]), shape[1:]))
      out = _set_layer(out, x, layer)
    return out

  return jax.tree_util.tree_map_with_path(place, template, shardings)


def _from_pieces(shape: tuple, dtype, where, at) -> jax.Array:
  """The global array [shape] of `dtype` on sharding `where`, each distinct
  piece `at(index)` read once (on this host: its devices only), copied
  onto the devices that hold it, and dropped before the next."""
  groups = {}
  for device, index in where.addressable_devices_indices_map(shape).items():
    key = tuple((s.start, s.stop, s.step) for s in index)
    groups.setdefault(key, (index, []))[1].append(device)
  arrays = []
  for index, devices in groups.values():
    host = np.array(at(index), dtype)  # a copy: no view keeps a tensor
    arrays += [jax.device_put(host, d) for d in devices]
    del host
  return jax.make_array_from_single_device_arrays(shape, where, arrays)


@functools.partial(jax.jit, donate_argnums=0)
def _set_layer(stacked, layer, i):
  """`stacked` with `layer` written at layer `i` (in place: donated)."""
  return jax.lax.dynamic_update_index_in_dim(stacked, layer, i, 0)


# --- CLI ---------------------------------------------------------------------


def cell_tokens(text: str) -> list[int]:
  """Project token ids (`ttt.tokens`) of ARC-like text: BOS, then each of
  '0'-'9', '\\n', 'I', 'O' as its token."""
  from ttt import tokens

  return [tokens.BOS] + [CELL_STRINGS.index(c) for c in text]


def _info(path: str) -> int:
  source = open_source(path)
  print(f"{path}: {source.info}")
  for k, v in model_config(path, "full").items():
    print(f"  {k} = {v!r}")
  from ttt import tokens

  tok = source.tokenizer()
  for name, i in zip(tokens.TOKEN_NAMES, token_map(path), strict=True):
    print(f"  {name:>7} -> {i:>7} {tok.id_to_token(i)!r}")
  return 0


def _ours(path: str, vocab: str):
  """The ttt-jax model of `path` with its weights, float32."""
  from ttt import lora
  from ttt import model as model_lib

  # Built abstractly (no random initialisation of weights read anyway);
  # with no adapters every variable is an `nnx.Param`, so `rest` is empty.
  model = jax.eval_shape(lambda: lora.split(model_lib.make_model(dict(
      model_config(path, vocab), dtype="float32"))))
  graphdef, params, rest = model
  return lora.merge(graphdef, load_base(path, params, vocab), rest)


def max_logit_diff(path: str, text: str = CHECK_PROMPT,
                   offsets: Sequence[int] = (0, 5000)) -> float:
  """Largest |logit| difference between ttt-jax (vocab 'cell') and
  transformers (float32, eager attention) over the kept ids on `text`,
  with positions starting at each of `offsets`."""
  import torch
  import transformers

  ids = token_map(path)
  ours = _ours(path, "cell")
  theirs = transformers.AutoModelForCausalLM.from_pretrained(
      path, dtype=torch.float32, attn_implementation="eager")
  cells = np.asarray([cell_tokens(text)], np.int32)
  worst = 0.0
  for offset in offsets:
    positions = offset + np.arange(cells.shape[1], dtype=np.int32)[None]
    got = np.asarray(ours(jnp.asarray(cells), jnp.asarray(positions)))
    with torch.no_grad():
      want = theirs(torch.tensor(np.asarray(ids)[cells]).long(),
                    position_ids=torch.tensor(positions).long()).logits
    worst = max(worst, float(np.abs(got - want.numpy()[..., ids]).max()))
  return worst


def main(argv: Sequence[str]) -> int:
  """The CLI: 0 on success, 1 when `check` exceeds the tolerance, 2 with
  one line `error: ...` for a bad input (a file that cannot be used or
  read; a package missing)."""
  if len(argv) != 3 or argv[1] not in ("info", "check"):
    print("usage: python -m ttt.pretrained info DIR|FILE | check DIR",
          file=sys.stderr)
    return 2
  command, path = argv[1], argv[2]
  try:
    if command == "info":
      return _info(path)
    if format_of(path) != "safetensors":
      raise errors.InputError(f"check needs a Hugging Face snapshot "
                              f"directory, got {path}: {why_not(path)}")
    worst = max_logit_diff(path)
  except ModuleNotFoundError as e:
    package = (e.name or "").split(".")[0]
    if package in ("torch", "transformers"):
      print(f"error: check compares with transformers, which needs "
            f"transformers and torch ({package} is not installed): "
            f"{CHECK_INSTALL}", file=sys.stderr)
    elif package in LLM_PACKAGES:
      print(f"error: {package} is not installed (pretrained models need "
            f"the llm extra): pip install {' '.join(LLM_PACKAGES)}",
            file=sys.stderr)
    else:
      raise
    return 2
  except (errors.InputError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"{path}: max |logit difference| over the kept vocabulary "
        f"{worst:.3g} (positions 0.. and 5000..; tolerance "
        f"{CHECK_TOLERANCE:g})")
  return int(worst > CHECK_TOLERANCE)


if __name__ == "__main__":
  sys.exit(main(sys.argv))
