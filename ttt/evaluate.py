"""Scores, submission files, renderings and the report of a TTT run.

Everything here is host-side numpy over plain Python records: one record per
task (`TaskResult`-shaped dicts, as stored in `results.json`), each holding
per test input the two attempts, every candidate (grid, count, the views that
produced it) and the truth when known.

* `score(results)`: pass@2 per test input and per task (a task counts when
  all its test inputs are right; fractional credit too), candidate coverage
  (the truth among all candidates), per-category accuracy of single views,
  malformed decodes; all over tasks with known answers. Also the test inputs
  with no candidate at all (`no_answer_inputs`), which the report explains.
* `submission(results, task_ids)`: the ARC Prize format
  `{task_id: [{"attempt_1": grid, "attempt_2": grid}, ...]}` with a 1x1 zero
  grid for skipped tasks and missing attempts (so every task is present).
* `render_png(path, rows)`: a PNG of grids in ARC's palette (no plotting
  library; zlib + struct), `render_task` lays out demonstrations, the test
  input, the truth and the two attempts.
* `write_report(workdir, results, summary, ...)`: `report.md` with the
  score table, per-category accuracy, skipped tasks and renderings. A
  rendering that fails is logged and left out; the rest is still written.

Task ids are untrusted (`ttt.arc`): every file named after a task is named
by `safe_name` (a plain name inside its folder for any id whatsoever), and
every id or other outside string that enters markdown goes through
`md_text` (or `md_code`), so no id renders as HTML, a link, an image, a
heading or a table row.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterable

import numpy as np
from absl import logging

from ttt import files
from ttt.errors import InputError

FALLBACK = [[0]]

# ARC's usual colour palette (RGB), index = colour.
PALETTE = np.array([
    [0, 0, 0], [0, 116, 217], [255, 65, 54], [46, 204, 64], [255, 220, 0],
    [170, 170, 170], [240, 18, 190], [255, 133, 27], [127, 219, 255],
    [135, 12, 37]], np.uint8)


def grid_list(grid) -> list[list[int]]:
  return np.asarray(grid).astype(int).tolist()


def same(a, b) -> bool:
  if a is None or b is None:
    return False
  a, b = np.asarray(a), np.asarray(b)
  return a.shape == b.shape and bool((a == b).all())


def score(results: Iterable[dict]) -> dict:
  """Aggregate scores over task records (see module docstring).

  Returns:
    dict with `tasks`, `scored_tasks`, `skipped_tasks`, `pass2_tasks`
    (count), `pass2` (fraction of scored tasks; MARC's metric divides by
    all tasks: `pass2_all`), `pass2_fractional`, `test_inputs`,
    `pass2_inputs`, `coverage` (fraction of test inputs whose truth is among
    the candidates), `attempt1_inputs`, `malformed`, `decodes`,
    `category_accuracy` {category: fraction of single predictions right},
    `no_answer_inputs` (test inputs of the tasks run, scored or not, for
    which decoding found no candidate at all) of `run_inputs`.
  """
  results = list(results)
  out = dict(tasks=len(results), scored_tasks=0, skipped_tasks=0,
             pass2_tasks=0, fractional=0.0, test_inputs=0, pass2_inputs=0,
             covered_inputs=0, attempt1_inputs=0, malformed=0, decodes=0,
             run_inputs=0, no_answer_inputs=0)
  cat_right: dict[str, int] = {}
  cat_total: dict[str, int] = {}
  for r in results:
    if r.get("skipped"):
      out["skipped_tasks"] += 1
      continue
    out["malformed"] += r.get("malformed", 0)
    out["decodes"] += r.get("decodes", 0)
    out["run_inputs"] += len(r["tests"])
    out["no_answer_inputs"] += sum(
        t.get("attempt_1") is None and not t.get("candidates")
        for t in r["tests"])
    inputs = [t for t in r["tests"] if t.get("truth") is not None]
    if not inputs:
      continue
    out["scored_tasks"] += 1
    right = [bool(t["correct"]) for t in inputs]
    out["test_inputs"] += len(inputs)
    out["pass2_inputs"] += sum(right)
    out["fractional"] += sum(right) / len(right)
    out["pass2_tasks"] += all(right)
    for t in inputs:
      out["covered_inputs"] += any(same(c["grid"], t["truth"])
                                   for c in t["candidates"])
      out["attempt1_inputs"] += same(t["attempt_1"], t["truth"])
      for c in t["candidates"]:
        ok = same(c["grid"], t["truth"])
        for cat, n in c.get("categories", {}).items():
          cat_total[cat] = cat_total.get(cat, 0) + n
          cat_right[cat] = cat_right.get(cat, 0) + n * ok
      for cat, n in t.get("malformed_by_category", {}).items():
        cat_total[cat] = cat_total.get(cat, 0) + n
  n = max(out["scored_tasks"], 1)
  out["pass2"] = out["pass2_tasks"] / n
  out["pass2_all"] = out["pass2_tasks"] / max(out["tasks"], 1)
  out["pass2_fractional"] = out.pop("fractional") / n
  out["coverage"] = out["covered_inputs"] / max(out["test_inputs"], 1)
  out["category_accuracy"] = {c: cat_right.get(c, 0) / cat_total[c]
                              for c in sorted(cat_total)}
  return out


def summarise(results: list[dict], timings: dict, counts: dict,
              decode_method: str) -> dict:
  """The run's summary: `score(results)`, `timings_s`, the padded share of
  TTT and prompt tokens and the decoding's cost, from the chunks' summed
  `counts` (real / computed tokens, model calls)."""
  out = score(results)
  out["timings_s"] = timings
  out["padded_share"] = {
      k: (round(1 - counts[f"{k}_real"] / counts[f"{k}_computed"], 4)
          if counts.get(f"{k}_computed") else None)
      for k in ("ttt", "prompt")}
  out["decode"] = dict(
      method=decode_method, model_calls=int(counts.get("decode_calls", 0)),
      prompt_tokens=int(counts.get("prompt_real", 0)),
      seconds=round(timings["inference"], 2))
  return out


def submission(results: Iterable[dict]) -> dict:
  """The ARC Prize submission dict, every task present."""
  out = {}
  for r in results:
    tests = r.get("tests") or [{} for _ in range(r.get("num_tests", 1))]
    out[r["id"]] = [
        dict(attempt_1=t.get("attempt_1") or FALLBACK,
             attempt_2=t.get("attempt_2") or t.get("attempt_1") or FALLBACK)
        for t in tests]
  return out


def check_submission(sub: dict, expected: dict[str, int] | None = None
                     ) -> None:
  """Raises ValueError unless `sub` follows the ARC Prize format and, given
  `expected` ({task_id: number of test inputs}), has exactly those tasks
  with one entry per test input."""
  if not isinstance(sub, dict):
    raise ValueError("submission must be a dict of task id -> list")
  if expected is not None:
    # ids shown as list reprs: one line whatever they hold
    missing = sorted(set(expected) - set(sub))
    extra = sorted(set(sub) - set(expected))
    wrong = sorted(k for k in set(sub) & set(expected)
                   if len(sub[k]) != expected[k])
    if missing or extra or wrong:
      raise ValueError(
          f"submission does not match the tasks: missing {missing[:10]}, "
          f"unexpected {extra[:10]}, wrong number of entries "
          f"{[(k, len(sub[k]), expected[k]) for k in wrong[:10]]}")
  for task_id, attempts in sub.items():
    if not isinstance(attempts, list) or not attempts:
      raise ValueError(f"{task_id!r}: expected a non-empty list of attempts")
    for n, a in enumerate(attempts):
      if set(a) != {"attempt_1", "attempt_2"}:
        raise ValueError(f"{task_id!r}[{n}]: keys must be attempt_1/attempt_2")
      for k, g in a.items():
        if (not isinstance(g, list) or not g or not all(
            isinstance(row, list) and len(row) == len(g[0]) and row
            for row in g) or not all(isinstance(v, int) and 0 <= v <= 9
                                     for row in g for v in row)
            or len(g) > 30 or len(g[0]) > 30):
          raise ValueError(f"{task_id!r}[{n}].{k} is not a valid grid")


# --- renderings --------------------------------------------------------------


def _png(path: str, rgb: np.ndarray) -> None:
  h, w, _ = rgb.shape
  raw = b"".join(b"\x00" + rgb[y].tobytes() for y in range(h))

  def chunk(kind, body):
    return (struct.pack(">I", len(body)) + kind + body
            + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))

  data = (b"\x89PNG\r\n\x1a\n"
          + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
          + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))
  files.write_bytes(path, data)


def _grid_image(grid, cell: int) -> np.ndarray:
  g = np.asarray(grid, int)
  img = PALETTE[g].repeat(cell, 0).repeat(cell, 1)
  img[::cell, :] = 60  # grid lines
  img[:, ::cell] = 60
  return img


RIGHT, WRONG = (40, 170, 60), (210, 40, 40)  # attempt frames


def render_png(path: str, rows: list[list], cell: int = 16, gap: int = 16,
               frames: list[list] | None = None) -> None:
  """Writes a PNG: each row of `rows` is a list of grids (None = blank);
  `frames` (same layout, an RGB tuple or None) draws a 4-pixel frame around
  a grid."""
  images = [[None if g is None else _grid_image(g, cell) for g in row]
            for row in rows]
  row_h = [max([i.shape[0] for i in r if i is not None] or [cell])
           for r in images]
  n_cols = max(len(r) for r in images)
  col_w = [max([r[c].shape[1] for r in images if c < len(r)
                and r[c] is not None] or [cell]) for c in range(n_cols)]
  height = sum(row_h) + gap * (len(images) + 1)
  width = sum(col_w) + gap * (n_cols + 1)
  canvas = np.full((height, width, 3), 255, np.uint8)
  y = gap
  for ri, (r, h) in enumerate(zip(images, row_h, strict=True)):
    x = gap
    for c, img in enumerate(r):
      if img is not None:
        colour = frames[ri][c] if frames and c < len(frames[ri]) else None
        if colour is not None:
          canvas[y - 4:y + img.shape[0] + 4, x - 4:x + img.shape[1] + 4] = (
              colour)
        canvas[y:y + img.shape[0], x:x + img.shape[1]] = img
      x += col_w[c] + gap
    y += h + gap
  _png(path, canvas)


def render_task(path: str, task, record: dict) -> None:
  """Demonstrations (input, output), then per test input: input, truth,
  attempt 1, attempt 2 -- each attempt framed green when right, red when
  wrong (no frame when the truth is unknown)."""
  rows = [[i, o] for i, o in task.train]
  frames = [[None, None] for _ in task.train]
  for n, t in enumerate(record.get("tests", [])):
    truth = t.get("truth")
    rows.append([task.test[n][0], truth, t.get("attempt_1"),
                 t.get("attempt_2")])
    marks = [None, None]
    for a in ("attempt_1", "attempt_2"):
      if truth is not None and t.get(a) is not None:
        marks.append(RIGHT if same(t[a], truth) else WRONG)
      else:
        marks.append(None)
    frames.append(marks)
  render_png(path, rows, frames=frames)


def query_record(query, predictions, attempts, none_is_empty: bool = False,
                 also: dict | None = None) -> dict:
  """The record of one test input: attempts, truth, candidates (with counts,
  views and categories), malformed decodes by category.

  Args:
    query: a `ttt.views.Query`.
    predictions: per view of the query, a grid in the task frame or None
      (malformed).
    attempts: [attempt_1, attempt_2] (grids or None; a missing attempt_2
      repeats attempt_1).
    none_is_empty: a None prediction is an empty answer slot (enumerated
      decoding), not a malformed decode.
    also: {selection rule: its [attempt_1, attempt_2]} (`vote.also`),
      recorded as `also[rule] = {attempt_1, attempt_2, correct}`.
  """
  truth = query.task.test[query.test_index][1]
  cands: dict = {}
  malformed: dict[str, int] = {}
  for v, p in zip(query.views, predictions, strict=True):
    if p is None:
      if not none_is_empty:
        malformed[v.category] = malformed.get(v.category, 0) + 1
      continue
    k = (p.shape, p.tobytes())
    c = cands.setdefault(k, dict(grid=grid_list(p), count=0, views=[],
                                 categories={}))
    c["count"] += 1
    c["views"].append(v.label)
    c["categories"][v.category] = c["categories"].get(v.category, 0) + 1
  a1, a2 = attempts
  a2 = a2 if a2 is not None else a1
  rec = dict(
      attempt_1=None if a1 is None else grid_list(a1),
      attempt_2=None if a2 is None else grid_list(a2),
      truth=None if truth is None else grid_list(truth),
      candidates=sorted(cands.values(), key=lambda c: -c["count"]),
      views=[v.label for v in query.views], views_too_long=query.too_long,
      malformed_by_category=malformed)
  rec["correct"] = _right(attempts, truth)
  if also:  # recorded like the main attempts (a missing attempt_2 repeats)
    rec["also"] = {m: dict(attempt_1=None if b[0] is None else grid_list(b[0]),
                           attempt_2=(grid_list(b[1]) if b[1] is not None
                                      else None if b[0] is None
                                      else grid_list(b[0])),
                           correct=_right(b, truth))
                   for m, b in also.items()}
  return rec


def _right(attempts, truth) -> bool | None:
  a1, a2 = attempts
  a2 = a2 if a2 is not None else a1
  return None if truth is None else same(a1, truth) or same(a2, truth)


def task_record(task, tests: list[dict], ttt: dict) -> dict:
  """A scored task's record from its test-input records and TTT metrics;
  `correct` is None unless every test input has a truth."""
  known = [t["correct"] for t in tests if t["correct"] is not None]
  return dict(
      id=task.id, tests=tests,
      correct=all(known) if known and len(known) == len(tests) else None,
      decodes=sum(len(t["views"]) for t in tests),
      malformed=sum(sum(t["malformed_by_category"].values()) for t in tests),
      ttt=ttt)


def chunk_records(plan, chunk: list[int], slots: list[int], queries,
                  predictions, attempts: dict, ttt_metrics: dict,
                  empty_slots: bool) -> list[dict]:
  """A chunk's task records, in chunk order (skipped tasks included).

  Args:
    plan: the run's `ttt.plan.Plan` (tasks, skips).
    chunk: the chunk's task indices; slots: the used slots' task indices.
    queries, predictions: per query its `Query` and decoded predictions.
    attempts: {rule: per query [attempt_1, attempt_2]}, the main rule
      first (the others are recorded under `also`).
    ttt_metrics: per used slot lists `rows`, `final_loss`, `nonfinite`.
    empty_slots: a None prediction is an unused answer slot.
  """
  main, *others = attempts
  tests: dict[int, list] = {}
  for i, (q, p) in enumerate(zip(queries, predictions, strict=True)):
    tests.setdefault(q.task_index, []).append(query_record(
        q, p, attempts[main][i], none_is_empty=empty_slots,
        also={m: attempts[m][i] for m in others}))
  records = []
  for n in chunk:
    task = plan.tasks[n]
    if n in plan.too_long:
      records.append(dict(id=task.id, skipped=plan.too_long[n],
                          num_tests=len(task.test)))
      continue
    s = slots.index(n)
    records.append(task_record(task, tests.get(n, []), {
        k: ttt_metrics[k][s] for k in ("rows", "final_loss", "nonfinite")}))
    if ttt_metrics["nonfinite"][s]:
      logging.warning("task %r: TTT loss went non-finite; its adapter was "
                      "reset to the initial one", task.id)
  return records


def task_table(results: list[dict]) -> str:
  """One markdown row per task: id, pass@2, test inputs right, coverage,
  final TTT loss, or why it was skipped."""
  lines = ["| task | pass@2 | inputs right | truth among candidates | "
           "TTT loss | note |", "|---|---|---|---|---|---|"]
  for r in results:
    if r.get("skipped"):  # the reason may quote the task file: escaped
      lines.append(f"| {files.md_code(r['id'])} | – | – | – | – | skipped: "
                   f"{files.md_text(r['skipped'])} |")
      continue
    tests = r["tests"]
    right = sum(bool(t["correct"]) for t in tests)
    covered = sum(t["truth"] is not None and any(
        c["grid"] == t["truth"] for c in t["candidates"]) for t in tests)
    loss = (r.get("ttt") or {}).get("final_loss")
    note = "TTT loss non-finite: adapter reset" if (
        r.get("ttt") or {}).get("nonfinite") else ""
    verdict = {True: "✓", False: "✗", None: "unscored"}[r.get("correct")]
    lines.append(f"| {files.md_code(r['id'])} | {verdict} | "
                 f"{right}/{len(tests)} | "
                 f"{covered}/{len(tests)} | "
                 f"{'–' if loss is None else f'{loss:.3f}'} | {note} |")
  return "\n".join(lines)


# why a test input can end with no answer: the report says it, and a log
# line can (`NO_ANSWER.format(n=..., of=...)`)
NO_ANSWER = (
    "{n} of {of} test inputs have no answer: decoding found no candidate "
    "for them (every decode malformed, or none complete). Usual causes: "
    "`decode.max_new_tokens` below the answer's length, DFS "
    "`decode.max_steps` too small, VGB `decode.leaf_loop=0`, a prompt "
    "that leaves no room under `data.max_len`. The submission holds a 1x1 "
    "zero grid there.")


def write_outputs(workdir: str, results: list[dict], summary: dict,
                  tasks: list, header: str, num_renderings: int,
                  expected: dict[str, int]) -> None:
  """Writes the run's `submission.json` (checked against `expected`,
  entries per task id), `results.json` and `report.md`; a report that
  cannot be written is logged in full, the two JSON files being complete.
  """
  sub = submission(results)
  check_submission(sub, expected)
  files.write_json(os.path.join(workdir, "submission.json"), sub)
  files.write_json(os.path.join(workdir, "results.json"),
             dict(summary=summary, tasks=results))
  try:
    write_report(workdir, results, summary, {t.id: t for t in tasks},
                 summary["timings_s"], header, num_renderings)
  except Exception:  # noqa: BLE001 (logged in full; the run's files stay)
    logging.exception("report.md could not be written (results.json and "
                      "submission.json are complete)")


def log_done(summary: dict, path: str) -> None:
  """Logs the run's result (and a warning when inputs got no answer)."""
  if summary.get("no_answer_inputs"):
    logging.warning(NO_ANSWER.format(n=summary["no_answer_inputs"],
                                     of=summary["run_inputs"]))
  logging.info("done: pass@2 %d/%d tasks (%.1f%%), coverage %.1f%%, "
               "written to %s; time %s", summary["pass2_tasks"],
               summary["scored_tasks"], 100 * summary["pass2"],
               100 * summary["coverage"], path,
               {k: round(v, 1) for k, v in summary["timings_s"].items()})


