"""The papers' numbers a paper layout prints, digit for digit as the papers print them (BitNet Table 3,
BitNet b1.58 Tables 1/2; copied from ../shared/reference/paper_tables.md), with every row and column."""

from __future__ import annotations

from report_rows import md_cells, row, run_dir

from ptq_bench.report import render
from ptq_bench.report.fmt import to_latex, to_markdown
from ptq_bench.report.paper import PAPER_TABLE3, paper_b158

# paper_tables.md §1, WBits | Method | ABits | PTQ | PPL | WG | WGe | HS | SC | Avg
TABLE3 = """\
– | Random | – | – | – | 50.0 | 50.0 | 25.0 | 50.0 | 43.8
16 | Transformer (FP16) | 16 | no | 15.19 | 66.7 | 54.3 | 42.9 | 67.4 | 57.8
8 | Absmax | 8 | yes | 21.43 | 60.4 | 52.0 | 38.3 | 62.7 | 53.4
8 | SmoothQuant | 8 | yes | 15.67 | 65.3 | 53.1 | 40.9 | 67.6 | 56.7
4 | GPTQ | 16 | yes | 16.05 | 57.2 | 51.2 | 39.9 | 63.4 | 52.9
4 | Absmax | 4 | yes | 4.8e4 | 55.8 | 50.9 | 25.0 | 53.1 | 46.2
4 | SmoothQuant | 4 | yes | 1.6e6 | 53.7 | 48.3 | 24.8 | 53.6 | 45.1
2 | GPTQ | 16 | yes | 1032 | 51.6 | 50.1 | 25.8 | 53.4 | 45.2
2 | QuIP | 16 | yes | 70.43 | 56.1 | 51.2 | 30.3 | 58.4 | 49.0
1 | Absmax | 8 | yes | 3.5e23 | 49.8 | 50.0 | 24.8 | 53.6 | 44.6
1 | SmoothQuant | 8 | yes | 3.3e21 | 50.5 | 49.5 | 24.6 | 53.1 | 44.4
1 | BitNet (trained 1-bit) | 8 | no | 17.07 | 66.3 | 51.4 | 38.9 | 66.9 | 55.9"""
# paper_tables.md §2, Model | Size | Mem | Lat | PPL | ARCe | ARCc | HS | BQ | OQ | PQ | WGe | Avg
B158 = """\
LLaMA | 700M | 2.08 | 1.18 | 12.33 | 54.7 | 23.0 | 37.0 | 60.0 | 20.2 | 68.9 | 54.8 | 45.5
BitNet b1.58 | 700M | 0.80 | 0.96 | 12.87 | 51.8 | 21.4 | 35.1 | 58.2 | 20.0 | 68.1 | 55.2 | 44.3
LLaMA | 1.3B | 3.34 | 1.62 | 11.25 | 56.9 | 23.5 | 38.5 | 59.1 | 21.6 | 70.0 | 53.9 | 46.2
BitNet b1.58 | 1.3B | 1.14 | 0.97 | 11.29 | 54.9 | 24.2 | 37.7 | 56.7 | 19.6 | 68.8 | 55.8 | 45.4
LLaMA | 3B | 7.89 | 5.07 | 10.04 | 62.1 | 25.6 | 43.3 | 61.8 | 24.6 | 72.1 | 58.2 | 49.7
BitNet b1.58 | 3B | 2.22 | 1.87 | 9.91 | 61.4 | 28.3 | 42.9 | 61.5 | 26.6 | 71.5 | 59.3 | 50.2
BitNet b1.58 | 3.9B | 2.38 | 2.11 | 9.62 | 64.2 | 28.7 | 44.2 | 63.5 | 24.2 | 73.2 | 60.5 | 51.2"""
NAMES = {"Transformer (FP16)": "FP16", "BitNet (trained 1-bit)": "BitNet b1"}


def _cells(text: str) -> list[list[str]]:
    return [[c.strip() for c in line.split("|")] for line in text.splitlines()]


def _md_rows(md: str) -> list[list[str]]:
    return [md_cells(ln) for ln in md.splitlines()[2:]]


