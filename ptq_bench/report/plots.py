"""Plots derived from a run's result store. Each takes (run, the layout's table, out folder) -> paths written.

A value that was not measured (None) is not drawn. A measured value that is NaN or ±inf is never
dropped silently: it is drawn at the edge of the axis (top for NaN and +inf, bottom/left for -inf) with
a marker and a text label saying what it was. Several rows at one x on one line (the same setting over
calibration seeds) are drawn at their mean with a min–max error bar.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ptq_bench.cache import naming, removed_on_failure, temp_sibling
from ptq_bench.report.fmt import md_cell, nonfinite_name, param_count
from ptq_bench.report.run import RunData, metrics, ppl, ppl_keys, ran_on, shots, task_protocol
from ptq_bench.report.tables import ACC_SUFFIXES, headline_metrics

if TYPE_CHECKING:
    import pandas as pd

_EDGE_MARKER = {"nan": "X", "inf": "^", "-inf": "v"}


def _finite(v: float) -> bool:
    return math.isfinite(v)


class Marks:
    """Draws finite points as lines; keeps non-finite ones for the axis edges once the limits are known."""

    def __init__(self) -> None:
        self.pending: list[tuple[float, float, Any]] = []
        self.bars = False  # some x drew several seeds as a min–max bar (`_finish` says so in the title)

    def line(self, ax: Any, xs: list[Any], ys: list[Any], **kw: Any) -> Any:
        pts = [(float(x), float(y)) for x, y in zip(xs, ys) if x is not None and y is not None]
        fin = [(x, y) for x, y in pts if _finite(x) and _finite(y)]
        art = ax.plot([p[0] for p in fin], [p[1] for p in fin], **kw)[0]
        self.pending += [(x, y, art.get_color()) for x, y in pts if not (_finite(x) and _finite(y))]
        return art

    def spread_line(self, ax: Any, xs: list[Any], ys: list[Any], **kw: Any) -> Any:
        """`line` through the mean of the finite ys at each x, with min–max error bars where an x has several."""
        by_x: dict[Any, list[float]] = defaultdict(list)
        for x, y in zip(xs, ys):
            if x is not None and y is not None:
                by_x[float(x)].append(float(y))
        pts = sorted(by_x.items(), key=lambda p: p[0] if _finite(p[0]) else math.inf)
        mean = [sum(v) / len(v) for _, v in pts]  # a non-finite seed makes the mean non-finite: marked; equal
        # values can sum to a mean an ulp outside their min–max, a negative bar matplotlib refuses: drawn as 0
        art = self.line(ax, [x for x, _ in pts], mean, **kw)
        bars = [(x, m, min(v), max(v)) for (x, v), m in zip(pts, mean) if len(v) > 1 and _finite(m) and _finite(x)]
        if bars:
            self.bars = True
            ax.errorbar([b[0] for b in bars], [b[1] for b in bars], yerr=[[max(b[1] - b[2], 0.0) for b in bars],
                        [max(b[3] - b[1], 0.0) for b in bars]], fmt="none", ecolor=art.get_color(), capsize=3)
        return art

    def draw(self, ax: Any) -> int:
        """Put each non-finite point on the axis edge, labelled; returns how many were drawn."""
        _include_finite_coordinates(ax, self.pending)
        (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
        ax.set_xlim(x0, x1)
        ax.set_ylim(y0, y1)  # fixed: the edge markers must not move the limits
        for x, y, color in self.pending:
            px, py = _edge(x, x0, x1), _edge(y, y0, y1)
            label = " ".join(f"{axis} {md_cell(v)}" for axis, v in (("x", x), ("y", y)) if not _finite(v))
            marker = _EDGE_MARKER[nonfinite_name(y if not _finite(y) else x)]
            ax.plot([px], [py], marker=marker, markersize=10, color=color, linestyle="none", clip_on=False, zorder=6)
            ax.annotate(label, (px, py), textcoords="offset points", xytext=(6, -10 if py == y1 else 4),
                        fontsize=7, color=color, annotation_clip=False)
        return len(self.pending)


def _include_finite_coordinates(ax: Any, pending: list[tuple[float, float, Any]]) -> None:
    """Widen the limits to the finite coordinate of each non-finite point (a NaN loss at 2048 tokens after a
    lone finite point at 1024): its edge marker stays inside the axes rather than beyond them."""
    data = ax.dataLim  # a point already drawn stands in for the non-finite coordinate (the view's limits
    x0 = data.x0 if _finite(data.x0) else ax.get_xlim()[0]  # carry margins, which would be added again)
    y0 = data.y0 if _finite(data.y0) else ax.get_ylim()[0]
    extra = [(x if _finite(x) else x0, y if _finite(y) else y0) for x, y, _ in pending if _finite(x) or _finite(y)]
    if extra:
        ax.update_datalim(extra)
        ax.autoscale_view()


def _edge(v: float, lo: float, hi: float) -> float:
    if _finite(v):
        return v
    return lo if v < 0 else hi  # NaN and +inf at the top / right


def _bits_axis(ax: Any) -> None:
    """x axis of weight bits, log2-spaced, with the widths the papers use."""
    ax.set_xscale("log", base=2)
    ax.set_xticks([1, 1.58, 2, 3, 4, 8, 16])
    ax.set_xticklabels(["1", "1.58", "2", "3", "4", "8", "16"])
    ax.set_xlabel("weight bits")


def _figure(size: tuple[float, float], ncols: int = 1) -> tuple[Any, list[Any]]:
    """A figure and its row of `ncols` axes (sharing y)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=size, sharey=True, squeeze=False)
    return fig, list(axes[0])


