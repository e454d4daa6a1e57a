"""Files and the text that goes in them: the project's leaf IO helpers.

Atomic writes (`write_bytes`, `write_text`, `write_json`: a fresh temporary
file beside the target, then `os.replace`), strict JSON (`strict`), task ids
as file names (`safe_name`) and as inert markdown (`md_text`, `md_code`).
A leaf: it imports nothing from the project.
"""

from __future__ import annotations

import hashlib
import html
import json
import math
import os
import re
import unicodedata

# --- task ids as file names and as markdown ----------------------------------

_NAME_PREFIX = 40  # characters of the sanitised id kept in a file name
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9_-]")


def safe_name(task_id) -> str:
  """The file name stem for a task: safe on every file system, any id.

  A prefix of the id with every character but ASCII letters, digits, `_`
  and `-` replaced by `_` (at most 40, never starting with `-`), then `-`
  and 12 hex digits of the SHA-256 of the whole id: distinct ids get
  distinct names (to the hash), and '..', '/abs', 'a/b', '', NUL, 'CON' or a
  300-character id all give a plain name of at most 53 characters, never a
  path.

  Args:
    task_id: the id (normally a str; anything else is `str()`-ed).

  Returns:
    e.g. ``00576224-8f1e0a6c2b3d``; add the extension yourself.
  """
  text = task_id if isinstance(task_id, str) else str(task_id)
  digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
  prefix = _UNSAFE_NAME.sub("_", text[:_NAME_PREFIX])
  if prefix.startswith("-"):  # never read as a command-line option
    prefix = "_" + prefix[1:]
  return f"{prefix or '_'}-{digest[:12]}"


_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+!|~:=^$-])")
_PLAIN_CODE = re.compile(r"[A-Za-z0-9_.-]{1,200}")


def _visible(ch: str) -> str:
  """A character of a category that must not reach a report, spelled out."""
  if unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp", "Co", "Cn"):
    return ch.encode("unicode_escape").decode("ascii")  # newline: \\ and n
  return ch


def md_text(text) -> str:
  """`text` as inert inline markdown (an id, a skip reason, a file name).

  HTML-escapes `&`, `<`, `>`; backslash-escapes markdown's punctuation
  (`\\`, backticks, `*`, `_`, `{}`, `[]`, `()`, `#`, `+`, `!`, `|`, `~`,
  `:`, `=`, `^`, `$`, `-`); spells out control, format, separator and
  surrogate characters (a newline becomes the two characters `\\n`). The
  result is one line that renders as the literal text: no HTML, link,
  autolink, image, heading, emphasis, code span or table cell border.

  Args:
    text: any value (`str()`-ed).

  Returns:
    The escaped string.
  """
  text = text if isinstance(text, str) else str(text)
  text = "".join(_visible(ch) for ch in text)
  text = _MD_SPECIAL.sub(r"\\\1", text)
  text = re.sub(r"^(\d+)\.", r"\1\\.", text)  # not an ordered list item
  return html.escape(text, quote=False)


def md_code(text) -> str:
  """`text` as a code span when it is plain (ASCII letters, digits, `_.-`:
  nothing a code span could misread), ``(empty)`` for '', else as
  `md_text`. For ids in tables and headings: `` `00576224` `` stays as it
  always was.

  Args:
    text: any value (`str()`-ed).

  Returns:
    Inline markdown.
  """
  text = text if isinstance(text, str) else str(text)
  if _PLAIN_CODE.fullmatch(text):
    return f"`{text}`"
  if not text:
    return "(empty)"
  return md_text(text)


def strict(obj):
  """`obj` with every non-finite float replaced by None (strict JSON)."""
  if isinstance(obj, float):
    return obj if math.isfinite(obj) else None
  if isinstance(obj, dict):
    return {k: strict(v) for k, v in obj.items()}
  if isinstance(obj, list | tuple):
    return [strict(v) for v in obj]
  return obj


def write_text(path: str, text: str) -> None:
  """Writes `text` (UTF-8) atomically, as `write_bytes`."""
  write_bytes(path, text.encode("utf-8"))


def write_bytes(path: str, data: bytes) -> None:
  """Writes `data` atomically: a fresh temporary file in the target's
  folder (`tempfile.mkstemp`: a new name, created exclusively, so a link
  planted at a fixed `.tmp` name is never followed), then `os.replace`
  (which replaces a link at `path` itself, never its target). A failed
  write (disk full, say) removes the temporary file and raises an OSError
  naming `path`."""
  import tempfile
  folder = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path)
                             + ".", suffix=".tmp")
  try:
    os.fchmod(fd, 0o644)  # (mkstemp's 0600 would hide results from others)
    with os.fdopen(fd, "wb") as f:
      f.write(data)
    os.replace(tmp, path)
  except BaseException as e:
    try:
      os.unlink(tmp)
    except OSError:
      pass
    if isinstance(e, OSError):
      raise OSError(e.errno, f"could not write {path}: {e.strerror or e}"
                    ) from e
    raise


def write_json(path: str, obj) -> None:
  """Writes strict JSON (NaN/inf become null) atomically (temporary file,
  then rename)."""
  write_text(path, json.dumps(strict(obj), allow_nan=False))