def test_the_b158_reference_prints_every_row_and_column_of_the_paper_as_printed():
    """The reference left out the 3.9B row and the latency column, and printed the paper's 0.80 GB as 0.8."""
    df = paper_b158()
    assert list(df.columns)[:5] == ["Model", "Size", "Mem (GB)", "Lat (ms)", "PPL"]
    assert _md_rows(to_markdown(df)) == _cells(B158)
    assert "0.80 & 0.96 & 12.87" in to_latex(df, "c")


def test_table3_paper_columns_print_the_papers_digits(tmp_path):
    """`paper PPL` showed the paper's 1032 as 1032.00 and 4.8e4 as 4.8e+04, its 66.7 as 66.70: digits the
    paper never printed."""
    paper = {(w, NAMES.get(m, m), a): vals for w, m, a, _, *vals in _cells(TABLE3)}
    assert set(paper) == {*PAPER_TABLE3, ("–", "Random", "–")}
    rows = [row("fp", "fp16", "none", 16, 16, 20.0, []), row("fp", "fp16", "gptq", 2, 16, 30.0, []),
            row("fp", "fp16", "absmax", 4, 4, 40.0, [])]
    d = run_dir(tmp_path, rows, layout="bitnet_table3")
    render(d)
    lines = [ln for ln in (d / "paper_table.md").read_text(encoding="utf-8").splitlines() if ln.startswith("|")]
    head, *body = [md_cells(ln) for ln in lines if not ln.startswith("|---")]
    for cells in body:
        rec = dict(zip(head, cells))
        want = paper[(rec["WBits"], rec["Method"], rec["ABits"])]
        assert [rec[c] for c in head if c.startswith("paper ")] == want, rec


def test_table3_says_where_its_paper_columns_come_from_and_under_which_protocol(tmp_path):
    """`paper PPL` sat beside `PPL` = `ppl_gptq/wikitext2/seq128` with nothing saying that the paper's is a
    6.7B model's perplexity on its own training corpus: the md notes, the LaTeX caption and the .csv were silent."""
    d = run_dir(tmp_path, [row("fp", "fp16", "none", 16, 16, 20.0, [])], layout="bitnet_table3")
    render(d)
    md = (d / "paper_table.md").read_text(encoding="utf-8")
    tex = (d / "paper_table.tex").read_text(encoding="utf-8")
    for text in (md, tex):
        assert "BitNet (arXiv 2310.11453) Table 3, a 6.7B model" in text
        assert "validation set of its own training corpus" in text
    caption = next(ln for ln in tex.splitlines() if ln.startswith("\\caption{"))
    assert caption.count("{") == caption.count("}") and "`" not in caption


def test_b158_table_says_its_memory_is_stored_weight_bytes_not_the_papers_gpu_memory(tmp_path):
    """`Mem (MB)` (bytes of the stored weights) sat above the paper's `Mem (GB)` (GPU memory at inference)
    with no note saying they are different quantities."""
    d = run_dir(tmp_path, [row("fp", "fp16", "none", 16, 16, 20.0, [])], layout="bitnet_b158")
    render(d)
    for name in ("paper_table.md", "paper_table.tex"):
        text = (d / name).read_text(encoding="utf-8")
        assert "Mem (MB)" in text and "bytes of the stored weights" in text and "GPU memory" in text, name


def test_table3_says_what_seeds_and_plus_minus_mean_and_which_cells_pool_fewer_seeds(tmp_path):
    """smollm2_ptq's GPTQ W4 row said `seeds` 3 and showed accuracies from seed 0 alone, and no note said
    what `±` or `seeds` is: a reader took the plain accuracies for means over three seeds."""
    accs = [("wsc273", "acc", 0.5), ("winogrande", "acc", 0.5), ("hellaswag", "acc_norm", 0.3),
            ("storycloze", "acc", 0.5)]
    gptq = [row("fp", "fp16", "gptq", 4, 16, 20.0 + s, accs if s == 0 else [], calib_seed=s,
                config={"w_bits": 4, "group_size": 128}) for s in (0, 1, 2)]
    rows = [row("fp", "fp16", "none", 16, 16, 15.0, accs), *gptq]
    for i, r in enumerate(rows):
        r["cell_id"] = f"c{i}"
    d = run_dir(tmp_path, rows, layout="bitnet_table3")
    render(d)
    md = (d / "paper_table.md").read_text(encoding="utf-8")
    assert "- `seeds`: calibration seeds pooled into the row; a cell over several of them is mean ± sample std." in md
    assert "GPTQ W4A16 g128: WG, WGe, HS, SC, Avg from 1 of 3 seeds" in md
    assert "1 of 3 seeds" in (d / "paper_table.tex").read_text(encoding="utf-8")


