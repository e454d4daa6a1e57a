"""Tests for ttt.table (the accuracy table) and configs/table.py."""

import json
import math
import os
import re
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from configs import table as table_config
from ttt import augment, files, table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_mcnemar_exact_matches_the_binomial_tail():
  assert table.mcnemar_exact([1, 1, 1, 0], [0, 0, 0, 0]) == (3, 0, 0.25)
  x = [1] * 10 + [0] * 2 + [1] * 5
  y = [0] * 10 + [1] * 2 + [1] * 5
  b, c, p = table.mcnemar_exact(x, y)
  assert (b, c) == (10, 2)
  assert p == pytest.approx(2 * (1 + 12 + 66) / 4096)
  assert table.mcnemar_exact([1, 0], [1, 0]) == (0, 0, 1.0)


def test_bootstrap_intervals():
  m, lo, hi = table.bootstrap_ci([1.0] * 20)
  assert m == lo == hi == 1.0
  m, lo, hi = table.bootstrap_ci([0, 1] * 50, samples=4000)
  assert m == 0.5 and 0.38 < lo < 0.45 and 0.55 < hi < 0.62
  assert table.paired_bootstrap_ci([1, 0, 1], [1, 0, 1]) == (0.0, 0.0, 0.0)
  d, lo, hi = table.paired_bootstrap_ci([1] * 30, [0] * 30)
  assert d == lo == hi == 1.0
  assert all(math.isnan(v) for v in table.bootstrap_ci([]))


def test_committed_task_lists_follow_the_rule():
  from ttt import arc, tokens

  for version, n in ((1, 100), (2, 50)):
    ids = table_config.task_ids(version)
    assert len(ids) == n == len(set(ids))
    full = {t.id: max(tokens.sequence_length(t, k) for k in range(len(t.test)))
            for t in arc.load_arc(version, "evaluation", errors=[])}
    rule = sorted(full, key=lambda i: (full[i], i))
    assert list(ids) == rule[:n]
    if version == 1:  # the held-out selection list: ranks 101-200 that fit
      # the CPU context, disjoint from the reporting list
      select = table_config.task_ids(1, select=True)
      assert list(select) == [i for i in rule[100:200] if full[i] <= 1024]
      assert len(select) == 44 and not set(select) & set(ids)
      # the unbiased sample (issue 42): 100 of the 400 drawn with the stated
      # seed, in length order; the skipped ones count (denominator 100)
      sample = table_config.task_ids(1, sample=True)
      assert list(sample) == table_config.draw_sample(
          table_config.SAMPLE_SEED)
      assert len(set(sample)) == 100 and set(sample) <= set(full)
      assert list(sample) == sorted(sample, key=lambda i: (full[i], i))
  assert table_config.get_config("cpu,sample").table.rows == \
      table_config.SAMPLE_ROWS
  cfg = table_config.get_config("cpu")
  assert set(cfg.table.rows) <= set(table.ROWS)
  # the run keeps the list's order, so its chunks go shortest first (and
  # the per-chunk length buckets pad little)
  from ttt import job as job_lib
  from ttt import plan as plan_lib

  job = job_lib.parse(cfg.job)
  loaded = [t.id for t in plan_lib.load_tasks(job.run)[0]]
  assert loaded == list(table_config.task_ids(1)) != sorted(loaded)
  assert max(full[i] for i in table_config.task_ids(2)) <= \
      table_config.get_config("cpu,version=2").job.data.max_len


