"""The accuracy table: what each part of TTT buys, with intervals.

`run_table(config, workdir)` runs every row of `config.table.rows` as its
own main job (`ttt.pipeline.run` into `workdir/<row>`: resumable chunk by
chunk, so a killed table resumes), on the same tasks, and after every run
writes `table.md`, `table.json` and (with matplotlib) `ttt_steps.png` for
the rows done so far (`pending`: the rest).

A row is the base job (`config.job`, a `configs/arc_ttt.py` config) with
the overrides in `ROWS[name]` -- except the rows in `DERIVED` (flat vote,
product of experts, identity view only), which are other selections of the
headline run's own candidates (`vote.also`): the same adapters and decodes,
so they cost a selection, not a TTT + decode, and their difference to the
headline is the selection rule's alone. Per row: pass@2 over tasks (the ARC
Prize rule: every test input right) with a 95% percentile-bootstrap interval
over tasks, pass@2 per test input, candidate coverage, and device seconds split
into TTT / inference (+ voting). Per ablation: the paired difference to its
reference row (the first of `REFERENCE[name]` the table has: the headline at
the row's own step count unless said) with a paired
bootstrap interval, and McNemar's exact two-sided p-value on the tasks
where the two rows disagree.

Statistics (`bootstrap_ci`, `paired_bootstrap_ci`, `mcnemar_exact`) are
plain numpy, seeded by `config.table.seed`.

`config.table` is checked (`check_table_config`) before the first row runs,
so a bad field never fails after hours of work; a row's unreadable
`results.json` is named with the remedy; task ids enter `table.md` escaped
(`ttt.files.md_text`).
"""

from __future__ import annotations

import difflib
import json
import math
import os
from collections.abc import Callable

import numpy as np
from absl import logging

from ttt import files
from ttt.errors import InputError

# name -> (what it is, overrides of the job config as {dotted field: value})
_NO_VIEWS = {"views.orders": 0, "views.transforms": (),
             "views.colour_perms": 0, "views.leave_one_out": False}
