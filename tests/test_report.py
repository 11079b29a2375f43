"""Paper-layout tables, formatting of non-finite values, plots and damaged inputs, from synthetic rows."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
from report_rows import md_cells, row, run_dir

from ptq_bench.models.build import ArchConfig, build_model, weight_bytes
from ptq_bench.report import plots as plots_mod
from ptq_bench.report import render
from ptq_bench.report.fmt import csv_cell, md_cell, tex_cell, to_latex
from ptq_bench.report.layouts import LAYOUTS
from ptq_bench.report.paper import PAPER_TABLE3, b158_table, table3
from ptq_bench.report.run import RunData
from ptq_bench.report.tables import generic_table

NAN, INF = float("nan"), float("inf")


def run_of(rows, curves=None):
    return RunData(Path("."), rows, curves=curves or {})


T3 = [("wsc273", "acc", 0.6), ("winogrande", "acc", 0.5), ("hellaswag", "acc_norm", 0.4), ("storycloze", "acc", 0.7)]


def test_table3_layout_rows_columns_and_paper_numbers():
    rows = [row("b1", "bitnet_b1", "none", 1, 8, 20.0, T3), row("fp16", "fp16", "gptq", 4, 16, 16.0, T3),
            row("fp16", "fp16", "none", 16, 16, 15.0, T3), row("fp16", "fp16", "absmax", 1, 8, 1e9, T3)]
    df = table3(run_of(rows), LAYOUTS["bitnet_table3"])
    assert list(df.columns[:11]) == ["WBits", "Method", "ABits", "Setting", "PTQ", "PPL", "WG", "WGe", "HS", "SC",
                                     "Avg"]
    # the paper's Random row, then bits descending, PTQ before native
    assert list(df["Method"]) == ["Random", "FP16", "GPTQ", "Absmax", "BitNet b1"]
    fp = df[df["Method"] == "FP16"].iloc[0]
    assert math.isclose(fp["Avg"], 55.0) and fp["paper PPL"] == PAPER_TABLE3[("16", "FP16", "16")][0]
    assert fp["WG"] == pytest.approx(60.0) and fp["SC"] == pytest.approx(70.0)  # each column is its own task
    tex = to_latex(df, "t")
    assert r"\begin{tabular}" in tex and "BitNet b1" in tex


def test_b158_table_sorted_by_size_with_memory():
    accs = [("arc_easy", "acc_norm", 0.5), ("winogrande", "acc", 0.5)]
    rows = [row("l", "fp16", "none", 16, 16, 10.0, accs, n_params=1_100_000_000, wbytes=6_000_000),
            row("s", "bitnet_b158", "none", 1.58, 8, 12.0, accs, n_params=1_000_000, wbytes=500_000),
            row("s2", "fp16", "gptq", 4, 16, 11.0, accs)]
    df = b158_table(run_of(rows), LAYOUTS["bitnet_b158"])
    assert list(df["Model"]) == ["BitNet b1.58", "LLaMA"] and list(df["Mem (MB)"]) == [0.5, 6.0]
    assert list(df["Size"]) == ["1.0M", "1.1B"]  # as the papers print sizes (a 1.1B model read 1100.0M)
    assert list(df.columns[4:12]) == ["ARCe", "ARCc", "HS", "BQ", "OQ", "PQ", "WGe", "Avg"]
    assert df["ARCe"].iloc[0] == 50.0 and df["ARCc"].iloc[0] is None  # not measured stays None
    assert df["Avg"].iloc[0] is None  # an average over fewer tasks than the paper's would mislead


@pytest.mark.parametrize(("value", "md", "tex", "csv_"), [
    (None, "–", "--", ""), (NAN, "NaN", "NaN", "nan"), (INF, "+inf", r"$+\infty$", "inf"),
    (-INF, "-inf", r"$-\infty$", "-inf"), (611.0196, "611.02", "611.02", "611.0196"),
    (0.0033037, "0.0033", "0.0033", "0.0033037"),  # a mean KLD: 3 digits, not "0.00"
    (3.5e23, "3.5e+23", "3.5e+23", "3.5e+23"),
    ("b1_lr1e-3", "b1_lr1e-3", r"b1\_lr1e-3", "b1_lr1e-3"),
])
def test_cells_keep_not_measured_nan_and_signed_inf_apart(value, md, tex, csv_):
    assert (md_cell(value), tex_cell(value), csv_cell(value)) == (md, tex, csv_)


def _run_dir(tmp_path: Path, rows: list, layout: str | None = None, manifest: str | None = None) -> Path:
    return run_dir(tmp_path, rows, layout, manifest)


def _md_cells(text: str) -> list[dict[str, str]]:
    """The first markdown table of `text` as {header: cell} per row."""
    lines = [ln for ln in text.splitlines() if ln.startswith("|")]
    head = md_cells(lines[0])
    return [dict(zip(head, md_cells(ln))) for ln in lines[2:] if not ln.startswith("|--")]


def _nonfinite_rows():
    acc = [("winogrande", "acc", 0.5), ("hellaswag", "acc_norm", 0.4)]
    return [row("fp16", "fp16", "none", 16, 16, 15.0, acc),
            row("fp16", "fp16", "absmax", 8, 8, NAN, acc),
            row("fp16", "fp16", "absmax", 4, 4, INF, [("winogrande", "acc", -INF), ("hellaswag", "acc_norm", 0.4)]),
            row("fp16", "fp16", "absmax", 2, 2, 99.0, [("hellaswag", "acc_norm", 0.3)])]  # winogrande not measured


def test_table_md_csv_tex_render_nan_inf_and_missing_distinctly(tmp_path):
    d = _run_dir(tmp_path, _nonfinite_rows(), layout="bitnet_table3")
    render(d)
    by_w = {r["W"]: r for r in _md_cells((d / "table.md").read_text(encoding="utf-8"))}
    ppl, wge = "ppl_gptq/wikitext2/seq128", "winogrande/0shot/acc"
    assert [by_w[w][ppl] for w in ("8", "4", "2")] == ["NaN", "+inf", "99.00"]
    assert by_w["4"][wge] == "-inf" and by_w["2"][wge] == "–" and by_w["16"][wge] == "50.00"
    assert [by_w[w]["avg_acc"] for w in ("16", "4", "2")] == ["45.00", "-inf", "–"]
    with open(d / "table.csv", encoding="utf-8") as fh:
        by_w_csv = {r["W"]: r for r in csv.DictReader(fh)}
    assert [by_w_csv[w][ppl] for w in ("8", "4")] == ["nan", "inf"]
    wge_csv = f"{wge} [{wge}/limit10]"  # the csv's task headers name the rows' limit (10 documents per task)
    assert by_w_csv["4"][wge_csv] == "-inf" and by_w_csv["2"][wge_csv] == ""
    paper = {r["WBits"]: r for r in _md_cells((d / "paper_table.md").read_text(encoding="utf-8"))}
    assert paper["4"]["PPL"] == "+inf" and paper["4"]["WGe"] == "-inf" and paper["8"]["PPL"] == "NaN"
    assert paper["2"]["WGe"] == "–" and paper["2"]["Avg"] == "–"  # not measured, and so no average
    tex = (d / "paper_table.tex").read_text(encoding="utf-8")
    assert r"$+\infty$" in tex and r"$-\infty$" in tex and "NaN" in tex


@pytest.fixture(autouse=True)
def _close_figures():
    """`_drawn` keeps the figures it returns open for the test to read; closed after each test (matplotlib
    warned of more than 20 open figures)."""
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


def _drawn(monkeypatch, run, df, tmp_path, *plots) -> dict:
    """{file name: figure} of what `plots` drew (not saved)."""
    figs = {}

    def keep(fig, path):
        figs[path.name] = fig
        return path

    monkeypatch.setattr(plots_mod, "_save", keep)
    for plot in plots:
        plot(run, df, tmp_path)
    return figs


def test_plots_mark_nonfinite_points_at_the_axis_edge(tmp_path, monkeypatch):
    rows = _nonfinite_rows()
    curves = {"fp16": {"model": "fp16", "kind": "fp16", "diverged": True, "schedule": {"lr": 0.1},
                       "curve": [{"tokens": 1, "loss": 9.0, "step": 1}, {"tokens": 2, "loss": NAN, "step": 2}]}}
    run = run_of(rows, curves)
    figs = _drawn(monkeypatch, run, generic_table(run), tmp_path, plots_mod.plot_ppl_vs_bits,
                  plots_mod.plot_loss_curves, plots_mod.plot_lr_stability)
    texts = {name: [t.get_text() for ax in fig.axes for t in ax.texts] for name, fig in figs.items()}
    assert sorted(texts["ppl_vs_bits.png"]) == ["y +inf", "y NaN"]
    assert texts["loss_curves.png"] == ["y NaN"] and texts["lr_stability.png"] == ["y NaN"]
    ax = figs["ppl_vs_bits.png"].axes[0]
    top = ax.get_ylim()[1]
    edge = [ln for ln in ax.lines if ln.get_marker() in ("^", "X")]
    assert len(edge) == 2 and all(ln.get_ydata()[0] == top for ln in edge)


def test_loss_curve_legend_names_training_under_autocast(tmp_path, monkeypatch):
    """A model trained on CUDA (bf16 autocast) is another model than one trained in float32 on the CPU."""
    pts = [{"tokens": 1, "loss": 9.0, "step": 1}, {"tokens": 2, "loss": 8.0, "step": 2}]
    curves = {"fp16": {"model": "fp16", "kind": "fp16", "trained_on": {"device": "cuda", "autocast": "bfloat16"},
                       "curve": pts},
              "b158": {"model": "b158", "kind": "bitnet158", "trained_on": {"device": "cpu", "autocast": None},
                       "curve": pts}}
    run = run_of(_nonfinite_rows(), curves)
    figs = _drawn(monkeypatch, run, generic_table(run), tmp_path, plots_mod.plot_loss_curves)
    legend = [t.get_text() for t in figs["loss_curves.png"].axes[0].get_legend().get_texts()]
    assert sorted(legend) == ["b158 (bitnet158)", "fp16 (fp16, bfloat16 autocast)"]


def test_rows_lacking_values_still_render():
    rows = _nonfinite_rows()
    rows[1].pop("metrics")
    rows[2].pop("protocol")
    rows[3]["quant"] = {"effective_bits": 2.07, "seconds": 0.5}
    cells = {r["W"]: r for r in generic_table(run_of(rows)).to_dict("records")}
    assert len(cells) == 4 and cells["8"]["ppl_gptq/wikitext2/seq128"] is None  # no metrics: not measured
    assert cells["4"]["ppl_gptq/wikitext2/seq128"] == INF  # no protocol: still its values
    assert [cells[w]["eff_bits"] for w in ("16", "8", "4", "2")] == [None, None, None, 2.07]
    t3 = table3(run_of(rows), LAYOUTS["bitnet_table3"]).to_dict("records")
    assert {r["WBits"]: r["WGe"] for r in t3}["4"] == -INF  # accuracy found without the protocol's n-shot


def test_damaged_lines_and_manifest_are_named_and_intact_rows_render(tmp_path):
    rows = _nonfinite_rows()
    broken = dict(rows[1])
    broken.pop("metrics")
    d = _run_dir(tmp_path, [rows[0], [1, 2], broken, rows[2], rows[3]], manifest="{not json")
    written = render(d)
    assert {p.name for p in written} == {"table.md", "table.csv", "ppl_vs_bits.png", "acc_vs_bits.png"}
    md = (d / "table.md").read_text(encoding="utf-8")
    assert {c["W"] for c in _md_cells(md)} == {"16", "4", "2"}
    assert "results.jsonl line 2 damaged (not a JSON object" in md
    assert "results.jsonl line 3 damaged (missing key 'metrics')" in md
    assert "manifest.json damaged" in md


def test_altered_values_are_named_not_tracebacks(tmp_path):
    """Intact-looking lines whose values are not what tables read (a metric that is a string, a layout that
    is a list, a curve that is not points) are skipped and named, as damaged lines are."""
    rows = _nonfinite_rows()
    text, bits = dict(rows[1]), dict(rows[2])
    text["metrics"] = {**text["metrics"], next(iter(text["metrics"])): "abc"}
    bits["quant"] = {**bits["quant"], "effective_bits": "x"}
    manifest = {"recipe": {"layout": ["x"]}, "recipe_hash": "h", "invocations": []}
    d = _run_dir(tmp_path, [rows[0], text, bits, rows[3]], manifest=json.dumps(manifest))
    (d / "curves").mkdir(exist_ok=True)
    for name, curve in {"a": {"model": "a", "curve": "abc"}, "b": {"model": "a", "curve": [1, 2]},
                        "c": {"model": ["x"]}, "d": {"model": "d", "trained_on": "cuda"}}.items():
        (d / "curves" / f"{name}.json").write_text(json.dumps(curve))
    render(d)
    md = (d / "table.md").read_text(encoding="utf-8")
    assert "results.jsonl line 2 damaged ('metrics' value" in md and "is not a number" in md
    assert "results.jsonl line 3 damaged ('quant' value 'effective_bits' is not a number)" in md
    assert "manifest names layout \"['x']\"" in md
    assert md.count("- curves/") == 4


def test_version_fields_show_when_present(tmp_path):
    rows = _nonfinite_rows()
    rows[0]["method_version"] = 1
    rows[1].update(method_version=2, eval_version=3)
    d = _run_dir(tmp_path, rows, layout="bitnet_table3")
    render(d)
    generic = {c["W"]: c for c in _md_cells((d / "table.md").read_text(encoding="utf-8"))}
    assert (generic["16"]["method v"], generic["8"]["method v"], generic["8"]["eval v"]) == ("1", "2", "3")
    assert generic["4"]["method v"] == "–"
    paper = {c["WBits"]: c for c in _md_cells((d / "paper_table.md").read_text(encoding="utf-8"))}
    assert paper["8"]["method v"] == "2" and paper["8"]["eval v"] == "3"
    (tmp_path / "plain").mkdir()
    d2 = _run_dir(tmp_path / "plain", _nonfinite_rows())
    render(d2)
    assert "method v" not in (d2 / "table.md").read_text(encoding="utf-8")
    plain = _nonfinite_rows()
    plain[0].update(method_version=None, eval_version=None)  # the store's dicts carry the keys, valued None
    assert "method v" not in generic_table(run_of(plain)).columns


def test_task_notes_name_the_shown_tasks_only(tmp_path):
    d = _run_dir(tmp_path, [row("fp16", "fp16", "none", 16, 16, 15.0, T3)], layout="bitnet_b158")
    render(d)
    generic = (d / "table.md").read_text(encoding="utf-8")
    assert "`SC` (storycloze): StoryCloze 2016" in generic and "`WG` (wsc273): partial scoring" in generic
    paper = (d / "paper_table.md").read_text(encoding="utf-8")
    assert "`WGe` (winogrande)" in paper and "(storycloze)" not in paper  # b1.58 layout shows no StoryCloze


def test_weight_bytes_counts_a_tied_head_once():
    """SmolLM2 ties its LM head to the embedding: its rows stored 325.7 MB, the head counted twice."""
    from tiny_families import tiny_model

    model = tiny_model("llama", vocab_size=512)
    model.config.tie_word_embeddings = True
    model.tie_weights()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert weight_bytes(model) == 2 * sum(p.numel() for p in model.parameters())  # parameters() dedupes too


def test_weight_bytes_counts_bitnet_weights_packed():
    arch = ArchConfig(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=2, max_seq_len=64)
    fp, bn = build_model("fp16", arch, 256, 0), build_model("bitnet_b158", arch, 256, 0)
    linear = 2 * (4 * 64 * 64 + 3 * 64 * 128)  # attention + MLP weights, 2 layers
    inner_norms = sum(p.numel() for n, p in bn.named_parameters() if ".rms_norm." in n)  # BitLinear's own RMSNorm
    packed = linear // 4 + 2 * 7 * 2  # 2 bits per weight + one 16-bit scale per BitLinear
    assert weight_bytes(bn) == weight_bytes(fp) - linear * 2 + packed + inner_norms * 2


def test_eval_and_task_versions_from_the_manifest(tmp_path):
    manifest = {"recipe": {"layout": "bitnet_b158"}, "recipe_hash": "h", "invocations": [],
                "eval": {"eval_version": 2, "by_tokenizer": {"tok": {"eval_version": 2, "tasks": {
                    "lm_eval_version": "0.4.13", "task_versions": {"storycloze": 1.0, "winogrande": 1.0}}}}}}
    d = _run_dir(tmp_path, [row("fp16", "fp16", "none", 16, 16, 15.0, T3)], manifest=json.dumps(manifest))
    render(d)
    note = "- Evaluation protocol v2; lm-eval 0.4.13; task versions: "
    assert note + "winogrande 1.0, storycloze 1.0." in (d / "table.md").read_text(encoding="utf-8")
    assert note + "winogrande 1.0." in (d / "paper_table.md").read_text(encoding="utf-8")  # b1.58 shows no SC



def test_ppl_column_mixing_protocols_says_so(tmp_path):
    short = row("b1", "bitnet_b1", "none", 1, 8, None, T3)
    short["metrics"]["ppl_gptq/wikitext2/seq128/first64win"] = 30.0
    d = _run_dir(tmp_path, [row("fp16", "fp16", "none", 16, 16, 15.0, T3), short], layout="bitnet_table3")
    render(d)
    paper = (d / "paper_table.md").read_text(encoding="utf-8")
    assert "mix protocols: `ppl_gptq/wikitext2/seq128` (1 rows), `ppl_gptq/wikitext2/seq128/first64win` (1 rows)" in paper
    assert "mix protocols" not in (d / "table.md").read_text(encoding="utf-8")  # there each protocol is a column


def _on(r: dict, device: str, dtype: str) -> dict:
    r["protocol"] = {**r["protocol"], "device": device, "dtype": dtype}
    return r


def test_tables_name_the_device_and_dtype_and_say_when_rows_mix_them(tmp_path):
    """A bf16 CUDA run's tables say so; a folder mixing devices lists each; old rows without the fields get no guess."""
    fp, b1 = (lambda: row("fp16", "fp16", "none", 16, 16, 15.0, T3)), (lambda: row("b1", "bitnet_b1", "none", 1, 8, 20.0, T3))
    one = _run_dir(tmp_path / "one", [_on(fp(), "cuda", "bfloat16"), _on(b1(), "cuda", "bfloat16")], layout="bitnet_table3")
    render(one)
    for name in ("table.md", "paper_table.md"):
        assert "- Computed on `cuda` in `bfloat16` (each row's `protocol`)." in (one / name).read_text(encoding="utf-8")
    mixed = _run_dir(tmp_path / "mixed", [_on(fp(), "cpu", "float32"), _on(b1(), "cuda", "bfloat16"),
                                          row("old", "fp16", "none", 16, 16, 15.0, T3)])
    render(mixed)
    assert ("- Rows were computed on different devices or dtypes: `cpu` in `float32` (1 rows), `cuda` in `bfloat16` "
            "(1 rows), unrecorded (1 rows).") in (mixed / "table.md").read_text(encoding="utf-8")
    old = _run_dir(tmp_path / "old", [fp()])
    render(old)
    assert "Computed on" not in (old / "table.md").read_text(encoding="utf-8")


