"""Tests for ttt.model and ttt.lora."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import common
from ttt import configlib, lora
from ttt import model as M

TINY = dict(num_layers=2, d_model=64, num_heads=4, mlp_dim=128,
            dtype="float32")


class Cfg:  # a config with .model / .adapter groups
  def __init__(self, model, adapter):
    self.model, self.adapter = model, adapter


def _inputs(b=2, length=12, seed=0):
  rng = np.random.default_rng(seed)
  toks = jnp.asarray(rng.integers(0, 16, (b, length)), jnp.int32)
  coords = jnp.asarray(rng.integers(0, 8, (b, length, 3)), jnp.int32)
  return toks, coords


# parameter counts the presets' comments in configs/common.py state
PRESET_PARAMS = {"tiny": (0.7e6, 1e6), "small": (4e6, 6e6),
                 "base": (25e6, 30e6)}


def test_presets_sizes():
  tiny = nnx.eval_shape(lambda: M.make_model(TINY))
  assert M.count_params(nnx.state(tiny)) < 1_000_000
  assert set(common.MODEL_PRESETS) == set(PRESET_PARAMS)
  for name, (low, high) in PRESET_PARAMS.items():
    model = nnx.eval_shape(lambda n=name: M.make_model(
        common.model_config(n)))
    assert low < M.count_params(nnx.state(model)) < high, name


@pytest.mark.parametrize("rope", ["1d", "3d"])
def test_forward_is_causal_and_masks_keys(rope):
  m = M.make_model(dict(TINY, rope=rope))
  toks, coords = _inputs()
  out = m(toks, coords=coords)
  assert out.shape == (2, 12, 16) and out.dtype == jnp.float32
  changed = m(toks.at[:, 8].set((toks[:, 8] + 1) % 16), coords=coords)
  np.testing.assert_array_equal(out[:, :8], changed[:, :8])
  assert not np.allclose(out[:, 8:], changed[:, 8:])
  # a masked key position influences nothing after it
  valid = jnp.ones((2, 12), bool).at[:, 3].set(False)
  a = m(toks, coords=coords, kv_valid=valid)
  b = m(toks.at[:, 3].set(0), coords=coords, kv_valid=valid)
  np.testing.assert_allclose(a[:, 4:], b[:, 4:], atol=1e-6)


def test_3d_rope_needs_coords_and_uses_them():
  m = M.make_model(dict(TINY, rope="3d"))
  toks, coords = _inputs()
  with pytest.raises(ValueError, match="needs coords"):
    m(toks)
  moved = m(toks, coords=coords.at[:, :, 0].add(1))
  assert not np.allclose(m(toks, coords=coords), moved)


def test_bf16_forward_is_finite():
  m = M.make_model(dict(TINY, dtype="bfloat16"))
  toks, coords = _inputs()
  assert np.isfinite(np.asarray(m(toks, coords=coords))).all()


def test_fresh_lora_leaves_outputs_exactly_unchanged():
  key = jax.random.key(3)
  plain = M.make_model(TINY, None, key)
  adapted = M.make_model(TINY, dict(mode="lora", rank=4), key)
  toks, coords = _inputs()
  np.testing.assert_array_equal(plain(toks, coords=coords),
                                adapted(toks, coords=coords))


def test_split_merge_and_adapter_contents():
  cfg = Cfg(TINY, dict(mode="lora", rank=4, targets=("q", "v", "up")))
  m = M.make_model(cfg.model, cfg.adapter)
  graphdef, adapters, base = lora.split(m)
  names = {str(p[-1]) for p, _ in nnx.to_flat_state(adapters)}
  assert names == {"lora_a", "lora_b"}
  # 2 layers x (q, v: 64x4 + 4x64; up: 64x4 + 4x128)
  assert M.count_params(adapters) == 2 * (2 * (64 * 4 + 4 * 64)
                                          + (64 * 4 + 4 * 128))
  assert not any(isinstance(v, nnx.LoRAParam)
                 for _, v in nnx.to_flat_state(base))
  toks, coords = _inputs()
  np.testing.assert_array_equal(
      lora.merge(graphdef, adapters, base)(toks, coords=coords),
      m(toks, coords=coords))


def test_init_adapters_per_task():
  cfg = Cfg(TINY, dict(mode="lora", rank=4))
  a = lora.init_adapters(cfg, jax.random.key(0), 3)
  flat = dict(nnx.to_flat_state(a))
  for path, v in flat.items():
    assert v[...].shape[0] == 3
    if path[-1] == "lora_b":
      assert not np.asarray(v[...]).any()
    else:
      assert not np.allclose(v[...][0], v[...][1])
  again = lora.init_adapters(cfg, jax.random.key(0), 3)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(again), strict=True):
    np.testing.assert_array_equal(x, y)


def test_prefix_and_full_modes():
  toks, coords = _inputs()
  cfg = Cfg(TINY, dict(mode="lora+prefix", rank=2, prefix_len=3))
  m = M.make_model(cfg.model, cfg.adapter)
  assert m(toks, coords=coords).shape == (2, 12, 16)
  _, adapters, _ = lora.split(m)
  assert "prefix" in {str(p[-1]) for p, _ in nnx.to_flat_state(adapters)}
  stacked = lora.init_adapters(cfg, jax.random.key(1), 2)
  assert stacked["prefix"][...].shape == (2, 3, 64)
  full = Cfg(TINY, dict(mode="full"))
  m = M.make_model(full.model, full.adapter)
  _, params, rest = lora.split(m)
  assert M.count_params(params) == M.count_params(nnx.state(m))
  copies = lora.init_adapters(full, None, 2, params)
  leaf = jax.tree.leaves(copies)[0]
  assert leaf.shape[0] == 2
  with pytest.raises(ValueError, match="pass params"):
    lora.init_adapters(full, None, 2)
  with pytest.raises(ValueError, match="adapter mode must be"):
    M.make_model(TINY, dict(mode="qlora"))
  with pytest.raises(ValueError, match="unknown LoRA targets"):
    M.make_model(TINY, dict(targets=("q", "x")))


# grouped-query attention (2 kv heads for 4), explicit head dim, q/k/v
# biases, q/k norm, tied head, Llama-3 RoPE scaling: every new field on
LLM = dict(TINY, rope="1d", num_kv_heads=2, head_dim_override=24,
           qkv_bias=True, qk_norm=True, tie_embeddings=True,
           rope_scaling=(8.0, 1.0, 4.0, 64.0))


def _randomised(model, seed=0):
  """The model with every parameter random (biases and norms are 0 and 1
  at init, which would hide them)."""
  graphdef, state = nnx.split(model)
  leaves, tree = jax.tree.flatten(state)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  leaves = [0.3 * jax.random.normal(k, x.shape, x.dtype) + (x.ndim == 1)
            for k, x in zip(keys, leaves, strict=True)]
  return nnx.merge(graphdef, jax.tree.unflatten(tree, leaves))


def test_default_fields_keep_the_parameter_tree():
  m = nnx.eval_shape(lambda: M.make_model(TINY))
  names = {p for p, _ in nnx.to_flat_state(nnx.state(m))}
  assert ("head", "kernel") in names
  assert not any(p[-1] == "bias" or "q_norm" in p for p in names)
  assert m.blocks[0].attn.k.kernel.shape == (64, 64)


def test_llm_fields_shapes():
  m = nnx.eval_shape(lambda: M.make_model(
      LLM, dict(mode="lora", rank=4, targets=("q", "k", "v"))))
  attn = m.blocks[0].attn
  assert attn.q.kernel.shape == (64, 4 * 24)
  assert attn.k.kernel.shape == (64, 2 * 24)
  assert attn.k.lora_b.shape == (4, 2 * 24)  # LoRA on k: kv width
  assert attn.v.bias.shape == (2 * 24,)
  assert attn.q_norm.scale.shape == (24,)
  assert attn.o.kernel.shape == (4 * 24, 64)
  assert not hasattr(m, "head")  # tied: the embedding is the head


def test_gqa_kv_cache_step_equals_forward():
  graphdef, state = nnx.split(_randomised(M.make_model(LLM)))
  forward = jax.jit(lambda s, *a, **k: nnx.merge(graphdef, s)(*a, **k),
                    static_argnames="return_cache")
  step = jax.jit(lambda s, *a: nnx.merge(graphdef, s).step(*a))
  toks, _ = _inputs(length=10)
  positions = 3000 + jnp.broadcast_to(jnp.arange(10), toks.shape)
  full = forward(state, toks, positions)
  n = 6
  _, cache = forward(state, toks[:, :n], positions[:, :n], return_cache=True)
  assert cache[0][0].shape == (2, n, 2, 24)  # [B, L, Hkv, D]
  cache = jax.tree.map(lambda c: jnp.pad(c, ((0, 0), (0, 4), (0, 0), (0, 0))),
                       cache)
  coords = jnp.zeros((2, 3), jnp.int32)
  for t in range(n, 10):
    index = jnp.full((2,), t)
    logits, cache = step(state, toks[:, t], positions[:, t], coords, cache,
                         index)
    np.testing.assert_allclose(logits, full[:, t], atol=1e-5, rtol=1e-5)


def test_gqa_equals_repeated_kv_heads():
  """K kv heads == multi-head attention with each kv head repeated."""
  cfg = dict(LLM, tie_embeddings=False)
  gqa = _randomised(M.make_model(cfg))
  mha = M.make_model(dict(cfg, num_kv_heads=0))
  state = nnx.state(gqa)
  for block in state["blocks"].values():
    for name in ("k", "v"):
      for leaf in ("kernel", "bias"):
        x = block["attn"][name][leaf][...]
        x = x.reshape(x.shape[:-1] + (2, 24))
        block["attn"][name][leaf] = nnx.Param(
            jnp.repeat(x, 2, axis=-2).reshape(x.shape[:-2] + (96,)))
  nnx.update(mha, state)
  toks, _ = _inputs()
  np.testing.assert_allclose(gqa(toks), mha(toks), atol=1e-5)


def test_llama3_rope_scaling():
  inv = 1.0 / 10000.0 ** (jnp.arange(0, 24, 2, dtype=jnp.float32) / 24)
  scaled = M.llama3_scaled(inv, 8.0, 1.0, 4.0, 64.0)
  wavelen = 2 * np.pi / np.asarray(inv)
  np.testing.assert_array_equal(scaled[wavelen < 16], inv[wavelen < 16])
  np.testing.assert_allclose(scaled[wavelen > 64], inv[wavelen > 64] / 8.0)
  mid = (wavelen >= 16) & (wavelen <= 64)
  assert mid.any() and (scaled[mid] < inv[mid]).all()
  assert (scaled[mid] > inv[mid] / 8).all()


def test_invalid_llm_fields():
  def check(**fields):
    configlib.from_config(M.ModelConfig, dict(TINY, **fields))

  with pytest.raises(ValueError, match="must divide"):
    check(num_kv_heads=3)
  with pytest.raises(ValueError, match="rope_scaling"):
    check(rope_scaling=(8.0, 1.0, 4.0, 64.0))  # with the 3-D rope
  with pytest.raises(ValueError, match="multiple of num_heads"):
    check(d_model=66)
  check(d_model=66, head_dim_override=16)
  check(**LLM)
