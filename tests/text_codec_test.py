"""MARC's text codec (ttt.text.TextCodec behind ttt.codec): the chat
template, the loss mask, prompts, decoding, and the main job end to end.

A byte-level BPE tokenizer is trained here, offline, on MARC-format ARC text
with Llama-3's special tokens, next to a `tokenizer_config.json` holding a
Llama-3-style Jinja chat template written for the test; the model is a tiny
random Llama snapshot (`conftest.build_hf_snapshot`).
"""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from configs import arc_ttt
from ttt import arc, codec, data, errors, text, views
from ttt import job as job_lib

LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>",
                   "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
# Llama-3's template, written out: BOS, then each message's header, its
# content trimmed and <|eot_id|>; the assistant header to generate.
TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
VOCAB = 384

G1 = np.array([[0, 1], [2, 3]], np.int8)
G2 = np.array([[4, 5, 6]], np.int8)
G3 = np.array([[7], [8]], np.int8)
G4 = np.array([[9, 0]], np.int8)
SMALL = arc.Task("small", [(G1, G2), (G3, G4), (G2, G3)], [(G4, G1)])


def _train_tokenizer(directory):
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  corpus = []
  for t in arc.load_arc(1, "training")[:40]:
    for style in ("new", "default"):
      messages, answer = text.marc_messages(t, style)
      corpus += [m["content"] for m in messages] + [answer["content"]]
  trainer = trainers.BpeTrainer(
      vocab_size=VOCAB, special_tokens=LLAMA3_SPECIALS,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
      show_progress=False)
  tok.train_from_iterator(corpus, trainer)
  tok.save(os.path.join(directory, "tokenizer.json"))
  with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
    json.dump(dict(bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
                   chat_template=TEMPLATE), f)


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory):
  pytest.importorskip("torch")
  pytest.importorskip("transformers")
  pytest.importorskip("jinja2")
  from conftest import build_hf_snapshot

  path = build_hf_snapshot(tmp_path_factory.mktemp("marc") / "snap", "Llama",
                           dict(vocab_size=VOCAB, tie_word_embeddings=True))
  _train_tokenizer(path)
  return path


@pytest.fixture(scope="module")
def tc(snapshot):
  return text.open_codec(snapshot, "new")


def _expected_render(messages, generate=False):
  """Llama-3's chat format, written from its rules."""
  out = "<|begin_of_text|>" + "".join(
      f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n"
      f"{m['content'].strip()}<|eot_id|>" for m in messages)
  return out + ("<|start_header_id|>assistant<|end_header_id|>\n\n"
                if generate else "")


def test_the_template_and_the_fallback_render_llama3(tc):
  messages, answer = text.marc_messages(SMALL, "new")
  chat = messages + [answer]
  assert tc.render(chat) == _expected_render(chat)
  assert tc.render(messages, add_generation_prompt=True) == \
      _expected_render(messages, True)
  fallback = text.make_template({}, "<|begin_of_text|>")
  assert fallback(chat) == _expected_render(chat)
  assert fallback(messages, True) == _expected_render(messages, True)
  # the user message's trailing space is stripped, as MARC's models saw it
  assert "[[9 0]] -><|eot_id|>" in tc.render(messages)
  # Llama-3.1-style templates print a date: fixed, so rows do not change
  dated = text.make_template(dict(chat_template=(
      "{% if strftime_now is defined and date_string is not defined %}"
      "{{ strftime_now('%d %b %Y') }}{% else %}{{ date_string }}{% endif %}"
      "{{ messages[0]['content'] }}")))
  assert dated([{"role": "user", "content": "x"}]) == "26 Jul 2024x"


def _refused(render, *want):
  """The one-line InputError of rendering SMALL's chat, naming `want`."""
  messages, answer = text.marc_messages(SMALL, "new")
  with pytest.raises(errors.InputError) as e:
    render(messages + [answer])
  message = str(e.value)
  assert "\n" not in message and all(w in message for w in want), message
  return message