def test_paper_tables_mark_a_model_that_diverged_in_training(tmp_path):
    """A model whose training diverged (its rows carry `diverged`) showed in Table 3 and the b1.58 table as a
    plain row: accuracies of the weights at the divergence step read as a trained model's."""
    accs = [("wsc273", "acc", 0.5), ("arc_easy", "acc_norm", 0.25)]
    rows = [row("fp", "fp16", "none", 16, 16, float("nan"), accs, diverged=True),
            row("fp", "fp16", "absmax", 8, 8, float("nan"), accs, diverged=True),
            row("b1", "bitnet_b1", "none", 1, 8, 30.0, accs), row("b158", "bitnet_b158", "none", 1.58, 8, 25.0, accs)]
    for layout, name in (("bitnet_table3", "Method"), ("bitnet_b158", "Model")):
        d = run_dir(tmp_path / layout, rows, layout=layout)
        render(d)
        ours = (d / "paper_table.md").read_text(encoding="utf-8").split("\n\n")[1]  # not the paper's own rows
        lines = [ln for ln in ours.splitlines() if ln.startswith("|")]
        head, _, *body = [md_cells(ln) for ln in lines]
        recs = [dict(zip(head, cells)) for cells in body if len(cells) == len(head)]
        assert "diverged" in head, layout
        assert {r[name]: r["diverged"] for r in recs if r[name] in ("FP16", "LLaMA", "Absmax", "BitNet b1.58")} \
            == {k: v for k, v in {"FP16": "yes", "LLaMA": "yes", "Absmax": "yes", "BitNet b1.58": ""}.items()
                if k in {r[name] for r in recs}}


def test_table3_names_a_loaded_model_rather_than_passing_it_off_as_the_papers_transformer(tmp_path):
    """smollm2_ptq's paper table never named SmolLM2: its base row read 'FP16', the paper's FP16 Transformer
    trained here (the b1.58 table names a `source:` model; Table 3 did not)."""
    import json

    rows = [row("sm", "fp16", "none", 16, 16, 30.0, []), row("sm", "fp16", "absmax", 8, 8, 31.0, [])]
    manifest = {"recipe": {"layout": "bitnet_table3", "models": {"sm": {"source": "smollm2-135m"}}},
                "recipe_hash": "h", "invocations": [{"hardware": {"cpu_count": 2}, "wall_s": 60.0}]}
    d = run_dir(tmp_path, rows, manifest=json.dumps(manifest))
    render(d)
    lines = [ln for ln in (d / "paper_table.md").read_text(encoding="utf-8").splitlines() if ln.startswith("|")]
    head, _, *body = [md_cells(ln) for ln in lines]
    assert head[0] == "Model" and [cells[0] for cells in body] == ["–", "sm", "sm"]  # the paper's Random row first


def test_stability_table_says_what_final_loss_is(tmp_path):
    """`final loss` is one training batch's cross-entropy at the last logged step (every committed curve
    bumps up there), but nothing in the table said so: it read as a converged or held-out loss."""
    curve = {"model": "fp", "kind": "fp16", "diverged": False, "schedule": {"lr": 1e-3},
             "curve": [{"step": s, "tokens": 512 * s, "loss": 9.0 - s} for s in range(1, 5)]}
    d = run_dir(tmp_path, [row("fp", "fp16", "none", 16, 16, 20.0, [])], layout="lr_stability", curves=[curve])
    render(d)
    for name in ("paper_table.md", "paper_table.tex"):
        text = (d / name).read_text(encoding="utf-8")
        assert "final loss" in text and "one batch" in text and "nats per token" in text, name