def test_figure_titles_say_where_rows_ran_unless_float32_on_the_cpu(tmp_path, monkeypatch):
    """The CUDA bf16 results' figures did not say cuda/bf16 (only their README did)."""
    fp = row("fp16", "fp16", "none", 16, 16, 15.0, T3, n_params=1_000_000, wbytes=2_000_000)
    q = row("fp16", "fp16", "absmax", 4, 16, 25.0, T3)
    plots = (plots_mod.plot_ppl_vs_bits, plots_mod.plot_acc_vs_bits, plots_mod.plot_scaling)

    def titles(*rows):
        run = run_of(list(rows))
        return {n: f.axes[0].get_title() for n, f in _drawn(monkeypatch, run, generic_table(run), tmp_path, *plots).items()}

    on_gpu = titles(_on(dict(fp), "cuda", "bfloat16"), _on(dict(q), "cuda", "bfloat16"))
    assert len(on_gpu) == 4 and all(t.endswith("computed on cuda in bfloat16") for t in on_gpu.values()), on_gpu
    mixed = titles(_on(dict(fp), "cpu", "float32"), _on(dict(q), "cuda", "bfloat16"))
    assert mixed["ppl_vs_bits.png"].endswith("\ncomputed on cpu in float32; cuda in bfloat16")
    assert not any("cpu" in t or "cuda" in t for t in titles(_on(dict(fp), "cpu", "float32"), q).values())


