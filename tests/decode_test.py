"""Tests for ttt.decode and ttt.views."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ttt import arc, augment, data, decode, lora, tokens, views
from ttt import model as M

TINY = dict(num_layers=2, d_model=64, num_heads=4, mlp_dim=128,
            dtype="float32")


def _task(seed=0, k=3, side=3):
  rng = np.random.default_rng(seed)
  g = lambda: rng.integers(0, 10, (side, side + 1)).astype(np.int8)  # noqa
  return arc.Task(f"t{seed}", [(g(), g()) for _ in range(k)],
                  [(g(), g())])


def _prompts(task, vs, length):
  enc = [views.prompt(task, 0, v, length) for v in vs]
  segs = np.array([2 * len(v.demos) + 1 for v in vs], np.int32)
  return (np.stack([e.tokens for e in enc]),
          np.array([e.length for e in enc], np.int32),
          np.stack([e.coords for e in enc]), segs)


def _reference_greedy(model, prompt, length, coords, segment, max_new):
  """Greedy decoding by recomputing the full forward pass every step."""
  toks = list(prompt[:length])
  crd = [tuple(c) for c in coords[:length]]
  row = col = 0
  out = []
  for _ in range(max_new):
    t = jnp.asarray([toks], jnp.int32)
    c = jnp.asarray([crd], jnp.int32)
    logits = model(t, coords=c)[0, -1]
    logits = jnp.where(jnp.asarray(decode.ANSWER_TOKENS), logits, -jnp.inf)
    nxt = int(jnp.argmax(logits))
    out.append(nxt)
    if nxt == tokens.EOS:
      break
    tc, row, col = decode.answer_coords(jnp.int32(nxt), jnp.int32(row),
                                        jnp.int32(col), jnp.int32(segment))
    toks.append(nxt)
    crd.append(tuple(np.asarray(tc).tolist()))
  return out


@pytest.mark.parametrize("mode", ["lora", "lora+prefix"])
def test_kv_cache_decode_equals_full_recompute(mode):
  cfg_adapter = dict(mode=mode, rank=4, prefix_len=2)
  key = jax.random.key(1)
  model = M.make_model(TINY, cfg_adapter, key)
  graphdef, adapters, base = lora.split(model)
  # perturb the adapters so they matter
  adapters = jax.tree.map(
      lambda x: x + 0.05 * jax.random.normal(key, x.shape), adapters)
  task = _task()
  vs = views.make_views(3, dict(orders=1))[:3]
  p, lengths, coords, segs = _prompts(task, vs, 160)
  max_new = 12
  dec = decode.make_greedy_decoder(None, graphdef, 160, max_new)
  stack = lambda x: jnp.asarray(x)[None]  # noqa: E731
  out = dec(base, jax.tree.map(lambda x: x[None], adapters), stack(p),
            stack(lengths), stack(coords), stack(segs),
            jnp.ones((1, len(vs)), bool))
  out = np.asarray(out[0])
  merged = lora.merge(graphdef, adapters, base)
  for v in range(len(vs)):
    ref = _reference_greedy(merged, p[v], lengths[v], coords[v], segs[v],
                            max_new)
    got = out[v][:len(ref)].tolist()
    assert got == ref
    assert (out[v][len(ref):] == tokens.PAD).all()


def test_answer_coords_match_the_codec():
  grid = np.arange(6).reshape(2, 3) % 10
  seg = tokens.encode_segment(grid, 2, True)
  row = col = jnp.int32(0)
  for tok, want in zip(seg.tokens[1:], seg.coords[1:], strict=True):
    c, row, col = decode.answer_coords(jnp.int32(tok), row, col,
                                       jnp.int32(5))
    assert np.asarray(c).tolist() == want.tolist()


def test_scorers_equal_the_training_loss_and_rank_answers():
  """The candidate scorers are the inner loop's NLL (one kernel), per row,
  and the slot-gathering row scorer equals the per-query one."""
  from ttt import inner_loop

  key = jax.random.key(0)
  model = M.make_model(TINY, dict(mode="lora", rank=4), key)
  graphdef, adapters, base = lora.split(model)
  adapters = jax.tree.map(
      lambda x: x + 0.05 * jax.random.normal(key, x.shape), adapters)
  task = _task(side=2)
  wrong = arc.Task(task.id, task.train, [(task.test[0][0],
                                          (task.test[0][1] + 1) % 10)])
  rows = [tokens.encode_task(t, 128, loss="query") for t in (task, wrong)]
  batch = data.stack_rows(rows + [None], 3, 128)
  score = decode.make_scorer(None, graphdef)
  s = np.asarray(score(base, jax.tree.map(lambda x: x[None], adapters),
                       jax.tree.map(lambda x: x[None], batch)))[0]
  merged = lora.merge(graphdef, adapters, base)
  for r in range(2):
    loss, count = inner_loop.sequence_loss(
        merged, jax.tree.map(lambda x, r=r: x[r:r + 1], batch))
    np.testing.assert_allclose(s[r], -float(loss) * float(count), rtol=1e-5)
  assert s[0] != s[1] and s[2] == -np.inf
  # two adapter slots: row r scored under slot r % 2
  two = jax.tree.map(lambda x: jnp.stack([x, jnp.zeros_like(x)]), adapters)
  rs = np.asarray(decode.make_row_scorer(graphdef)(
      base, two, jnp.array([0, 1, 0]), batch))
  np.testing.assert_allclose(rs[[0, 2]], s[[0, 2]], rtol=1e-5)
  zero = jax.tree.map(lambda x: jnp.zeros_like(x)[None], adapters)
  s1 = np.asarray(score(base, zero, jax.tree.map(lambda x: x[None],
                                                 batch)))[0]
  np.testing.assert_allclose(rs[1], s1[1], rtol=1e-5)


def test_decoder_with_slots_equals_per_query_decoder():
  key = jax.random.key(3)
  model = M.make_model(TINY, dict(mode="lora", rank=4), key)
  graphdef, adapters, base = lora.split(model)
  ad = [jax.tree.map(lambda x, k=k: x + 0.1 * jax.random.normal(
      jax.random.fold_in(key, k), x.shape), adapters) for k in range(2)]
  stacked = jax.tree.map(lambda *x: jnp.stack(x), *ad)
  task = _task()
  vs = views.make_views(3, dict(orders=1))[:2]
  p, lengths, coords, segs = _prompts(task, vs, 160)
  valid = np.ones(len(vs), bool)
  args = [np.stack([x, x]) for x in (p, lengths, coords, segs, valid)]
  slots = np.array([1, 0], np.int32)
  got = decode.make_decoder(graphdef, 10)(base, stacked, slots, *args,
                                          jax.random.split(key, 2))
  ref = decode.make_greedy_decoder(None, graphdef, 160, 10)(
      base, jax.tree.map(lambda x: x[slots], stacked), *args)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(ref))
  assert not np.array_equal(np.asarray(got)[0], np.asarray(got)[1])


def test_views_default_marc_set_and_inverses():
  vs = views.make_views(4, rng=np.random.default_rng(0))
  labels = [v.label for v in vs]
  assert labels[:3] == ["identity", "identity/order1", "identity/order2"]
  assert labels[3:] == list(views.MARC_TRANSFORMS)
  assert len({v.demos for v in vs[:3]}) == 3
  task = _task(k=4)
  truth = task.test[0][1]
  for v in vs + views.make_views(4, dict(colour_perms=2,
                                         leave_one_out=True)):
    vt = views.view_task(task, 0, v, truth)
    np.testing.assert_array_equal(views.to_original(v, vt.test[0][1]),
                                  truth)
    assert [augment.apply(v.element, task.train[k][0]).tolist()
            for k in v.demos] == [i.tolist() for i, _ in vt.train]
  loo = views.make_views(3, dict(orders=0, leave_one_out=True,
                                 transforms=()))
  assert [v.demos for v in loo] == [(0, 1, 2), (1, 2), (0, 2), (0, 1)]
  with pytest.raises(ValueError, match="unknown view transforms"):
    views.make_views(3, dict(transforms=("spin",)))


def test_sampling_decoder_is_greedy_when_cold_and_varies_when_hot():
  key = jax.random.key(3)
  model = M.make_model(TINY, dict(mode="lora", rank=4), key)
  graphdef, adapters, base = lora.split(model)
  task = _task()
  vs = views.make_views(3, dict(orders=1))[:2]
  p, lengths, coords, segs = _prompts(task, vs, 160)
  args = (base, jax.tree.map(lambda x: x[None], adapters),
          *(jnp.asarray(x)[None] for x in (p, lengths, coords, segs)),
          jnp.ones((1, len(vs)), bool))
  greedy = np.asarray(decode.make_greedy_decoder(None, graphdef, 160, 10)(
      *args))
  keys = jax.random.split(jax.random.key(0), (1, len(vs)))
  cold = decode.make_greedy_decoder(None, graphdef, 160, 10, 1e-4)
  np.testing.assert_array_equal(np.asarray(cold(*args, keys)), greedy)
  hot = decode.make_greedy_decoder(None, graphdef, 160, 10, 5.0)
  a = np.asarray(hot(*args, keys))
  np.testing.assert_array_equal(np.asarray(hot(*args, keys)), a)  # keyed
  b = np.asarray(hot(*args, jax.random.split(jax.random.key(1),
                                              (1, len(vs)))))
  assert (a != b).any()
  assert np.isin(a, np.flatnonzero(decode.ANSWER_TOKENS).tolist()
                 + [tokens.PAD]).all()
