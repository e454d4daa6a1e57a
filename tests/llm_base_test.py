"""A pretrained language model as the base of the main job, the TTT inner
loop, continued training, and the programs' export lowering.

A tiny random Llama snapshot (grouped-query attention, tied head, Llama-3
RoPE scaling) is written with `transformers` (skipped without it); the
model-level equivalence with Hugging Face is `tests/pretrained_test.py`'s.
"""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ttt import (
  ckpt,
  data,
  inner_loop,
  lora,
  metrics,
  pipeline,
  pretrain,
  tokens,
)
from ttt import model as M
from ttt import weights as weights_lib
from ttt.pretrained import cell_tokens as pretrained_cells

# The LLM-only architecture fields at a tiny size (no checkpoint needed).
LLM_TINY = dict(num_layers=2, d_model=64, num_heads=4, num_kv_heads=2,
                mlp_dim=96, rope="1d", rope_base=500000.0,
                tie_embeddings=True, qkv_bias=True, qk_norm=True,
                rope_scaling=(8.0, 1.0, 4.0, 64.0), norm_eps=1e-5)


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory):
  pytest.importorskip("torch")
  pytest.importorskip("transformers")
  from conftest import build_hf_snapshot

  return build_hf_snapshot(
      tmp_path_factory.mktemp("llama") / "snap", "Llama", dict(
          tie_word_embeddings=True, rope_parameters=dict(
              rope_type="llama3", rope_theta=500000.0, factor=8.0,
              low_freq_factor=1.0, high_freq_factor=4.0,
              original_max_position_embeddings=64)))


def _job_config(path, **run):
  from conftest import tiny_llm_job_config

  return tiny_llm_job_config(path, **run)


def test_the_main_job_runs_on_a_pretrained_snapshot_compiling_once(
    snapshot, tmp_path):
  """Two chunks on an HF snapshot: loaded through the vocabulary cut, each
  stage's programs compiled once, records written, the base's token
  mapping in the report, and a resume from the same files."""
  from conftest import run_counting_compiles, stage_programs

  c = _job_config(snapshot)
  names = stage_programs(c)
  s, counts = run_counting_compiles(c, str(tmp_path))
  assert s["tasks"] == 2 and s["decode"]["model_calls"] > 0
  for stage, program in names.items():
    assert counts[f"jit({program})"] == 1, (stage, program, counts)
  res = json.loads((tmp_path / "results.json").read_text())
  assert all(np.isfinite(t["ttt"]["final_loss"]) for t in res["tasks"])
  report = (tmp_path / "report.md").read_text()
  assert "vocabulary cut to 16 tokens" in report
  assert pipeline.run(c, str(tmp_path))["tasks"] == 2  # resumed, same files
  assert json.loads((tmp_path / "results.json").read_text())["tasks"] == \
      res["tasks"]


def test_vmapped_ttt_equals_looped_on_an_llm_shape():
  cfg = ml_collections.ConfigDict(dict(
      model=dict(LLM_TINY, vocab_size=tokens.VOCAB_SIZE, dtype="float32"),
      adapter=dict(mode="lora", rank=4, alpha=8.0),
      ttt=dict(steps=3, batch_size=2, lr=1e-2)))
  graphdef, _, base = lora.split(M.make_model(cfg.model, cfg.adapter,
                                              jax.random.key(0)))
  t, n, length = 3, 4, 48
  rng = np.random.default_rng(0)
  toks = rng.integers(0, 13, (t, n, length)).astype(np.int32)
  mask = np.zeros_like(toks)
  mask[..., length // 2:] = 1
  pos = np.broadcast_to(np.arange(length, dtype=np.int32), toks.shape)
  ds = data.TTTDataset(toks, mask, np.array(pos),
                       np.zeros(toks.shape + (3,), np.int32),
                       np.ones((t, n), bool), np.ones_like(toks))
  adapters = lora.init_adapters(cfg, jax.random.key(1), t)
  keys = jax.random.split(jax.random.key(2), t)
  out, m = inner_loop.make_inner_loop(cfg, graphdef)(base, adapters, ds, keys)
  one = jax.jit(inner_loop.make_train_task(cfg, graphdef))
  for k in range(t):
    ad, mk = one(base, jax.tree.map(lambda x, k=k: x[k], adapters),
                 jax.tree.map(lambda x, k=k: x[k], ds), keys[k])
    # atol: 0.1% of one AdamW step (lr 1e-2); Adam's normalised update of
    # a near-zero gradient moves by ~lr whatever its rounding, so vmapped
    # and looped matmul orders differ there by a few 1e-6 on some CPUs (seen
    # 4.1e-6 on an AVX2 EPYC)
    for a, b in zip(jax.tree.leaves(ad), jax.tree.leaves(
        jax.tree.map(lambda x, k=k: x[k], out)), strict=True):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5,
                                 atol=1e-5)
    np.testing.assert_allclose(mk["loss"], m["loss"][k], rtol=1e-5)
  assert m["loss"][0, -1] < m["loss"][0, 0]  # it trains