def test_series_of_equal_value_stay_visible(tmp_path, monkeypatch):
    """Two settings with the same perplexities drew one line over the other: only the last was visible."""
    rows = [row("fp16", "fp16", m, w, 16, 20.0 + w, T3) for m in ("absmax", "gptq") for w in (2, 4)]
    run = run_of(rows)
    ax = _drawn(monkeypatch, run, generic_table(run), tmp_path, plots_mod.plot_ppl_vs_bits)["ppl_vs_bits.png"].axes[0]
    a, g = (next(ln for ln in ax.lines if ln.get_label().startswith(f"fp16 + {m}")) for m in ("absmax", "gptq"))
    assert list(a.get_ydata()) == list(g.get_ydata())
    assert a.get_marker() != g.get_marker() and a.get_linestyle() != g.get_linestyle()
    assert a.get_markerfacecolor() == g.get_markerfacecolor() == "none"  # hollow: a coinciding outline shows


def test_a_few_shot_run_is_not_titled_zero_shot(tmp_path, monkeypatch):
    """The paper layouts' titles and the accuracy plot said "zero-shot" over 2-shot numbers."""
    def two_shot(r):
        r["metrics"] = {k.replace("/0shot/", "/2shot/"): v for k, v in r["metrics"].items()}
        r["protocol"] = {**r["protocol"], "num_fewshot": 2}
        return r

    figs = {}
    monkeypatch.setattr(plots_mod, "_save", lambda fig, path: figs.setdefault(path.name, fig) and path)
    for shots, rows, title in (("0", _nonfinite_rows(), "(zero-shot)"),
                               ("2", [two_shot(r) for r in _nonfinite_rows()], "(2-shot; the paper's columns: zero-shot)")):
        d = _run_dir(tmp_path / shots, rows, layout="bitnet_table3")
        figs.clear()
        render(d)
        assert (d / "paper_table.md").read_text(encoding="utf-8").splitlines()[0].endswith(title)
        assert title in (d / "paper_table.tex").read_text(encoding="utf-8")
        want = "zero-shot" if shots == "0" else "2-shot"
        assert figs["acc_vs_bits.png"].axes[0].get_ylabel() == f"average {want} accuracy (%)"