def test_latex_tables_are_ascii_with_balanced_braces(tmp_path):
    """The stability title's "§3.4", the seed note's "±" and the paper note's "…" went into the LaTeX caption
    as raw UTF-8: the .tex compiled only under a UTF-8 input encoding."""

    for layout in ("bitnet_table3", "bitnet_b158", "lr_stability"):
        accs = [("wsc273", "acc", 0.5)]
        rows = [row("fp", "fp16", "none", 16, 16, 20.0, accs),
                *(row("fp", "fp16", "gptq", 4, 16, 20.0 + s, accs, calib_seed=s, cell_id=f"g{s}",
                      config={"w_bits": 4, "group_size": 128}) for s in (0, 1))]
        curve = {"model": "fp", "kind": "fp16", "diverged": False, "schedule": {"lr": 1e-3},
                 "curve": [{"step": 1, "tokens": 512, "loss": 9.0}]}
        d = run_dir(tmp_path / layout, rows, layout=layout, curves=[curve])
        render(d)
        tex = (d / "paper_table.tex").read_text(encoding="utf-8")
        assert tex.isascii(), (layout, sorted({c for c in tex if not c.isascii()}))
        assert tex.count("{") - tex.count("\\{") == tex.count("}") - tex.count("\\}"), layout


def test_table3_lists_the_papers_random_row_and_its_row_order(tmp_path):
    """Table 3 left out the paper's Random (chance) row, the line its near-chance accuracies are read against,
    and put 4-bit GPTQ after Absmax and SmoothQuant W4A4 where the paper puts it first."""
    rows = [row("fp", "fp16", "none", 16, 16, 20.0, []), row("fp", "fp16", "absmax", 4, 4, 40.0, []),
            row("fp", "fp16", "smoothquant", 4, 4, 30.0, []), row("fp", "fp16", "gptq", 4, 16, 21.0, [])]
    d = run_dir(tmp_path, rows, layout="bitnet_table3")
    render(d)
    lines = [ln for ln in (d / "paper_table.md").read_text(encoding="utf-8").splitlines() if ln.startswith("|")]
    body = [md_cells(ln) for ln in lines[2:]]
    assert [c[1] for c in body] == ["Random", "FP16", "GPTQ", "Absmax", "SmoothQuant"]
    assert body[0][-5:] == ["50.0", "50.0", "25.0", "50.0", "43.8"] and set(body[0][4:11]) == {"–"}


def test_a_curve_with_a_damaged_peak_lr_or_diverged_flag_is_named_not_a_traceback(tmp_path):
    """A curves/<model>.json whose `schedule.lr` was a string ended `ptq-bench report` in a TypeError (the
    stability table sorts by it); a `diverged` of "false" printed `yes`. Both are damaged files: skipped, named."""
    import subprocess
    import sys

    def curve(model, lr, diverged=False):
        return {"model": model, "kind": "fp16", "diverged": diverged, "schedule": {"lr": lr},
                "curve": [{"step": 1, "tokens": 1, "loss": 9.0}]}

    rows = [row(m, "fp16", "none", 16, 16, 20.0, []) for m in ("a", "b", "c")]
    d = run_dir(tmp_path, rows, layout="lr_stability",
                curves=[curve("a", "1e-3"), curve("b", 0.01), curve("c", 0.02, diverged="false")])
    out = subprocess.run([sys.executable, "-m", "ptq_bench.cli", "report", str(d)], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr[-500:]
    md = (d / "paper_table.md").read_text(encoding="utf-8")
    assert "curves/a.json unreadable" in md and "curves/c.json unreadable" in md
    assert [ln for ln in md.splitlines() if ln.startswith("| FP16")] == ["| FP16 | 0.01 | 9.00 | no | 20.00 |"]


def test_a_curve_temp_file_left_by_a_killed_write_is_not_read(tmp_path):
    """`.tmp-<pid>-a.json` (`cache.write_atomic`'s temp, left by a kill -9 or a full disk mid-write) was read as a
    curve: a cut one put "curves/.tmp-… unreadable" in every later table."""
    from ptq_bench.report.run import load_run

    good = {"model": "a", "kind": "fp16", "diverged": False, "schedule": {"lr": 0.01},
            "curve": [{"step": 1, "tokens": 1, "loss": 9.0}]}
    d = run_dir(tmp_path, [row("a", "fp16", "none", 16, 16, 20.0, [])], curves=[good])
    (d / "curves" / ".tmp-999-a.json").write_text('{"model": "a", "ki', encoding="utf-8")
    run = load_run(d)
    assert run.damage == [] and list(run.curves) == ["a"]