def write_report(workdir: str, results: list[dict], summary: dict,
                 tasks_by_id: dict, timings: dict, header: str = "",
                 num_renderings: int = 8) -> str:
  """Writes `report.md` (and PNGs under `renderings/`).

  Ids enter the markdown escaped (`md_code`, `md_text`) and name their
  picture through `safe_name`. A picture that cannot be drawn (a record or
  task that does not fit, a file that cannot be written) is logged with the
  task's id and left out; the report is written all the same.

  Args:
    workdir: the run's directory.
    results: the task records (`task_record`, skipped ones included).
    summary: `score(results)`.
    tasks_by_id: {task id: `ttt.arc.Task`} of the scored tasks.
    timings: {stage: seconds}.
    header: a markdown paragraph under the title (the caller's own text,
      not escaped here).
    num_renderings: at most this many pictures, >= 0.

  Returns:
    The path of `report.md`.

  Raises:
    ValueError: `num_renderings` is not an integer >= 0.
  """
  check_num_renderings(num_renderings)
  s = summary
  lines = ["# TTT run report", ""]
  if header:
    lines += [header, ""]
  lines += [
      "| metric | value |", "|---|---|",
      f"| tasks | {s['tasks']} ({s['skipped_tasks']} skipped, "
      f"{s['scored_tasks']} scored) |",
      f"| pass@2 (tasks) | {s['pass2_tasks']}/{s['scored_tasks']} = "
      f"{100 * s['pass2']:.1f}% (of all tasks: {100 * s['pass2_all']:.1f}%)"
      " |",
      f"| pass@2 fractional | {100 * s['pass2_fractional']:.1f}% |",
      f"| pass@2 (test inputs) | {s['pass2_inputs']}/{s['test_inputs']} |",
      f"| attempt 1 right (test inputs) | {s['attempt1_inputs']}/"
      f"{s['test_inputs']} |",
      f"| candidate coverage | {100 * s['coverage']:.1f}% |",
      f"| malformed decodes | {s['malformed']}/{s['decodes']} |",
  ]
  if s.get("no_answer_inputs"):
    lines.append(f"| test inputs with no answer | {s['no_answer_inputs']}/"
                 f"{s['run_inputs']} |")
  for k, v in timings.items():
    lines.append(f"| time: {files.md_text(k)} | {v:.1f}s |")
  lines += memory_rows(s.get("memory_gb") or {})
  if s.get("no_answer_inputs"):
    lines += ["", "**No answer.** " + NO_ANSWER.format(
        n=s["no_answer_inputs"], of=s["run_inputs"])]
  lines += ["", "## Accuracy of single predictions, by view category", "",
            "| category | accuracy |", "|---|---|"]
  for cat, acc in s["category_accuracy"].items():
    lines.append(f"| {files.md_text(cat)} | {100 * acc:.1f}% |")
  lines += ["", "## Every task", "", task_table(results)]
  lines += ["", "## Sample of tasks", "",
            "Each picture: one row per demonstration (input | output), then "
            "one row per test input: input | truth | attempt 1 | attempt 2 "
            "(a blank where there is none). Solved tasks first, at most "
            f"{num_renderings} (`run.num_renderings`); every task is in the "
            "table above.", ""]
  scored = [r for r in results if not r.get("skipped")]
  solved = [r for r in scored if r.get("correct")]
  sample = (solved[:num_renderings // 2]
            + [r for r in scored if not r.get("correct")])[:num_renderings]
  folder = os.path.join(workdir, "renderings")
  try:
    os.makedirs(folder, exist_ok=True)
  except OSError as e:
    logging.warning("no renderings: cannot make %s: %s", folder, e)
    sample = []
  for r in sample:
    name = f"renderings/{files.safe_name(r['id'])}.png"
    verdict = ("solved" if r.get("correct") else
               "unscored" if r.get("correct") is None else "not solved")
    marks = " ".join("✓" if t.get("correct") else "–" if t.get("correct")
                     is None else "✗" for t in r.get("tests", ()))
    lines += [f"### {files.md_code(r['id'])} — {verdict} "
              f"(test inputs: {marks})",
              ""]
    try:
      render_task(os.path.join(workdir, name), tasks_by_id[r["id"]], r)
    except Exception as e:  # noqa: BLE001 -- one picture never costs the rest
      logging.warning("report: no picture of task %r: %r", r["id"], e)
      lines += [f"(no picture: drawing it failed with "
                f"{files.md_text(type(e).__name__)}: {files.md_text(e)})", ""]
      continue
    lines += [f"![{files.md_text(r['id'])}: demonstrations, then test input | "
              f"truth | attempt 1 | attempt 2]({name})", ""]
  path = os.path.join(workdir, "report.md")
  files.write_text(path, "\n".join(lines) + "\n")
  return path


def memory_rows(memory: dict) -> list[str]:
  """The report's memory rows from the summary's `memory_gb`: the peak
  resident memory of the run and of each stage, the budget and the chunk
  size it allowed, XLA's analysis of each program."""
  lines = []
  if "peak_rss" in memory:
    lines.append(f"| memory: peak resident | {memory['peak_rss']:.2f} GiB |")
  for k, v in memory.get("stages", {}).items():
    lines.append(f"| memory: peak in {files.md_text(k)} | {v:.2f} GiB |")
  if "budget" in memory:
    lines.append(f"| memory: budget | {memory['budget']:.2f} GiB "
                 f"({files.md_text(memory['budget_source'])}): chunks of "
                 f"{memory['chunk_size']} tasks, {memory['need']:.2f} GiB "
                 "estimated |")
  for k, v in (memory.get("chunk_size_per_bucket") or {}).items():
    lines.append(f"| memory: chunks at TTT rows / prompts {files.md_text(k)} | "
                 f"{v} tasks |")
  for k, v in memory.get("programs", {}).items():
    lines.append(f"| memory: {files.md_text(k)} program (XLA, per device) | "
                 f"{v:.3f} GiB |")
  return lines


def check_num_renderings(num_renderings) -> int:
  """Checks `run.num_renderings` (call it when the config is read).

  Args:
    num_renderings: how many tasks `write_report` draws.

  Returns:
    The value, an int >= 0.

  Raises:
    ValueError: a bool, a non-integer or a negative number.
  """
  if (isinstance(num_renderings, bool)
      or not isinstance(num_renderings, (int, np.integer))
      or num_renderings < 0):
    raise InputError("run.num_renderings must be an integer >= 0 (tasks "
                     f"drawn in report.md), got {num_renderings!r}")
  return int(num_renderings)
