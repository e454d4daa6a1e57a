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
* `load_base(path, template, vocab) -> state`: a template state (any part
  of the model's parameters, e.g. `ttt.lora.split(model)[2]`, in either
  layout of the blocks: per layer or stacked, `ModelConfig.scan_layers`)
  filled with the pretrained weights;
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
host array (the host holds it and one layer, never the model twice).
llama.cpp stores the q and k projections with the rows of each head
permuted for its interleaved RoPE; loading undoes that for this model's
rotate-half RoPE (`unpermute=False` keeps them as stored, for
tests).

Not handled: sliding-window attention (Mistral v0.1's 4096-token window:
exact only on shorter sequences; a warning says so), RoPE types other than
Llama-3's, biases on the output or MLP projections, SentencePiece ('llama')
GGUF tokenizers. Each raises a one-line error naming what it met.

CLI::

  python -m ttt.pretrained info DIR|FILE   # architecture and token mapping
  python -m ttt.pretrained check DIR       # logits vs transformers (exit 1
                                           # above 1e-4)
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
GGUF_ARCHITECTURES = ("llama",)
VOCABS = ("cell", "full")
# The project's tokens 0..12 as text (ttt.tokens: colours, ROW_END, INPUT,
# OUTPUT); BOS, EOS and PAD (13..15) come from the model's special tokens.
CELL_STRINGS = tuple(str(c) for c in range(10)) + ("\n", "I", "O")
CHECK_PROMPT = "I\n0123\n4567\nO\n"  # `check`'s ARC-like text
CHECK_TOLERANCE = 1e-4


class Source(NamedTuple):
  """An opened pretrained model, whatever its format.

  Attributes:
    path: the directory or file.
    arch: `ModelConfig` fields for the full vocabulary (rope='1d').
    info: facts for `info` (format, model type, context length, ...).
    tensor: `tensor(name, rows=None, unpermute=True) -> float32 [out, in]
      / [n]` by Hugging Face name (`model.layers.0.self_attn.q_proj.weight`),
      only the given rows when `rows` is a sequence of ids; `unpermute`
      (GGUF) undoes llama.cpp's q/k row order.
    has: `has(name) -> bool`.
    tokenizer: `tokenizer() -> tokenizers.Tokenizer`.
    specials: `specials() -> dict` with 'bos', 'eos', 'pad' (ids or None)
      and 'control' (every special token id, ascending).
  """

  path: str
  arch: dict
  info: dict
  tensor: Callable[..., Any]
  has: Callable[[str], bool]
  tokenizer: Callable[[], Any]
  specials: Callable[[], dict]


# --- Hugging Face snapshots --------------------------------------------------


def _read_json(path: str) -> dict:
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def _rope(config: dict, path: str) -> tuple[float, tuple[float, ...]]:
  """(rope_theta, rope_scaling fields) from old or new config keys.

  transformers v5 writes `rope_parameters: {rope_theta, rope_type, ...}`;
  v4-era checkpoints have top-level `rope_theta` and `rope_scaling`.
  """
  params = config.get("rope_parameters") or {}
  theta = float(params.get("rope_theta", config.get("rope_theta", 10000.0)))
  scaling = params if "rope_type" in params else (
      config.get("rope_scaling") or {})
  kind = scaling.get("rope_type", scaling.get("type", "default"))
  if kind == "default":
    return theta, ()
  if kind == "llama3":
    return theta, tuple(float(scaling[k]) for k in (
        "factor", "low_freq_factor", "high_freq_factor",
        "original_max_position_embeddings"))
  raise ValueError(f"{path}: rope_type {kind!r} is not supported; supported: "
                   "default, llama3")


