"""The (task, model) mesh (`run.model_parallel`, `ttt.sharding`): the base
really is split over `model`, and the main job's records do not depend on
the mesh -- (8,1), (4,2), (2,4), (1,8) -- for the shipped model, a GQA
Llama snapshot whose KV heads do not divide the model axis, and the 'full'
adapter modes."""

import json
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import (
  build_hf_snapshot,
  run_counting_compiles,
  stage_programs,
  tiny_job_config,
  tiny_llm_job_config,
)

from ttt import pipeline, sharding
from ttt import weights as weights_lib

# model_parallel: (8,1), (2,4), (1,8); (4,2) in the GQA snapshot's test
MESHES = (1, 4, 8)


def _shipped_config(model_parallel: int, **run):
  """The shipped model (4 heads, MLP 384) on 2 tasks, 2 TTT steps."""
  from configs import arc_ttt

  c = tiny_job_config(num_tasks=2, chunk_size=2, **run)
  c.init_from = arc_ttt.get_config().init_from
  c.run.model_parallel = model_parallel
  return c


def _records(workdir):
  res = json.loads((workdir / "results.json").read_text())
  sub = json.loads((workdir / "submission.json").read_text())
  return res["tasks"], sub


def _assert_same(a, b, what):
  (ta, sa), (tb, sb) = a, b
  assert sa == sb, what  # identical submissions
  for x, y in zip(ta, tb, strict=True):
    assert x["id"] == y["id"]
    assert x["tests"] == y["tests"], what  # attempts, candidates, views
    assert x["ttt"]["rows"] == y["ttt"]["rows"] > 0
    np.testing.assert_allclose(x["ttt"]["final_loss"],
                               y["ttt"]["final_loss"], atol=1e-5,
                               err_msg=what)


