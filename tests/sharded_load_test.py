"""Tests for loading a pretrained base straight onto a `(task, model)` mesh
(issue 44): `pretrained.load_base(..., shardings=...)` and `weights.load(...,
mesh=...)` give the unsharded load's values on `sharding.param_shardings`'
shardings, reading from the files only the pieces the devices hold.

Tiny random Llama checkpoints with grouped-query attention (4 heads, 2 KV
heads: under a model axis of 4 the k and v projections stay replicated),
2 layers, d 64, MLP 96, vocabulary 300 (safetensors, written with
`transformers`; skipped without it) or 260 (GGUF, written here with the
`gguf` package, some tensors Q8_0-quantised; skipped without it), on the 8
fake CPU devices of tests/conftest.py as a (2, 4) mesh.
"""

import math

import jax
import numpy as np
import pytest
from conftest import build_hf_snapshot, gguf_writer
from flax import nnx

from ttt import configlib, lora, pretrained, sharding
from ttt import model as M
from ttt import weights as weights_lib

MODEL_PARALLEL = 4


@pytest.fixture(scope="module")
def snapshots(tmp_path_factory):
  """'f32': one float32 file, untied head; 'bf16': bfloat16 in several
  shards (60 KB each)."""
  pytest.importorskip("torch")
  pytest.importorskip("transformers")
  pytest.importorskip("safetensors")
  root = tmp_path_factory.mktemp("sharded_load")
  return {"f32": build_hf_snapshot(root / "f32", "Llama", {}),
          "bf16": build_hf_snapshot(root / "bf16", "Llama", {}, bf16=True,
                                    max_shard_size="60KB")}


@pytest.fixture(scope="module")
def mesh():
  return sharding.make_mesh(model_parallel=MODEL_PARALLEL)


@pytest.fixture(autouse=True)
def split_vocab():
  """The snapshots' 300-token vocabulary stands for an LLM's full one: its
  head splits over the model axis as a 128k one would. (Set by hand, not
  by `monkeypatch`: the tests undo their own patches mid-test.)"""
  before = sharding.SPLIT_VOCAB
  sharding.SPLIT_VOCAB = 256
  yield
  sharding.SPLIT_VOCAB = before


def _template(path, vocab, scan_layers):
  """(ModelConfig, the abstract parameter state) of `path`'s model."""
  config = configlib.from_config(M.ModelConfig, dict(
      pretrained.model_config(path, vocab), dtype="float32",
      scan_layers=scan_layers))
  params = nnx.eval_shape(lambda: lora.split(M.make_model(config)))[1]
  return config, params


def _keys(key_path):
  return tuple(getattr(k, "key", getattr(k, "idx", None)) for k in key_path
               if not isinstance(k, jax.tree_util.GetAttrKey))


def _assert_same(split, whole, where):
  """Leaf for leaf: `split` holds `whole`'s values on `where`'s sharding."""
  flat_split = jax.tree_util.tree_leaves_with_path(split)
  flat_whole = jax.tree.leaves(whole)
  flat_where = jax.tree.leaves(where)
  assert len(flat_split) == len(flat_whole) == len(flat_where) > 0
  for (path, x), y, s in zip(flat_split, flat_whole, flat_where, strict=True):
    name = jax.tree_util.keystr(path)
    assert x.sharding == s, name
    assert x.dtype == y.dtype and x.shape == y.shape, name
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=name)


def _split_somewhere(where):
  """The model axis splits q (by heads) and the MLP; k, v replicated."""
  specs = {".".join(map(str, _keys(p)[-2:])): s.spec for p, s in
           jax.tree_util.tree_leaves_with_path(where)}
  assert sharding.MODEL_AXIS in specs["q.kernel"]
  assert sharding.MODEL_AXIS in specs["gate.kernel"]
  assert sharding.MODEL_AXIS not in specs["k.kernel"]  # 2 KV heads < 4


@pytest.mark.parametrize("name,vocab,scan_layers", [
    ("f32", "cell", True),  # stacked layers, the 16-row cut
    ("bf16", "full", False),  # per-layer leaves, every row, several shards
])
def test_sharded_load_equals_the_unsharded_one(snapshots, mesh, name, vocab,
                                               scan_layers):
  path = snapshots[name]
  config, template = _template(path, vocab, scan_layers)
  where = sharding.param_shardings(template, mesh, config)
  _split_somewhere(where)
  whole = pretrained.load_base(path, template, vocab)
  split = pretrained.load_base(path, template, vocab, shardings=where)
  _assert_same(split, whole, where)


class _Recorder:
  """Wraps `safetensors.safe_open`: records (tensor name, elements
  returned, 'slice' | 'tensor') for every read."""

  def __init__(self, real):
    self.real, self.reads = real, []

  def __call__(self, *args, **kwargs):
    return _Handle(self.real(*args, **kwargs), self.reads)


