"""Tests for ttt.model and ttt.lora."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ttt import lora
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


def test_presets_sizes():
  tiny = nnx.eval_shape(lambda: M.make_model(TINY))
  assert M.count_params(nnx.state(tiny)) < 1_000_000
  base = nnx.eval_shape(lambda: M.make_model(dict(
      num_layers=8, d_model=512, num_heads=8, mlp_dim=1536)))
  assert 25e6 < M.count_params(nnx.state(base)) < 30e6


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
