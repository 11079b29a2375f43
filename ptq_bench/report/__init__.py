"""Reports derived from a run folder: tables (markdown, CSV, LaTeX) and plots, one set per layout.

Light on import: the layouts (`ptq_bench.report.layouts`) are read at validate time; pandas and
matplotlib are imported only when a report is rendered.
"""

from __future__ import annotations

from pathlib import Path

from ptq_bench.errors import PtqBenchError


def render(run_dir: str | Path) -> list[Path]:
    """Write the generic table.{md,csv} and plots, and the recipe layout's files, into `run_dir`."""
    from ptq_bench.report.run import load_run
    from ptq_bench.report.write import render_run
    from ptq_bench.results import RESULTS

    run_dir = Path(run_dir)
    if not (run_dir / RESULTS).is_file():
        raise PtqBenchError(_not_a_run_dir(run_dir, RESULTS))
    return render_run(load_run(run_dir))


def _not_a_run_dir(run_dir: Path, results: str) -> str:
    """Why `run_dir` is not a results folder, and which path was meant where that can be told."""
    if run_dir.is_file():
        meant = f"; its folder is `ptq-bench report {run_dir.parent}`" if run_dir.name == results else ""
        return f"{run_dir} is a file, not a results folder (report takes the output_dir a run wrote){meant}"
    inner = sorted(str(d.parent) for d in run_dir.glob(f"*/{results}"))[:5] if run_dir.is_dir() else []
    if inner:
        return f"no results found: {run_dir / results}; results folders inside it: {', '.join(inner)}"
    return f"no results found: {run_dir / results}"