class _Handle:

  def __init__(self, f, reads):
    self.f, self.reads = f, reads

  def __enter__(self):
    self.f.__enter__()
    return self

  def __exit__(self, *exc):
    return self.f.__exit__(*exc)

  def keys(self):
    return self.f.keys()

  def get_tensor(self, name):
    x = self.f.get_tensor(name)
    self.reads.append((name, x.size, "tensor"))
    return x

  def get_slice(self, name):
    return _Slice(self.f.get_slice(name), name, self.reads)


class _Slice:

  def __init__(self, s, name, reads):
    self.s, self.name, self.reads = s, name, reads

  def get_shape(self):
    return self.s.get_shape()

  def __getitem__(self, index):
    x = self.s[index]
    self.reads.append((self.name, x.size, "slice"))
    return x


def _pieces(template, where):
  """{Hugging Face tensor name: (elements of one device's piece of it,
  elements of the whole per-layer tensor)} under `where` (a stacked
  leaf's layer axis dropped: its tensors are one per layer)."""
  out = {}
  for (path, leaf), s in zip(jax.tree_util.tree_leaves_with_path(template),
                             jax.tree.leaves(where), strict=True):
    keys, piece, shape = _keys(path), s.shard_shape(leaf.shape), leaf.shape
    if keys[0] == "blocks" and not isinstance(keys[1], int):
      names = [("blocks", i, *keys[1:]) for i in range(shape[0])]
      piece, shape = piece[1:], shape[1:]
    else:
      names = [keys]
    for k in names:
      out[pretrained.hf_tensor_name(k)[0]] = (math.prod(piece),
                                              math.prod(shape))
  return out


@pytest.mark.parametrize("vocab", ["full", "cell"])
def test_sharded_load_reads_only_the_devices_pieces(snapshots, mesh,
                                                    monkeypatch, vocab):
  """Every read from the file returns at most one device's piece of the
  one tensor it reads (the honest bound: a device needs its whole piece;
  here <= 4800 elements, where the largest tensor, the 300 x 64 embedding,
  has 19200 and a stacked leaf up to 12288); a tensor split over the model
  axis is never read whole; no tensor is read whole through `get_tensor`;
  with the full vocabulary each element is read exactly once (the 2
  replicas over the task axis share one read). Every host array put on a
  device is at most such a piece: no stacked [layers, ...] leaf is ever
  materialised on the host (those are assembled on the devices)."""
  import safetensors

  path = snapshots["f32"]
  config, template = _template(path, vocab, scan_layers=True)
  where = sharding.param_shardings(template, mesh, config)
  pieces = _pieces(template, where)
  stacked = [x.shape for x in jax.tree.leaves(template) if x.ndim == 3]
  recorder = _Recorder(safetensors.safe_open)
  put, placed = jax.device_put, []

  def recording_put(x, *args, **kwargs):
    if isinstance(x, np.ndarray):
      placed.append(x.shape)
    return put(x, *args, **kwargs)

  pretrained.open_source(path)  # (the headers: read before recording)
  monkeypatch.setattr(safetensors, "safe_open", recorder)
  monkeypatch.setattr(jax, "device_put", recording_put)
  split = pretrained.load_base(path, template, vocab, shardings=where)
  monkeypatch.undo()

  reads = recorder.reads
  assert reads and {how for _, _, how in reads} == {"slice"}
  for name, n, _ in reads:
    piece, whole = pieces[name]
    assert n <= piece, (name, n, piece)
    if piece < whole:
      assert n < whole, name
  largest = max(p for p, _ in pieces.values())
  assert largest < max(w for _, w in pieces.values())
  assert placed and all(math.prod(s) <= largest for s in placed), placed
  assert not any(s in stacked for s in placed)
  if vocab == "full":
    totals = {}
    for name, n, _ in reads:
      totals[name] = totals.get(name, 0) + n
    assert totals == {k: w for k, (_, w) in pieces.items()}
  _assert_same(split, pretrained.load_base(path, template, vocab), where)


# --- GGUF --------------------------------------------------------------------

LAYER_TENSORS = {  # GGUF name -> [out, in] (d 64, 4 heads, 2 KV, MLP 96)
    "attn_norm.weight": (64,), "ffn_norm.weight": (64,),
    "attn_q.weight": (64, 64), "attn_k.weight": (32, 64),
    "attn_v.weight": (32, 64), "attn_output.weight": (64, 64),
    "ffn_gate.weight": (96, 64), "ffn_up.weight": (96, 64),
    "ffn_down.weight": (64, 96),
}
QUANTISED = ("attn_q.weight", "ffn_down.weight", "token_embd.weight")


