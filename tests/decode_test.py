"""Tests for ttt.decoders (the kernels and methods) and ttt.views."""

import functools
import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ttt import arc, augment, data, lora, select, tokens, views
from ttt import model as M
from ttt.decoders import common as decode
from ttt.decoders import dfs as dfs_lib
from ttt.decoders import sampled
from ttt.decoders import vgb as vgb_lib
from ttt.decoders import vgb_lifted as vgb_lifted_lib

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
  dec = sampled.make_program(graphdef, max_new)
  stack = lambda x: jnp.asarray(x)[None]  # noqa: E731
  out = dec(base, jax.tree.map(lambda x: x[None], adapters),
            jnp.zeros(1, jnp.int32), stack(p), stack(lengths), stack(coords),
            stack(segs), jnp.ones((1, len(vs)), bool),
            jax.random.split(key, 1))
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


def test_row_scorer_equals_the_training_loss_and_ranks_answers():
  """The candidate scorer is the inner loop's NLL (one kernel), per row,
  under each row's adapter slot."""
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
  scorer = select.make_row_scorer(graphdef)
  s = np.asarray(scorer(base, jax.tree.map(lambda x: x[None], adapters),
                        jnp.zeros(3, jnp.int32), batch))
  merged = lora.merge(graphdef, adapters, base)
  for r in range(2):
    loss, count = inner_loop.sequence_loss(
        merged, jax.tree.map(lambda x, r=r: x[r:r + 1], batch))
    np.testing.assert_allclose(s[r], -float(loss) * float(count), rtol=1e-5)
  assert s[0] != s[1] and s[2] == -np.inf
  # two adapter slots: row r scored under slot r % 2
  two = jax.tree.map(lambda x: jnp.stack([x, jnp.zeros_like(x)]), adapters)
  rs = np.asarray(scorer(base, two, jnp.array([0, 1, 0]), batch))
  np.testing.assert_allclose(rs[[0, 2]], s[[0, 2]], rtol=1e-5)
  # a row's score does not depend on the rows scored with it (the main job
  # scores long rows a few per call): bit for bit
  one = [np.asarray(scorer(
      base, two, jnp.array([k % 2]),
      jax.tree.map(lambda x, k=k: x[k:k + 1], batch)))[0] for k in range(3)]
  np.testing.assert_array_equal(one, rs)
  zero = jax.tree.map(lambda x: jnp.zeros_like(x)[None], adapters)
  s1 = np.asarray(scorer(base, zero, jnp.zeros(3, jnp.int32), batch))
  np.testing.assert_allclose(rs[1], s1[1], rtol=1e-5)


def test_slot_program_equals_the_one_query_kernel_per_query():
  """`with_slot` (vmapped, adapters gathered by slot) == the kernel run on
  each query alone under its own adapter."""
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
  keys = jax.random.split(key, 2)
  got = sampled.make_program(graphdef, 10)(base, stacked, slots, *args, keys)
  one = jax.jit(sampled.make_query_fn(graphdef, 10, 0.0))
  ref = [one(base, ad[int(slots[q])], *(a[q] for a in args), keys[q])
         for q in range(2)]
  np.testing.assert_array_equal(np.asarray(got), np.stack(ref))
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
          jnp.zeros(1, jnp.int32),
          *(jnp.asarray(x)[None] for x in (p, lengths, coords, segs)),
          jnp.ones((1, len(vs)), bool))
  keys = jax.random.split(jax.random.key(0), 1)
  greedy = np.asarray(sampled.make_program(graphdef, 10)(*args, keys))
  cold = sampled.make_program(graphdef, 10, 1e-4)
  np.testing.assert_array_equal(np.asarray(cold(*args, keys)), greedy)
  hot = sampled.make_program(graphdef, 10, 5.0)
  a = np.asarray(hot(*args, keys))
  np.testing.assert_array_equal(np.asarray(hot(*args, keys)), a)  # keyed
  b = np.asarray(hot(*args, jax.random.split(jax.random.key(1), 1)))
  assert (a != b).any()
  assert np.isin(a, np.flatnonzero(decode.ANSWER_TOKENS).tolist()
                 + [tokens.PAD]).all()