# The headline is the default job's recipe (per-task LoRA, 256 steps on the
# CPU table since issue 33's selection); `headline_lora128` is the previous
# headline (128 steps). The ablations measured against that one pin its 128
# steps, so they stay one change away from their reference and their
# workdirs made before the switch still resume.
_128 = {"ttt.steps": 128}
ROWS: dict[str, tuple[str, dict]] = {
    "base": ("base model, identity view only, no TTT",
             {"ttt.enabled": False, **_NO_VIEWS}),
    "views": ("+ augmented views and hierarchical voting (no TTT)",
              {"ttt.enabled": False}),
    "headline": ("+ per-task LoRA TTT (the headline: the default job's "
                 "recipe)", {}),
    "headline_lora128": ("the previous headline: per-task LoRA, 128 TTT "
                         "steps", dict(_128)),
    "vote_flat": ("flat vote instead of hierarchical",
                  {"vote.method": "flat"}),
    "vote_poe": ("product-of-experts selection",
                 {"vote.method": "product_of_experts"}),
    "vote_reference": ("MARC's exact vote instead of hierarchical",
                       {"vote.method": "reference"}),
    "vote_count_poe": ("most often produced first, product-of-experts "
                       "score breaking ties",
                       {"vote.method": "count_poe"}),
    "end_to_end": ("end-to-end TTT data instead of leave-one-out (128 steps)",
                   {"data.leave_out": "end_to_end", **_128}),
    # (the run-wide rows -- shared and joint -- take headline_lora128's
    # rows in all, 16 to a step: 1/8 of its optimizer steps, each over
    # more rows; shared is joint without the per-task prefix)
    "shared": ("one LoRA adapter shared by all the run's tasks (128 steps' "
               "rows)", {"ttt.protocol": "shared", "ttt.run_wide_batch": 16,
                         **_128}),
    "full_ft": ("full fine-tuning instead of LoRA (128 steps)",
                {"adapter.mode": "full", **_128}),
    "full_token": ("full fine-tuning with a fresh task token (VARC; 128 "
                   "steps)", {"adapter.mode": "full+prefix",
                              "adapter.prefix_len": 1, **_128}),
    "joint": ("joint TTT over all tasks, LoRA + a learned prefix per task "
              "(128 steps' rows)",
              {"ttt.protocol": "joint", "adapter.mode": "lora+prefix",
               "adapter.prefix_len": 1, "ttt.run_wide_batch": 16, **_128}),
    "joint_full": ("joint TTT over all tasks, every weight + a task token "
                   "(128 steps' rows)",
                   {"ttt.protocol": "joint", "adapter.mode": "full+prefix",
                    "adapter.prefix_len": 1, "ttt.run_wide_batch": 16,
                    **_128}),
    "prefix": ("prefix tuning instead of LoRA (128 steps)",
               {"adapter.mode": "prefix", **_128}),
    "steps_32": ("TTT steps 32", {"ttt.steps": 32}),
    "steps_256": ("TTT steps 256", {"ttt.steps": 256}),
    "steps_512": ("TTT steps 512", {"ttt.steps": 512}),
    "full_token_256": ("full fine-tuning with a fresh task token, 256 steps",
                       {"adapter.mode": "full+prefix", "adapter.prefix_len": 1,
                        "ttt.steps": 256}),
    "headline_identity": ("headline adapters, identity view only",
                          dict(_NO_VIEWS)),
}
# rows that are another selection of the headline's candidates (same
# adapters, same decodes; `vote.also` of the headline run): row -> selection.
# The same as a separate run with the row's overrides -- without its TTT and
# decoding (`table.derived=False` runs them separately).
DERIVED = {"vote_flat": "flat", "vote_poe": "product_of_experts",
           "headline_identity": "identity", "vote_reference": "reference",
           "vote_count_poe": "count_poe"}
# the selections an ALSO_SELECTS run records unless `table.also` says
# otherwise (the committed headline runs were made with these: a longer
# default would change their fingerprints)
DEFAULT_ALSO = ("flat", "product_of_experts", "identity")
# runs that record every derived selection (`vote.also`): the headline, and
# the previous headline as it was recorded when it was the headline (its
# workdirs made then resume; the selections cost seconds)
ALSO_SELECTS = ("headline", "headline_lora128")
# the row each ablation is compared with: the first of its candidates that
# the table has (default: the headline at the row's own step count -- the
# headline at 256 steps, else the previous one at 128)
REFERENCE = {"base": (), "views": ("base",), "headline": ("views",),
             "headline_lora128": ("headline",),
             "headline_identity": ("headline",),
             **{name: ("headline_lora128", "headline") for name in
                ("end_to_end", "shared", "full_ft", "full_token", "joint",
                 "joint_full", "prefix", "steps_32", "steps_256")}}
_DEFAULT_REFERENCE = ("headline", "headline_lora128")
# rows on the accuracy-vs-TTT-steps plot: (steps, candidate rows -- the
# first the table has); 0 = `views`
STEPS_ROWS = ((0, ("views",)), (32, ("steps_32",)),
              (128, ("headline_lora128",)), (256, ("headline", "steps_256")),
              (512, ("steps_512",)))


def row_config(job, overrides: dict):
  """A copy of the job config with the row's overrides applied."""
  cfg = job.copy_and_resolve_references()
  with cfg.unlocked():
    for path, value in overrides.items():
      *groups, field = path.split(".")
      node = cfg
      for g in groups:
        node = node[g]
      node[field] = value
  return cfg


# --- statistics --------------------------------------------------------------