def test_a_template_that_drops_the_task_or_renders_nothing_is_refused(
    tmp_path):
  """A rendering that is empty or leaves out a message's text is refused,
  naming where the template came from: the snapshot's file, the GGUF
  metadata, or (make_template's caller) the origin given."""
  pytest.importorskip("jinja2")
  from conftest import tiny_snapshot, write_gguf

  empty = "{% if messages is none %}x{% endif %}"
  drop = "{% for m in messages %}<{{ m['role'] }}>{% endfor %}"
  _refused(text.make_template(dict(chat_template=empty)), "chat_template",
           "renders an empty prompt")
  _refused(text.make_template(dict(chat_template=drop)), "chat_template",
           "leaves out the system message's text")
  # only the answer dropped: the prompt renders, the row does not
  partial = ("{% for m in messages %}{% if m['role'] != 'assistant' %}"
             "{{ m['content'] }}{% endif %}{% endfor %}")
  render = text.make_template(dict(chat_template=partial))
  assert render(text.marc_messages(SMALL)[0])
  _refused(render, "leaves out the assistant message's text")
  # opened as the codec: refused at once, naming the file
  path = tiny_snapshot(tmp_path / "snap")
  file = os.path.join(path, "tokenizer_config.json")
  with open(file, "w") as f:
    json.dump(dict(bos_token="<s>", eos_token="</s>", chat_template=drop), f)
  with pytest.raises(errors.InputError, match="leaves out") as e:
    text.open_codec(path)
  assert f"{file} (chat_template)" in str(e.value)
  gguf_file = write_gguf(tmp_path / "tiny.gguf", chat_template=empty)
  with pytest.raises(errors.InputError, match="empty prompt") as e:
    text.open_codec(gguf_file)
  assert f"{gguf_file} (GGUF metadata tokenizer.chat_template)" in str(
      e.value)


@pytest.mark.parametrize("source, want", [
    ("{{ raise_exception('Conversation roles must alternate') }}",
     "fails to render (TemplateError: Conversation roles must alternate)"),
    ("{{ messages[0]['content'] + 1 }}", "fails to render (TypeError"),
    ("{% for m in messages %}{{ m['content'] }}", "does not parse"),
    ("{{ messages | no_such_filter }}",
     "does not parse (line 1): No filter named 'no_such_filter'"),
    # nested loops: 4 million iterations, 10 million characters
    ("{% for a in range(2000) %}{% for b in range(2000) %}{% endfor %}"
     "{% endfor %}{% for m in messages %}{{ m['content'] }}{% endfor %}",
     "runs more than 1,000,000 loop iterations"),
    ("{% for a in range(1000) %}{% for b in range(1000) %}0123456789"
     "{% endfor %}{% endfor %}{% for m in messages %}{{ m['content'] }}"
     "{% endfor %}", "writes more than 4,194,304 characters"),
    ("{{ 'x' * 100000000 }}", "repeats a sequence 100,000,000 times"),
])
def test_a_broken_or_runaway_template_is_one_line(source, want):
  """A template that raises, does not parse, names an unknown filter, or
  runs past the rendering bounds (nested loops, a huge output): one
  InputError naming the template's source, in bounded time."""
  pytest.importorskip("jinja2")

  try:
    render = text.make_template(dict(chat_template=source))
  except errors.InputError as e:  # a parse error: refused when made
    assert want in str(e) and str(e).startswith("chat_template: ")
    assert "\n" not in str(e)
    return
  assert _refused(render, want).startswith("chat_template: ")


def test_named_templates_need_a_default_one():
  """Hugging Face's list of named templates: 'default' is rendered; a
  list without one is refused, listing the names (no setting picks
  another), instead of falling back to Llama-3's headers."""
  pytest.importorskip("jinja2")
  named = [dict(name="tool_use", template="tools"),
           dict(name="rag", template="rag")]
  with pytest.raises(errors.InputError, match=(
      "named chat templates 'tool_use', 'rag' and no 'default' one")):
    text.make_template(dict(chat_template=named))
  render = text.make_template(dict(chat_template=named + [dict(
      name="default", template=TEMPLATE)], bos_token="<|begin_of_text|>"))
  messages, answer = text.marc_messages(SMALL, "new")
  assert render(messages + [answer]) == _expected_render(messages + [answer])
  with pytest.raises(errors.InputError, match="not a Jinja template"):
    text.make_template(dict(chat_template=7))