def _save(fig: Any, path: Path) -> Path:
    """Drawn into a sibling temp file (same suffix: matplotlib reads the format from it), then renamed: a
    killed report leaves the old figure or the new one, never an empty file."""
    import matplotlib.pyplot as plt
    from matplotlib.text import Text

    for text in fig.findobj(Text):  # a run folder's names are text: "a$\\frac{$b" is no mathtext (it was a traceback)
        text.set_parse_math(False)
    tmp = temp_sibling(path)
    fig.tight_layout()
    try:
        with removed_on_failure(tmp), naming(path):  # the rename too: a failed one left the temp file for good
            fig.savefig(tmp, dpi=120)
            os.replace(tmp, path)
    finally:
        plt.close(fig)
    return path


def _w(rec: dict[str, Any]) -> float | None:
    return float(rec["W"]) if rec.get("W") is not None else None


_VERSIONS = ("method v", "eval v")  # the table's version columns (report/run.py VERSION_FIELDS)


def _line_key(rec: dict[str, Any]) -> tuple:
    """One line per (model, method, activation bits, setting, versions): per-channel and g128 are two lines,
    and so are seeds computed by another method or eval version (a run resumed after an upgrade)."""
    return (rec["model"], rec["method"], rec["A"], rec.get("setting") or "", *(rec.get(v) for v in _VERSIONS))


def _line_label(key: tuple, keys: list[tuple] | None = None) -> str:
    """The legend entry; versions named only where another line of `keys` differs from it by them alone."""
    model, method, a_bits, setting, *vers = key
    twins = [k for k in keys or [] if k[:4] == key[:4] and k != key]
    named = [f"{name}{v}" for j, (name, v) in enumerate(zip(_VERSIONS, vers)) if any(t[4 + j] != v for t in twins)]
    return f"{model} + {method} A{a_bits}" + (f" {setting}" if setting else "") + (f" ({', '.join(named)})" if named else "")


_SERIES_MARKERS = ("o", "s", "D", "P", "h", "p", "<", ">")  # not the edge markers (X ^ v) nor the base's star
_SERIES_DASHES = ("-", "--", "-.", ":")