def bootstrap_ci(x, samples: int = 2000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float, float]:
  """(mean, low, high): percentile bootstrap over the entries of x.

  Raises:
    ValueError: `samples` < 1.
  """
  if isinstance(samples, bool) or int(samples) != samples or samples < 1:
    raise InputError(f"bootstrap samples must be an integer >= 1, got "
                     f"{samples!r}")
  x = np.asarray(x, np.float64)
  if x.size == 0:
    return math.nan, math.nan, math.nan
  rng = np.random.default_rng(seed)
  means = x[rng.integers(0, x.size, (samples, x.size))].mean(1)
  a = (1 - level) / 2
  return float(x.mean()), float(np.quantile(means, a)), float(
      np.quantile(means, 1 - a))


def paired_bootstrap_ci(x, y, samples: int = 2000, seed: int = 0,
                        level: float = 0.95) -> tuple[float, float, float]:
  """(mean of x − y, low, high), resampling the pairs."""
  return bootstrap_ci(np.asarray(x, np.float64) - np.asarray(y, np.float64),
                      samples, seed, level)


def mcnemar_exact(x, y) -> tuple[int, int, float]:
  """McNemar's exact test on paired 0/1 outcomes: (b, c, two-sided p),
  b = x right and y wrong, c = the reverse; p = P(min(B, b+c−B) <= min(b,
  c)) under B ~ Binomial(b + c, 1/2)."""
  x, y = np.asarray(x, bool), np.asarray(y, bool)
  b, c = int((x & ~y).sum()), int((~x & y).sum())
  n, k = b + c, min(b, c)
  if n == 0:
    return b, c, 1.0
  tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0 ** n
  return b, c, min(1.0, 2 * tail)


def population_interval(k: int, n: int, population: int,
                        level: float = 0.95) -> tuple[int, int]:
  """Exact interval for the number of solved tasks in a population of
  `population` tasks, from `k` solved of a uniform sample of `n` drawn
  without replacement: the hypergeometric analogue of Clopper-Pearson --
  every K whose two one-sided tail probabilities at `k` both exceed
  (1 - level) / 2.

  Returns:
    (lowest K, highest K) not rejected; a sample of the whole population
    gives (k, k).
  """
  if not 0 <= k <= n <= population:
    raise ValueError(f"need 0 <= k <= n <= population, got k={k}, n={n}, "
                     f"population={population}")
  alpha = (1.0 - level) / 2
  total = math.comb(population, n)

  def pmf(x, big_k):
    if x < 0 or x > n or x > big_k or n - x > population - big_k:
      return 0.0
    return math.comb(big_k, x) * math.comb(population - big_k, n - x) / total

  ok = []
  for big_k in range(k, population - (n - k) + 1):
    lower = sum(pmf(x, big_k) for x in range(0, k + 1))  # P(X <= k)
    upper = sum(pmf(x, big_k) for x in range(k, n + 1))  # P(X >= k)
    if lower > alpha and upper > alpha:
      ok.append(big_k)
  return (min(ok), max(ok)) if ok else (k, k)


# --- the table ---------------------------------------------------------------


def _outcomes(results: dict, selection: str | None = None) -> dict:
  """Per task id: (all test inputs right, inputs right, inputs, covered
  inputs). `selection`: the outcome of that `vote.also` rule instead of the
  main one ('identity': coverage by the identity view's own candidates).
  A skipped task (too long for `data.max_len`, or bad at load) counts as a
  failure on each of its test inputs: the denominator is the task list."""
  from ttt import views

  def right(q):
    return bool(q["also"][selection]["correct"] if selection
                else q["correct"])

  def covers(c):
    return selection != "identity" or views.IDENTITY in c["views"]

  per_task = {}
  for t in results["tasks"]:
    if t.get("skipped"):
      per_task[t["id"]] = (False, 0, int(t.get("num_tests", 1)), 0)
      continue
    if t.get("correct") is None:
      continue
    tests = t["tests"]
    hits = [right(q) for q in tests]
    per_task[t["id"]] = (all(hits), sum(hits), len(tests),
                         sum(any(c["grid"] == q["truth"] and covers(c)
                                 for c in q["candidates"]) for q in tests))
  return per_task