def _grammar_ok(gen, tok, max_new):
  """A partial answer stays well-formed (an independent reading of the
  `tokens.decode_grid` rules)."""
  if len(gen) >= max_new:
    return False
  rows, col = 0, 0
  width = None
  for t in gen:
    if t == tokens.ROW_END:
      width = col if width is None else width
      rows, col = rows + 1, 0
    else:
      col += 1
  if tok < 10:
    return rows < arc.MAX_SIDE and col < (width or arc.MAX_SIDE)
  if tok == tokens.ROW_END:
    return col >= 1 and (width is None or col == width)
  return tok == tokens.EOS and col == 0 and rows >= 1


def _reference_enumeration(model, prompt, length, coords, segment, max_new,
                           min_prob):
  """Every well-formed answer with p >= min_prob (plus the constrained
  greedy one), by recursion with a full forward pass per node."""
  found = {}
  size = length + max_new  # one padded shape: causal, so padding is inert
  forward = jax.jit(lambda t, c, n: model(t[None], coords=c[None])[0, n])

  def rec(toks, crd, gen, row, col, lp, greedy):
    t = np.full(size, tokens.PAD, np.int32)
    c = np.zeros((size, 3), np.int32)
    t[:len(toks)], c[:len(crd)] = toks, crd
    logits = forward(t, c, len(toks) - 1)
    lps = np.asarray(jax.nn.log_softmax(logits))
    ok = [t for t in range(tokens.VOCAB_SIZE) if _grammar_ok(gen, t, max_new)]
    best = max(ok, key=lambda t: lps[t]) if ok else None
    for t in ok:
      child = lp + lps[t]
      if child < np.log(min_prob) and not (greedy and t == best):
        continue
      if t == tokens.EOS:
        found[tuple(gen + [t])] = child
        continue
      tc, r2, c2 = decode.answer_coords(jnp.int32(t), jnp.int32(row),
                                        jnp.int32(col), jnp.int32(segment))
      rec(toks + [t], crd + [tuple(np.asarray(tc).tolist())], gen + [t],
          int(r2), int(c2), child, greedy and t == best)

  rec(list(prompt[:length]), [tuple(c) for c in coords[:length]], [], 0, 0,
      0.0, True)
  return found


def _peaked_model(seed=3):
  """A random model whose ROW_END and EOS compete with a colour."""
  key = jax.random.key(seed)
  model = M.make_model(TINY, dict(mode="lora", rank=4), key)
  w = model.head.kernel[...]
  noise = 0.3 * jax.random.normal(jax.random.fold_in(key, 9), w.shape[:1])
  w = w.at[:, tokens.ROW_END].set(w[:, 3] + noise)
  model.head.kernel[...] = 4.0 * w.at[:, tokens.EOS].set(w[:, 3] - noise)
  return model


def test_dfs_finds_exactly_the_answers_above_the_threshold(min_prob=0.02):
  """Against a recursive reference with a full forward pass per node; the
  constrained-greedy answers are among them."""
  model = _peaked_model()  # answers end early, the threshold bites
  graphdef, adapters, base = lora.split(model)
  task = _task(seed=2, k=2, side=2)
  vs = views.make_views(2, dict(orders=1))[:3]
  p, lengths, coords, segs = _prompts(task, vs, 96)
  max_new, cap = 9, 64
  dfs = dfs_lib.make_program(graphdef, max_new, min_prob, cap)
  stacked = jax.tree.map(lambda x: x[None], adapters)
  args = [np.asarray(x)[None] for x in (p, lengths, coords, segs)]
  answers, logp, steps, cut = jax.device_get(dfs(
      base, stacked, np.zeros(1, np.int32), *args,
      np.ones((1, len(vs)), bool)))
  merged = lora.merge(graphdef, adapters, base)
  total, greedy = 0, 0
  for v in range(len(vs)):
    greedy += len(_reference_enumeration(merged, p[v], lengths[v], coords[v],
                                         segs[v], max_new, 1.0))
    ref = _reference_enumeration(merged, p[v], lengths[v], coords[v],
                                 segs[v], max_new, min_prob)
    got = {}
    for a, lp in zip(answers[0, v], logp[0, v], strict=True):
      if np.isfinite(lp):
        n = int(np.flatnonzero(a == tokens.EOS)[0]) + 1
        got[tuple(a[:n].tolist())] = float(lp)
        assert tokens.decode_grid(a) is not None
    assert got.keys() == ref.keys()
    for k in got:
      np.testing.assert_allclose(got[k], ref[k], atol=1e-4)
    assert list(logp[0, v][:len(got)]) == sorted(got.values(), reverse=True)
    assert len(got) <= int(1 / min_prob) + 1
    assert not cut[0, v]
    total += len(got)
  assert greedy >= 1 and (steps[0] >= 2).all()
  assert total > greedy  # the threshold let more than greedy through