def hf_arch(config: dict, path: str = "config.json") -> tuple[dict, dict]:
  """`ModelConfig` fields (full vocabulary) and facts from a `config.json`.

  Args:
    config: the parsed `config.json`.
    path: named in errors.

  Returns:
    (fields, info). Raises ValueError (one line) for an unsupported
    `model_type` or feature.
  """
  kind = config.get("model_type")
  if kind not in SUPPORTED_MODEL_TYPES:
    raise ValueError(f"{path}: model_type {kind!r} is not supported; "
                     f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
  if config.get("hidden_act", "silu") != "silu":
    raise ValueError(f"{path}: hidden_act {config['hidden_act']!r} is not "
                     "supported; supported: silu")
  if config.get("mlp_bias"):
    raise ValueError(f"{path}: mlp_bias=true is not supported")
  if kind != "qwen2" and config.get("attention_bias"):
    raise ValueError(f"{path}: attention_bias=true (a bias on o_proj) is not "
                     "supported")
  if config.get("use_sliding_window"):
    raise ValueError(f"{path}: use_sliding_window=true is not supported")
  d, heads = config["hidden_size"], config["num_attention_heads"]
  theta, scaling = _rope(config, path)
  fields = dict(
      vocab_size=int(config["vocab_size"]),
      num_layers=int(config["num_hidden_layers"]),
      d_model=int(d),
      num_heads=int(heads),
      num_kv_heads=int(config.get("num_key_value_heads") or heads),
      head_dim_override=int(config.get("head_dim") or d // heads),
      mlp_dim=int(config["intermediate_size"]),
      rope="1d",
      rope_base=theta,
      rope_scaling=scaling,
      norm_eps=float(config.get("rms_norm_eps", 1e-6)),
      qkv_bias=kind == "qwen2",
      qk_norm=kind == "qwen3",
      tie_embeddings=bool(config.get("tie_word_embeddings", False)),
  )
  window = config.get("sliding_window") if kind == "mistral" else None
  info = dict(model_type=kind,
              context=config.get("max_position_embeddings"),
              sliding_window=window)
  return fields, info


def _token_id(tok, value) -> int | None:
  """An id from a tokenizer_config entry (a string, {'content': ...} or an
  id) or a config.json id (an int or a list, first taken)."""
  if isinstance(value, list):
    value = value[0] if value else None
  if isinstance(value, dict):
    value = value.get("content")
  if isinstance(value, str):
    return tok.token_to_id(value)
  return None if value is None else int(value)


def open_snapshot(path: str) -> Source:
  """Opens a Hugging Face snapshot directory (nothing read but JSON)."""
  config = _read_json(os.path.join(path, "config.json"))
  fields, info = hf_arch(config, os.path.join(path, "config.json"))
  index = os.path.join(path, "model.safetensors.index.json")
  if os.path.exists(index):
    files = {name: os.path.join(path, file)
             for name, file in _read_json(index)["weight_map"].items()}
  else:
    import safetensors

    single = os.path.join(path, "model.safetensors")
    with safetensors.safe_open(single, framework="flax") as f:
      files = dict.fromkeys(f.keys(), single)
  if "lm_head.weight" not in files:
    fields["tie_embeddings"] = True  # no separate head stored
  info.update(format="safetensors", files=len(set(files.values())))

  def tensor(name, rows=None, unpermute=True):
    del unpermute  # nothing is permuted in a snapshot
    import safetensors

    if name not in files:
      raise ValueError(f"{path}: no tensor {name!r} in the checkpoint")
    with safetensors.safe_open(files[name], framework="flax") as f:
      x = f.get_tensor(name)
    if rows is not None:
      x = x[jnp.asarray(rows)]
    return jnp.asarray(x, jnp.float32)

  @functools.cache
  def tokenizer():
    import tokenizers

    file = os.path.join(path, "tokenizer.json")
    if not os.path.exists(file):
      raise FileNotFoundError(f"{path}: no tokenizer.json (the token "
                              "mapping needs it)")
    return tokenizers.Tokenizer.from_file(file)

  def specials():
    tok = tokenizer()
    extra = os.path.join(path, "tokenizer_config.json")
    tok_config = _read_json(extra) if os.path.exists(extra) else {}
    out = {}
    for key in ("bos", "eos", "pad"):
      out[key] = _token_id(tok, tok_config.get(f"{key}_token"))
      if out[key] is None:
        out[key] = _token_id(tok, config.get(f"{key}_token_id"))
    out["control"] = sorted(i for i, t in tok.get_added_tokens_decoder()
                            .items() if t.special)
    return out

  return Source(path, fields, info, tensor, files.__contains__, tokenizer,
                specials)


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


def open_gguf(path: str) -> Source:
  """Opens a GGUF file of Llama architecture (memory-mapped)."""
  import gguf

  reader = gguf.GGUFReader(path)
  meta = {k: f.contents() for k, f in reader.fields.items()
          if k != "tokenizer.chat_template"}
  arch = meta.get("general.architecture")
  if arch not in GGUF_ARCHITECTURES:
    raise ValueError(f"{path}: GGUF architecture {arch!r} is not supported; "
                     f"supported: {', '.join(GGUF_ARCHITECTURES)}")
  tensors = {t.name: t for t in reader.tensors}
  scaling = meta.get(f"{arch}.rope.scaling.type", "none")
  if "rope_freqs.weight" in tensors or scaling not in ("none", ""):
    raise ValueError(f"{path}: GGUF RoPE scaling ({scaling}, rope_freqs) is "
                     "not supported; load the Hugging Face snapshot instead")

  def key(name, default=None):
    return meta.get(f"{arch}.{name}", default)

  d, heads = int(key("embedding_length")), int(key("attention.head_count"))
  kv = int(key("attention.head_count_kv", heads))
  head_dim = int(key("attention.key_length", 0)
                 or key("rope.dimension_count", 0) or d // heads)
  tokens = meta.get("tokenizer.ggml.tokens") or []
  fields = dict(
      vocab_size=int(key("vocab_size", 0) or len(tokens)),
      num_layers=int(key("block_count")),
      d_model=d,
      num_heads=heads,
      num_kv_heads=kv,
      head_dim_override=head_dim,
      mlp_dim=int(key("feed_forward_length")),
      rope="1d",
      rope_base=float(key("rope.freq_base", 10000.0)),
      rope_scaling=(),
      norm_eps=float(key("attention.layer_norm_rms_epsilon", 1e-5)),
      qkv_bias=False,
      qk_norm=False,
      tie_embeddings="output.weight" not in tensors,
  )
  info = dict(format="gguf", model_type=arch,
              context=key("context_length"), sliding_window=None,
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
      raise ValueError(f"{path}: no tensor {name!r} ({gguf_name(name)}) in "
                       "the GGUF file")
    t = tensors[gguf_name(name)]
    data = t.data if rows is None else t.data[np.asarray(rows)]
    w = np.asarray(gguf.quants.dequantize(data, t.tensor_type), np.float32)
    n = permuted.get(".".join(name.split(".")[3:]))
    if unpermute and n:
      w = unpermute_rows(w, n)
    return jnp.asarray(w)

  @functools.cache
  def tokenizer():
    kind = meta.get("tokenizer.ggml.model")
    if kind != "gpt2":
      raise ValueError(f"{path}: GGUF tokenizer model {kind!r} is not "
                       "supported; supported: gpt2 (byte-level BPE)")
    return _bpe_tokenizer(tokens, meta.get("tokenizer.ggml.merges") or [],
                          meta.get("tokenizer.ggml.token_type") or [],
                          meta.get("tokenizer.ggml.pre"))

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


def _is_snapshot(path: str) -> bool:
  return (os.path.isfile(os.path.join(path, "config.json"))
          and (os.path.isfile(os.path.join(path, "model.safetensors"))
               or os.path.isfile(os.path.join(
                   path, "model.safetensors.index.json"))))


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
    raise ValueError(f"{path} is neither a Hugging Face snapshot directory "
                     "(config.json + model.safetensors[.index.json]) nor a "
                     ".gguf file")
  source = FORMATS[name][1](path)
  window = source.info.get("sliding_window")
  if window:
    logging.warning("%s: sliding-window attention (%d tokens) is not "
                    "implemented; attention is exact on sequences of at most "
                    "%d tokens", path, window, window)
  return source


def _check_vocab(vocab: str) -> None:
  if vocab not in VOCABS:
    raise ValueError(f"vocab must be one of {VOCABS}, got {vocab!r}")


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
    raise ValueError(f"{path}: {text!r} encodes to {len(ids)} tokens "
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
    raise ValueError(f"{path}: the cell strings {CELL_STRINGS} map to "
                     f"repeated ids {ids}")
  specials = source.specials()
  eos = specials["eos"]
  if eos is None or eos in ids:
    raise ValueError(f"{path}: no usable EOS token id ({eos})")
  used = [*ids, eos]
  vocab_size = source.arch["vocab_size"]

  def fallback(name):
    free = [i for i in specials["control"]
            if i not in used and i < vocab_size]
    if free:
      return free[-1]
    if vocab_size - 1 not in used:
      return vocab_size - 1
    raise ValueError(f"{path}: no free id for {name}")

  out = {}
  for name in ("bos", "pad"):
    value = specials[name]
    out[name] = (value if value is not None and value not in used
                 and value < vocab_size else fallback(name))
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


def load_base(path: str, template, vocab: str = "cell", *,
              unpermute: bool = True):
  """The template state filled with the pretrained weights at `path`.

  Args:
    path: a snapshot directory or a .gguf file.
    template: a state (or pytree) of some of the parameters of a
      `ttt.model.Transformer` built from `model_config(path, vocab)` --
      e.g. `ttt.lora.split(model)[2]` (the frozen base), `split(...)[1]` in
      'full' mode, or `nnx.state(model, nnx.Param)`; leaves are arrays or
      `jax.ShapeDtypeStruct`s. Its shapes are checked. Either layout of
      the blocks: per layer (`('blocks', l, ...)`) or stacked on a leading
      layer axis (`scan_layers`: `('blocks', ...)` [num_layers, ...], whose
      layers are read one at a time into one host array).
    vocab: 'cell' (the 16 rows `token_map` names, in the project's token
      order) or 'full'.
    unpermute: GGUF only: undo llama.cpp's q/k row permutation (False only
      to test that it matters).

  Returns:
    The same structure; each leaf an array of the template leaf's dtype
    (float32 master weights) and sharding when it has one. The embedding is
    float32[V, d], the head (absent when tied) kernel float32[d, V].
  """
  _check_vocab(vocab)
  source = open_source(path)
  rows = _token_map(source) if vocab == "cell" else None

  def read(keys, shape):
    """One per-layer (or top-level) tensor, checked to be [shape]."""
    name, transpose = hf_tensor_name(keys)
    if name == "lm_head.weight" and not source.has(name):
      name = "model.embed_tokens.weight"  # tied
    vocab_rows = rows if name in ("lm_head.weight",
                                  "model.embed_tokens.weight") else None
    x = source.tensor(name, vocab_rows, unpermute=unpermute)
    x = x.T if transpose else x
    if tuple(x.shape) != tuple(shape):
      raise ValueError(f"{path}: {name} has shape {tuple(x.shape)}; the "
                       f"model expects {tuple(shape)} at "
                       f"{'.'.join(map(str, keys))} (a config of another "
                       "size or vocab?)")
    return x

  def fill(key_path, leaf):
    keys = tuple(_key_name(k) for k in key_path if _key_name(k) != "value")
    if len(keys) > 1 and keys[0] == "blocks" and not isinstance(keys[1], int):
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

  return jax.tree_util.tree_map_with_path(fill, template)


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
  if len(argv) != 3 or argv[1] not in ("info", "check"):
    print("usage: python -m ttt.pretrained info DIR|FILE | check DIR",
          file=sys.stderr)
    return 2
  command, path = argv[1], argv[2]
  if command == "info":
    return _info(path)
  if format_of(path) != "safetensors":
    print(f"check needs a Hugging Face snapshot directory, got {path}",
          file=sys.stderr)
    return 2
  worst = max_logit_diff(path)
  print(f"{path}: max |logit difference| over the kept vocabulary "
        f"{worst:.3g} (positions 0.. and 5000..; tolerance "
        f"{CHECK_TOLERANCE:g})")
  return int(worst > CHECK_TOLERANCE)


if __name__ == "__main__":
  sys.exit(main(sys.argv))