def test_paper_tables_tell_models_apart_and_name_loaded_ones():
    """Table 3 showed two models' FP16 rows as identical-looking lines; the b1.58 table called every fp16
    model LLaMA, a `source:` GPT-2 included."""
    rows = [row("fp16", "fp16", "none", 16, 16, 15.0, T3), row("wide", "fp16", "none", 16, 16, 14.0, T3),
            row("b1", "bitnet_b1", "none", 1, 8, 20.0, T3)]
    df = table3(run_of(rows), LAYOUTS["bitnet_table3"])
    assert list(df["Model"]) == [None, "fp16", "wide", "b1"] and df.columns[0] == "Model"  # None: the paper's Random
    assert "Model" not in table3(run_of(rows[::2]), LAYOUTS["bitnet_table3"]).columns  # one model per kind
    run = RunData(Path("."), rows[:2], manifest={"recipe": {"models": {"fp16": {"kind": "fp16"},
                                                                      "wide": {"source": "gpt2-folder"}}}})
    assert sorted(b158_table(run, LAYOUTS["bitnet_b158"])["Model"]) == ["LLaMA", "wide"]


def test_a_transformers_bitnet_checkpoint_is_sized_as_the_model_it_was_exported_from(tmp_path):
    """transformers keeps a BitNet checkpoint's ternary weights packed in uint8 buffers: its rows counted
    66,976 parameters and 133,980 bytes for a model of 167,072 and 159,068 (b1.58 layout: Size, Mem)."""
    from ptq_bench.models.build import export_hf, parameter_count
    from ptq_bench.source_load import load_source
    from ptq_bench.sources import inspect_source

    arch = ArchConfig(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=2, max_seq_len=64)
    bn = build_model("bitnet_b158", arch, 256, 0)
    export_hf(bn, "bitnet_b158", tmp_path / "hf")
    hf, _, kind = load_source(inspect_source(str(tmp_path / "hf")), tokenizer=False)
    assert kind == "bitnet_hf" and weight_bytes(hf) == weight_bytes(bn)
    block_norms = 2 * 2 * 64  # the export's input / post-attention norms (ones): BitLinear normalizes inside
    assert parameter_count(hf) == parameter_count(bn) + block_norms


