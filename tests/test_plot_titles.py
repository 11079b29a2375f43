"""What a figure's title claims about the rows it draws."""

from __future__ import annotations

import matplotlib.axes
import matplotlib.text
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


def test_a_figure_with_seed_bars_says_what_they_span(tmp_path, monkeypatch):
    """ppl_vs_bits and kld_vs_bits draw seeds at their mean with min–max bars, table_seeds gives mean ± std:
    the figure did not say which its bars are."""
    rows = [row("m", "fp16", "none", 16, 16, 20.0, [])]
    for seed, ppl in ((0, 30.0), (1, 34.0)):
        r = row("m", "fp16", "gptq", 4, 16, ppl, [], quant={"effective_bits": 4.25, "seconds": 0.1})
        r["metrics"]["kld/wikitext2/seq128/mean"] = ppl / 100
        rows.append({**r, "calib_seed": seed})
    titles: list[str] = []
    real = matplotlib.text.Text.set_text
    monkeypatch.setattr(matplotlib.text.Text, "set_text", lambda self, s: titles.append(str(s)) or real(self, s))
    render(run_dir(tmp_path, rows))
    assert sum("error bars: min–max over calibration seeds" in t for t in titles) == 2  # ppl and kld figures


def test_a_nan_point_beyond_the_finite_points_is_drawn_inside_the_axes(tmp_path):
    """A model that diverged before its second logged step has one finite point (1024 tokens) and a NaN at
    2048: the x range was fixed from the finite point alone, so the NaN's edge marker fell outside the panel
    (lr_stability, loss_curves: the divergence drawn nowhere)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ptq_bench.report.plots import Marks

    fig, ax = plt.subplots()
    marks = Marks()
    marks.line(ax, [1024, 2048], [6.27, float("nan")])
    marks.draw(ax)
    x0, x1 = ax.get_xlim()
    edge = [ln for ln in ax.get_lines() if ln.get_marker() == "X"]
    assert edge and x0 <= edge[0].get_xdata()[0] <= x1 and x0 <= 1024 <= x1
    plt.close(fig)


def _mixed_limits() -> list[dict]:
    """A limit-10 base row beside a quantized row scored on every document (and by stock lm-eval)."""
    full = row("m", "fp16", "absmax", 4, 16, 30.0, [("piqa", "acc", 0.25)])
    full["protocol"] = {**full["protocol"], "limit": None, "backend": "hflm"}
    return [row("m", "fp16", "none", 16, 16, 20.0, [("piqa", "acc", 0.5)]), full]


def test_accuracy_title_of_rows_of_several_limits_names_each(tmp_path, monkeypatch):
    """The title took the first row's limit: "at most 10 documents each" over a row of every document."""
    title = next(t for t in _titles(tmp_path, monkeypatch, _mixed_limits()) if "tasks'" in t)
    assert "at most 10 documents each (1 row), every document (1 row)" in title


def test_table_notes_of_rows_of_several_limits_name_each(tmp_path):
    """The md's task note took the first row's limit and backend ("limit 10 documents per task, backend
    `fast`") over a row scored on every document by HFLM, while its .csv said `/limit<mixed>`."""
    d = run_dir(tmp_path, _mixed_limits())
    render(d)
    md = (d / "table.md").read_text(encoding="utf-8")
    assert "backend `fast`;" not in md
    assert "limit 10 documents per task (1 row), every document (1 row)" in md
    assert "backend `fast` (1 row), `hflm` (1 row)" in md


def test_table_notes_name_the_zero_shot_batch_size(tmp_path):
    """An activation-quantized model's zero-shot numbers move with the batch size (NOTES, "Protocol finding");
    rows record `protocol.batch_size`, but no table said it (a W4A4 column at 1 vs 32 was indistinguishable)."""
    rows = _mixed_limits()
    rows[0]["protocol"] = {**rows[0]["protocol"], "batch_size": 32}
    rows[1]["protocol"] = {**rows[1]["protocol"], "batch_size": 1}
    d = run_dir(tmp_path, rows)
    render(d)
    md = (d / "table.md").read_text(encoding="utf-8")
    assert "batch size 32 (1 row), batch size 1 (1 row)" in md
    old = run_dir(tmp_path / "old", [row("m", "fp16", "none", 16, 16, 20.0, [("piqa", "acc", 0.5)])])
    render(old)  # rows written before they recorded it: no guess
    assert "batch size" not in (old / "table.md").read_text(encoding="utf-8")


def test_table_notes_name_the_recipe_seed(tmp_path):
    """The tables named calibration seeds (`calib_seed`) but never the seed of the models' initialization and
    data order ("before training (same init seed)": which?), though the manifest's recipe records it."""
    import json

    manifest = {"recipe": {"layout": None, "seed": 7}, "recipe_hash": "h",
                "invocations": [{"hardware": {"cpu_count": 2}, "wall_s": 60.0}]}
    d = run_dir(tmp_path, [row("m", "fp16", "none", 16, 16, 20.0, [("piqa", "acc", 0.5)])], manifest=json.dumps(manifest))
    render(d)
    assert "- Seed 7 (the recipe's `seed`)" in (d / "table.md").read_text(encoding="utf-8")