def test_llm_programs_lower_for_gpu_and_tpu():
  from conftest import export_lowers

  from ttt import select
  from ttt.decoders import dfs, sampled

  cfg = ml_collections.ConfigDict(dict(
      model=dict(LLM_TINY, vocab_size=tokens.VOCAB_SIZE, dtype="bfloat16"),
      adapter=dict(mode="lora", rank=4, alpha=8.0),
      ttt=dict(steps=2, batch_size=2)))
  key = jax.random.key(0)
  graphdef, _, base = lora.split(M.make_model(cfg.model, cfg.adapter, key))
  t, n, length = 2, 4, 32
  adapters = jax.jit(lora.make_init(cfg, key))(None, jnp.arange(t))
  row = tokens.Encoded(np.full(length, tokens.PAD, np.int32),
                       np.zeros(length, np.int32),
                       np.arange(length, dtype=np.int32),
                       np.zeros((length, 3), np.int32), 1)
  ds = data.stack([data.stack_rows([row] * n, n, length)] * t)
  export_lowers(inner_loop.make_inner_loop(cfg, graphdef), base, adapters,
                ds, jax.random.split(key, t))
  q, v, p = 2, 2, 16
  prompt_args = (jnp.zeros(q, jnp.int32), jnp.zeros((q, v, p), jnp.int32),
                 jnp.ones((q, v), jnp.int32),
                 jnp.zeros((q, v, p, 3), jnp.int32),
                 jnp.ones((q, v), jnp.int32), jnp.ones((q, v), bool))
  export_lowers(sampled.make_program(graphdef, 8), base, adapters,
                *prompt_args, jax.random.split(key, q))
  export_lowers(dfs.make_program(graphdef, 8, 0.1, 4), base, adapters,
                *prompt_args)
  export_lowers(select.make_row_scorer(graphdef), base, adapters,
                jnp.zeros(2, jnp.int32),
                data.stack_rows([row] * 2, 2, length))


def test_continued_pretraining_from_a_snapshot_exports_a_loadable_model(
    snapshot, tmp_path):
  config = ml_collections.ConfigDict(dict(
      model=dict(num_layers=1, d_model=32, num_heads=2, mlp_dim=64,
                 dtype="float32"),  # replaced by the snapshot's shape
      pretrain=dict(steps=2, batch_size=8, max_len=256, lr=1e-4,
                    warmup_steps=1, eval_every=2, checkpoint_every=2,
                    log_every=1, heldout_tasks=4, prefetch=2,
                    init_from=snapshot)))
  last = pretrain.train_and_evaluate(config, str(tmp_path))
  assert last["stopped_at"] == 2
  losses = [r["loss"] for r in metrics.read(str(tmp_path / "metrics.jsonl"))
            if "loss" in r]
  assert len(losses) == 2 and np.isfinite(losses).all()
  exported = str(tmp_path / "model")
  stored = ckpt.load_weights_config(exported)["model"]
  assert stored["rope"] == "1d" and stored["num_kv_heads"] == 2
  assert stored["tie_embeddings"] and stored["vocab_size"] == 16
  # the export is a ttt-jax checkpoint the main job loads, and it is the
  # snapshot moved a little (2 steps at lr 1e-4), not a fresh model
  job = _job_config(exported)
  from ttt import job as job_lib

  j = job_lib.parse(job)
  w, model_cfg = weights_lib.load(j.init_from, j.model, j.adapter, 0)
  assert model_cfg.num_kv_heads == 2 and w.source == "a ttt-jax checkpoint"
  fresh, _ = weights_lib.load(snapshot, j.model, j.adapter, 0)
  x = jnp.asarray([pretrained_cells("I\n0123\n4567\nO\n")])
  a = lora.merge(w.graphdef, w.template, w.base)(x)
  b = lora.merge(fresh.graphdef, fresh.template, fresh.base)(x)
  diff = float(jnp.abs(a - b).max())
  assert 0 < diff < 0.1 * float(jnp.abs(b).max()), diff
  assert os.path.isdir(os.path.join(exported, "weights"))


def test_remat_gives_the_same_loss_and_adapter_gradients():
  """`model.remat` recomputes each scanned block in the backward pass:
  the same numbers, fewer activations held; and it is not ignored: only
  the remat=True program holds a remat (`jax.checkpoint`) primitive."""
  from jax.extend import core

  from ttt import inner_loop as il

  def primitives(jaxpr) -> set[str]:
    """Names of the primitives in `jaxpr` and all its sub-jaxprs."""
    return {e.primitive.name for e in jaxpr.eqns}.union(
        *(primitives(sub) for sub in core.subjaxprs(jaxpr)))

  def remats(names) -> set[str]:
    """The remat primitives among `names`: JAX calls it 'checkpoint' before
    differentiation, 'remat2' in the differentiated program (JAX 0.10)."""
    return {n for n in names if n.startswith(("checkpoint", "remat"))}

  def loss_and_grads(remat):
    """((loss, adapter gradients), the names of the program's primitives)."""
    cfg = dict(LLM_TINY, vocab_size=tokens.VOCAB_SIZE, dtype="float32",
               scan_layers=True, remat=remat)
    graphdef, adapters, base = lora.split(M.make_model(
        cfg, dict(mode="lora", rank=4), jax.random.key(0)))
    adapters = jax.tree.map(lambda x: x + 0.05, adapters)  # B != 0
    toks = jnp.asarray(np.random.default_rng(0).integers(0, 13, (2, 24)),
                       jnp.int32)
    batch = data.TTTDataset(toks, jnp.ones_like(toks),
                            jnp.broadcast_to(jnp.arange(24), (2, 24)),
                            jnp.zeros((2, 24, 3), jnp.int32),
                            jnp.ones(2, bool), jnp.ones_like(toks))
    fn = jax.value_and_grad(lambda a: il.sequence_loss(
        lora.merge(graphdef, a, base), batch)[0])
    return jax.jit(fn)(adapters), primitives(jax.make_jaxpr(fn)(adapters).jaxpr)

  (l0, g0), plain = loss_and_grads(False)
  (l1, g1), remat = loss_and_grads(True)
  assert remats(remat) and not remats(plain), (remats(remat), remats(plain))
  np.testing.assert_allclose(l0, l1, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  with pytest.raises(ValueError, match="model.remat needs"):
    M.ModelConfig(**dict(LLM_TINY, remat=True)).validate()
