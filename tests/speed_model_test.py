"""The CPU speed-ups of issue 31 compute what they replace: the LoRA
product's written-out backward pass == autodiff, causal attention in query
blocks == one call, blocks chosen only where the program runs on CPU."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ttt import model as M


def _plain(x, a, b, scale):
  return ((x @ a) @ b) * scale


def _vjps(fn, x, a, b, g, scale):
  out, pull = jax.vjp(lambda *z: fn(*z, scale), x, a, b)
  return (out, *pull(g))


@pytest.mark.parametrize("scale,tasks", [(2.0, 0), (1.7, 3)])
def test_lora_product_values_and_gradients_are_autodiffs(scale, tasks):
  k = jax.random.split(jax.random.key(0), 4)
  lead = (tasks,) if tasks else ()
  x = jax.random.normal(k[0], lead + (2, 5, 12))
  a = jax.random.normal(k[1], (12, 4))
  b = jax.random.normal(k[2], (4, 20))
  g = jax.random.normal(k[3], lead + (2, 5, 20))

  def both(x, g):
    return (_vjps(M.lora_product, x, a, b, g, scale),
            _vjps(_plain, x, a, b, g, scale))

  if tasks:  # per-task rows, shared factors: the inner loop's batching
    both = jax.vmap(both)
  ours, ref = jax.jit(both)(x, g)
  for u, v in zip(ours, ref, strict=True):
    assert u.shape == v.shape and u.dtype == v.dtype
    # float32 sums of up to 20 products of magnitude ~10 in another order
    # (XLA picks the dot kernels per CPU): 9.5e-6 apart on one element of
    # -4.99 on the EPYC of 2026-12-07, bit-identical on the Xeon before
    np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-5,
                               atol=1e-5)


def test_model_lora_gradients_match_the_plain_expression(monkeypatch):
  cfg = dict(num_layers=1, d_model=16, num_heads=2, mlp_dim=32, rope="1d",
             dtype="float32")
  model = M.make_model(cfg, dict(mode="lora", rank=2), jax.random.key(1))
  from ttt import lora

  graphdef, adapters, base = lora.split(model)
  # B = 0 at init would zero dA: train-like factors
  adapters = jax.tree.map(
      lambda x: x + 0.1 * jax.random.normal(jax.random.key(2), x.shape),
      adapters)
  toks = jax.random.randint(jax.random.key(3), (2, 7), 0, 16)

  def loss(ad):
    return jnp.sum(lora.merge(graphdef, ad, base)(toks) ** 2)

  ours = jax.jit(jax.grad(loss))(adapters)
  monkeypatch.setattr(M, "lora_product", _plain)
  ref = jax.jit(jax.grad(loss))(adapters)
  for u, v in zip(jax.tree.leaves(ours), jax.tree.leaves(ref), strict=True):
    np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-5,
                               atol=1e-6)
  assert any(float(jnp.abs(u).max()) > 0 for u in jax.tree.leaves(ours))


@pytest.mark.parametrize("length,block", [(50, 16)])
def test_causal_attention_in_query_blocks_matches_one_block(length, block):
  k = jax.random.split(jax.random.key(4), 3)
  q = jax.random.normal(k[0], (2, length, 4, 8))
  kv = jax.random.normal(k[1], (2, 2, length, 2, 8))  # grouped-query
  valid = jnp.arange(length)[None, :] < jnp.array([[length], [length - 9]])

  @jax.jit
  def both(q, kv, valid):
    def run(block, kv_valid):
      def loss(q):
        out = M.causal_attention(q, kv[0], kv[1], kv_valid, block)
        return jnp.sum(out ** 2), out

      (_, out), grad = jax.value_and_grad(loss, has_aux=True)(q)
      return out, grad

    return [run(b, v) for b in (block, 0) for v in (None, valid)]

  r = both(q, kv, valid)
  for ours, ref in ((r[0], r[2]), (r[1], r[3])):  # blocks vs one call
    np.testing.assert_allclose(ours[0], ref[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ours[1], ref[1], rtol=1e-5, atol=1e-5)
  assert not np.allclose(r[0][0], r[1][0])  # the padding mask is applied


def test_auto_attention_blocks_only_where_the_program_runs_on_cpu():
  from jax import export

  q = jnp.ones((1, 256, 2, 8))
  fn = jax.jit(lambda q: M.causal_attention(q, q, q, None, -1))
  cpu = fn.lower(q).as_text()
  gpu = export.export(fn, platforms=("cuda",))(q).mlir_module()
  assert M.auto_attention_block(256) == 64
  assert cpu.count("stablehlo.dot_general") == 2 * 4  # 4 query blocks
  assert gpu.count("stablehlo.dot_general") == 2  # one call (cuDNN's path)
  assert M.auto_attention_block(192) == 64
  assert M.auto_attention_block(127) == 0