def _vgb_node_table(model, p, lengths, coords, segs, tmaps, max_new):
  """The answer tree up to depth max_new as a `sampling.exact.NodeTable`
  (complete vocab-ary, level order; μ̂ = 0 off well-formed prefixes), with
  μ̂ from a full forward pass per node and view."""
  from sampling import exact

  vocab = tokens.VOCAB_SIZE
  size = int(lengths.max()) + max_new
  fwd = jax.jit(lambda t, c, n: jax.nn.log_softmax(
      model(t[None], coords=c[None])[0, n]))
  logmu = {(): 0.0}
  depth, parent, symbol, values = [0], [-1], [-1], [0.0]
  level = [()]
  for d in range(max_new):
    nxt = []
    for y in level:
      mean = np.zeros(vocab)
      if np.isfinite(logmu[y]):
        row = col = 0
        crd_tail = []
        for t in y:
          tc, row, col = decode.answer_coords(jnp.int32(t), jnp.int32(row),
                                              jnp.int32(col), jnp.int32(0))
          crd_tail.append(np.asarray(tc)[:2])
        for k in range(len(lengths)):
          toks = np.full(size, tokens.PAD, np.int32)
          crd = np.zeros((size, 3), np.int32)
          n0 = int(lengths[k])
          toks[:n0], crd[:n0] = p[k][:n0], coords[k][:n0]
          for j, t in enumerate(y):
            toks[n0 + j] = tmaps[k][t]
            crd[n0 + j] = [*crd_tail[j], segs[k]]
          mean += np.asarray(fwd(toks, crd, n0 + len(y) - 1))[tmaps[k]]
        mean /= len(lengths)
      for a in range(vocab):
        ok = np.isfinite(logmu[y]) and _grammar_ok(list(y), a, max_new)
        logmu[y + (a,)] = logmu[y] + mean[a] if ok else -np.inf
        nxt.append(y + (a,))
    off = len(depth) - len(level)
    for j, y in enumerate(nxt):
      depth.append(d + 1)
      parent.append(off + j // vocab)
      symbol.append(y[-1])
      values.append(logmu[y])
    level = nxt
  first_leaf = len(depth) - len(level)
  lm = np.array(values)
  return exact.NodeTable(np.array(depth), np.array(parent), np.array(symbol),
                         lm, lm, np.zeros_like(lm), first_leaf, vocab,
                         max_new), level


class _WalkCase(NamedTuple):
  """The walk decoders' exact-law case: the shipped model, 2 views, the
  answer tree up to 3 tokens (every 1 x 1 answer) as a node table."""

  graphdef: Any
  adapters: Any
  base: Any
  args: tuple  # (prompts, lengths, coords, segments, usable, tmaps)
  table: Any  # sampling.exact.NodeTable
  leaves: list  # the depth-3 prefixes (token tuples), table order
  complete: np.ndarray  # bool[leaves]: a complete answer (ends in EOS)
  dead: np.ndarray  # int: node indices of well-formed 3-token dead ends
  start: int  # node index of the constrained-greedy answer


@functools.cache
def _walk_case(max_new=3) -> _WalkCase:
  # the shipped model on a task with 1 x 1 answers (the majority colour):
  # the tree up to 3 tokens holds every answer
  from configs import arc_ttt
  from ttt import job as job_lib
  from ttt import weights as weights_lib

  cfg = arc_ttt.get_config("tiny")
  cfg.init_from = os.path.join(os.path.dirname(os.path.dirname(
      os.path.abspath(__file__))), "checkpoints", "tiny")
  job = job_lib.parse(cfg)
  w, _ = weights_lib.load(job.init_from, job.model, job.adapter,
                          job.run.seed)
  rng = np.random.default_rng(0)

  def pair():
    c = int(rng.integers(1, 10))
    g = np.full((2, 2), c, np.int8)
    g[rng.integers(0, 2), rng.integers(0, 2)] = 0
    return g, np.full((1, 1), c, np.int8)

  task = arc.Task("majority", [pair() for _ in range(3)], [pair()])
  perm = np.array([0, 3, 1, 2, 9, 8, 7, 6, 5, 4], np.int32)
  vs = [views.make_views(3, dict(orders=0, transforms=()))[0],
        views.View("colour0", views.COLOUR, (0, 1, 2),
                   augment.Element(np.int32(0), perm, np.zeros(0, np.int32)))]
  p, lengths, coords, segs = _prompts(task, vs, 96)
  tmaps = np.stack([np.arange(tokens.VOCAB_SIZE)] * 2).astype(np.int32)
  tmaps[1, :10] = perm
  merged = lora.merge(w.graphdef, w.template, w.base)
  table, leaves = _vgb_node_table(merged, p, lengths, coords, segs, tmaps,
                                  max_new)
  first = table.first_leaf
  complete = np.array([y[-1] == tokens.EOS for y in leaves]) & np.isfinite(
      table.logmu[first:])
  dead = np.flatnonzero(~complete & np.isfinite(table.logmu[first:])) + first
  start = 0  # the greedy descent: argmax child by μ̂ until a leaf
  while start < first:
    start = 1 + start * table.S + int(np.argmax(
        table.logmu[1 + start * table.S:1 + (start + 1) * table.S]))
  return _WalkCase(w.graphdef, w.template, w.base,
                   (p, lengths, coords, segs, np.ones(2, bool), tmaps),
                   table, leaves, complete, dead, start)


def _run_walk(make_program, case, chains, horizon, loop, seed=0):
  """(answers, ok, calls) of a walk decoder's program on the case, one
  query, greedy start."""
  program = make_program(case.graphdef, case.table.n, chains, horizon,
                         leaf_loop=loop, start="greedy")
  stack = lambda x: np.asarray(x)[None]  # noqa: E731
  out = program(case.base, jax.tree.map(lambda x: x[None], case.adapters),
                np.zeros(1, np.int32), *map(stack, case.args),
                jax.random.key(seed)[None])
  return tuple(np.asarray(x)[0] for x in jax.device_get(out))


def _answer_counts(case, answers, ok):
  index = {y: j for j, y in enumerate(case.leaves)}
  counts = np.zeros(len(case.leaves))
  for a, good in zip(answers, ok, strict=True):
    if good:
      counts[index[tuple(a[:case.table.n].tolist())]] += 1
  return counts


def test_vgb_output_law_is_the_exact_walk_law():
  """The decoder's time-T law (many chains, after the greedy descent)
  equals the exact law of the SJ chain (`sampling.exact`) on the answer tree
  with μ̂(y) = geometric mean over the views of their prefix probabilities;
  that chain's stationary law on complete answers is ∝ μ̂(x)."""
  from sampling import exact

  case = _walk_case()
  table, complete, first = case.table, case.complete, case.table.first_leaf
  horizon, chains, loop = 30, 1000, 4.0
  answers, ok, calls = _run_walk(vgb_lib.make_program, case, chains, horizon,
                                 loop)
  chain = exact.sj_chain(table, leaf_loop=loop)
  # a prefix of max_new tokens without EOS is a dead end, not an answer:
  # no loop, it can only go back up
  chain.stay[case.dead] = 0.5
  chain.moves["up"][2][case.dead - 1] = 0.5
  law = np.zeros(len(table.logmu))
  law[case.start] = 1.0
  for _ in range(horizon):
    law = exact.evolve(chain, law)
  at_t = law[first:] * complete  # P(X_T = x) for complete answers x
  counts = _answer_counts(case, answers, ok)
  sd = np.sqrt(at_t.sum() * (1 - at_t.sum()) / chains)
  assert 0.2 < at_t.sum() and np.count_nonzero(at_t > 1e-2) >= 2
  assert abs(ok.mean() - at_t.sum()) < 4 * sd
  assert exact.tv(counts / counts.sum(), at_t / at_t.sum()) < 0.05
  assert calls.sum() > 0
  # the stationary law on complete answers is the views' geometric mean
  station = exact.stationary(chain)[first:] * complete
  target = np.where(complete, np.exp(table.logmu[first:]), 0.0)
  np.testing.assert_allclose(station / station.sum(), target / target.sum(),
                             atol=1e-9)


def _lifted_answer_chain(case, loop):
  """`sampling.exact.lifted_chain` on the case's tree, with its dead ends
  made what the decoder walks: internal nodes without children (turn, then
  go up; W = 2 μ̂)."""
  from sampling import exact

  chain = exact.lifted_chain(case.table, leaf_loop=loop)
  n_nodes = len(case.table.logmu)
  dead = case.dead
  chain.stay[dead] = chain.stay[n_nodes + dead] = 0.0
  chain.moves["reverse_down"][2][dead] = 1.0
  chain.moves["up"][2][dead - 1] = 1.0
  mu = np.exp(case.table.logmu)
  chain.weights[dead] = chain.weights[n_nodes + dead] = 2 * mu[dead]
  return chain


def _window_law(chain, case, horizon, lifted=True):
  """P(X_{T*} = x), T* uniform on ⌊T/2⌋..T, from (greedy answer, ↓), for
  every depth-3 prefix x; lifted=False forgets the direction bit before
  every step (re-drawn fair: the unlifted chain the lifting projects to)."""
  from sampling import exact

  n_nodes = len(case.table.logmu)
  p = np.zeros(2 * n_nodes)
  p[case.start] = 1.0
  acc = np.zeros(n_nodes)
  for t in range(horizon + 1):
    if t >= horizon // 2:
      acc += p[:n_nodes] + p[n_nodes:]
    if not lifted:
      p = np.tile((p[:n_nodes] + p[n_nodes:]) / 2, 2)
    p = exact.evolve(chain, p)
  return acc[case.table.first_leaf:] / (horizon - horizon // 2 + 1)


def test_vgb_lifted_output_law_is_the_exact_lifted_law():
  """The lifted decoder's law at its random read-out time (T* uniform on
  ⌊T/2⌋..T, after the greedy descent) equals the exact law of the balanced
  lifted chain (`sampling.exact.lifted_chain`) on the answer tree, and is
  far from the law of the same chain with its lifting removed (the
  direction bit forgotten every step) -- a decoder that dropped the
  direction fails here; the stationary law on complete answers is the
  views' geometric mean, as for 'vgb'."""
  from sampling import exact

  case = _walk_case()
  table, complete, first = case.table, case.complete, case.table.first_leaf
  horizon, chains, loop = 16, 2000, 4.0
  answers, ok, calls = _run_walk(vgb_lifted_lib.make_program, case, chains,
                                 horizon, loop)
  chain = _lifted_answer_chain(case, loop)
  lifted = _window_law(chain, case, horizon) * complete
  unlifted = _window_law(chain, case, horizon, lifted=False) * complete
  counts = _answer_counts(case, answers, ok)
  assert np.count_nonzero(lifted > 1e-2) >= 2 and calls.sum() > 0
  sd = np.sqrt(lifted.sum() * (1 - lifted.sum()) / chains)
  assert abs(ok.mean() - lifted.sum()) < 4 * sd
  got = counts / chains  # P(complete answer x at T*), one row per answer
  assert exact.tv(got, lifted) < 0.04, (exact.tv(got, lifted),
                                        exact.tv(got, unlifted))
  assert exact.tv(got, unlifted) > 0.1  # Monte-Carlo error: ~0.01
  assert exact.tv(lifted, unlifted) > 0.1
  # the patched chain is stationary at W / ΣW, ∝ μ̂ on complete answers
  station = exact.stationary(chain)
  np.testing.assert_allclose(exact.evolve(chain, station), station,
                             atol=1e-12)
  on_answers = (station[first:len(table.logmu)]
                + station[len(table.logmu) + first:]) * complete
  target = np.where(complete, np.exp(table.logmu[first:]), 0.0)
  np.testing.assert_allclose(on_answers / on_answers.sum(),
                             target / target.sum(), atol=1e-9)
