"""Table layouts as data: which table function fills a layout, which columns it shows, which plots go with it.

This module is light on purpose (no pandas, no matplotlib): `recipe.py` checks a recipe's `layout:`
against `LAYOUT_NAMES` at validate time. The functions a layout names are referenced by dotted name
("module:attribute") and imported only when a report is rendered (`Layout.table_fn`, `Layout.plot_fns`).

A table function is `fn(run: RunData, layout: Layout) -> pandas.DataFrame`; a plot function is
`fn(run: RunData, table: pandas.DataFrame, out: Path) -> list[Path]` (see `ptq_bench.report.write`).
Adding a layout is one entry here plus its table function.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

_PAPER = "ptq_bench.report.paper"
_PLOTS = "ptq_bench.report.plots"


@dataclass(frozen=True)
class Layout:
    name: str
    title: str  # markdown heading / LaTeX caption; "{recipe}": the recipe's name, "{shots}": zero-shot / 2-shot
    table: str  # dotted name of the table function
    columns: tuple[tuple[str, str], ...] = ()  # (task, metric) per accuracy column, labelled by TaskSpec.label;
    # () = every task the rows measured (the generic table)
    plots: tuple[str, ...] = ()  # dotted names of plot functions
    stem: str = "paper_table"  # files written: <stem>.md / .csv / .tex
    formats: tuple[str, ...] = ("md", "csv", "tex")
    reference: str | None = None  # dotted name of a function returning the paper's own table, printed below ours
    reference_title: str = ""

    def table_fn(self) -> Callable[..., Any]:
        return load(self.table)

    def plot_fns(self) -> list[Callable[..., Any]]:
        return [load(p) for p in self.plots]


def load(dotted: str) -> Any:
    """'package.module:attribute' -> the attribute (imports the module)."""
    module, _, attr = dotted.partition(":")
    return getattr(importlib.import_module(module), attr)


GENERIC = Layout(
    "generic", "Results: {recipe}", "ptq_bench.report.tables:generic_table",
    plots=(f"{_PLOTS}:plot_ppl_vs_bits", f"{_PLOTS}:plot_acc_vs_bits", f"{_PLOTS}:plot_kld_vs_bits",
           f"{_PLOTS}:plot_loss_curves"),
    stem="table", formats=("md", "csv"),
)
# written beside the generic table when some setting ran with several calibration seeds (report/spread.py)
SPREAD = Layout(
    "spread", "Results over calibration seeds (mean ± sample std over n seeds): {recipe}",
    "ptq_bench.report.spread:spread_table", stem="table_seeds", formats=("md", "csv"),
)

LAYOUTS: dict[str, Layout] = {
    "generic": GENERIC,  # written for every run; `layout: generic` adds nothing
    "bitnet_table3": Layout(
        "bitnet_table3", "BitNet Table 3: BitNet vs post-training quantization ({shots})", f"{_PAPER}:table3",
        columns=(("wsc273", "acc"), ("winogrande", "acc"), ("hellaswag", "acc_norm"), ("storycloze", "acc")),
    ),
    "bitnet_b158": Layout(
        "bitnet_b158", "BitNet b1.58 Tables 1/2: matched LLaMA vs BitNet b1.58 ({shots})", f"{_PAPER}:b158_table",
        columns=(("arc_easy", "acc_norm"), ("arc_challenge", "acc_norm"), ("hellaswag", "acc_norm"),
                 ("boolq", "acc"), ("openbookqa", "acc_norm"), ("piqa", "acc_norm"), ("winogrande", "acc")),
        plots=(f"{_PLOTS}:plot_scaling",),
        reference=f"{_PAPER}:paper_b158", reference_title="The paper's numbers (100B tokens, GPU)",
    ),
    "lr_stability": Layout(
        "lr_stability", "BitNet Table 7 / §3.4: training stability as the peak LR rises", f"{_PAPER}:stability_table",
        plots=(f"{_PLOTS}:plot_lr_stability",),
    ),
}
LAYOUT_NAMES: tuple[str, ...] = tuple(LAYOUTS)
# every figure a layout's plot functions may write (report/plots.py): with its tables, what a report derives
FIGURES = ("ppl_vs_bits.png", "acc_vs_bits.png", "kld_vs_bits.png", "loss_curves.png", "ppl_vs_size.png",
           "memory_vs_ppl.png", "lr_stability.png")


def derived_files() -> list[str]:
    """The file names a report may write into a run folder (tables of every layout, every figure)."""
    tables = [f"{lay.stem}.{fmt}" for lay in (GENERIC, SPREAD, *LAYOUTS.values()) for fmt in lay.formats]
    return list(dict.fromkeys([*tables, *FIGURES]))
