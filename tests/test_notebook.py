"""The results notebook runs headless on a small results folder."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_results_notebook_runs_headless(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    run_dir = tmp_path / "quickstart"
    shutil.copytree(ROOT / "results" / "quickstart", run_dir)
    monkeypatch.setenv("PTQ_RESULTS_DIR", str(run_dir))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(ROOT / "notebooks" / "results_plots.ipynb", as_version=4)
    before = set(os.listdir(tempfile.gettempdir()))
    nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if "image/png" in o.get("data", {})]
    assert len(images) == len(list((ROOT / "results" / "quickstart").glob("*.png")))  # the report's own plots
    assert sorted(os.listdir(run_dir)) == sorted(os.listdir(ROOT / "results" / "quickstart"))  # nothing written into results
    left = [p for p in set(os.listdir(tempfile.gettempdir())) - before
            if list((Path(tempfile.gettempdir()) / p).glob("*.png"))]
    assert not left, f"the notebook's scratch plots were left in the temp folder: {left}"
