"""Run folders lived in over weeks: what a later run or report leaves behind from an earlier one."""

from __future__ import annotations

import json

import pytest
from report_rows import row, run_dir

from ptq_bench.report import render
from ptq_bench.report.run import load_run

PTS = [{"tokens": 1, "loss": 9.0, "step": 1}, {"tokens": 2, "loss": 8.0, "step": 2}]


def test_curves_of_models_outside_the_recipe_are_not_the_runs(tmp_path):
    """A recipe stopped after training 'old' but before its first row; the edited recipe (model 'fp16')
    replaced its manifest and ran. The loss plot must not draw 'old', which this run never trained."""
    manifest = {"recipe": {"models": {"fp16": {"kind": "fp16"}}}, "recipe_hash": "h",
                "invocations": [{"hardware": {"cpu_count": 2}, "wall_s": 1.0}]}
    curves = [{"model": m, "kind": "fp16", "curve": PTS} for m in ("fp16", "old")]
    d = run_dir(tmp_path, [row("fp16", "fp16", "none", 16, 16, 10.0, [])], manifest=json.dumps(manifest),
                curves=curves)
    assert sorted(load_run(d).curves) == ["fp16"]
    render(d)
    assert "curves/old.json: model not in this run's recipe" in (d / "table.md").read_text(encoding="utf-8")


def test_curves_kept_without_a_recipe_naming_models(tmp_path):
    d = run_dir(tmp_path, [row("fp16", "fp16", "none", 16, 16, 10.0, [])],
                curves=[{"model": "other", "kind": "fp16", "curve": PTS}])
    assert sorted(load_run(d).curves) == ["other"]


def test_an_invocation_ended_by_an_error_says_so(tmp_path, monkeypatch):
    """A run that stops on a one-line error (a task document longer than the model's context, found while
    evaluating) left its invocation open, and the table called it killed or still running."""
    import dataclasses

    import pytest
    from smoke_ref import SMOKE

    from ptq_bench import sweep
    from ptq_bench.errors import PtqBenchError
    from ptq_bench.recipe import load_recipe
    from ptq_bench.report.tables import provenance
    from ptq_bench.results import load_manifest, open_run

    recipe = dataclasses.replace(load_recipe(SMOKE), output_dir=str(tmp_path / "out"))

    def prepare(r, text, t0):
        manifest, _ = open_run(r.out_dir, r.digest(), {"recipe_name": r.name})
        return sweep.Sweep(None, r.out_dir, manifest, {}, [], None, "")

    def fail(sw, name):
        raise PtqBenchError("piqa document 22: a continuation of 158 tokens exceeds the model's max length")

    monkeypatch.setattr(sweep, "prepare", prepare)
    monkeypatch.setattr(sweep, "run_model", fail)
    with pytest.raises(PtqBenchError):
        sweep.run(recipe, "")
    manifest = load_manifest(tmp_path / "out", strict=True)
    inv = manifest["invocations"][-1]
    assert inv["error"].startswith("piqa document 22") and inv["cells_run"] == 0 and "wall_s" in inv
    assert "1 ended in an error" in provenance(manifest) and "no recorded end" not in provenance(manifest)


@pytest.mark.parametrize("edit", [
    lambda m: m["eval"].update(by_tokenizer=[1]),
    lambda m: m["invocations"][-1].update(hardware=5),
    lambda m: m["invocations"][-1].update(wall_s="60"),
])
def test_a_manifest_damaged_inside_is_a_damaged_manifest(tmp_path, edit):
    """Hand-edited inner fields of a valid-looking manifest: `run` ended in a TypeError traceback (eval
    versions merged at the end), `report` in an AttributeError (hardware) or TypeError (wall time)."""
    from ptq_bench.errors import PtqBenchError
    from ptq_bench.results import load_manifest

    manifest = {"recipe": {"layout": None}, "recipe_hash": "h", "eval": {"eval_version": 5, "by_tokenizer": {}},
                "invocations": [{"hardware": {"cpu_count": 2}, "wall_s": 60.0}]}
    edit(manifest)
    d = run_dir(tmp_path, [row("fp16", "fp16", "none", 16, 16, 10.0, [])], manifest=json.dumps(manifest))
    with pytest.raises(PtqBenchError, match="damaged manifest"):
        load_manifest(d, strict=True)
    render(d)
    assert "manifest.json damaged" in (d / "table.md").read_text(encoding="utf-8")


def _manifest(layout: str | None) -> str:
    return json.dumps({"recipe": {"layout": layout}, "recipe_hash": "h",
                       "invocations": [{"hardware": {"cpu_count": 2}, "wall_s": 1.0}]})


def test_a_layout_dropped_from_the_recipe_leaves_no_stale_paper_table(tmp_path):
    """`layout:` is not in the recipe hash: a user drops it and re-runs. The old paper table and the layout's
    figures stayed beside the new tables (and the notebook showed them as the run's)."""
    rows = [row("fp16", "fp16", "none", 16, 16, 10.0, [("piqa", "acc_norm", 0.5)]),
            row("b158", "bitnet_b158", "none", 1.58, 8, 12.0, [("piqa", "acc_norm", 0.5)], n_params=2_000_000)]
    d = run_dir(tmp_path, rows, layout="bitnet_b158")
    names = {p.name for p in render(d)}
    assert {"paper_table.md", "ppl_vs_size.png"} <= names
    (d / "manifest.json").write_text(_manifest(None), encoding="utf-8")
    render(d)
    left = {p.name for p in d.iterdir()}
    assert "table.md" in left and not left & {"paper_table.md", "paper_table.csv", "paper_table.tex",
                                              "ppl_vs_size.png", "memory_vs_ppl.png"}


def test_derived_files_stay_while_the_layout_is_unknown(tmp_path):
    rows = [row("fp16", "fp16", "none", 16, 16, 10.0, [])]
    d = run_dir(tmp_path, rows, layout="bitnet_b158")
    render(d)
    (d / "manifest.json").write_text("{damaged", encoding="utf-8")
    render(d)
    assert (d / "paper_table.md").is_file()


def test_a_data_file_changed_since_the_first_run_is_refused(tmp_path):
    """Data files are not in the recipe hash: a folder whose rows came from other bytes of a data file is
    refused (one line, manifest untouched), not resumed with rows of two data sets side by side."""
    from ptq_bench.errors import PtqBenchError
    from ptq_bench.results import MANIFEST, open_run

    run = tmp_path / "run"
    open_run(run, "h", {"data_sha256": {"wikitext2/test.txt": "a" * 64}})
    before = (run / MANIFEST).read_bytes()
    with pytest.raises(PtqBenchError, match=r"data file wikitext2/test.txt changed since .* first run"):
        open_run(run, "h", {"data_sha256": {"wikitext2/test.txt": "b" * 64}})
    assert (run / MANIFEST).read_bytes() == before
    open_run(run, "h", {"data_sha256": {"wikitext2/test.txt": "a" * 64}})
