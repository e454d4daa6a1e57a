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


def _randomised(model, seed=0, scale=0.3):
  """The model with every parameter random (biases and norms are 0 and 1
  at init, which would hide them): N(0, scale^2), + 1 for vectors."""
  graphdef, state = nnx.split(model)
  leaves, tree = jax.tree.flatten(state)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  leaves = [scale * jax.random.normal(k, x.shape, x.dtype) + (x.ndim == 1)
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
  assert cache[0][0].shape == (2, 2, n, 24)  # [B, Hkv, L, D]
  cache = jax.tree.map(lambda c: jnp.pad(c, ((0, 0), (0, 0), (0, 4), (0, 0))),
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


# --- scan_layers: the blocks stacked on a layer axis, run by lax.scan -------

LORA = dict(mode="lora", rank=4)  # every projection
# Tolerances: float32, atol 1e-5 plus rtol 1e-5 (the two layouts compile
# to different programs: sums in another order).


def _stacked(state, num_layers):
  """A per-layer state (`blocks` 0..N-1) in the stacked layout."""
  out = nnx.State({k: v for k, v in state.items() if k != "blocks"})
  out["blocks"] = jax.tree.map(
      lambda *xs: jnp.stack(xs),
      *[state["blocks"][i] for i in range(num_layers)])
  return out


def _both_layouts(config, adapter=LORA, seed=0):
  """(loop model, scan model) with the same random weights, LoRA B != 0
  (std 0.1: activations of order 1, float32 differences of a few ulps)."""
  loop = _randomised(M.make_model(config, adapter), seed, scale=0.1)
  scan = M.make_model(dict(config, scan_layers=True), adapter)
  nnx.update(scan, _stacked(nnx.state(loop), config["num_layers"]))
  return loop, scan


def test_scan_layers_parameter_layout():
  cfg = dict(LLM, num_layers=3)
  loop = nnx.eval_shape(lambda: M.make_model(cfg, LORA))
  scan = nnx.eval_shape(lambda: M.make_model(dict(cfg, scan_layers=True),
                                             LORA))
  flat = dict(nnx.to_flat_state(nnx.state(scan)))
  assert flat[("blocks", "attn", "q", "kernel")].shape == (3, 64, 96)
  assert flat[("blocks", "attn", "k", "lora_b")].shape == (3, 4, 48)
  assert flat[("blocks", "attn", "q_norm", "scale")].shape == (3, 24)
  assert isinstance(flat[("blocks", "mlp", "up", "lora_a")], nnx.LoRAParam)
  assert (M.count_params(nnx.state(scan))
          == M.count_params(nnx.state(loop)))
  _, adapters, base = lora.split(scan)
  assert {p[-1] for p, _ in nnx.to_flat_state(adapters)} == {"lora_a",
                                                             "lora_b"}
  assert all(v.shape[0] == 3 for _, v in nnx.to_flat_state(adapters))
  assert not any(isinstance(v, nnx.LoRAParam)
                 for _, v in nnx.to_flat_state(base))
  assert (M.count_params(adapters)
          == M.count_params(lora.split(loop)[1]))
  # per-task adapters [T, N, ...]: A random per task and per layer, B zero
  a = lora.init_adapters(Cfg(dict(cfg, scan_layers=True), LORA),
                         jax.random.key(0), 2)
  for path, v in nnx.to_flat_state(a):
    x = np.asarray(v[...])
    assert x.shape[:2] == (2, 3)
    if path[-1] == "lora_b":
      assert not x.any()
    else:
      assert not np.allclose(x[0], x[1]) and not np.allclose(x[0, 0],
                                                             x[0, 1])


def test_scan_layers_equals_loop_forward_and_kv_cache():
  """Logits, the prefill cache and `step` agree across layouts (GQA, every
  architecture field, LoRA with B != 0, masked keys, a padded cache)."""
  from ttt.decoders import common as decoding

  cfg = dict(LLM, num_layers=3)
  loop, scan = _both_layouts(cfg)
  toks, _ = _inputs(length=10)
  coords = jnp.zeros(toks.shape + (3,), jnp.int32)
  positions = 3000 + jnp.broadcast_to(jnp.arange(10), toks.shape)
  valid = jnp.ones(toks.shape, bool).at[:, 2].set(False)
  np.testing.assert_allclose(scan(toks, positions, kv_valid=valid),
                             loop(toks, positions, kv_valid=valid),
                             atol=1e-5, rtol=1e-5)
  n, lengths = 6, jnp.asarray([5, 6])
  caches, lasts = [], []
  for m in (loop, scan):
    graphdef, state = nnx.split(m)
    prefill = jax.jit(lambda s, *a, g=graphdef: decoding.prefill(
        nnx.merge(g, s), *a, 4))
    last, cache = prefill(state, toks[:, :n], lengths, coords[:, :n])
    lasts.append(last)
    caches.append((graphdef, state, cache))
  np.testing.assert_allclose(lasts[1], lasts[0], atol=1e-5, rtol=1e-5)
  (g0, s0, c0), (g1, s1, c1) = caches
  assert c0[0][0].shape == (2, 2, n + 4, 24)  # tuple of [B, Hkv, C, D]
  assert c1[0].shape == (3, 2, 2, n + 4, 24)  # [N, B, Hkv, C, D]

  def same_cache(c0, c1):
    for i, kv in enumerate(c0):
      for j in range(2):
        np.testing.assert_allclose(c1[j][i], kv[j], atol=1e-5, rtol=1e-5)

  same_cache(c0, c1)
  steps = [jax.jit(lambda s, *a, g=g: nnx.merge(g, s).step(*a))
           for g in (g0, g1)]
  index = lengths
  full = loop(toks, positions - 3000)
  for _ in range(4):
    tok = toks[jnp.arange(2), index]
    l0, c0 = steps[0](s0, tok, index, coords[:, 0], c0, index)
    l1, c1 = steps[1](s1, tok, index, coords[:, 0], c1, index)
    np.testing.assert_allclose(l1, l0, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(l1, full[jnp.arange(2), index], atol=1e-5,
                               rtol=1e-5)
    same_cache(c0, c1)
    index = index + 1


class _Batch:
  """What `target_logprobs` reads: tokens, mask, 1-D positions, coords."""

  def __init__(self, tokens, mask):
    self.tokens, self.mask = tokens, mask
    self.positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]),
                                      tokens.shape)
    self.coords = jnp.zeros(tokens.shape + (3,), jnp.int32)


