"""Write a run's tables and plots: the generic layout always, plus the recipe's `layout:` if it names one.

Every layout goes through the same steps, read from its `Layout` entry: build its table, write the
table in each of its formats, draw its plots.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ptq_bench.cache import write_atomic
from ptq_bench.report.fmt import md_line, to_csv, to_latex, to_markdown
from ptq_bench.report.layouts import GENERIC, LAYOUTS, SPREAD, Layout, load
from ptq_bench.report.run import RunData, shots
from ptq_bench.report.tables import column_keys, csv_keys, notes, table_notes

if TYPE_CHECKING:
    import pandas as pd


def chosen_layouts(run: RunData) -> list[Layout]:
    """The generic layout (and its seed spread when there is one), then the one the run's recipe names
    (once; an unknown name is a note)."""
    from ptq_bench.report.spread import has_spread

    name = run.recipe.get("layout")
    if name is not None and (not isinstance(name, str) or name not in LAYOUTS):
        run.damage.append(f"- manifest names layout {str(name)[:40]!r}, which this version does not know: skipped.")
    extra = LAYOUTS.get(name) if isinstance(name, str) else None
    spread = [SPREAD] if has_spread(run) else []
    return list(dict.fromkeys([GENERIC, *spread, *([extra] if extra else [])]))


def _title(run: RunData, layout: Layout) -> str:
    title = layout.title.replace("{recipe}", run.recipe_name)
    if "{shots}" in title:  # a paper layout: its own columns are zero-shot
        label = shots(run.rows)
        title = title.replace("{shots}", label if label == "zero-shot" else f"{label}; the paper's columns: zero-shot")
    return title


def _markdown(run: RunData, layout: Layout, df: pd.DataFrame) -> str:
    parts = [md_line(f"# {_title(run, layout)}"), "", to_markdown(df) if len(df.columns) else "(no rows)"]
    if layout.reference:
        parts += ["", f"## {layout.reference_title}", "", to_markdown(load(layout.reference)())]
    return "\n".join([*parts, "", *notes(run, layout, df)]) + "\n"


def _caption(run: RunData, layout: Layout, df: pd.DataFrame) -> str:
    """The LaTeX caption: the title, what a paper layout's short headers measure (the md's first note) and the
    notes its table function attached (where the paper's columns come from)."""
    keys = column_keys(run, layout, df).replace("`", "")
    extra = "".join(f" {n.removeprefix('- ').replace('`', '')}" for n in table_notes(df))
    return _title(run, layout) + (f". Columns: {keys}." if keys else "") + extra


WRITERS: dict[str, Callable[[RunData, Layout, pd.DataFrame], str]] = {
    "md": _markdown,
    "csv": lambda run, layout, df: to_csv(df, csv_keys(run, layout, df)),
    "tex": lambda run, layout, df: to_latex(df, _caption(run, layout, df)),
}


def write_layout(run: RunData, layout: Layout) -> list[Path]:
    """<stem>.<format> for each of the layout's formats, then its plots; returns the paths written."""
    df = layout.table_fn()(run, layout)
    written = []
    for fmt in layout.formats:
        path = run.run_dir / f"{layout.stem}.{fmt}"
        write_atomic(path, WRITERS[fmt](run, layout, df))  # a killed report leaves whole files
        written.append(path)
    for plot in layout.plot_fns():
        written += plot(run, df, run.run_dir)
    return written


def render_run(run: RunData) -> list[Path]:
    written = []
    for layout in chosen_layouts(run):
        written += write_layout(run, layout)
    _remove_stale(run, written)
    return written


def _remove_stale(run: RunData, written: list[Path]) -> None:
    """Remove what an earlier report derived that this one did not: a layout the recipe no longer names (its
    paper table, its figures), a figure with nothing left to draw. Left there, they were read as current
    beside the new tables (the notebook shows paper_table.md and the layout figures it finds)."""
    from ptq_bench.console import log
    from ptq_bench.report.layouts import derived_files

    layout = run.recipe.get("layout")
    if run.manifest is None or (layout is not None and (not isinstance(layout, str) or layout not in LAYOUTS)):
        return
    for name in derived_files():
        path = run.run_dir / name
        if path not in written and path.is_file():
            path.unlink()
            log(f"removed {path}: an earlier report's, not derived from this run folder now")