def test_a_task_without_accuracy_shows_its_own_metric():
    """A task scored by exact_match (say) had no column at all: the headline list knew acc-like names only."""
    from ptq_bench.report.tables import headline_metrics

    cols = headline_metrics({"lm_eval/gsm/0shot/exact_match": 0.25, "lm_eval/gsm/0shot/exact_match_stderr": 0.1,
                             "lm_eval/piqa/0shot/acc": 0.6, "lm_eval/piqa/0shot/acc_norm": 0.7})
    assert cols == {"gsm/0shot/exact_match": 0.25, "piqa/0shot/acc_norm": 0.7}


def test_bits_plots_draw_only_what_was_measured(tmp_path, monkeypatch):
    """A PTQ line ran to the unquantized model at 16 bits (drawing W16A4, and every bit width between, as
    measured), and a series whose rows ran no task had a legend entry with nothing drawn."""
    se = [("hellaswag", "acc_norm", 0.5), ("hellaswag", "acc_norm_stderr", 0.05), ("piqa", "acc", 0.6),
          ("piqa", "acc_stderr", 0.05)]
    rows = [row("fp16", "fp16", "none", 16, 16, 15.0, se), row("fp16", "fp16", "absmax", 4, 4, 40.0, se),
            row("fp16", "fp16", "absmax", 8, 4, 30.0, se), row("fp16", "fp16", "gptq", 4, 16, 18.0, [])]
    run = run_of(rows)
    df = generic_table(run)
    ax = _drawn(monkeypatch, run, df, tmp_path, plots_mod.plot_ppl_vs_bits)["ppl_vs_bits.png"].axes[0]
    a4 = next(ln for ln in ax.lines if ln.get_label() == "fp16 + absmax A4")
    assert sorted(a4.get_xdata()) == [4.0, 8.0]  # not 16
    ax = _drawn(monkeypatch, run, df, tmp_path, plots_mod.plot_acc_vs_bits)["acc_vs_bits.png"].axes[0]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "fp16 + gptq A16" not in legend and "fp16 + absmax A4" in legend, legend
    assert "mean of 2 tasks' acc_norm" in ax.get_title() and "10 documents each" in ax.get_title()
    assert "≈ 3.5" in ax.get_title(), ax.get_title()  # 100 * sqrt(0.05² + 0.05²) / 2