def row_stats(per_task: dict, ids: list[str], samples: int, seed: int
              ) -> dict:
  tasks = np.array([per_task[i][0] for i in ids], np.float64)
  right = sum(per_task[i][1] for i in ids)
  inputs = sum(per_task[i][2] for i in ids)
  covered = sum(per_task[i][3] for i in ids)
  mean, lo, hi = bootstrap_ci(tasks, samples, seed)
  return dict(tasks=len(ids), pass2=mean, pass2_lo=lo, pass2_hi=hi,
              pass2_tasks=int(tasks.sum()), pass2_inputs=right,
              solved=[i for i in ids if per_task[i][0]],
              test_inputs=inputs,
              coverage=covered / inputs if inputs else math.nan)


# config.table's fields: name -> (required, what it must be)
TABLE_FIELDS = {
    "rows": (True, "a non-empty tuple of row names"),
    "bootstrap": (True, "an integer >= 1 (resamples per interval)"),
    "seed": (True, "an integer >= 0 (the bootstrap's seed)"),
    "derived": (False, "True or False"),
    "population": (False, "an integer >= 0: the number of tasks the task "
                   "list is a uniform sample of (0: not a sample); each row "
                   "then gets an estimate for the whole population with "
                   "its exact interval"),
    "also": (False, "a tuple of selection rules (ttt.select.RULES) the "
             "headline run records beside its own (default: "
             + ", ".join(DEFAULT_ALSO) + ")"),
}


def check_table_config(tc) -> None:
  """Checks `config.table` before anything runs (not after the last row).

  Args:
    tc: `config.table` (a ConfigDict or a dict): `rows`, `bootstrap`,
      `seed`, optional `derived`.

  Raises:
    ValueError: a field missing, unknown (with the nearest known name) or of
      the wrong type or range, naming the field and what it must be; an
      unknown or repeated row.
  """
  keys = list(tc.keys())
  for key in keys:
    if key not in TABLE_FIELDS:
      near = difflib.get_close_matches(key, TABLE_FIELDS, n=1)
      hint = f"; did you mean table.{near[0]}?" if near else ""
      raise InputError(f"table.{key}: unknown field{hint} (known: "
                       f"{', '.join(TABLE_FIELDS)})")
  for key, (required, what) in TABLE_FIELDS.items():
    if required and key not in keys:
      raise InputError(f"table.{key} is missing: it must be {what}")

  def fail(key, value):
    raise InputError(f"table.{key} must be {TABLE_FIELDS[key][1]}, got "
                     f"{value!r}")

  rows = tc["rows"]
  if (isinstance(rows, str) or not isinstance(rows, (tuple, list))
      or not rows or not all(isinstance(r, str) for r in rows)):
    fail("rows", rows)
  for key in ("bootstrap", "seed"):
    v = tc[key]
    if (isinstance(v, bool) or not isinstance(v, (int, np.integer))
        or v < (1 if key == "bootstrap" else 0)):
      fail(key, v)
  if "derived" in keys and not isinstance(tc["derived"], (bool, np.bool_)):
    fail("derived", tc["derived"])
  if "population" in keys:
    v = tc["population"]
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
      fail("population", v)
  if "also" in keys:
    from ttt import select
    also = tc["also"]
    if (isinstance(also, str) or not isinstance(also, (tuple, list))
        or not all(isinstance(r, str) and r in select.RULES for r in also)
        or len(set(also)) != len(also)):
      fail("also", also)
  unknown = [r for r in rows if r not in ROWS]
  if unknown:
    raise InputError(f"table.rows: unknown rows {unknown}; known: "
                     f"{list(ROWS)}")
  repeated = sorted({r for r in rows if list(rows).count(r) > 1})
  if repeated:
    raise InputError(f"table.rows: rows {repeated} appear more than once")


