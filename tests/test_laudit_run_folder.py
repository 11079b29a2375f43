"""Run folders lived in over weeks: what a later run or report leaves behind from an earlier one."""

from __future__ import annotations

import json

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