def _series_style(i: int) -> dict[str, Any]:
    """Series i's marker and dash, hollow markers: series of equal value (two settings that leave a model
    alike) no longer hide one another — each outline and dash stays visible where they coincide."""
    return {"marker": _SERIES_MARKERS[i % len(_SERIES_MARKERS)], "linestyle": _SERIES_DASHES[i % len(_SERIES_DASHES)],
            "markerfacecolor": "none", "markeredgewidth": 1.5}


def _bits_lines(ax: Any, marks: Marks, recs: list[dict[str, Any]], col: str) -> None:
    """One line per (model, method, activation bits, setting) through its measured weight bits only (a
    line to the unquantized model at 16 bits would draw W16A4 and the bits in between as measured); each
    unquantized / native model as a star. A series with no measured value gets no legend entry."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in recs:
        if r["method"] != "none" and r.get(col) is not None:
            groups[_line_key(r)].append(r)
    for i, (key, g) in enumerate(groups.items()):
        marks.spread_line(ax, [_w(r) for r in g], [r[col] for r in g], label=_line_label(key, list(groups)),
                          **_series_style(i))
    for r in (r for r in recs if r["method"] == "none" and r.get(col) is not None):
        marks.line(ax, [_w(r)], [r[col]], marker="*", markersize=14, linestyle="none", zorder=5,
                   label=f"{r['model']} (native {r['W']}-bit)")


def _title(ax: Any, text: str, rows: list[dict[str, Any]], **kw: Any) -> None:
    """The axis title, with a line saying where the rows ran unless float32 on the CPU (`ran_on`)."""
    where = ran_on(rows)
    ax.set_title("\n".join(t for t in (text, where) if t), **kw)


def _finish(fig: Any, ax: Any, marks: Marks, path: Path, log_grid: bool = False, legend_size: int = 7) -> list[Path]:
    """Grid, the non-finite marks, the legend, then save: the common ending of a one-axis plot."""
    ax.grid(True, which="both" if log_grid else "major", alpha=0.3)
    if marks.bars:  # table_seeds gives mean ± std: the figure says its bars are not that
        ax.title.set_text(ax.title.get_text() + "\nerror bars: min–max over calibration seeds")
    marks.draw(ax)
    ax.legend(fontsize=legend_size, loc="best")
    return [_save(fig, path)]


def plot_ppl_vs_bits(run: RunData, df: pd.DataFrame, out: Path, ppl_col: str | None = None) -> list[Path]:
    """Perplexity (log scale) against weight bits: one line per (model, method, activation bits)."""
    cols = [c for c in df.columns if c.startswith("ppl_")]
    if df.empty or not cols:
        return []
    col = ppl_col or next((c for c in cols if "/wikitext2/" in c), cols[0])
    fig, (ax,) = _figure((7, 4.5))
    marks = Marks()
    _bits_lines(ax, marks, df.to_dict("records"), col)
    _bits_axis(ax)
    ax.set_yscale("log")
    ax.set_ylabel(col)
    _title(ax, "Perplexity against weight bits", run.rows)
    return _finish(fig, ax, marks, out / "ppl_vs_bits.png", log_grid=True)


def plot_acc_vs_bits(run: RunData, df: pd.DataFrame, out: Path) -> list[Path]:
    """Average accuracy (zero-shot, or the run's shots) against weight bits, one line per (model, method, activation bits)."""
    if df.empty or "avg_acc" not in df or all(v is None for v in df["avg_acc"]):
        return []
    fig, (ax,) = _figure((7, 4.5))
    marks = Marks()
    _bits_lines(ax, marks, df.to_dict("records"), "avg_acc")
    _bits_axis(ax)
    tasks = [c for c in df.columns if c.endswith(ACC_SUFFIXES)]
    docs = task_protocol(run.rows, "limit", lambda n: "every document" if n is None else f"at most {n} documents each")
    ax.set_ylabel(f"average {shots(run.rows)} accuracy (%)")
    se = _avg_stderr(run.rows)  # NaN: the rows carry no `_stderr` (written before they were stored)
    _title(ax, f"mean of {len(tasks)} tasks' acc_norm (acc where lm-eval has no acc_norm),\n"
           f"{docs}; "
           + (f"a point's standard error ≈ {se:.1f}" if _finite(se) else "standard errors not recorded"),
           run.rows, fontsize=8)
    return _finish(fig, ax, marks, out / "acc_vs_bits.png")


def _avg_stderr(rows: list[dict[str, Any]]) -> float:
    """The median over rows of the standard error of a row's task average, in points: sqrt(sum se_i^2) / n
    over the stderrs lm-eval reported for the accuracies the tables show (`headline_metrics`: acc_norm, else
    acc) — what a difference between two points must exceed."""
    import statistics

    per_row = []
    for r in rows:
        m = metrics(r)
        shown = [k for k in headline_metrics(m) if k.endswith(ACC_SUFFIXES)]
        ses = [v for v in (m.get(f"lm_eval/{k}_stderr") for k in shown) if isinstance(v, (int, float)) and _finite(v)]
        if ses:
            per_row.append(100 * math.sqrt(sum(v * v for v in ses)) / len(ses))
    return statistics.median(per_row) if per_row else math.nan


def plot_kld_vs_bits(run: RunData, df: pd.DataFrame, out: Path) -> list[Path]:
    """Mean KL divergence to the base model (log scale) against effective bits, one line per (model,
    method, activation bits); seeds of one setting at their mean with a min–max bar."""
    cols = [c for c in df.columns if c.startswith("kld/") and c.endswith("/mean")]
    if df.empty or not cols or "eff_bits" not in df:
        return []
    col = next((c for c in cols if "/wikitext2/" in c), cols[0])
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in df.to_dict("records"):
        if r["method"] != "none" and r.get(col) is not None:
            groups[_line_key(r)].append(r)
    fig, (ax,) = _figure((7, 4.5))
    marks = Marks()
    for i, (key, g) in enumerate(groups.items()):
        marks.spread_line(ax, [r.get("eff_bits") for r in g], [r[col] for r in g], label=_line_label(key, list(groups)),
                          **_series_style(i))
    ax.set_yscale("log")
    ax.set_xlabel("effective bits per weight (scales and zeros included)")
    ax.set_ylabel(col + " (nats)")
    _title(ax, "KL divergence to the unquantized model against effective bits", run.rows)
    return _finish(fig, ax, marks, out / "kld_vs_bits.png", log_grid=True)


def plot_loss_curves(run: RunData, df: pd.DataFrame, out: Path) -> list[Path]:
    """Training loss against tokens for every trained model of the run (curves/<model>.json)."""
    if not run.curves:
        return []
    fig, (ax,) = _figure((7, 4.5))
    marks = Marks()
    for c in run.curves.values():
        pts = c.get("curve") or []
        amp = (c.get("trained_on") or {}).get("autocast")  # e.g. bfloat16 for a model trained on CUDA
        label = f"{c.get('model')} ({c.get('kind')}{f', {amp} autocast' if amp else ''})" + (
            " — diverged" if c.get("diverged") else "")
        marks.line(ax, [p.get("tokens") for p in pts], [p.get("loss") for p in pts], label=label)
    _tokens_axis(ax)
    ax.set_ylabel("training loss (cross-entropy, nats per token)")
    return _finish(fig, ax, marks, out / "loss_curves.png", legend_size=8)


def _tokens_axis(ax: Any) -> None:
    """Training tokens in thousands or millions (raw counts ran into each other on narrow panels)."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(nbins=5))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v / 1e6:g}M" if v >= 1e6 else f"{v / 1e3:g}K"))
    ax.set_xlabel("training tokens")


def _mb(r: dict[str, Any]) -> float | None:
    return r["weight_bytes"] / 1e6 if r.get("weight_bytes") is not None else None


_PPL = "{ppl}"  # stands for the rows' perplexity key in the labels below
_SCALING = (  # file, x of a row, y of a row, x label, y label, log x
    ("ppl_vs_size.png", lambda r: r["n_params"] / 1e6, ppl, "parameters (M)", _PPL, True),
    ("memory_vs_ppl.png", ppl, _mb, _PPL, "stored weights (MB; BitNet packed)", False),
)


def _ppl_name(rows: list[dict[str, Any]]) -> str:
    keys = ppl_keys(rows)
    return keys[0] if len(keys) == 1 else "WikiText-2 PPL, GPTQ protocol (rows mix: " + ", ".join(keys) + ")"


def plot_scaling(run: RunData, df: pd.DataFrame, out: Path) -> list[Path]:
    """Perplexity against parameter count, and stored weight memory against perplexity, per model kind.
    Each kind's points are joined in order of size (the order a scaling line means) and labelled with it."""
    base = sorted((r for r in run.rows if r.get("method") == "none" and r.get("n_params")), key=lambda r: r["n_params"])
    if not base:
        return []
    paths, ppl_name = [], _ppl_name(base)
    for name, x_of, y_of, xlabel, ylabel, logx in _SCALING:
        fig, (ax,) = _figure((6, 4))
        marks = Marks()
        for kind in sorted({str(r.get("model_kind")) for r in base}):
            pts = [(x_of(r), y_of(r), r["n_params"]) for r in base if str(r.get("model_kind")) == kind]
            art = marks.line(ax, [x for x, _, _ in pts], [y for _, y, _ in pts], marker="o", label=kind)
            for x, y, n in pts:
                if x is not None and y is not None and _finite(x) and _finite(y):
                    ax.annotate(param_count(n), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7,
                                color=art.get_color())
        if logx:
            ax.set_xscale("log")
        ax.set_xlabel(xlabel.replace(_PPL, ppl_name))
        ax.set_ylabel(ylabel.replace(_PPL, ppl_name))
        _title(ax, "", base)
        ax.grid(True, alpha=0.3)
        marks.draw(ax)
        ax.legend()
        paths.append(_save(fig, out / name))
    return paths


def _peak_lr(curve: dict[str, Any]) -> float | None:
    return (curve.get("schedule") or {}).get("lr")


def plot_lr_stability(run: RunData, df: pd.DataFrame, out: Path) -> list[Path]:
    """Loss curves per model kind at each peak LR; a diverged run ends in an x at its last finite loss."""
    curves = list(run.curves.values())
    if not curves:
        return []
    kinds = sorted({str(c.get("kind")) for c in curves})
    fig, axes = _figure((5 * len(kinds), 4), ncols=len(kinds))
    drawn = []
    for ax, kind in zip(axes, kinds):
        marks = Marks()
        for c in sorted((c for c in curves if str(c.get("kind")) == kind), key=lambda c: _peak_lr(c) or 0.0):
            pts = c.get("curve") or []
            lr = _peak_lr(c)
            line = marks.line(ax, [p.get("tokens") for p in pts], [p.get("loss") for p in pts],
                              label=f"peak LR {lr:g}" if lr is not None else "peak LR ?")
            fin = [p for p in pts if p.get("loss") is not None and _finite(p["loss"])]
            if c.get("diverged") and fin:
                ax.plot([fin[-1]["tokens"]], [fin[-1]["loss"]], marker="x", markersize=12, color=line.get_color())
        diverged = any(c.get("diverged") for c in curves if str(c.get("kind")) == kind)
        ax.set_title(f"{kind}" + (" (x = diverged)" if diverged else " (none diverged)"))
        _tokens_axis(ax)
        ax.grid(True, alpha=0.3)
        drawn.append((ax, marks))
    for ax, marks in drawn:  # after every axis has its data: the y axis is shared
        marks.draw(ax)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("training loss (cross-entropy, nats per token)")
    return [_save(fig, out / "lr_stability.png")]