def _plan(tc) -> tuple[list[str], dict, list[str]]:
  """(rows to run, derived row -> selection, rows in display order)."""
  check_table_config(tc)
  derived = ({n: DERIVED[n] for n in tc.rows if n in DERIVED}
             if tc.get("derived", True) else {})
  runs = [n for n in tc.rows if n not in derived]
  if derived and "headline" not in runs:
    runs.insert(0, "headline")  # the derived rows' candidates
  # rows shown in the order asked (a headline added for its selections
  # first)
  order = [*(r for r in runs if r not in tc.rows), *tc.rows]
  return runs, derived, order


def _collect(workdir: str, runs: list[str], derived: dict
             ) -> tuple[dict, dict]:
  """(outcomes, timings) of the rows in `runs` whose run has finished
  (its `results.json` is written last), with the derived selections the
  headline run recorded."""
  outcomes, timings = {}, {}
  for name in runs:
    path = os.path.join(workdir, name, "results.json")
    if not os.path.exists(path):
      continue
    res = _read_results(path)
    outcomes[name] = _outcomes(res)
    timings[name] = res["summary"].get("timings_s", {})
    if name != "headline":
      continue
    for row, selection in derived.items():
      if not all(selection in q.get("also", {}) for t in res["tasks"]
                 if not t.get("skipped") and t.get("correct") is not None
                 for q in t["tests"]):
        continue  # a headline run made without this selection
      outcomes[row] = _outcomes(res, selection)
      voting = timings[name].get(f"voting_{selection}", 0.0)
      timings[row] = dict(ttt=0.0, inference=0.0, voting=voting,
                          total=voting)
  return outcomes, timings


def _read_results(path: str) -> dict:
  """A finished row's `results.json`, or a ValueError naming the file and
  the remedy (a truncated, zeroed or foreign file)."""
  remedy = ("delete it and rerun the table command: the row resumes from "
            "its chunks and writes it again")
  try:
    with open(path, encoding="utf-8") as f:
      res = json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise InputError(f"{path} is unreadable ({e}); {remedy}") from e
  if (not isinstance(res, dict) or not isinstance(res.get("summary"), dict)
      or not isinstance(res.get("tasks"), list)
      or not all(isinstance(t, dict) and "id" in t for t in res["tasks"])):
    raise InputError(f"{path} is not a run's results (an object with "
                     f"'summary' and a list of task records); {remedy}")
  for t in res["tasks"]:
    if t.get("skipped") or t.get("correct") is None:
      continue
    tests = t.get("tests")
    if not (isinstance(tests, list) and tests and all(
        isinstance(q, dict) and "correct" in q and "truth" in q
        and isinstance(q.get("candidates", []), list) for q in tests)):
      raise InputError(f"{path}: task {t['id']!r} is scored but has no "
                       "test-input records ('tests' with 'correct', "
                       f"'truth', 'candidates'); {remedy}")
  return res