def test_scan_layers_lora_gradients_equal():
  cfg = dict(LLM, num_layers=3)
  loop, scan = _both_layouts(cfg)
  toks, _ = _inputs(length=10)
  mask = jnp.ones_like(toks)

  def grads(m):
    graphdef, adapters, base = lora.split(m)

    def loss(adapters):
      batch = _Batch(toks, mask)
      ll, w = M.target_logprobs(lora.merge(graphdef, adapters, base), batch)
      return -(ll * w).sum() / w.sum()

    return jax.jit(jax.value_and_grad(loss))(adapters)

  (v0, g0), (v1, g1) = grads(loop), grads(scan)
  np.testing.assert_allclose(v1, v0, atol=1e-5, rtol=1e-5)
  want = _stacked(nnx.State({"blocks": g0["blocks"]}), 3)
  got = dict(nnx.to_flat_state(g1))
  for path, v in nnx.to_flat_state(want):
    np.testing.assert_allclose(got[path][...], v[...], atol=1e-5, rtol=1e-5)
  assert len(got) == len(dict(nnx.to_flat_state(want)))


def test_scan_layers_decoders_agree():
  """Greedy, DFS and VGB decoding (which treat the cache as an opaque
  pytree: padded, tiled over chains, stepped) give the same answers."""
  from ttt import arc, views
  from ttt.decoders import dfs as dfs_lib
  from ttt.decoders import sampled
  from ttt.decoders import vgb as vgb_lib

  loop, scan = _both_layouts(dict(TINY, num_kv_heads=2), seed=1)
  rng = np.random.default_rng(0)
  grid = lambda: rng.integers(0, 10, (2, 3)).astype(np.int8)  # noqa: E731
  task = arc.Task("t", [(grid(), grid()) for _ in range(2)],
                  [(grid(), grid())])
  vs = views.make_views(2, dict(orders=1))[:2]
  enc = [views.prompt(task, 0, v, 96) for v in vs]
  p = np.stack([e.tokens for e in enc])
  lengths = np.array([e.length for e in enc], np.int32)
  coords = np.stack([e.coords for e in enc])
  segs = np.full(len(vs), 5, np.int32)
  valid = np.ones(len(vs), bool)
  tmaps = np.tile(np.arange(16, dtype=np.int32), (len(vs), 1))
  key = jax.random.key(0)
  out = []
  for m in (loop, scan):
    graphdef, adapters, base = lora.split(m)
    greedy = jax.jit(sampled.make_query_fn(graphdef, 6, 0.0))
    dfs = jax.jit(dfs_lib.make_query_fn(graphdef, 6, 0.05, 8, 64))
    vgb = jax.jit(vgb_lib.make_query_fn(graphdef, 6, 4, 8, 1.0, "greedy"))
    out.append(jax.device_get((
        greedy(base, adapters, p, lengths, coords, segs, valid, key),
        dfs(base, adapters, p, lengths, coords, segs, valid),
        vgb(base, adapters, p, lengths, coords, segs, valid, tmaps, key))))
  (greedy0, dfs0, vgb0), (greedy1, dfs1, vgb1) = out
  np.testing.assert_array_equal(greedy1, greedy0)
  np.testing.assert_array_equal(dfs1[0], dfs0[0])
  np.testing.assert_allclose(dfs1[1], dfs0[1], atol=1e-5)
  for a, b in zip(vgb1, vgb0, strict=True):
    np.testing.assert_array_equal(a, b)
