"""Layouts are data: every layout renders (synthetic rows and the committed results), names stay light."""

from __future__ import annotations

import ast
import csv
import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from report_rows import md_cells, row, run_dir

from ptq_bench.eval.harness import PAPER_TASKS, TASKS
from ptq_bench.report import render
from ptq_bench.report.layouts import GENERIC, LAYOUT_NAMES, LAYOUTS, derived_files

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = sorted(p.name for p in (ROOT / "results").iterdir() if (p / "results.jsonl").is_file())


def test_layout_names_import_without_pandas_or_matplotlib():
    code = ("import sys; from ptq_bench.report.layouts import LAYOUT_NAMES; "
            "heavy = [m for m in ('pandas', 'matplotlib', 'torch') if m in sys.modules]; "
            "print(','.join(LAYOUT_NAMES), heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert out.split() == [",".join(LAYOUT_NAMES), "[]"]
    assert LAYOUT_NAMES[0] == "generic"  # (a new layout is one entry in LAYOUTS: no list of names here)


def test_every_layout_names_functions_that_exist():
    for layout in LAYOUTS.values():
        assert callable(layout.table_fn()) and all(callable(f) for f in layout.plot_fns())
        assert all(task in TASKS for task, _ in layout.columns)


def _string_compares(tree: ast.AST) -> list[ast.AST]:
    """`x == "bitnet_b158"`, `case "lr_stability":` and the like: a branch on a layout name."""
    hits = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            hits += [node for o in operands if isinstance(o, ast.Constant) and o.value in LAYOUT_NAMES]
        if isinstance(node, ast.MatchValue) and getattr(node.value, "value", None) in LAYOUT_NAMES:
            hits.append(node)
    return hits


def test_no_branch_on_a_layout_name_anywhere():
    offenders = [f"{path.relative_to(ROOT)}:{node.lineno}" for path in sorted((ROOT / "ptq_bench").rglob("*.py"))
                 for node in _string_compares(ast.parse(path.read_text(encoding="utf-8")))]
    assert offenders == []


def _synthetic_run(tmp_path: Path, layout: str) -> Path:
    accs = [(t, m, 0.25 + 0.01 * i) for i, t in enumerate(PAPER_TASKS) for m in ("acc", "acc_norm")]
    rows = [row("fp16", "fp16", "none", 16, 16, 20.0, accs, n_params=2_000_000, wbytes=4_000_000),
            row("b158", "bitnet_b158", "none", 1.58, 8, 25.0, accs, wbytes=500_000),
            row("b1", "bitnet_b1", "none", 1, 8, 30.0, accs, wbytes=400_000),
            row("fp16", "fp16", "gptq", 4, 16, 22.0, accs, quant={"effective_bits": 4.07, "seconds": 0.1}),
            row("fp16", "fp16", "absmax", 1, 8, float("inf"), accs, quant={"effective_bits": 1.07, "seconds": 0.1})]
    for r, kl in zip(rows[3:], (0.05, float("inf"))):  # quantized rows carry their distance to the base
        r["metrics"].update({"kld/wikitext2/seq128/mean": kl, "top1_agree/wikitext2/seq128": 90.0})
    curves = [{"model": r["model"], "kind": r["model_kind"], "diverged": False, "schedule": {"lr": 1e-3},
               "curve": [{"step": s, "tokens": 512 * s, "loss": 9.0 - s} for s in range(1, 5)]}
              for r in rows if r["method"] == "none"]
    return run_dir(tmp_path, rows, layout, curves=curves)


def _md_header(path: Path) -> list[str]:
    first = next(ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.startswith("|"))
    return md_cells(first)


@pytest.mark.parametrize("name", LAYOUT_NAMES)
def test_every_layout_renders_from_synthetic_rows(tmp_path, name):
    layout = LAYOUTS[name]
    d = _synthetic_run(tmp_path, name)
    written = render(d)
    assert all(p.is_file() and p.stat().st_size > 0 for p in written)
    for lay in dict.fromkeys([GENERIC, layout]):
        assert {d / f"{lay.stem}.{fmt}" for fmt in lay.formats} <= set(written)
        md = d / f"{lay.stem}.md"
        assert md.read_text(encoding="utf-8").startswith(f"# {lay.title.replace('{recipe}', 'synthetic').replace('{shots}', 'zero-shot')}\n")
        with open(d / f"{lay.stem}.csv", encoding="utf-8") as fh:
            header = next(csv.reader(fh))  # the md's headers, a paper layout's short ones with their metric keys
        assert [h.split(" [")[0] for h in header] == _md_header(md)
        keyed = dict(h[:-1].split(" [", 1) for h in header if h.endswith("]"))
        note = next((ln for ln in md.read_text(encoding="utf-8").splitlines() if ln.startswith("- Columns: ")), "")
        if lay == GENERIC:  # headers are the keys; a task column's adds the rows' limit (10 documents per task)
            assert keyed and all(key == f"{col}/limit10" and col.count("/") == 2 for col, key in keyed.items())
        else:
            assert keyed and all(f"`{col}` = `{key}`" in note for col, key in keyed.items())
        assert [TASKS[t].label for t, _ in lay.columns] == [c for c in _md_header(md) if c in
                                                            {s.label for s in TASKS.values()}]
    pngs = [p for p in written if p.suffix == ".png"]
    assert len(pngs) >= len(set(GENERIC.plots) | set(layout.plots))
    assert {p.name for p in written} <= set(derived_files())  # a new figure's name is in layouts.FIGURES
    if name == GENERIC.name:  # `layout: generic` adds nothing to the generic files
        assert not list(d.glob("paper_table.*"))


@pytest.mark.parametrize("name", [n for n in LAYOUT_NAMES if n != GENERIC.name])
def test_paper_layouts_name_what_each_short_column_measures(tmp_path, name):
    """`PPL`, `ARCe`, ... are the papers' headers; the md's first note and the LaTeX caption map each to the
    stored metric key (set, window length, shots, acc or acc_norm) its numbers are."""
    layout = LAYOUTS[name]
    d = _synthetic_run(tmp_path, name)
    render(d)
    note = next(ln for ln in (d / f"{layout.stem}.md").read_text(encoding="utf-8").splitlines()
                if ln.startswith("- Columns: "))
    want = ["`PPL` = `ppl_gptq/wikitext2/seq128`", *(f"`{TASKS[t].label}` = `{t}/0shot/{m}/limit10`" for t, m in layout.columns)]
    assert note == f"- Columns: {'; '.join(want)}.", note
    caption = (d / f"{layout.stem}.tex").read_text(encoding="utf-8")
    assert "Columns: PPL = ppl\\_gptq/wikitext2/seq128" in caption, caption


def test_a_run_without_tasks_has_no_task_protocol_line(tmp_path):
    """It read "limit none documents per task" in a run of perplexity only (lr_stability's tables)."""
    d = run_dir(tmp_path, [row("fp16", "fp16", "none", 16, 16, 20.0, [])])
    render(d)
    md = (d / "table.md").read_text(encoding="utf-8")
    assert "`ppl_gptq/<set>/seq128…`" in md and "shot/acc" not in md and "limit none" not in md


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("name", COMMITTED)
def test_committed_results_rerender_with_the_same_numbers(tmp_path, name):
    src = ROOT / "results" / name
    before = _digest(src)
    d = tmp_path / name
    shutil.copytree(src, d)
    written = {p.name for p in render(d)}
    assert _digest(src) == before  # the committed folder is only read
    tables = [f for f in ("table.md", "table.csv", "paper_table.md", "paper_table.csv", "paper_table.tex")
              if (src / f).is_file()]
    assert set(tables) <= written and "table.md" in tables
    n_rows = sum(1 for ln in (src / "results.jsonl").read_text(encoding="utf-8").splitlines() if ln.strip())
    assert len(pd.read_csv(d / "table.csv")) == n_rows
    for f in (f for f in tables if f.endswith(".csv")):
        pd.testing.assert_frame_equal(pd.read_csv(d / f), pd.read_csv(src / f), check_dtype=False)


def test_ls_prints_methods_tasks_perplexity_sets_and_layouts(capsys):
    from ptq_bench.cli import main
    from ptq_bench.data import PPL_FILES
    from ptq_bench.quant import METHODS

    assert main(["ls"]) == 0
    out = capsys.readouterr().out
    listed = {ln.split()[0] for ln in out.splitlines() if ln.startswith("  ")}
    assert set(METHODS) | set(TASKS) <= listed
    ppl_line = next(ln for ln in out.splitlines() if ln.startswith("perplexity sets"))
    layout_line = next(ln for ln in out.splitlines() if ln.startswith("layouts"))
    assert all(s in ppl_line for s in PPL_FILES)
    assert layout_line.split(":", 1)[1].strip().split(", ") == list(LAYOUT_NAMES)


def test_ls_into_a_pipe_that_closes_early_is_quiet():
    """`ptq-bench ls | head -1` ended in a BrokenPipeError traceback."""
    out = subprocess.run(f"{sys.executable} -m ptq_bench.cli ls | head -1", shell=True, capture_output=True,
                         text=True, cwd=ROOT, timeout=120)
    assert out.stdout.count("\n") == 1 and out.stderr == "", out.stderr


def test_table3_pools_calibration_seeds_and_names_each_setting(tmp_path):
    from ptq_bench.report.fmt import Spread
    from ptq_bench.report.paper import table3
    from ptq_bench.report.run import load_run

    accs = [("wsc273", "acc", 0.5)]
    gptq = [row("fp", "fp16", "gptq", 4, 16, p, accs, calib_seed=s, config={"w_bits": 4, "group_size": 128})
            for s, p in [(0, 20.0), (1, 22.0), (2, 24.0)]]
    rows = [row("fp", "fp16", "none", 16, 16, 15.0, accs), *gptq,
            row("fp", "fp16", "absmax", 4, 16, 30.0, accs, config={"w_bits": 4, "w_granularity": "channel"}),
            row("fp", "fp16", "absmax", 4, 16, 25.0, accs,
                config={"w_bits": 4, "w_granularity": "group", "group_size": 128})]
    for i, r in enumerate(rows):
        r["cell_id"] = f"c{i}"
    df = table3(load_run(run_dir(tmp_path, rows, layout="bitnet_table3")), LAYOUTS["bitnet_table3"])
    assert len(df) == 5  # the paper's Random row; three GPTQ seeds are one row; per-channel and g128 Absmax stay two
    g = df[df["Method"] == "GPTQ"].iloc[0]
    assert isinstance(g["PPL"], Spread) and (g["PPL"].mean, g["PPL"].std, g["seeds"]) == (22.0, 2.0, 3)
    assert g["paper PPL"] == 16.05 and g["Setting"] == "g128"
    assert sorted(df[df["Method"] == "Absmax"]["Setting"]) == ["channel", "g128"]
    no_tasks = row("fp", "fp16", "gptq", 3, 16, 40.0, [], calib_seed=1, config={"w_bits": 3, "group_size": 128})
    one = row("fp", "fp16", "gptq", 3, 16, 42.0, accs, calib_seed=0, config={"w_bits": 3, "group_size": 128})
    no_tasks["cell_id"], one["cell_id"] = "n1", "n0"
    df = table3(load_run(run_dir(tmp_path / "b", [one, no_tasks], layout="bitnet_table3")), LAYOUTS["bitnet_table3"])
    assert df.iloc[1]["WG"] == 50.0 and df.iloc[1]["PPL"].n == 2  # accuracy from the one seed that ran tasks


def test_table3_keeps_the_ptq_rows_of_every_kind_ptq_may_target(tmp_path, monkeypatch):
    """Table 3 kept PTQ rows of `model_kind == "fp16"` only: a second PTQ-able kind added to kinds.py (a float
    model trained on another schedule) lost its PTQ rows from the paper table without a word."""
    import dataclasses

    from ptq_bench.kinds import KINDS
    from ptq_bench.report.paper import table3
    from ptq_bench.report.run import load_run

    monkeypatch.setitem(KINDS, "fp16_alt", dataclasses.replace(KINDS["fp16"], name="fp16_alt"))
    accs = [(t, m, 0.5) for t, m in LAYOUTS["bitnet_table3"].columns]
    rows = [row(model, kind, method, w, 16, ppl, accs) for model, kind in (("fp", "fp16"), ("alt", "fp16_alt"))
            for method, w, ppl in (("none", 16, 15.0), ("absmax", 4, 30.0))]
    for i, r in enumerate(rows):
        r["cell_id"] = f"c{i}"
    df = table3(load_run(run_dir(tmp_path, rows, layout="bitnet_table3")), LAYOUTS["bitnet_table3"], with_paper=False)
    ptq = df[df["PTQ"] == "yes"]
    assert sorted(ptq["Model"]) == ["alt", "fp"]  # both PTQ rows, each named by its model


def test_b158_layout_says_the_papers_numbers_are_of_another_protocol(tmp_path):
    """Table 3's md said its paper columns were measured otherwise ("compare the shape, not the numbers"); the
    b1.58 md printed the paper's table under ours (PPL 12.33 beside a seq128 perplexity over a limit-10 run)
    with nothing on how the paper measured it."""
    d = _synthetic_run(tmp_path, "bitnet_b158")
    render(d)
    md = (d / "paper_table.md").read_text(encoding="utf-8")
    note = next((ln for ln in md.splitlines() if ln.startswith("- The paper's numbers")), "")
    assert "2402.17764" in note and "2048" in note and "compare the shape, not the numbers" in note, md
    assert "2402.17764" in (d / "paper_table.tex").read_text(encoding="utf-8")


def test_ls_names_each_tasks_label_metrics_files_and_protocol_notes(capsys):
    """`ls` listed bare task names and set names: what `WGe` is, which split a task is scored on, which metric a
    table shows, and where our protocol differs from the paper's were in the tables' footnotes only."""
    from ptq_bench.cli import main
    from ptq_bench.data import PPL_FILES

    assert main(["ls"]) == 0
    out = capsys.readouterr().out
    lines = {ln.split()[0]: ln for ln in out.split("tasks:")[1].split("\n", 1)[1].split("perplexity sets")[0].splitlines()}
    for name, spec in TASKS.items():
        assert spec.label in lines[name].split() and all(m in lines[name] for m in spec.metrics), lines[name]
        assert all(f in lines[name] for f in spec.data_files.values()) and spec.notes in lines[name]
    ppl_line = next(ln for ln in out.splitlines() if ln.startswith("perplexity sets"))
    assert all(f"{s} ({f})" in ppl_line for s, f in PPL_FILES.items()), ppl_line