def _runs(ids, mask):
  """The masked tokens as contiguous runs of ids."""
  out, cur = [], []
  for i, m in zip(ids, mask, strict=True):
    if m:
      cur.append(int(i))
    elif cur:
      out.append(cur)
      cur = []
  return out + ([cur] if cur else [])


@pytest.mark.parametrize("loss, first", [("marc", 1), ("outputs", 0),
                                         ("query", None)])
def test_the_loss_mask_covers_exactly_marcs_tokens(tc, loss, first):
  row = tc.encode_task(SMALL, 512, loss=loss)
  ids, mask = row.tokens[:row.length], row.mask[:row.length]
  assert (row.tokens[row.length:] == tc.pad).all()
  assert not row.mask[row.length:].any()
  assistant = ("<|start_header_id|>assistant<|end_header_id|>\n\n"
               "[[0 1]\n [2 3]]#<|eot_id|>")
  outputs = [" [[4 5 6]]#", " [[9 0]]#", " [[7]\n [8]]#"]  # after ' ->'
  want = ([] if first is None else outputs[first:]) + [assistant]
  got = [tc.tokenizer.decode(r, skip_special_tokens=False)
         for r in _runs(ids, mask)]
  assert got == want
  # the whole row is the rendered chat, tokenised as one string
  assert tc.tokenizer.decode(ids.tolist(), skip_special_tokens=False) == \
      _expected_render(list(text.marc_messages(SMALL)[0])
                       + [text.marc_messages(SMALL)[1]])
  assert row.length == tc.sequence_length(SMALL)


def test_prompt_is_the_chat_with_the_generation_header(tc):
  p = tc.encode_task(SMALL, 512, include_answer=False)
  messages, _ = text.marc_messages(SMALL)
  assert tc.tokenizer.decode(p.tokens[:p.length].tolist(),
                             skip_special_tokens=False) == \
      _expected_render(messages, True)
  assert not p.mask.any()
  assert p.length == tc.sequence_length(SMALL, include_answer=False)
  assert (p.positions == np.arange(512)).all() and not p.coords.any()


def test_decoding_stops_at_the_footer_or_end_of_turn(tc):
  eot = tc.tokenizer.token_to_id("<|eot_id|>")
  answer = tc.tokenizer.encode("[[0 1]\n [2 3]]#", add_special_tokens=False)
  ids = list(answer.ids)
  assert tc.stop[ids[-1]]  # the token writing '#' stops the answer
  assert np.array_equal(tc.decode_grid(ids + [7, 8, 9]), G1)
  no_footer = tc.tokenizer.encode("[[4 5 6]]", add_special_tokens=False).ids
  assert tc.stop[eot] and not tc.stop[no_footer].any()
  assert np.array_equal(tc.decode_grid(no_footer + [eot, 11]), G2)
  assert np.array_equal(tc.decode_grid(no_footer + [tc.pad] * 3), G2)
  ragged = tc.tokenizer.encode("[[1 2]\n [3]]#", add_special_tokens=False)
  assert tc.decode_grid(ragged.ids) is None
  assert tc.decode_grid([eot]) is None and tc.decode_grid([]) is None


def test_ttt_rows_are_augmented_deduplicated_and_fit_the_bound(tc):
  cfg = data.DataConfig(codec="text", max_len=1024, num_sequences=12,
                        loss="marc")
  task = arc.load_arc(1, "evaluation")[0]
  stats = {}
  ds = tc.build_rows(task, cfg, None, stats)
  assert ds.tokens.shape == (12, 1024) and stats["rows"] == ds.valid.sum() > 1
  real = (ds.tokens != tc.pad).sum(1)[ds.valid]
  assert real.max() <= tc.row_length_bound(task, cfg)
  assert len({ds.tokens[n].tobytes() for n in np.flatnonzero(ds.valid)}) == \
      ds.valid.sum()
  # every row decodes to a chat whose query answer (the assistant turn) is
  # a demonstration's output under some group element: a valid grid
  bos = tc.tokenizer.token_to_id("<|begin_of_text|>")
  assert (ds.tokens[ds.valid, 0] == bos).all()
  for n in np.flatnonzero(ds.valid):
    body = ds.tokens[n][ds.mask[n].astype(bool)]
    written = tc.tokenizer.decode(body.tolist(), skip_special_tokens=True)
    assert text.parse_answer(written.split("assistant\n\n")[-1]) is not None


