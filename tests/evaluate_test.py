"""Tests for ttt.evaluate: file names and markdown from untrusted task ids,
and a report that survives a picture that cannot be drawn."""

import logging
import os
import random
import re

import numpy as np
import pytest

from ttt import arc, evaluate, files

# ids a challenges file may hold (the refused ones included: the report
# must be safe even for a record that never went through arc.check_task_id)
NASTY = [
    "../../x", "../../../../../../tmp/evil", "/abs/path", "/", "a/b", "a\\b",
    "C:\\x", "", "\x00", "a\x00b", ".", "..", "...", "x" * 300, "ünïcødé-任务",
    "CON", "con.png", "NUL", "-rf", "~", "$HOME", "a\nb", "\r\n", "\t",
    "\u202e", "\ud800", " ", "a b", "x.png", "renderings", "%2e%2e%2f",
    "<script>alert(1)</script>", "[x](javascript:alert(1))",
    "![](http://evil.example/x.png)", "# heading", "a | b\n| fake | row |",
    "`code`", "**bold**", "_", "-", "__init__", "00576224",
]


def _random_ids(n: int, seed: int = 0) -> list[str]:
  """A seeded sweep over ids made of the characters that matter."""
  rng = random.Random(seed)
  alphabet = list("./\\\x00\n\r:*?\"<>|#[]()!`_-~ aZ9") + ["..", "é", "\u202e",
                                                         "\ud800", "任"]
  return ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))
          for _ in range(n)]


def test_safe_name_is_a_plain_file_name_for_any_id(tmp_path):
  ids = NASTY + _random_ids(2000)
  folder = os.path.realpath(tmp_path / "renderings")
  names = {}
  for task_id in ids:
    name = files.safe_name(task_id)
    assert re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,39}-[0-9a-f]{12}",
                        name), (task_id, name)
    path = os.path.realpath(os.path.join(folder, name + ".png"))
    assert os.path.dirname(path) == folder, (task_id, path)
    assert os.path.basename(path) == name + ".png"
    names.setdefault(name, set()).add(task_id)
  # distinct ids, distinct names; the same id, the same name
  assert all(len(v) == 1 for v in names.values())
  assert files.safe_name("a/b") == files.safe_name("a/b")
  assert files.safe_name("a/b") != files.safe_name("a_b")
  assert files.safe_name("00576224").startswith("00576224-")


def _task(task_id: str) -> arc.Task:
  g = np.array([[1, 2], [3, 4]], np.int8)
  return arc.Task(task_id, [(g, g[::-1])], [(g, g[:, ::-1])])


def _record(task_id: str, right: bool) -> dict:
  truth = [[2, 1], [4, 3]]
  answer = truth if right else [[0]]
  return dict(id=task_id, correct=right, decodes=1, malformed=0, ttt={},
              tests=[dict(attempt_1=answer, attempt_2=answer, truth=truth,
                          candidates=[dict(grid=answer, count=1,
                                           views=["identity"],
                                           categories={"identity": 1})],
                          views=["identity"], correct=right,
                          malformed_by_category={})])


def _report(workdir, ids, skipped=(), **kwargs):
  results = [dict(id=i, skipped=why, num_tests=1) for i, why in skipped]
  results += [_record(i, n % 2 == 0) for n, i in enumerate(ids)]
  kwargs.setdefault("num_renderings", 2 * len(ids))
  path = evaluate.write_report(str(workdir), results,
                               evaluate.score(results),
                               {i: _task(i) for i in ids}, {"total": 1.0},
                               **kwargs)
  with open(path, encoding="utf-8") as f:
    return results, f.read()


def _files(root) -> set[str]:
  return {os.path.relpath(os.path.join(d, f), root)
          for d, _, files in os.walk(root) for f in files}


