"""The results notebook runs headless on a small results folder."""

from __future__ import annotations

import json
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


def _execute(run_dir: Path, monkeypatch) -> list[str]:
    """The notebook run on `run_dir`; the text/markdown it displayed."""
    nbformat, nbclient = pytest.importorskip("nbformat"), pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    monkeypatch.setenv("PTQ_RESULTS_DIR", str(run_dir))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(ROOT / "notebooks" / "results_plots.ipynb", as_version=4)
    nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
    return [o.get("data", {}).get("text/markdown", "") + o.get("text", "")
            for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]


def test_notebook_draws_a_layout_table_from_the_rows_and_takes_an_empty_folder(tmp_path, monkeypatch):
    """The paper table was read from paper_table.md, which a run stopped before its report (or rows added
    since) leaves behind the rows the generic table above it shows; a folder with no row yet was an
    AssertionError traceback, where `ptq-bench report` writes "(no rows)"."""
    run_dir = tmp_path / "bitnet_table3"
    shutil.copytree(ROOT / "results" / "bitnet_table3", run_dir)
    lines = (run_dir / "results.jsonl").read_text().splitlines(keepends=True)
    kept = [line for line in lines if json.loads(line)["model"] != "bitnet_b158"]
    assert len(kept) == len(lines) - 1
    (run_dir / "results.jsonl").write_text("".join(kept))  # bitnet_b158's row not in the rows now
    shown = "\n".join(_execute(run_dir, monkeypatch))
    paper = shown[shown.index("# BitNet Table 3"):]
    assert "| BitNet b1.58 |" not in paper and "| BitNet b1 |" in paper
    (run_dir / "results.jsonl").write_text("")
    assert any("(no rows)" in text for text in _execute(run_dir, monkeypatch))
