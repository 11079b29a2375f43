"""The one place where report values become text: markdown, LaTeX and CSV cells, bit widths.

A table cell is `None` when the value was not measured (a task not run, a field the row lacks) and a
float when it was — including NaN and ±inf, which a measurement can produce (a diverged model, an
overflowing perplexity). The two never look alike:

    value         markdown   LaTeX        CSV
    not measured  –          --           (empty)
    NaN           NaN        NaN          nan
    +inf          +inf       $+\\infty$    inf
    -inf          -inf       $-\\infty$    -inf

A `Quoted` cell (a paper's number) prints as the paper printed it.

A `Spread` cell (one setting over several calibration seeds) is "mean ± std" in markdown and LaTeX;
CSV gives it two numeric columns, `<column>` (mean) and `<column>_std`.

Tables are built with `frame(records)`, an object-dtype DataFrame, so pandas does not turn `None`
into NaN.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # what makes a spreadsheet read a CSV cell as a formula
MISSING_MD = "–"
MISSING_TEX = "--"
_NONFINITE_MD = {"nan": "NaN", "inf": "+inf", "-inf": "-inf"}
_NONFINITE_TEX = {"nan": "NaN", "inf": r"$+\infty$", "-inf": r"$-\infty$"}
_TEX_SPECIAL = {"\\": r"\textbackslash{}", "_": r"\_", "%": r"\%", "&": r"\&", "#": r"\#", "$": r"\$",
                "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                # the notes' and titles' non-ASCII, as LaTeX commands: the .tex compiles under any input encoding
                "±": r"$\pm$", "…": r"\ldots{}", "§": r"\S{}", "–": "--", "—": "---", "‖": r"$\|$", "≤": r"$\le$",
                "≥": r"$\ge$", "×": r"$\times$", "≈": r"$\approx$"}


class Quoted(float):
    """A number copied from a paper, printed as the paper prints it ("1032", "66.7", "4.8e4", "0.80"): a float
    cell would show "1032.00" or "66.70" (digits the paper never gave) and "0.8" for its "0.80"."""

    text: str

    def __new__(cls, text: str) -> Quoted:
        obj = super().__new__(cls, text)
        obj.text = text
        return obj


@dataclass(frozen=True)
class Spread:
    """A value over n > 1 seeds: mean, sample std (n - 1), min, max (NaN / inf propagate into mean and std)."""

    mean: float
    std: float
    lo: float
    hi: float
    n: int

    @classmethod
    def of(cls, values: list[float]) -> Spread:
        import statistics

        xs = [float(v) for v in values]
        finite = all(math.isfinite(x) for x in xs)
        mean = statistics.fmean(xs) if finite else sum(xs) / len(xs)
        std = statistics.stdev(xs) if finite else math.nan
        return cls(mean, std, min(xs), max(xs), len(xs))


def bits(b: Any) -> str | None:
    """16 -> '16', 1.58 -> '1.58'; None (not recorded) stays None."""
    if b is None:
        return None
    return str(int(b)) if float(b).is_integer() else str(b)


def param_count(n: float) -> str:
    """A parameter count as the papers print sizes: 3.3M, 700.0M, 1.3B (a 1.1B model read 1100.0M)."""
    return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def nonfinite_name(v: Any) -> str | None:
    """'nan' / 'inf' / '-inf' for a non-finite float, else None."""
    if isinstance(v, float) and not math.isfinite(v):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    return None


def _special_cell(v: Any, missing: str, nonfinite: dict[str, str]) -> str | None:
    """The cell text of "not measured" or a non-finite float in one format, else None."""
    if v is None:
        return missing
    special = nonfinite_name(v)
    return nonfinite[special] if special else None


def _text(v: Any) -> str:
    """A measured cell's text in one line (a row's string from a copied run folder may hold line breaks)."""
    if isinstance(v, Quoted):
        return v.text
    if isinstance(v, float):
        return f"{v:.3g}" if 0 < abs(v) < 1 or abs(v) >= 1e4 else f"{v:.2f}"
    return " ".join(str(v).splitlines())


def md_text(s: str) -> str:
    """Text as one markdown table cell or header: one line, `|` escaped, no raw HTML (the notebook displays the
    table as Markdown, where an `<img onerror=...>` from a run folder's row would run)."""
    return html.escape(" ".join(s.splitlines()), quote=False).replace("|", r"\|")


def md_line(s: str) -> str:
    """A markdown line (a note, a title) holding text from a run folder: one line, and no raw HTML outside its
    code spans (`<` and `&` there escaped); inside a span markdown shows the text as it is. With an odd count of
    backticks no span is trusted."""
    parts = " ".join(s.splitlines()).split("`")
    code = len(parts) % 2 == 1  # an even number of backticks: the odd parts are code spans
    return "`".join(p if code and i % 2 else html.escape(p, quote=False) for i, p in enumerate(parts))


def md_cell(v: Any) -> str:
    if isinstance(v, Spread):
        return f"{md_cell(v.mean)} ± {md_cell(v.std)}"
    special = _special_cell(v, MISSING_MD, _NONFINITE_MD)
    return special if special is not None else md_text(_text(v))


def tex_escape(s: str) -> str:
    return "".join(_TEX_SPECIAL.get(ch, ch) for ch in " ".join(s.splitlines()))


def tex_cell(v: Any) -> str:
    if isinstance(v, Spread):
        return f"{tex_cell(v.mean)} $\\pm$ {tex_cell(v.std)}"
    special = _special_cell(v, MISSING_TEX, _NONFINITE_TEX)
    return special if special is not None else tex_escape(_text(v))


def csv_text(s: str) -> str:
    """Text as a CSV cell a spreadsheet shows as text: one starting with = + - @ or a tab / carriage return (a
    formula: `=HYPERLINK(...)` in a copied run folder's row) gets a leading `'`, unless it is a number or a plain
    name as recipes spell them (`SAFE_COMPONENT`: no parentheses, quotes or spaces, so no function call)."""
    from ptq_bench.paths import SAFE_COMPONENT

    if s[:1] not in FORMULA_START or SAFE_COMPONENT.fullmatch(s):
        return s
    try:
        float(s)
        return s
    except ValueError:
        return "'" + s


def csv_cell(v: Any) -> str:
    if v is None:
        return ""
    special = nonfinite_name(v)
    if special:
        return special
    return repr(float(v)) if isinstance(v, float) else csv_text(str(v))


def frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    """Object-dtype DataFrame; a key absent from a record is None (not measured), never NaN."""
    import pandas as pd

    cols: dict[str, None] = {}
    for rec in records:
        cols.update(dict.fromkeys(rec))
    return pd.DataFrame([{c: rec.get(c) for c in cols} for rec in records], columns=list(cols), dtype=object)


def to_markdown(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    out = ["| " + " | ".join(md_text(str(c)) for c in cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(md_cell(v) for v in rec) + " |" for rec in df.itertuples(index=False)]
    return "\n".join(out)


def to_latex(df: pd.DataFrame, caption: str) -> str:
    cols = list(df.columns)
    lines = [r"\begin{table}[t]", r"\centering", r"\begin{tabular}{" + "l" * len(cols) + "}", r"\toprule",
             " & ".join(tex_escape(c) for c in cols) + r" \\", r"\midrule"]
    lines += [" & ".join(tex_cell(v) for v in rec) + r" \\" for rec in df.itertuples(index=False)]
    lines += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{tex_escape(caption)}}}", r"\end{table}"]
    return "\n".join(lines)


def to_csv(df: pd.DataFrame, keys: dict[str, str] | None = None) -> str:
    """The table as CSV; a Spread column is two (`PPL`, `PPL_std`); a column in `keys` has its metric key
    after its header (`PPL [ppl_gptq/wikitext2/seq128]`, `PPL_std [...]`)."""
    import csv
    import io

    keys = keys or {}
    spread = {c for c in df.columns if any(isinstance(v, Spread) for v in df[c])}
    head = [csv_text(name + (f" [{keys[c]}]" if c in keys else ""))
            for c in df.columns for name in ([c, f"{c}_std"] if c in spread else [c])]

    def cells(c: str, v: Any) -> list[str]:
        if c not in spread:
            return [csv_cell(v)]
        return [csv_cell(v.mean), csv_cell(v.std)] if isinstance(v, Spread) else [csv_cell(v), ""]

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(head)
    writer.writerows([x for c, v in zip(df.columns, rec) for x in cells(c, v)] for rec in df.itertuples(index=False))
    return buf.getvalue()