def test_no_id_writes_outside_the_workdir(tmp_path):
  """Every id draws its picture inside workdir/renderings, under its
  safe_name, and the report links to that very file."""
  workdir = tmp_path / "a" / "b" / "run"
  ids = [i for i in dict.fromkeys(NASTY + _random_ids(40, seed=1))]
  _, report = _report(workdir, ids)
  inside = _files(workdir)
  assert _files(tmp_path) == {os.path.join("a", "b", "run", f)
                              for f in inside}
  pictures = {os.path.join("renderings", files.safe_name(i) + ".png")
              for i in ids}
  assert inside == pictures | {"report.md"}
  links = re.findall(r"!\[.*\]\((.*)\)$", report, re.M)
  assert sorted(links) == sorted(p.replace(os.sep, "/") for p in pictures)
  for i in ids:  # the picture under the task's heading is the task's own
    section = report.split(f"### {files.md_code(i)} — ", 1)[1]
    link = re.search(r"!\[.*\]\((.*)\)$", section, re.M).group(1)
    assert link == f"renderings/{files.safe_name(i)}.png"
    with open(workdir / link, "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"


EVIL = ["<script>alert(1)</script>", "[click](javascript:alert(1))",
        "# heading", "![](http://evil.example/x.png)",
        "a | b\n| fake | row |", "<img src=x onerror=alert(1)>",
        "`x` **b** _i_", "&lt;b&gt;", "line\u2028sep", "1. list",
        "- item", "> quote", "<http://evil.example>", "x\\|y"]


def _html(markdown: str) -> str:
  markdown_it = pytest.importorskip("markdown_it")
  md = markdown_it.MarkdownIt("commonmark", {"html": True})
  return md.enable("table").render(markdown)


def test_ids_and_reasons_cannot_inject_markdown(tmp_path):
  skipped = [(f"skip{n}{e}", f"holds {e!r}: {e}") for n, e in enumerate(EVIL)]
  results, report = _report(tmp_path, EVIL, skipped)
  html = _html(report)
  assert "<script" not in html and "<img src=x" not in html
  for value in re.findall(r'(?:href|src)="([^"]*)"', html):
    assert value.startswith("renderings/"), value  # no link, no remote image
  assert "<a " not in html and "<blockquote" not in html
  assert "<ol" not in html and "<ul" not in html
  assert "<strong" not in html and "<em" not in html
  # images: only the report's own pictures
  assert re.findall(r'<img src="([^"]*)"', html) == [
      f"renderings/{files.safe_name(i)}.png" for i in
      [EVIL[n] for n in range(0, len(EVIL), 2)]
      + [EVIL[n] for n in range(1, len(EVIL), 2)]]
  # headings: the report's own, one per picture
  assert len(re.findall(r"<h1>", html)) == 1
  assert len(re.findall(r"<h2>", html)) == 3
  assert len(re.findall(r"<h3>", html)) == len(EVIL)
  # the task table: one row per record, six cells each
  table = html.split("<h2>Every task</h2>")[1].split("</table>")[0]
  rows = re.findall(r"<tr>(.*?)</tr>", table, re.S)
  assert len(rows) == 1 + len(results)
  assert all(len(re.findall(r"<t[dh]>", r)) == 6 for r in rows)
  for line in report.splitlines():  # one line per row, no raw control
    assert not re.search(r"[\x00-\x08\x0b-\x1f\u2028\u2029]", line)


def test_md_text_renders_as_the_literal_text():
  for text in EVIL + ["plain 0-9 (a) [b]", "tab\there", "\x00"]:
    html = _html(f"| x |\n|---|\n| {files.md_text(text)} |\n")
    cell = re.search(r"<td>(.*)</td>", html, re.S).group(1)
    import html as html_lib

    shown = html_lib.unescape(cell)
    visible = "".join(c.encode("unicode_escape").decode() if c in
                      "\x00\t\n\u2028" else c for c in text)
    assert shown == visible, (text, cell)
  assert files.md_code("00576224") == "`00576224`"
  assert files.md_code("a|b") == "a\\|b"
  assert files.md_code("") == "(empty)"


def test_a_picture_that_fails_is_logged_and_the_report_written(
    tmp_path, monkeypatch, caplog):
  ids = ["good1", "bad\nWARNING forged", "good2"]
  real = evaluate.render_task

  def render(path, task, record):
    if task.id == ids[1]:
      raise RuntimeError("boom")
    real(path, task, record)

  monkeypatch.setattr(evaluate, "render_task", render)
  with caplog.at_level(logging.WARNING):
    _, report = _report(tmp_path, ids)
  assert "no picture of task 'bad\\nWARNING forged'" in caplog.text
  assert not any(line.startswith("WARNING forged")
                 for line in caplog.text.splitlines())
  assert "(no picture: drawing it failed with RuntimeError: boom)" in report
  assert sorted(os.listdir(tmp_path / "renderings")) == sorted(
      files.safe_name(i) + ".png" for i in ("good1", "good2"))
  assert "| `good2` |" in report  # the rest of the report is there
  # a record without its task (no Task to draw): the same
  monkeypatch.setattr(evaluate, "render_task", real)
  results = [_record("orphan", True), _record("good1", True)]
  path = evaluate.write_report(str(tmp_path), results,
                               evaluate.score(results),
                               {"good1": _task("good1")}, {})
  with open(path, encoding="utf-8") as f:
    assert "drawing it failed with KeyError" in f.read()


def test_num_renderings_must_be_a_count(tmp_path):
  with pytest.raises(ValueError, match="num_renderings must be an integer "
                     ">= 0.*got -1"):
    _report(tmp_path, ["a", "b"], num_renderings=-1)
  for bad in (True, 1.5, "3"):
    with pytest.raises(ValueError, match="num_renderings"):
      evaluate.check_num_renderings(bad)
  _, report = _report(tmp_path, ["a", "b", "c"], num_renderings=0)
  assert os.listdir(tmp_path / "renderings") == []
  assert "### " not in report
  _, report = _report(tmp_path, ["a", "b", "c"], num_renderings=1)
  assert len(os.listdir(tmp_path / "renderings")) == 1


def test_test_inputs_with_no_answer_are_counted_and_explained(tmp_path):
  """'malformed 0/120' and no word was all a run with no candidate said."""
  empty = _record("e", False)
  empty["tests"][0].update(attempt_1=None, attempt_2=None, candidates=[],
                           correct=False)
  unscored = _record("u", True)
  unscored["tests"][0].update(attempt_1=None, attempt_2=None, candidates=[],
                              truth=None, correct=None)
  results = [_record("a", True), empty, unscored]
  summary = evaluate.score(results)
  assert (summary["no_answer_inputs"], summary["run_inputs"]) == (2, 3)
  path = evaluate.write_report(str(tmp_path), results, summary,
                               {r["id"]: _task(r["id"]) for r in results}, {})
  with open(path, encoding="utf-8") as f:
    report = f.read()
  assert "| test inputs with no answer | 2/3 |" in report
  assert "**No answer.** 2 of 3 test inputs have no answer" in report
  assert "decode.max_new_tokens" in report
  _, plain = _report(tmp_path / "fine", ["a"])
  assert "no answer" not in plain


def test_submission_errors_show_ids_on_one_line():
  with pytest.raises(ValueError) as info:
    evaluate.check_submission({"a\nERROR forged": []})
  assert "\n" not in str(info.value)
  assert "'a\\nERROR forged'" in str(info.value)
  with pytest.raises(ValueError) as info:
    evaluate.check_submission({}, {"x\ny": 1})
  assert "\n" not in str(info.value)
