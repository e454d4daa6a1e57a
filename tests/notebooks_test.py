"""Every notebook under notebooks/ executes top to bottom on CPU, and is
stored stripped of outputs (the tests execute them; stored outputs would go
stale with every change and bloat the history)."""

import glob
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "notebooks", "*.ipynb")))


@pytest.mark.parametrize("path", NOTEBOOKS,
                         ids=[os.path.basename(p) for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path, monkeypatch):
  nbformat = pytest.importorskip("nbformat")
  nbclient = pytest.importorskip("nbclient")
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setenv("XLA_FLAGS", "")
  nb = nbformat.read(path, as_version=4)
  client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                   resources={"metadata": {"path": ROOT}})
  client.execute()
  errors = [o for c in nb.cells if c.cell_type == "code"
            for o in c.get("outputs", []) if o.get("output_type") == "error"]
  assert not errors


@pytest.mark.parametrize("path", NOTEBOOKS,
                         ids=[os.path.basename(p) for p in NOTEBOOKS])
def test_notebook_is_stored_stripped_and_says_what_and_how_long(path):
  import json

  with open(path, encoding="utf-8") as f:
    nb = json.load(f)
  code = [c for c in nb["cells"] if c["cell_type"] == "code"]
  assert all(not c.get("outputs") and c.get("execution_count") is None
             for c in code)
  intro = "".join(nb["cells"][0]["source"])
  assert nb["cells"][0]["cell_type"] == "markdown"
  assert "minute" in intro  # how long it takes, up front