def test_scaling_plots_join_a_kinds_models_by_size_and_name_the_perplexity(tmp_path, monkeypatch):
    """memory_vs_ppl joined its points in order of perplexity: a 3-model line zig-zagged through sizes."""
    rows = [row(f"m{n}", "fp16", "none", 16, 16, p, [], n_params=n, wbytes=2 * n)
            for n, p in [(1_000_000, 500.0), (4_000_000, 700.0), (2_000_000, 600.0)]]
    run = run_of(rows)
    figs = _drawn(monkeypatch, run, generic_table(run), tmp_path, plots_mod.plot_scaling)
    ax = figs["memory_vs_ppl.png"].axes[0]
    (line,) = [ln for ln in ax.lines if ln.get_label() == "fp16"]
    assert list(line.get_ydata()) == [2.0, 4.0, 8.0]  # MB in order of size, not of perplexity
    assert ax.get_xlabel() == "ppl_gptq/wikitext2/seq128"
    assert sorted(t.get_text() for t in ax.texts) == ["1.0M", "2.0M", "4.0M"]


def test_an_interrupted_report_leaves_every_file_whole(tmp_path, monkeypatch):
    """Tables and figures were written in place: a report killed mid-write left 0-byte PNGs and CSVs."""
    from matplotlib.figure import Figure

    rows = [row("fp16", "fp16", "none", 16, 16, 15.0, T3), row("fp16", "fp16", "absmax", 4, 16, 25.0, T3)]
    folder = _run_dir(tmp_path / "r", rows, layout="bitnet_table3")
    render(folder)
    outputs = lambda: {p.name: p.read_bytes() for p in folder.iterdir() if p.suffix in (".md", ".csv", ".tex", ".png")}  # noqa: E731
    before = outputs()
    assert {".md", ".csv", ".tex", ".png"} <= {Path(n).suffix for n in before}
    real_write = Path.write_text

    def torn_write(self, text, *args, **kwargs):
        real_write(self, text[: len(text) // 2], *args, **kwargs)
        raise KeyboardInterrupt

    def torn_save(self, fname, *args, **kwargs):
        Path(fname).write_bytes(b"")
        raise KeyboardInterrupt

    for cls, name, torn in ((Path, "write_text", torn_write), (Figure, "savefig", torn_save)):
        with monkeypatch.context() as m:
            m.setattr(cls, name, torn)
            with pytest.raises(KeyboardInterrupt):
                render(folder)
        after = outputs()
        assert after == before, (name, [n for n in before if after.get(n) != before[n]])


def test_two_writers_of_one_table_at_once_do_not_trip_over_each_other(tmp_path):
    """Two `report`s of one folder (or a report while the run's own render ends) shared one temp name per
    file: one renamed the other's half-written temp into place, the other failed with FileNotFoundError."""
    import subprocess
    import sys

    code = ("import sys; from pathlib import Path; from ptq_bench.cache import write_atomic\n"
            "for i in range(2000): write_atomic(Path(sys.argv[1]), 'x' * 20000 + '\\n')\n")
    target = tmp_path / "table.md"
    procs = [subprocess.Popen([sys.executable, "-c", code, str(target)], stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    errs = [p.communicate()[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs[0][-500:] + errs[1][-500:]
    assert target.read_text() == "x" * 20000 + "\n"
    assert [p.name for p in tmp_path.iterdir()] == ["table.md"]


def test_csv_and_tex_headers_name_a_partial_limit(tmp_path):
    """The .csv carries no notes, so its headers name what each number is; an accuracy over the first `limit`
    documents of a task was headed as the whole task (`WGe [winogrande/0shot/acc]` for Winogrande at limit
    1000 of 1267, beside the paper's full-set number), while a perplexity subset says `first64win`."""
    d = _run_dir(tmp_path, _nonfinite_rows(), layout="bitnet_table3")  # rows at limit 10
    render(d)
    head = lambda name: next(csv.reader(open(d / name, encoding="utf-8")))  # noqa: E731
    assert "WGe [winogrande/0shot/acc/limit10]" in head("paper_table.csv")
    assert "winogrande/0shot/acc [winogrande/0shot/acc/limit10]" in head("table.csv")
    assert "winogrande/0shot/acc/limit10" in (d / "paper_table.tex").read_text(encoding="utf-8")


def test_the_generic_table_shows_the_mean_kld_not_its_percentile():
    """`kld/<tail>/mean` and `top1_agree/<tail>` are table columns; the 99th percentile and ΔPPL stay in the rows."""
    from ptq_bench.report.tables import headline_metrics

    ms = {"ppl_gptq/wikitext2/seq64": 30.0, "kld/wikitext2/seq64/mean": 0.01, "kld/wikitext2/seq64/p99": 0.2,
          "top1_agree/wikitext2/seq64": 90.0, "dppl/wikitext2/seq64": 1.5}
    assert list(headline_metrics(ms)) == ["ppl_gptq/wikitext2/seq64", "kld/wikitext2/seq64/mean",
                                          "top1_agree/wikitext2/seq64"]
