"""What a figure's title claims about the rows it draws."""

from __future__ import annotations

import matplotlib.axes
from report_rows import row, run_dir

from ptq_bench.report import render


def _titles(tmp_path, monkeypatch, rows: list[dict]) -> list[str]:
    titles: list[str] = []
    real = matplotlib.axes.Axes.set_title
    monkeypatch.setattr(matplotlib.axes.Axes, "set_title",
                        lambda self, text, *a, **kw: titles.append(text) or real(self, text, *a, **kw))
    render(run_dir(tmp_path, rows))
    return titles


def test_accuracy_title_names_the_limit_as_a_cap_and_no_nan_standard_error(tmp_path, monkeypatch):
    """`limit` caps the documents of each task (wsc273 has 273 at limit 1000: bitnet_table3's figure said
    "1000 documents each"); rows without lm-eval's `_stderr` (older rows) gave "standard error ≈ nan"."""
    rows = [row("m", "fp16", "none", 16, 16, 20.0, [("piqa", "acc", 0.5)]),
            row("m", "fp16", "absmax", 4, 16, 30.0, [("piqa", "acc", 0.25)])]
    title = next(t for t in _titles(tmp_path, monkeypatch, rows) if "tasks'" in t)
    assert "at most 10 documents each" in title and "nan" not in title
    assert "standard errors not recorded" in title