def test_dfs_rank_sort_equals_the_comparison_matrix():
  from ttt.decoders import dfs

  rng = np.random.default_rng(0)
  for vocab in (16, 1500):
    key = jnp.asarray(rng.choice([-1.0, -2.0, -0.5, -np.inf], vocab))
    push = jnp.asarray(rng.random(vocab) < 0.3) & jnp.isfinite(key)
    ids = jnp.arange(vocab)
    below = (key[None, :] < key[:, None]) | (
        (key[None, :] == key[:, None]) & (ids[None, :] < ids[:, None]))
    want = np.asarray((below & push[None, :]).sum(1))[np.asarray(push)]
    got = np.asarray(dfs._rank(push, key, ids))[np.asarray(push)]
    assert (got == want).all()


def test_config_checks():
  c = arc_ttt.get_config("marc")
  job = job_lib.parse(c)
  assert (job.data.codec, job.data.text_style, job.data.loss) == \
      ("text", "new", "marc")
  for field, value, match in [("data.codec", "words", "data.codec"),
                              ("data.text_style", "old", "style"),
                              ("decode.method", "vgb", "grammar")]:
    c = arc_ttt.get_config("marc")
    group, name = field.split(".")
    c[group][name] = value
    with pytest.raises(ValueError, match=match):
      job_lib.parse(c)
  with pytest.raises(Exception, match="pretrained model's tokenizer"):
    codec.make(job.data, "")


def _config(snapshot, **decode):
  c = arc_ttt.get_config("marc")
  c.init_from = snapshot
  c.model.dtype = "float32"
  c.run.update(task_ids=("66e6c45b", "00576224"), chunk_size=2,
               fixed_shapes=True, length_bucket=64)
  c.adapter.rank = 4
  c.data.update(max_len=1024, num_sequences=4, extra_augmenters=())
  c.ttt.steps = 2
  c.views.update(orders=0, leave_one_out=False, transforms=("transpose",))
  c.decode.update({**dict(method="greedy", max_new_tokens=12), **decode})
  c.vote.method = "product_of_experts"  # rescoring renders through the codec
  return c


def test_the_main_job_runs_in_marcs_format_compiling_once(snapshot, tc,
                                                          tmp_path):
  from conftest import run_counting_compiles, stage_programs

  c = _config(snapshot)
  names = stage_programs(c)  # the program names (the codec's or not)
  assert {k.split(".")[0] for k in names} == {"adapt", "decode", "select"}
  # the prompts are MARC's chat: a view's prompt decodes to it
  task = next(t for t in arc.load_arc(1, "evaluation") if t.id == "66e6c45b")
  view = views.make_views(len(task.train), c.views)[1]  # transpose
  p = views.prompt(task, 0, view, 1024, codec.make(job_lib.parse(c).data,
                                                   snapshot))
  messages, _ = text.marc_messages(views.view_task(task, 0, view))
  assert tc.tokenizer.decode(p.tokens[:p.length].tolist(),
                             skip_special_tokens=False) == \
      _expected_render(messages, True)
  s, counts = run_counting_compiles(c, str(tmp_path))
  assert s["tasks"] == 2 and s["decode"]["model_calls"] > 0
  for stage, program in names.items():
    assert counts[f"jit({program})"] == 1, (stage, program, counts)
  res = json.loads((tmp_path / "results.json").read_text())
  assert all(np.isfinite(t["ttt"]["final_loss"]) for t in res["tasks"])
  assert "full vocabulary" in (tmp_path / "report.md").read_text()


def test_dfs_without_a_grammar_runs_on_text(snapshot, tmp_path):
  from ttt import pipeline

  c = _config(snapshot, method="dfs", min_prob=0.3, max_candidates=2,
              max_steps=6)
  c.run.task_ids = ("66e6c45b",)
  c.ttt.enabled = False
  c.views.transforms = ()
  c.vote.method = "hierarchical"
  s = pipeline.run(c, str(tmp_path))
  assert s["tasks"] == 1 and s["decode"]["model_calls"] > 0
  res = json.loads((tmp_path / "results.json").read_text())
  assert [len(t["tests"]) for t in res["tasks"]] == [1]