def test_table_runs_resumes_and_compares(tmp_path, monkeypatch):
  config = table_config.get_config("cpu")
  config.job.init_from = ""
  config.job.run.task_ids = table_config.task_ids(1)[:4]
  config.table.rows = ("base", "views", "headline")
  config.table.bootstrap = 500

  def oracle(task, k, view):
    return augment.apply(view.element, task.test[k][1])

  def wrong(task, k, view):
    return np.zeros((1, 1), np.int8)

  predictors = dict(base=lambda *a: None, views=wrong, headline=oracle)

  def killed(*a):
    raise RuntimeError("killed")

  # a table killed part-way has its finished rows on disk, and says so
  with pytest.raises(RuntimeError, match="killed"):
    table.run_table(config, str(tmp_path), dict(predictors, headline=killed))
  part = json.loads((tmp_path / "table.json").read_text())
  assert list(part["rows"]) == ["base", "views"]
  assert part["pending"] == ["headline"]
  assert "Rows still to run" in (tmp_path / "table.md").read_text()
  out = table.run_table(config, str(tmp_path), predictors, log=print)
  assert out["pending"] == []
  rows = out["rows"]
  assert len(out["tasks"]) == 4
  assert rows["headline"]["pass2"] == 1.0 and rows["base"]["pass2"] == 0.0
  assert rows["headline"]["versus"] == "views"
  assert rows["headline"]["diff"] == rows["headline"]["diff_lo"] == 1.0
  assert rows["headline"]["mcnemar_p"] == pytest.approx(2 / 2 ** 4)
  assert rows["views"]["coverage"] == 0.0
  assert rows["headline"]["coverage"] == 1.0
  assert rows["headline"]["solved"] == out["tasks"]
  assert rows["base"]["solved"] == rows["views"]["solved"] == []
  md = (tmp_path / "table.md").read_text()
  assert "| headline: + per-task LoRA TTT" in md and "4/4 = 100.0%" in md
  # the matrix: one line per solved task, a tick under the headline only
  for i in out["tasks"]:
    assert f"| {i} |  |  | ✓ |" in md
  again = table.run_table(config, str(tmp_path), predictors, log=print)
  assert again == json.loads((tmp_path / "table.json").read_text())
  # the report rebuilt from the rows on disk, running nothing
  from ttt import pipeline

  (tmp_path / "table.json").unlink()
  monkeypatch.setattr(pipeline, "run", killed)
  assert table.render_table(config, str(tmp_path)) == again
  assert (tmp_path / "table.md").read_text() == md
  config.table.rows = ("base", "views", "headline", "steps_32")
  shown = table.render_table(config, str(tmp_path))
  assert list(shown["rows"]) == ["base", "views", "headline"]
  assert shown["pending"] == ["steps_32"]
  with pytest.raises(FileNotFoundError, match="no finished row"):
    table.render_table(config, str(tmp_path / "elsewhere"))
  # the launcher's --render_only: prints the table; no rows: one-line error
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  # (the rows' config: --render_only checks each row's fingerprint)
  ids = ",".join(f'"{i}"' for i in config.job.run.task_ids)
  cmd = [sys.executable, "-m", "launch.table", "--render_only",
         "--config=" + os.path.join(ROOT, "configs", "table.py") + ":cpu",
         '--config.table.rows=("base","views","headline")',
         "--config.job.init_from=", f"--config.job.run.task_ids=({ids},)"]
  out = subprocess.run(cmd + [f"--workdir={tmp_path}"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "| headline: + per-task LoRA TTT" in out.stdout
  assert "Rows still to run" not in out.stdout
  none = subprocess.run(cmd + [f"--workdir={tmp_path / 'elsewhere'}"],
                        cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=300)
  assert none.returncode == 2 and "error:" in none.stderr
  assert "no finished row" in none.stderr and "Traceback" not in none.stderr
  config.table.rows = ("base", "nonsense")
  with pytest.raises(ValueError, match="unknown rows"):
    table.run_table(config, str(tmp_path), predictors)


def test_derived_rows_equal_separate_runs(tmp_path):
  """vote_flat / headline_identity read off the headline run's candidates
  (`vote.also`) == the same rows run separately."""
  config = table_config.get_config("cpu")
  config.job.init_from = ""
  config.job.run.task_ids = table_config.task_ids(1)[:6]
  config.table.rows = ("headline", "vote_flat", "headline_identity")
  config.table.bootstrap = 200

  def mixed(task, k, view):  # transforms right; the identity views right on
    truth = task.test[k][1]  # some tasks, and the untransformed one on others
    if view.category != "identity":
      ok = int(task.id, 16) % 3 != 0
    else:
      ok = (view.label == "identity") == (int(task.id, 16) % 2 == 0)
    return augment.apply(view.element, truth if ok else truth[:1])

  predictors = {name: mixed for name in config.table.rows}
  derived = table.run_table(config, str(tmp_path / "derived"), predictors)
  assert not (tmp_path / "derived" / "vote_flat").exists()
  assert derived["rows"]["vote_flat"]["selected_from"] == "headline"
  config.table.derived = False
  separate = table.run_table(config, str(tmp_path / "separate"), predictors)
  keys = ("pass2_tasks", "pass2_inputs", "coverage", "diff", "only_this",
          "only_ref")
  for name in ("vote_flat", "headline_identity"):
    a, b = derived["rows"][name], separate["rows"][name]
    assert {k: a.get(k) for k in keys} == {k: b.get(k) for k in keys}, name
  # the rules really differ here, so the equality above says something
  outcomes = {r["pass2_tasks"] for r in derived["rows"].values()}
  assert len(outcomes) > 1
  assert "(headline's)" in (tmp_path / "derived" / "table.md").read_text()


def test_headline_is_the_default_recipe_and_references_fall_back(tmp_path):
  """The headline is the default job's recipe (256 steps on the CPU table);
  `headline_lora128` and the rows measured against it pin 128 steps, so the
  committed workdirs (the selection list's and the ARC-AGI-1 table's)
  still resume (same fingerprints); each row
  is compared with the first of its references the table has."""
  from configs import arc_ttt
  from ttt import job as job_lib

  config = table_config.get_config("cpu")
  assert config.job.ttt.steps == arc_ttt.get_config().ttt.steps == 256
  for name, (_, overrides) in table.ROWS.items():
    refs = table.REFERENCE.get(name, table._DEFAULT_REFERENCE)
    if refs and refs[0] == "headline_lora128" and not name.startswith(
        "steps_"):
      assert table.row_config(config.job, overrides).ttt.steps == 128, name
  # the committed workdirs (the selection list's, the ARC-AGI-1 table's)
  # resume: every row they hold has the fingerprint its config gives now
  for arg, folder in (("cpu,select", "select"), ("cpu", "arc1"),
                      ("cpu,sample", "sample")):
    cfg = table_config.get_config(arg)
    stored = {name: os.path.join(ROOT, "benchmarks", "table", folder, name,
                                 "fingerprint.json")
              for name in cfg.table.rows}
    held = [name for name, path in stored.items() if os.path.exists(path)]
    assert len(held) >= (3 if folder == "sample" else 5), (folder, held)
    for name in held:
      _, overrides = table.run_overrides(name, cfg.table, {})
      got = json.loads(json.dumps(files.strict(job_lib.fingerprint(
          job_lib.parse(table.row_config(cfg.job, overrides))))))
      with open(stored[name], encoding="utf-8") as f:
        assert got == json.load(f), (folder, name)
  select = table_config.get_config("cpu,select")
  assert "vote.also" in table.run_overrides(
      "headline_lora128", select.table, {})[1]

  config.job.init_from = ""
  config.job.run.task_ids = table_config.task_ids(1)[:4]
  config.table.rows = ("headline", "headline_lora128", "full_token")
  config.table.bootstrap = 200

  def oracle(task, k, view):
    return augment.apply(view.element, task.test[k][1])

  def wrong(task, k, view):
    return np.zeros((1, 1), np.int8)

  out = table.run_table(config, str(tmp_path), dict(
      headline=oracle, headline_lora128=wrong, full_token=oracle))
  rows = out["rows"]
  assert rows["headline_lora128"]["versus"] == "headline"
  assert rows["headline_lora128"]["diff"] == -1.0
  assert rows["full_token"]["versus"] == "headline_lora128"
  assert rows["full_token"]["only_this"] == 4
  # without the previous headline, the next reference: the headline
  config.table.rows = ("headline", "full_token")
  alone = table.render_table(config, str(tmp_path))
  assert alone["rows"]["full_token"]["versus"] == "headline"
  assert alone["rows"]["full_token"]["diff"] == 0.0


@pytest.mark.parametrize("field,value,message", [
    ("bootstrap", 0, "table.bootstrap must be an integer >= 1"),
    ("bootstrap", -5, "table.bootstrap must be an integer >= 1"),
    ("bootstrap", 2.5, "table.bootstrap must be an integer >= 1"),
    ("bootstrap", True, "table.bootstrap must be an integer >= 1"),
    ("seed", -1, "table.seed must be an integer >= 0"),
    ("seed", "0", "table.seed must be an integer >= 0"),
    ("derived", "yes", "table.derived must be True or False"),
    ("rows", (), "table.rows must be a non-empty tuple of row names"),
    ("rows", "headline", "table.rows must be a non-empty tuple"),
    ("rows", ("base", "base"), "rows ['base'] appear more than once"),
    ("rows", ("base", "nonsense"), "unknown rows ['nonsense']"),
])
def test_table_fields_are_checked_before_any_run(tmp_path, monkeypatch,
                                                 field, value, message):
  """A bad table field is refused at once, naming it (table.bootstrap=0
  was an IndexError after every row had run)."""
  from ttt import pipeline

  config = table_config.get_config("cpu")
  tc = config.table.to_dict()
  tc[field] = value  # (a new ConfigDict: the field's type is the value's)
  config.table = ml_collections.ConfigDict(tc)

  def never(*a, **k):
    raise AssertionError("a row ran")

  monkeypatch.setattr(pipeline, "run", never)
  with pytest.raises(ValueError, match=re.escape(message)):
    table.run_table(config, str(tmp_path))
  with pytest.raises(ValueError, match=re.escape(message)):
    table.render_table(config, str(tmp_path))
  with pytest.raises(ValueError, match="bootstrap samples must be"):
    table.bootstrap_ci([1, 0], samples=0)


def test_unknown_and_missing_table_fields():
  config = table_config.get_config("cpu")
  tc = config.table.to_dict()
  tc["bootstap"] = 10
  with pytest.raises(ValueError, match="did you mean table.bootstrap"):
    table.check_table_config(tc)
  del tc["bootstap"], tc["seed"]
  with pytest.raises(ValueError, match="table.seed is missing"):
    table.check_table_config(tc)
  table.check_table_config(config.table)  # the shipped config passes


def _row_results(workdir, name, ids, right):
  """A finished row: its results.json as pipeline.run writes it."""
  os.makedirs(os.path.join(workdir, name), exist_ok=True)
  tasks = [dict(id=i, correct=ok, tests=[dict(
      correct=ok, truth=[[1]], candidates=[dict(grid=[[1]] if ok else [[0]],
                                                views=["identity"])])])
           for i, ok in zip(ids, right, strict=True)]
  with open(os.path.join(workdir, name, "results.json"), "w") as f:
    json.dump(dict(summary=dict(timings_s=dict(ttt=1.0, inference=2.0)),
                   tasks=tasks), f)


def test_task_ids_enter_table_md_escaped(tmp_path):
  config = table_config.get_config("cpu")
  config.table.rows = ("base", "views")
  ids = ["<script>alert(1)</script>", "a | b\n| fake |", "![](http://e/x)",
         "# h", "00576224"]
  config.job.run.task_ids = tuple(ids)  # (the rows' task list)
  _row_results(tmp_path, "base", ids, [True] * 5)
  _row_results(tmp_path, "views", ids, [True, False, True, False, True])
  out = table.render_table(config, str(tmp_path))
  assert sorted(out["tasks"]) == sorted(ids)  # table.json keeps the ids
  md = (tmp_path / "table.md").read_text()
  assert "<script>" not in md and "![](" not in md and "\n# h" not in md
  assert "| &lt;script&gt;alert\\(1\\)&lt;/script&gt; | ✓ | ✓ |" in md
  assert "| a \\| b\\\\n\\| fake \\| | ✓ |  |" in md
  assert "| 00576224 | ✓ | ✓ |" in md
  matrix = md.split("Which row solves")[1].splitlines()[3:]
  assert len([line for line in matrix if line.startswith("| ")]) == 5


@pytest.mark.parametrize("content", ["", '{"summary": {', "\x00" * 64, "[]",
                                     '{"tasks": {}}'])
def test_a_corrupt_row_results_names_the_file_and_the_remedy(tmp_path,
                                                              content):
  config = table_config.get_config("cpu")
  config.table.rows = ("base", "views")
  _row_results(tmp_path, "base", ["a"], [True])
  os.makedirs(tmp_path / "views")
  (tmp_path / "views" / "results.json").write_text(content)
  with pytest.raises(ValueError, match=re.escape(
      str(tmp_path / "views" / "results.json")) + ".*delete it and rerun"):
    table.render_table(config, str(tmp_path))


def test_skipped_tasks_count_as_failures():
  """A task skipped (too long, bad at load) stays in the denominator: a
  failure on each of its test inputs, in every row alike."""
  solved = dict(id="a", correct=True, tests=[dict(
      correct=True, truth=[[1]], candidates=[dict(grid=[[1]], views=[])])])
  skipped = dict(id="b", skipped="sequence needs 4030 tokens", num_tests=2)
  per_task = table._outcomes(dict(tasks=[solved, skipped]))
  assert per_task == {"a": (True, 1, 1, 1), "b": (False, 0, 2, 0)}
  stats = table.row_stats(per_task, ["a", "b"], 100, 0)
  assert stats["pass2"] == 0.5 and stats["test_inputs"] == 3


def test_population_interval_covers_and_renders():
  """The 400-task estimate's interval (issue 42): exact coverage >= 95%
  for every true count of a small population, the whole population gives
  the count itself, and the sample table prints it."""
  N, n = 60, 20
  intervals = [table.population_interval(k, n, N) for k in range(n + 1)]
  for big_k in range(N + 1):
    cover = sum(math.comb(big_k, k) * math.comb(N - big_k, n - k)
                for k, (lo, hi) in enumerate(intervals) if lo <= big_k <= hi)
    assert cover / math.comb(N, n) >= 0.95 - 1e-12, big_k
  assert [lo for lo, _ in intervals] == sorted(lo for lo, _ in intervals)
  assert table.population_interval(7, 30, 30) == (7, 7)
  lo, hi = table.population_interval(15, 100, 400)
  assert lo < 60 < hi and (lo, hi) == (38, 89)
  with pytest.raises(ValueError, match="population"):
    table.population_interval(5, 10, 8)
  tc = table_config.get_config("cpu,sample").table
  assert tc.population == 400
  rows = dict(headline=dict(
      description="d", tasks=100, pass2=0.15, pass2_lo=0.1, pass2_hi=0.2,
      pass2_tasks=15, pass2_inputs=15, test_inputs=110, coverage=0.2,
      ttt_s=1.0, inference_s=1.0, population=400, population_estimate=60.0,
      population_lo=38, population_hi=89))
  md = table.markdown(dict(tasks=[str(i) for i in range(100)], rows=rows,
                           bootstrap=10, seed=0, pending=[]))
  assert "| headline | 60/400 = 15.0% | [38, 89] = [9.5%, 22.2%] |" in md