def _check_fingerprints(config, workdir: str, runs: list[str],
                        derived: dict) -> None:
  """Every finished row's `fingerprint.json` is the one its config gives
  now (`--render_only` runs nothing, so nothing else checks it): an
  InputError naming the row and the fields that differ."""
  from ttt import job as job_lib

  tc = config.table
  for name in runs:
    path = os.path.join(workdir, name, "fingerprint.json")
    if not os.path.exists(os.path.join(workdir, name, "results.json")):
      continue
    if not os.path.exists(path):  # (results written by hand: the task
      # list is still checked)
      logging.warning("row %s in %s has no fingerprint.json: its config "
                      "cannot be checked", name, workdir)
      continue
    try:
      with open(path, encoding="utf-8") as f:
        stored = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
      raise InputError(f"row {name}: {path} is unreadable ({e}); rerun the "
                       "table command (the row is redone)") from e
    if not isinstance(stored, dict):
      raise InputError(f"row {name}: {path} is not a fingerprint")
    stored = {k: v for k, v in stored.items()
              if k not in job_lib.NEUTRAL or job_lib.NEUTRAL[k] != v}
    changed = None
    for double in (False, True):  # (a test double's run: greedy, and
      # fewer selections recorded)
      _, overrides = run_overrides(name, tc, derived, double)
      job = job_lib.parse(row_config(config.job, overrides))
      if double:
        job = job_lib.as_test_double(job)
      now = json.loads(json.dumps(files.strict(job_lib.fingerprint(
          job))))
      diff = sorted(k for k in set(stored) | set(now)
                    if stored.get(k) != now.get(k))
      if not diff:
        break
      changed = diff if changed is None or len(diff) < len(changed) \
          else changed
    else:
      raise InputError(
          f"row {name} in {workdir} was run with another config (changed: "
          f"{', '.join(changed[:8])}): its results are not this table's; "
          "use another --workdir, or delete the row's folder and rerun the "
          "table command")


def run_overrides(name: str, tc, derived: dict, test_double: bool = False
                  ) -> tuple[str, dict]:
  """(description, overrides) of the run of row `name`: `ROWS[name]`, and
  for the rows in `ALSO_SELECTS` (table.derived on) the derived
  selections as `vote.also` (the headline's `table.also`, else
  `DEFAULT_ALSO`), whichever rows were asked for -- a headline run
  first made without the derived rows would otherwise be refused (another
  config) when they are added later. A test double cannot rescore, so with
  one only the derived rows asked for (`derived`)."""
  desc, overrides = ROWS[name]
  if name in ALSO_SELECTS and tc.get("derived", True):
    also = (tuple(derived.values()) if test_double
            else tuple(tc.get("also", DEFAULT_ALSO)) if name == "headline"
            else DEFAULT_ALSO)
    overrides = {**overrides, "vote.also": also}
    desc += "; also selects " + ", ".join(also)
  return desc, overrides


def run_table(config, workdir: str, predictors: dict | None = None,
              log: Callable[[str], None] = logging.info) -> dict:
  """Runs (or resumes) every row, then writes the table. Returns its dict.

  Args:
    config: `configs/table.py` ConfigDict: `job` (the main job's config),
      `table.rows`, `table.bootstrap`, `table.seed`.
    workdir: one subdirectory per row, plus table.md / table.json.
    predictors: row name -> test double for `pipeline.run` (tests).
  """
  from ttt import pipeline

  os.makedirs(workdir, exist_ok=True)
  tc = config.table
  runs, derived, order = _plan(tc)
  table: dict = {}
  for n, name in enumerate(runs):
    desc, overrides = run_overrides(name, tc, derived,
                                    bool((predictors or {}).get(name)))
    log(f"table run {n + 1}/{len(runs)}: {name} ({desc})")
    pipeline.run(row_config(config.job, overrides),
                 os.path.join(workdir, name),
                 predictor=(predictors or {}).get(name))
    # the table so far after every run: a table killed part-way has its
    # finished rows on disk
    table = _write_table(workdir, order,
                         *_collect(workdir, runs[:n + 1], derived),
                         derived, tc,
                         tuple(config.job.run.get("task_ids", ()) or ()))
  return table


def render_table(config, workdir: str) -> dict:
  """Writes table.md / table.json / ttt_steps.png from the rows of
  `config.table.rows` that have finished in `workdir`, running nothing
  (`launch.table --render_only`: a look at a table still running, or its
  report redone by newer code). Returns the table's dict."""
  tc = config.table
  runs, derived, order = _plan(tc)
  outcomes, timings = _collect(workdir, runs, derived)
  if not outcomes:
    raise FileNotFoundError(
        f"{workdir}: no finished row of {list(order)} (each writes "
        "<row>/results.json when done)")
  _check_fingerprints(config, workdir, runs, derived)
  return _write_table(workdir, order, outcomes, timings, derived, tc,
                      tuple(config.job.run.get("task_ids", ()) or ()))


