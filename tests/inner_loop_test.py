"""Tests for ttt.inner_loop and ttt.sharding."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ttt import data, inner_loop, lora, sharding, tokens
from ttt import model as M


def _config(**ttt):
  return ml_collections.ConfigDict(dict(
      model=dict(num_layers=2, d_model=64, num_heads=4, mlp_dim=128,
                 rope="3d", dtype="float32"),
      adapter=dict(mode="lora", rank=4, alpha=8.0),
      ttt=dict(dict(steps=6, batch_size=2, lr=1e-3), **ttt),
      data=dict(max_len=96, num_sequences=12)))


def _task(seed, k=3):
  from ttt import arc

  rng = np.random.default_rng(seed)
  g = lambda: rng.integers(0, 10, (3, 3)).astype(np.int8)  # noqa: E731
  return arc.Task(f"t{seed}", [(g(), g()) for _ in range(k)], [(g(), None)])


def _setup(cfg, n_tasks=3, seed=0):
  key = jax.random.key(seed)
  ds = [data.build_ttt_dataset(_task(i), cfg.data, jax.random.fold_in(key, i))
        for i in range(n_tasks)]
  ds = jax.tree.map(lambda *x: np.stack(x), *ds)
  model = M.make_model(cfg.model, cfg.adapter, key)
  graphdef, _, base = lora.split(model)
  adapters = lora.init_adapters(cfg, key, n_tasks)
  keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(n_tasks))
  return graphdef, base, adapters, ds, keys


def _close(a, b, **kw):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), **kw)


def test_vmapped_equals_loop_and_base_is_untouched():
  cfg = _config()
  graphdef, base, adapters, ds, keys = _setup(cfg)
  base_before = jax.tree.map(np.array, base)
  fn = inner_loop.make_inner_loop(cfg, graphdef)
  out, metrics = fn(base, adapters, ds, keys)
  assert metrics["loss"].shape == (3, 6) and metrics["lr"].shape == (3, 6)
  assert not np.asarray(metrics["nonfinite"]).any()
  assert np.asarray(metrics["has_data"]).all()
  single = jax.jit(inner_loop.make_train_task(cfg, graphdef))
  for t in range(3):
    take = lambda x, t=t: x[t]  # noqa: E731
    a, m = single(base, jax.tree.map(take, adapters), jax.tree.map(take, ds),
                  keys[t])
    _close(a, jax.tree.map(take, out), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(m["loss"], metrics["loss"][t], rtol=1e-5)
  for x, y in zip(jax.tree.leaves(base), jax.tree.leaves(base_before),
                  strict=True):
    np.testing.assert_array_equal(np.asarray(x), y)
  # the adapters did move
  assert not np.allclose(jax.tree.leaves(out)[1], jax.tree.leaves(adapters)[1])


def test_loss_falls_on_a_memorisation_toy():
  cfg = _config(steps=60, lr=3e-3, warmup_frac=0.0)
  cfg.data.num_sequences = 2
  graphdef, base, adapters, ds, keys = _setup(cfg, n_tasks=1)
  _, metrics = inner_loop.make_inner_loop(cfg, graphdef)(base, adapters, ds,
                                                         keys)
  loss = np.asarray(metrics["loss"][0])
  assert loss[-5:].mean() < 0.5 * loss[:5].mean()


def test_compiles_once_for_same_shapes():
  cfg = _config(steps=2)
  graphdef, base, adapters, ds, keys = _setup(cfg)
  fn = inner_loop.make_inner_loop(cfg, graphdef, max_traces=1)
  fn(base, adapters, ds, keys)
  _, _, adapters2, ds2, keys2 = _setup(cfg, seed=1)
  fn(base, adapters2, ds2, keys2)  # new values, same shapes: no retrace
  fewer = jax.tree.map(lambda x: x[:2], (adapters, ds, keys))
  with pytest.raises(AssertionError):
    fn(base, *fewer)


def test_eight_devices_match_one_and_keep_the_task_axis_sharded():
  assert len(jax.devices()) == 8
  cfg = _config(steps=3)
  graphdef, base, adapters, ds, keys = _setup(cfg, n_tasks=5)
  fn = inner_loop.make_inner_loop(cfg, graphdef)
  ref, ref_metrics = fn(base, adapters, ds, keys)
  mesh = sharding.make_mesh()
  (p_adapters, p_ds, p_keys), valid = sharding.pad_tasks(
      (adapters, ds, keys), 8)
  assert valid.tolist() == [True] * 5 + [False] * 3
  out, metrics = fn(sharding.replicate(base, mesh),
                    sharding.shard_tasks(p_adapters, mesh),
                    sharding.shard_tasks(p_ds, mesh),
                    sharding.shard_tasks(p_keys, mesh))
  for leaf in jax.tree.leaves(out) + [metrics["loss"]]:
    assert leaf.sharding.spec[0] == sharding.TASK_AXIS
    assert leaf.sharding.mesh.size == 8
  _close(jax.tree.map(lambda x: x[:5], out), ref, rtol=1e-5, atol=2e-5)
  np.testing.assert_allclose(metrics["loss"][:5], ref_metrics["loss"],
                             rtol=1e-5)
  # padding tasks have no data: they keep their (zero) adapters, flagged
  assert not np.asarray(metrics["has_data"][5:]).any()
  for x in jax.tree.leaves(out):
    assert not np.asarray(x[5:]).any()


def test_nonfinite_task_is_isolated_and_reset():
  cfg = _config(steps=4)
  graphdef, base, adapters, ds, keys = _setup(cfg)
  fn = inner_loop.make_inner_loop(cfg, graphdef)
  clean_out, clean_metrics = fn(base, adapters, ds, keys)
  # poison task 1: an infinite LoRA factor makes its loss NaN
  poisoned = jax.tree.map(lambda x: x.at[1].set(jnp.inf), adapters)
  out, metrics = fn(base, poisoned, ds, keys)
  assert np.asarray(metrics["nonfinite"]).tolist() == [False, True, False]
  for x, p, c in zip(jax.tree.leaves(out), jax.tree.leaves(poisoned),
                     jax.tree.leaves(clean_out), strict=True):
    np.testing.assert_array_equal(x[1], p[1])  # reset to its initial value
    np.testing.assert_array_equal(x[0], c[0])  # others: bit-identical
    np.testing.assert_array_equal(x[2], c[2])
  np.testing.assert_array_equal(metrics["loss"][0], clean_metrics["loss"][0])


def test_draw_rows_epochs_without_replacement():
  valid = jnp.array([True, False, True, True, False, True])
  key = jax.random.key(0)
  draws = jnp.concatenate([inner_loop.draw_rows(key, valid, s, 2)
                           for s in range(6)])  # 12 draws = 3 epochs
  draws = np.asarray(draws)
  assert set(draws.tolist()) <= {0, 2, 3, 5}
  for e in range(3):
    assert sorted(draws[4 * e: 4 * e + 4].tolist()) == [0, 2, 3, 5]


@pytest.mark.parametrize("mode", ["prefix", "full"])
def test_other_adapter_modes_train(mode):
  cfg = _config(steps=4)
  cfg.adapter.mode = mode
  cfg.adapter.prefix_len = 2
  key = jax.random.key(0)
  ds = jax.tree.map(lambda *x: np.stack(x), *[
      data.build_ttt_dataset(_task(i), cfg.data) for i in range(2)])
  model = M.make_model(cfg.model, cfg.adapter, key)
  graphdef, params, base = lora.split(model)
  adapters = lora.init_adapters(cfg, key, 2, params)
  keys = jax.random.split(key, 2)
  out, metrics = inner_loop.make_inner_loop(cfg, graphdef)(base, adapters, ds,
                                                           keys)
  assert np.isfinite(np.asarray(metrics["loss"])).all()
  assert not np.allclose(jax.tree.leaves(out)[0], jax.tree.leaves(adapters)[0])


def test_loss_mask_counts_only_targets():
  cfg = _config()
  ds = data.build_ttt_dataset(_task(0), cfg.data)
  model = M.make_model(cfg.model, cfg.adapter)
  batch = jax.tree.map(lambda x: x[:2], ds)
  loss, count = inner_loop.sequence_loss(model, batch)
  assert int(count) == int(ds.mask[:2, 1:].sum())
  assert (ds.tokens[:2][ds.mask[:2] == 1] != tokens.PAD).all()
  # reference: numpy log-softmax over the model's logits, mean over targets
  logits = np.asarray(model(batch.tokens, batch.positions, batch.coords),
                      np.float64)[:, :-1]
  logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(
      -1, keepdims=True)) - logits.max(-1, keepdims=True)
  targets = np.asarray(batch.tokens)[:, 1:]
  nll = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
  w = np.asarray(batch.mask)[:, 1:]
  np.testing.assert_allclose(float(loss), (nll * w).sum() / w.sum(),
                             rtol=1e-5)


def test_a_blow_up_on_the_last_step_is_caught():
  """lr 1e30, one step: every step's loss is finite (it is computed before
  the update), the trained adapter is not -- flagged and reset."""
  cfg = _config(steps=1, lr=1e30, warmup_frac=0.0, clip_norm=0.0)
  graphdef, base, adapters, ds, keys = _setup(cfg, n_tasks=2)
  out, m = inner_loop.make_inner_loop(cfg, graphdef)(base, adapters, ds,
                                                     keys)
  assert np.isfinite(np.asarray(m["loss"])).all()
  assert np.asarray(m["nonfinite"]).all()
  for a, a0 in zip(jax.tree.leaves(out), jax.tree.leaves(adapters),
                   strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(a0))
  ok = inner_loop.make_inner_loop(_config(steps=2), graphdef)(
      base, adapters, ds, keys)[1]
  assert not np.asarray(ok["nonfinite"]).any()
  assert np.isfinite(np.asarray(ok["final_loss"])).all()
