"""Packed TTT rows (`ttt.data.pack`): the same loss and gradients as the
rows unpacked, the packing's invariants, and the main job with it on."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ttt import data, inner_loop, lora, pipeline, tokens
from ttt import job as job_lib
from ttt import model as M
from ttt import plan as plan_lib


@pytest.fixture(scope="module")
def rows(arc1_eval):
  """One short task's TTT rows [N, L] with L about twice its longest row
  (so that rows pack two or more to a sequence)."""
  task = min(arc1_eval, key=tokens.sequence_length)
  ds = data.build_ttt_dataset(task, dict(max_len=512, num_sequences=6),
                              jax.random.key(3))
  return data.trim(ds, 2 * data.real_length(ds) + 7)


@pytest.mark.parametrize("rope,block,mode", [
    ("3d", 0, "lora"), ("1d", 48, "lora+prefix")])
def test_packed_loss_and_gradients_equal_unpacked(rows, rope, block, mode):
  packed = data.pack(rows)
  assert packed.valid.sum() < rows.valid.sum()  # it packed
  assert data.row_counts(packed) == data.row_counts(rows) == rows.valid.sum()
  cfg = M.ModelConfig(num_layers=1, d_model=24, num_heads=2, mlp_dim=32,
                      rope=rope, dtype="float32", attention_block=block)
  graphdef, adapters, base = lora.split(M.make_model(
      cfg, dict(mode=mode, rank=4, prefix_len=3), jax.random.key(0)))
  adapters = jax.tree.map(lambda x: x + 0.05, adapters)  # LoRA B != 0

  @jax.jit
  def loss_and_grads(a, batch):
    return jax.value_and_grad(lambda a: inner_loop.sequence_loss(
        lora.merge(graphdef, a, base), batch)[0])(a)

  # all N rows of each (the packed one's empty rows add no target): one
  # shape, one compile
  (l0, g0), (l1, g1) = (loss_and_grads(adapters, jax.tree.map(jnp.asarray,
                                                              ds))
                        for ds in (rows, packed))
  np.testing.assert_allclose(l1, l0, rtol=1e-5, atol=1e-5)
  for x, y in zip(jax.tree.leaves(g0), jax.tree.leaves(g1), strict=True):
    np.testing.assert_allclose(y, x, rtol=1e-5, atol=1e-5)
  assert max(float(jnp.abs(x).max()) for x in jax.tree.leaves(g0)) > 0


def test_a_packed_row_sees_nothing_of_the_row_before():
  """Changing row 1 of a packed sequence leaves row 2's logits unchanged;
  the first token of row 2 is no target of row 1's last."""
  cfg = M.ModelConfig(num_layers=1, d_model=24, num_heads=2, mlp_dim=32,
                      rope="1d", dtype="float32")
  graphdef, adapters, base = lora.split(M.make_model(
      cfg, dict(mode="prefix", prefix_len=2)))
  seg = jnp.asarray([[1] * 5 + [2] * 6 + [0] * 3], jnp.int32)
  pos = jnp.asarray([list(range(5)) + list(range(6)) + [11, 12, 13]])
  toks = jnp.asarray(np.random.default_rng(0).integers(0, 13, (2, 14)),
                     jnp.int32).at[1, 5:].set(0)
  toks = toks.at[1, 5:].set(toks[0, 5:])  # row 1 differs, row 2 the same
  batch = data.TTTDataset(toks, jnp.ones_like(toks), pos.repeat(2, 0),
                          jnp.zeros((2, 14, 3), jnp.int32),
                          jnp.ones(2, bool), seg.repeat(2, 0))

  @jax.jit
  def run(batch):
    model = lora.merge(graphdef, adapters, base)
    out = model(batch.tokens, batch.positions, segments=batch.segments)
    return out, M.target_logprobs(model, batch)[1]

  out, w = run(batch)
  np.testing.assert_allclose(out[0, 5:11], out[1, 5:11], atol=1e-6)
  assert not np.allclose(out[0, :5], out[1, :5])
  assert float(w[0, 4]) == 0 and float(w[0, 3]) == 1 == float(w[0, 5])


def _pieces(ds):
  """Each valid row's real tokens, mask, positions and coords (bytes)."""
  out = []
  for n in np.flatnonzero(ds.valid):
    for s in range(1, ds.segments[n].max() + 1):
      at = ds.segments[n] == s
      out.append(b"|".join(x[n][at].tobytes() for x in
                           (ds.tokens, ds.mask, ds.positions, ds.coords)))
  return sorted(out)


def _share(ds):
  """The padded share of the valid sequences."""
  return 1 - (ds.segments > 0).sum() / (ds.valid.sum() * ds.tokens.shape[1])