def _write_table(workdir: str, order: list[str], outcomes: dict,
                 timings: dict, derived: dict, tc, task_ids: tuple = ()
                 ) -> dict:
  """Writes table.json / table.md / ttt_steps.png for the rows done so far
  (in `order`); `pending` lists the rest. Every row must hold every task
  of the table (`task_ids`, else every task some row holds): a row run on
  another task list is named with the tasks it lacks (InputError), never
  silently shrinks the table."""
  done = [name for name in order if name in outcomes]
  want = set(task_ids) or set.union(*(set(outcomes[n]) for n in done))
  for n in done:
    missing = sorted(want - set(outcomes[n]))
    if missing:
      raise InputError(
          f"row {n} in {workdir} lacks {len(missing)} of the table's "
          f"{len(want)} tasks ({', '.join(map(repr, missing[:8]))}"
          f"{' ...' if len(missing) > 8 else ''}): it was run on another "
          "task list; delete the row's folder and rerun the table command")
  ids = sorted(want)
  rows = {}
  for name in done:
    s = row_stats(outcomes[name], ids, tc.bootstrap, tc.seed)
    t = timings[name]
    if name in derived:
      s["selected_from"] = "headline"
    s.update(description=ROWS[name][0] + (
        " (the headline's candidates)" if name in derived else ""),
             ttt_s=t.get("ttt", 0.0),
             inference_s=t.get("inference", 0.0) + t.get("voting", 0.0),
             total_s=t.get("total", 0.0))
    ref = next((r for r in REFERENCE.get(name, _DEFAULT_REFERENCE)
                if r in outcomes and r != name), None)
    if ref:
      x = [outcomes[name][i][0] for i in ids]
      y = [outcomes[ref][i][0] for i in ids]
      d, lo, hi = paired_bootstrap_ci(x, y, tc.bootstrap, tc.seed)
      b, c, p = mcnemar_exact(x, y)
      s.update(versus=ref, diff=d, diff_lo=lo, diff_hi=hi, only_this=b,
               only_ref=c, mcnemar_p=p)
    population = int(tc.get("population", 0) or 0)
    if population >= len(ids) > 0:
      lo, hi = population_interval(s["pass2_tasks"], len(ids), population)
      s.update(population=population,
               population_estimate=s["pass2_tasks"] / len(ids) * population,
               population_lo=lo, population_hi=hi)
    rows[name] = s
  table = dict(tasks=ids, rows=rows, bootstrap=tc.bootstrap, seed=tc.seed,
               pending=[n for n in order if n not in outcomes])
  files.write_json(os.path.join(workdir, "table.json"), table)  # atomic
  files.write_text(os.path.join(workdir, "table.md"), markdown(table))
  _plot(table, os.path.join(workdir, "ttt_steps.png"))
  return table