def test_the_base_is_split_over_the_model_axis(caplog):
  """Under (2,4) each base leaf holds the shard its rule gives -- q/k/v and
  gate/up by columns, o/down by rows, the embedding by width; the head of
  16 tokens whole -- and a leaf
  whose heads do not divide (a GQA model's 2 KV heads over 4 devices) stays
  whole on every device, said once in the log."""
  from configs import arc_ttt
  from ttt import model as model_lib

  mesh = sharding.make_mesh(model_parallel=4)
  assert dict(mesh.shape) == {"task": 2, "model": 4}
  job_cfg = arc_ttt.get_config()
  adapter = model_lib.AdapterConfig(mode="lora", rank=4)
  w, cfg = weights_lib.load(job_cfg.init_from, model_lib.ModelConfig(),
                            adapter, 0)
  placed = weights_lib.place(w, mesh, None, cfg)
  d, m = cfg.d_model, cfg.mlp_dim
  want = {("q", "kernel"): (d, d // 4), ("k", "kernel"): (d, d // 4),
          ("v", "kernel"): (d, d // 4), ("o", "kernel"): (d // 4, d),
          ("gate", "kernel"): (d, m // 4), ("up", "kernel"): (d, m // 4),
          ("down", "kernel"): (m // 4, d),
          ("embed", "embedding"): (cfg.vocab_size, d // 4)}
  seen = set()
  for path, x in jax.tree_util.tree_flatten_with_path(placed.base)[0]:
    names = tuple(k.key for k in path
                  if isinstance(k, jax.tree_util.DictKey))
    shard = x.addressable_shards[0].data.shape
    key = names[-2:]
    if key in want:
      seen.add(key)
      assert shard[-2:] == want[key], (names, shard)
      assert not x.sharding.is_fully_replicated
    else:  # the norms, the head over 16 tokens
      assert x.sharding.is_fully_replicated, names
  assert seen == set(want)
  # a LoRA factor splits on its base matrix's split side, the other not
  for path, x in jax.tree_util.tree_flatten_with_path(placed.template)[0]:
    names = tuple(k.key for k in path
                  if isinstance(k, jax.tree_util.DictKey))[-2:]
    split = names in (("q", "lora_b"), ("k", "lora_b"), ("v", "lora_b"),
                      ("gate", "lora_b"), ("up", "lora_b"),
                      ("o", "lora_a"), ("down", "lora_a"))
    assert x.sharding.is_fully_replicated != split, names

  gqa = model_lib.ModelConfig(num_layers=1, d_model=64, num_heads=4,
                              num_kv_heads=2, mlp_dim=128)
  model = model_lib.make_model(gqa, adapter, jax.random.key(0))
  from ttt import lora
  _, _, base = lora.split(model)
  caplog.set_level(logging.WARNING)
  placed = sharding.place_params(base, mesh, gqa)
  kv = [x for p, x in jax.tree_util.tree_flatten_with_path(placed)[0]
        if any(getattr(k, "key", None) in ("k", "v") for k in p)]
  assert kv and all(x.sharding.is_fully_replicated for x in kv)
  assert "kv_heads = 2 does not divide by run.model_parallel = 4" in \
      caplog.text


def test_the_main_job_is_the_same_on_every_mesh(tmp_path):
  """The shipped model's TTT losses, candidates and submission under
  (2,4) and (1,8) (its 4 heads do not divide 8: q/k/v/o stay
  whole there, the MLP is split) equal the 1-D mesh's run; under (2,4)
  every stage's programs compile once."""
  runs = {}
  for mp in MESHES:
    c = _shipped_config(mp)
    wd = tmp_path / f"mp{mp}"
    if mp == 4:
      programs = stage_programs(c)
      s, names = run_counting_compiles(c, str(wd))
      for stage, program in programs.items():
        assert names[f"jit({program})"] == 1, (stage, program, names)
    else:
      s = pipeline.run(c, str(wd))
    assert s["tasks"] == 2
    runs[mp] = _records(wd)
  assert any(t["tests"][0]["candidates"] for t in runs[1][0])
  for mp in MESHES[1:]:
    _assert_same(runs[1], runs[mp], f"model_parallel={mp}")


def test_full_fine_tuning_is_the_same_on_a_2d_mesh(tmp_path):
  """Per-task copies of every weight (and a fresh task token: 'full+prefix'
  covers 'full''s path) follow the base's split -- adapters [T, ...] over
  task x model: the same records as the 1-D mesh."""
  runs = []
  for mp in (1, 4):
    c = _shipped_config(mp)
    c.adapter.mode = "full+prefix"
    c.adapter.prefix_len = 1
    pipeline.run(c, str(tmp_path / f"mp{mp}"))
    runs.append(_records(tmp_path / f"mp{mp}"))
  _assert_same(*runs, "full+prefix")


def test_a_gqa_snapshot_is_the_same_on_2d_meshes(tmp_path):
  """A Llama snapshot with 4 query and 2 KV heads (tied embeddings): at
  model_parallel=2 the KV heads split, at 4 they stay whole on each device
  (the documented behaviour); both runs equal the 1-D mesh's."""
  pytest.importorskip("torch")
  pytest.importorskip("transformers")
  snap = build_hf_snapshot(tmp_path / "snap", "Llama",
                           dict(num_attention_heads=4, num_key_value_heads=2,
                                tie_word_embeddings=True))
  runs = []
  for mp in (1, 2, 4):
    c = tiny_llm_job_config(snap, chunk_size=2, model_parallel=mp)
    c.vote.method = "hierarchical"
    pipeline.run(c, str(tmp_path / f"mp{mp}"))
    runs.append(_records(tmp_path / f"mp{mp}"))
  for mp, r in zip((2, 4), runs[1:], strict=True):
    _assert_same(runs[0], r, f"model_parallel={mp}")


def test_model_parallel_is_checked():
  from ttt import job as job_lib

  c = tiny_job_config()
  c.run.model_parallel = 3
  job = job_lib.parse(c)  # parses; the mesh refuses: 3 does not divide 8
  with pytest.raises(ValueError, match="model_parallel=3 must divide the 8"):
    sharding.make_mesh(model_parallel=job.run.model_parallel)
  c.run.model_parallel = -1
  with pytest.raises(ValueError, match="model_parallel"):
    job_lib.parse(c)


def test_continued_pretraining_is_the_same_on_a_2d_mesh(tmp_path):
  """Continued pretraining of the shipped model (`pretrain.init_from`)
  with its weights and AdamW's moments split over `model` (a (4,2) mesh):
  the losses and the exported weights equal the data-parallel run's, the
  step compiles once, and a run stopped and resumed on the 2-D mesh ends
  where the uninterrupted one does."""
  import collections

  import ml_collections

  from configs import arc_ttt
  from ttt import ckpt, metrics
  from ttt import pretrain as pt

  def config(mp, **pre):
    p = dict(steps=3, batch_size=8, max_len=128, lr=1e-3, warmup_steps=1,
             eval_every=0, checkpoint_every=1, log_every=1, heldout_tasks=4,
             prefetch=2, init_from=arc_ttt.get_config().init_from,
             model_parallel=mp)
    p.update(pre)
    return ml_collections.ConfigDict(dict(
        model=ckpt.load_weights_config(p["init_from"])["model"],
        pretrain=p))

  compiles = collections.Counter()

  class Log(logging.Handler):
    def emit(self, record):
      text = record.getMessage()
      if text.startswith("Compiling jit(train_step)"):
        compiles["train_step"] += 1

  logger = logging.getLogger("jax")
  handler = Log()
  logger.addHandler(handler)
  jax.config.update("jax_log_compiles", True)
  try:
    pt.train_and_evaluate(config(1), str(tmp_path / "one"))
    assert compiles["train_step"] == 1
    pt.train_and_evaluate(config(2), str(tmp_path / "two"))
    assert compiles["train_step"] == 2
  finally:
    jax.config.update("jax_log_compiles", False)
    logger.removeHandler(handler)
  pt.train_and_evaluate(config(2, stop_after_steps=2), str(tmp_path / "cut"))
  pt.train_and_evaluate(config(2), str(tmp_path / "cut"))

  def losses(name):
    return [r["loss"] for r in metrics.read(str(tmp_path / name /
                                                "metrics.jsonl"))
            if "loss" in r]

  np.testing.assert_allclose(losses("one"), losses("two"), rtol=1e-5)
  np.testing.assert_allclose(losses("two"), losses("cut"), rtol=1e-6)
  shape = config(1)
  from flax import nnx

  from ttt import model as model_lib
  template = nnx.split(model_lib.make_model(shape.model, None,
                                            jax.random.key(0)), nnx.Param)[1]
  a = ckpt.load_weights(str(tmp_path / "one" / "model"), template)
  b = ckpt.load_weights(str(tmp_path / "two" / "model"), template)
  c = ckpt.load_weights(str(tmp_path / "cut" / "model"), template)
  for x, y, z in zip(jax.tree.leaves(a), jax.tree.leaves(b),
                     jax.tree.leaves(c), strict=True):
    np.testing.assert_allclose(np.asarray(x, np.float32),
                               np.asarray(y, np.float32), atol=1e-2)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(z))


@pytest.mark.parametrize("vocab", [0, 2048])
def test_the_dfs_step_on_split_logits_equals_whole_ones(vocab):
  """One DFS expansion and pop of 4 views on logits split over a (2,4)
  mesh's `model` axis (a full LLM vocabulary's head is split so) equal the
  whole logits' -- for the cells' grammar (vocab 0: the cells' codec; its
  mask was once built with chained `.at[].set`s, which XLA's partitioner
  wrote wrongly under vmap) and a 2,048-token codec without a grammar."""
  import types

  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P

  from ttt import codec as codec_lib
  from ttt.decoders import dfs

  codec = (codec_lib.default(None) if not vocab else types.SimpleNamespace(
      vocab_size=vocab, grammar=False, pad=0,
      stop_tokens=np.isin(np.arange(vocab), [5, 7])))
  width = codec.vocab_size
  mesh = sharding.make_mesh(model_parallel=4)
  v, n, c, room = 4, 24, 8, 12

  def state(logits):
    z = jnp.zeros(v, jnp.int32)
    return dfs._Search(  # noqa: SLF001
        depth=z, logits=logits, greedy=jnp.ones(v, bool),
        path=jnp.full((v, n), codec.pad, jnp.int32),
        grammar=jnp.zeros((v, n + 1, 3), jnp.int32),
        logp=jnp.zeros((v, n + 1)), stack=jnp.zeros((v, room, 2), jnp.int32),
        stack_logp=jnp.zeros((v, room)), stack_greedy=jnp.zeros((v, room),
                                                               bool),
        size=z, answers=jnp.full((v, c, n), codec.pad, jnp.int32),
        answer_logp=jnp.full((v, c), -jnp.inf), found=z,
        overflow=jnp.zeros(v, bool), steps=z, done=jnp.zeros(v, bool))

  step = jax.jit(lambda lg: jax.vmap(lambda s: dfs._pop(  # noqa: SLF001
      dfs._expand(s, np.log(0.1), n, codec), 0))(state(lg)))  # noqa: SLF001
  logits = np.zeros((v, width), np.float32)
  logits[:, :12] = np.random.default_rng(0).normal(size=(v, 12)) * 2 + 4
  whole = step(jax.device_put(logits, NamedSharding(mesh, P())))
  split = step(jax.device_put(logits, NamedSharding(mesh, P(None, "model"))))
  for x, y in zip(jax.tree.leaves(whole), jax.tree.leaves(split),
                  strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6)


def test_auto_model_parallel_picks_the_smallest_axis_that_fits():
  """`run.model_parallel=0`: XLA's per-device figure of the TTT program
  falls as the model axis grows; auto takes the smallest axis under the
  budget (1 when the whole base fits), and refuses -- naming the figure --
  when even the largest does not."""
  import types

  from ttt import errors, memory
  from ttt import model as model_lib
  from ttt.inner_loop import TTTConfig

  groups = types.SimpleNamespace(
      model=model_lib.ModelConfig(num_layers=1, d_model=128, num_heads=8,
                                  mlp_dim=256, vocab_size=2048,
                                  dtype="float32", rope="1d"),
      adapter=model_lib.AdapterConfig(rank=4), ttt=TTTConfig(steps=1,
                                                             batch_size=1))
  m, tried = memory.fit_model_axis(groups, 2, 64, memory_gb=1000.0)
  assert m == 1 and list(tried) == [1]
  one = tried[1]
  shared = len(jax.local_devices())
  # a budget between the figures at 2 and 1 devices per model group
  m, tried = memory.fit_model_axis(groups, 2, 64, memory_gb=(
      memory.SLACK * shared * one * 0.99))
  assert m > 1 and tried[m] < one, tried
  with pytest.raises(errors.InputError, match="no model axis fits"):
    memory.fit_model_axis(groups, 2, 64, memory_gb=1e-4)