def _llama_gguf(file, layers=2):
  """A complete tiny Llama GGUF (random weights; q, down and the embedding
  Q8_0-quantised; an untied head), `write_gguf`'s tokenizer metadata."""
  gguf = pytest.importorskip("gguf")
  w, tokens_ = gguf_writer(file, layers=layers, mlp=96, kv_heads=2)
  rng = np.random.default_rng(0)
  shapes = {"token_embd.weight": (len(tokens_), 64),
            "output.weight": (len(tokens_), 64), "output_norm.weight": (64,),
            **{f"blk.{i}.{k}": v for i in range(layers)
               for k, v in LAYER_TENSORS.items()}}
  for name, shape in shapes.items():
    x = rng.normal(0, 0.2, shape).astype(np.float32)
    if name.endswith(QUANTISED):
      q = gguf.GGMLQuantizationType.Q8_0
      w.add_tensor(name, gguf.quants.quantize(x, q), raw_dtype=q)
    else:
      w.add_tensor(name, x)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  return str(file)


@pytest.mark.parametrize("vocab", ["cell", "full"])
def test_sharded_gguf_load_equals_the_unsharded_one(tmp_path, mesh,
                                                    monkeypatch, vocab):
  """GGUF tensors are dequantised whole, unpermuted, sliced for the
  devices: the unsharded values on param_shardings' shardings, each
  tensor dequantised once (not once per device)."""
  path = _llama_gguf(tmp_path / "llama.gguf")
  config, template = _template(path, vocab, scan_layers=True)
  where = sharding.param_shardings(template, mesh, config)
  _split_somewhere(where)
  whole = pretrained.load_base(path, template, vocab)
  source, calls = pretrained.open_source(path), []

  def counting(name, *args, **kwargs):
    calls.append(name)
    return source.tensor(name, *args, **kwargs)

  monkeypatch.setattr(pretrained, "open_source",
                      lambda _: source._replace(tensor=counting))
  split = pretrained.load_base(path, template, vocab, shardings=where)
  assert len(calls) == len(set(calls)) == len(_pieces(template, where))
  _assert_same(split, whole, where)


# --- weights.load / place ----------------------------------------------------


@pytest.mark.parametrize("mode", ["lora", "full+prefix"])
def test_weights_load_on_a_model_axis_is_placed_as_loaded(snapshots, mesh,
                                                          monkeypatch, mode):
  """`load(..., mesh=)` reads the base (the 'full' modes' template) split
  over the model axis; `place` keeps those arrays as they are (float32)
  or casts them on their devices (bfloat16), and places what was not
  loaded (fresh adapters, the prefix); the values are the 1-D load's."""
  path = snapshots["f32"]
  model = M.ModelConfig(dtype="float32", scan_layers=True)
  adapter = M.AdapterConfig(mode=mode, rank=4, prefix_len=2)
  loaded, config = weights_lib.load(path, model, adapter, 0, mesh=mesh)
  plain, _ = weights_lib.load(path, model, adapter, 0)
  read = loaded.template if adapter.tunes_all else loaded.base
  if adapter.tunes_all:
    read = lora.split_prefix(read)[1]
  where = sharding.param_shardings(read, mesh, config)
  assert all(x.sharding == s for x, s in zip(
      jax.tree.leaves(read), jax.tree.leaves(where), strict=True))
  placed = weights_lib.place(loaded, mesh, "float32", config)
  kept = placed.template if adapter.tunes_all else placed.base
  if adapter.tunes_all:
    kept = lora.split_prefix(kept)[1]
  assert all(a is b for a, b in zip(jax.tree.leaves(kept),
                                    jax.tree.leaves(read), strict=True))
  # the bfloat16 cast runs on the devices: nothing loaded is sliced again
  # from a host copy (only fresh leaves are: LoRA factors on a split side)
  real, sliced = jax.make_array_from_callback, []
  monkeypatch.setattr(jax, "make_array_from_callback", lambda shape, *a: (
      sliced.append(shape), real(shape, *a))[1])
  half = weights_lib.place(loaded, mesh, "bfloat16", config)
  monkeypatch.undo()
  fresh = (lora.split_prefix(loaded.template)[0] if adapter.tunes_all
           else loaded.template)
  assert set(sliced) <= {x.shape for x in jax.tree.leaves(fresh)}
  ref = weights_lib.place(plain, sharding.make_mesh(), "bfloat16", config)
  for part in ("base", "template"):
    for a, b, s in zip(jax.tree.leaves(getattr(half, part)),
                       jax.tree.leaves(getattr(ref, part)),
                       jax.tree.leaves(sharding.param_shardings(
                           getattr(loaded, part), mesh, config)),
                       strict=True):
      assert a.sharding == s and a.dtype == b.dtype
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