def markdown(table: dict) -> str:
  """The table as markdown (rows in run order)."""
  lines = [f"Tasks: {len(table['tasks'])} (scored by every row); 95% "
           f"percentile-bootstrap intervals over tasks ({table['bootstrap']}"
           " resamples); paired differences with McNemar's exact p.", "",
           "| row | pass@2 (tasks) | 95% CI | pass@2 (inputs) | coverage | "
           "vs | Δ (paired) | 95% CI | only this / only ref | McNemar p | "
           "TTT s | inference s |", "|" + "---|" * 12]
  if table.get("pending"):
    lines[1:1] = ["", "**Rows still to run** (rerun the same command): "
                  + ", ".join(table["pending"]) + "."]
  for name, r in table["rows"].items():
    vs = r.get("versus")
    lines.append(
        f"| {name}: {r['description']} | {r['pass2_tasks']}/{r['tasks']} = "
        f"{100 * r['pass2']:.1f}% | [{100 * r['pass2_lo']:.1f}, "
        f"{100 * r['pass2_hi']:.1f}] | {r['pass2_inputs']}/"
        f"{r['test_inputs']} | {100 * r['coverage']:.1f}% | "
        + (f"{vs} | {100 * r['diff']:+.1f} pp | [{100 * r['diff_lo']:+.1f},"
           f" {100 * r['diff_hi']:+.1f}] | {r['only_this']} / "
           f"{r['only_ref']} | {r['mcnemar_p']:.3g} | " if vs else
           "– | – | – | – | – | ")
        + (f"{r['ttt_s']:.0f} | {r['inference_s']:.0f} |"
           if not r.get("selected_from") else
           f"({r['selected_from']}'s) | {r['inference_s']:.0f} (selection) |"
           ))
  est = [(name, r) for name, r in table["rows"].items()
         if "population" in r]
  if est:
    lines += ["", f"The whole population ({est[0][1]['population']} tasks; "
              f"the {len(table['tasks'])} above are a uniform sample of "
              "it): tasks solved, estimate and exact 95% interval "
              "(hypergeometric, `ttt.table.population_interval`):", "",
              "| row | estimate | 95% interval |", "|---|---|---|"]
    for name, r in est:
      p = r["population"]
      lines.append(
          f"| {name} | {r['population_estimate']:.0f}/{p} = "
          f"{100 * r['population_estimate'] / p:.1f}% | "
          f"[{r['population_lo']}, {r['population_hi']}] = "
          f"[{100 * r['population_lo'] / p:.1f}%, "
          f"{100 * r['population_hi'] / p:.1f}%] |")
  lines += ["", *_solved_matrix(table["rows"])]
  return "\n".join(lines) + "\n"


def _solved_matrix(rows: dict) -> list[str]:
  """Markdown lines: which row solves which task (pass@2), for the tasks
  some row solves, most-solved first."""
  solved = {name: set(r.get("solved", ())) for name, r in rows.items()}
  ids = set().union(*solved.values())
  if not ids:
    return ["No row solves any task."]
  count = {i: sum(i in s for s in solved.values()) for i in ids}
  lines = [f"Which row solves which task (pass@2; the {len(ids)} tasks some "
           "row solves):", "",
           "| task | " + " | ".join(rows) + " |",
           "|" + "---|" * (len(rows) + 1)]
  for i in sorted(ids, key=lambda i: (-count[i], i)):
    lines.append(f"| {files.md_text(i)} | " + " | ".join(
        "✓" if i in solved[n] else "" for n in rows) + " |")
  return lines


def _plot(table: dict, path: str) -> None:
  """Accuracy (with its interval) against TTT steps, for the rows run."""
  pts = [(s, table["rows"][r]) for s, r in
         ((s, next((r for r in rs if r in table["rows"]), None))
          for s, rs in STEPS_ROWS) if r]
  if len(pts) < 2:
    return
  try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    return
  steps = [s for s, _ in pts]
  acc = np.array([100 * r["pass2"] for _, r in pts])
  err = np.array([[100 * (r["pass2"] - r["pass2_lo"]) for _, r in pts],
                  [100 * (r["pass2_hi"] - r["pass2"]) for _, r in pts]])
  fig, ax = plt.subplots(figsize=(5, 3.5))
  ax.errorbar(steps, acc, yerr=err, marker="o", capsize=4)
  ax.set_xscale("symlog", linthresh=32)
  ax.set_xticks(steps)
  ax.set_xticklabels([str(s) for s in steps])
  ax.set_xlabel("TTT steps per task")
  ax.set_ylabel("pass@2 (% of tasks)")
  ax.set_title(f"{len(table['tasks'])} tasks, 95% bootstrap intervals")
  fig.tight_layout()
  import io
  buf = io.BytesIO()
  fig.savefig(buf, dpi=120, format="png")
  plt.close(fig)
  files.write_bytes(path, buf.getvalue())