def test_pack_keeps_every_row_once_in_contiguous_segments(arc1_eval):
  config = dict(max_len=1024, num_sequences=16)
  tasks = sorted(arc1_eval, key=tokens.sequence_length)[:6]
  stacked = data.stack([data.build_ttt_dataset(t, config, jax.random.key(n))
                        for n, t in enumerate(tasks)])
  # (as in the job, L is set by the longest row of all the tasks)
  stacked = data.trim(stacked, 2 * data.real_length(stacked))
  packed = data.pack_tasks(stacked)
  assert packed.tokens.shape == stacked.tokens.shape
  np.testing.assert_array_equal(data.row_counts(packed),
                                data.row_counts(stacked))
  assert packed.valid.sum() < stacked.valid.sum()
  for t in range(len(tasks)):
    one, got = (jax.tree.map(lambda x, t=t: x[t], d)
                for d in (stacked, packed))
    assert _pieces(got) == _pieces(one)  # every valid row exactly once
    assert _share(got) <= _share(one)
    k = got.valid.sum()
    assert got.valid[:k].all() and not got.valid[k:].any()
    assert not got.segments[k:].any() and not got.mask[k:].any()
    for seg, toks, mask in zip(got.segments[:k], got.tokens[:k],
                               got.mask[:k], strict=True):
      used = int((seg > 0).sum())
      assert (seg[:used] > 0).all()  # real tokens first, then padding
      steps = np.diff(seg[:used])
      assert seg[0] == 1 and set(steps.tolist()) <= {0, 1}
      assert (toks[used:] == tokens.PAD).all() and not mask[used:].any()
    np.testing.assert_array_equal(data.pack(one).tokens, got.tokens)


def _row(n, length, seed):
  """A synthetic encoded row of n real tokens (padded to `length`)."""
  rng = np.random.default_rng(seed)
  toks = np.full(length, tokens.PAD, np.int32)
  toks[:n] = rng.integers(0, 13, n)
  mask = np.zeros(length, np.int32)
  mask[n // 2:n] = 1
  coords = np.zeros((length, 3), np.int32)
  coords[:n] = rng.integers(0, 30, (n, 3))
  return tokens.Encoded(toks, mask, np.arange(length, dtype=np.int32),
                        coords, n)


def test_rows_that_do_not_pack_are_kept_as_they_are():
  """Rows longer than half the sequence: nothing to pack, nothing moved;
  one row that fits beside another packs, ties by row index."""
  ds = data.stack_rows([_row(n, 16, n) for n in (9, 12, 10)] + [None], 5, 16)
  got = data.pack(ds)
  assert got is ds
  ds = data.stack_rows([_row(n, 16, n) for n in (9, 12, 4, 4, 10)], 5, 16)
  got = data.pack(ds)
  # first fit, longest first: [12, 4], [10, 4], [9]
  np.testing.assert_array_equal(got.valid, [True] * 3 + [False] * 2)
  np.testing.assert_array_equal((got.segments == 1).sum(-1), [12, 10, 9, 0, 0])
  np.testing.assert_array_equal(got.tokens[0, 12:], ds.tokens[2, :4])
  np.testing.assert_array_equal(got.tokens[1, 10:14], ds.tokens[3, :4])
  assert _pieces(got) == _pieces(ds) and _share(got) < _share(ds)
  empty = data.blank(4, 16)
  assert data.pack(empty) is empty and data.row_counts(empty) == 0


def test_main_job_with_packed_rows_runs(tmp_path):
  """`data.pack=True` through the main job (`tiny_pipeline_config`) on a
  short task whose rows pack beside a long one's (L = 192: 87-token rows
  two to a sequence, the 182-token rows alone)."""
  from conftest import tiny_pipeline_config

  c = tiny_pipeline_config(num_tasks=2, chunk_size=2,
                           task_ids=("66e6c45b", "48131b3c"), select="first")
  c.data.pack = True
  c.data.num_sequences = 8
  c.decode.method = "greedy"  # (cheaper to compile; decoding is not tested)
  c.views.transforms = ("transpose",)
  s = pipeline.run(c, str(tmp_path))
  with open(os.path.join(tmp_path, "results.json")) as f:
    recs = json.load(f)["tasks"]
  j = job_lib.parse(c)
  tasks = plan_lib.load_tasks(j.run)[0]
  key = jax.random.key(j.run.seed)
  rows = [data.build_ttt_dataset(t, j.data, jax.random.fold_in(key, n))
          for n, t in enumerate(tasks)]
  unpacked = data.stack(rows)
  length = data.bucket_length(data.real_length(unpacked), 32, 1024)
  lengths = (unpacked.segments > 0).sum(-1)
  assert lengths[0].max() * 2 <= length < lengths[1].min() * 2
  # the chunk's 2 tasks in slots rounded up to the mesh's devices; a step's
  # sequence holds 2 rows of task 0 packed, 1 unpacked
  slots = -(-2 // jax.device_count()) * jax.device_count()
  real = lengths.max(-1)
  packed = 1 - (2 * real[0] + real[1]) / (slots * length)
  assert s["padded_share"]["ttt"] == pytest.approx(packed, abs=1e-4)
  assert packed < 1 - real.sum() / (slots * length)  # unpacked share
  for rec, ds in zip(recs, rows, strict=True):
    # `rows` counts the original rows (a packed sequence holds several)
    assert rec["ttt"]["rows"] == ds.valid.sum() == 8
    assert np.isfinite(rec["ttt"]["final_loss"])
