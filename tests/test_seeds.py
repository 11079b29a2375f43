"""Spread over calibration seeds: `calibration.seeds` repeats every calibrated cell once per seed (its
own windows, its own cell id and row), the report pools them as mean ± std, and lm-eval's stderr of
each accuracy is stored."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml
from test_source_pipeline import checkpoint, tokenizer_dir  # noqa: F401  (a fixture)

from ptq_bench.cli import main
from ptq_bench.errors import RecipeError
from ptq_bench.recipe import expand_cells, load_recipe
from ptq_bench.results import Row, load_rows


def _recipe(tmp_path: Path, src: Path, seeds: list[int] | None) -> Path:
    r = {"name": "seeds", "output_dir": str(tmp_path / "out"), "cache_dir": str(tmp_path / "cache"),
         "models": {"m": {"source": str(src)}}, "calibration": {"n_samples": 2, "seq_len": 32, "seeds": seeds},
         "quantize": [{"method": "absmax", "w_bits": 4, "tasks": []}, {"method": "gptq", "w_bits": 3, "group_size": 32}],
         "eval": {"perplexity": {"sets": ["wikitext2"], "seq_len": 32, "max_windows": 3}, "tasks": ["piqa"],
                  "limit": 6, "batch_size": 4, "kld": False}}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(r))
    return path


def test_seeds_expand_calibrated_cells_only_and_keep_default_ids(tmp_path):
    from ptq_bench.sweep import cell_id

    src = tmp_path / "none"  # expand_cells reads no source for trained models: use a trained spec
    path = _recipe(tmp_path, src, [0, 1, 2])
    r = yaml.safe_load(path.read_text())
    r["models"] = {"m": {"kind": "fp16"}}
    path.write_text(yaml.safe_dump(r))
    cells = expand_cells(load_recipe(path))
    assert [(c.method, c.calib_seed) for c in cells] == [("none", None), ("absmax", None), ("gptq", None),
                                                          ("gptq", 1), ("gptq", 2)]  # seed 0 = recipe.seed: None
    r["calibration"]["seeds"] = None
    path.write_text(yaml.safe_dump(r))
    default = expand_cells(load_recipe(path))
    assert [cell_id(c, "k", "auto") for c in default] == [cell_id(c, "k", "auto") for c in cells[:3]]  # ids unchanged
    assert len({cell_id(c, "k", "auto") for c in cells}) == 5
    r["calibration"]["seeds"] = [1, 1]
    path.write_text(yaml.safe_dump(r))
    with pytest.raises(RecipeError, match="calibration.seeds"):
        load_recipe(path)


def test_an_entry_names_its_own_seeds_and_tasks(tmp_path):
    path = _recipe(tmp_path, tmp_path / "none", [0])
    r = yaml.safe_load(path.read_text())
    r["models"] = {"m": {"kind": "fp16"}}
    r["eval"]["tasks"] = ["piqa", "arc_easy"]
    r["quantize"] = [{"method": "absmax", "w_bits": 4, "tasks": []},
                     {"method": "gptq", "w_bits": 3, "seeds": [0, 5], "tasks": ["arc_easy"]},
                     {"method": "gptq", "w_bits": 2}]
    path.write_text(yaml.safe_dump(r))
    cells = expand_cells(load_recipe(path))
    assert [(c.method, c.w_bits, c.calib_seed, c.tasks) for c in cells] == [
        ("none", 16, None, None), ("absmax", 4, None, ()), ("gptq", 3, None, ("arc_easy",)),
        ("gptq", 3, 5, ("arc_easy",)), ("gptq", 2, None, None)]  # the entry's seeds; calibration.seeds elsewhere
    for entry, message in [({"method": "absmax", "w_bits": 4, "seeds": [1]}, "reads no calibration data"),
                           ({"method": "gptq", "w_bits": 3, "tasks": ["boolq"]}, "not in eval.tasks"),
                           ({"method": "gptq", "w_bits": 3, "seeds": [1, 1]}, "duplicate"),
                           ({"method": "gptq", "w_bits": 3, "seeds": "1"}, "seeds")]:
        r["quantize"] = [entry]
        path.write_text(yaml.safe_dump(r))
        with pytest.raises(RecipeError, match=message):
            load_recipe(path)


def test_schema1_rows_read_without_seed():
    from report_rows import row

    data = row("m", "fp16", "none", 16, 16, 10.0, [])
    data = {k: v for k, v in data.items() if k not in ("calib_seed", "threads")}
    old = Row.from_dict({**data, "schema": 1, "cell_id": "x", "recipe_hash": "h", "method_version": None,
                         "eval_version": 1, "model_key": "k"})
    assert old.calib_seed is None and old.threads is None


def test_two_seeds_give_two_rows_and_a_spread(tmp_path, tokenizer_dir, capsys):  # noqa: F811
    src = checkpoint(tmp_path, "llama", tokenizer_dir)
    assert main(["run", str(_recipe(tmp_path, src, [0, 1]))]) == 0
    logged = [ln for ln in capsys.readouterr().out.splitlines() if "gptq W3A16" in ln]  # the two cells' lines
    assert sorted(ln.split("gptq W3A16 ")[1].split()[:3] for ln in logged) == [["g32", "seed", "0"], ["g32", "seed", "1"]]
    rows = load_rows(tmp_path / "out", strict=True)
    gptq = sorted((r for r in rows if r.method == "gptq"), key=lambda r: r.calib_seed)
    assert [r.calib_seed for r in gptq] == [0, 1] and gptq[0].cell_id != gptq[1].cell_id
    ppl = "ppl_gptq/wikitext2/seq32/first3win"
    assert gptq[0].metrics[ppl] != gptq[1].metrics[ppl]  # different windows, different weights
    assert [r.calib_seed for r in rows if r.method != "gptq"] == [None, None]  # uncalibrated: one row each
    assert all(r.threads == torch.get_num_threads() for r in rows)
    assert not any(k.startswith("lm_eval/") for k in next(r for r in rows if r.method == "absmax").metrics)
    # lm-eval's stderr of a mean metric: sample std / sqrt(n) of the 0/1 scores
    assert all(r.protocol["batch_size"] == 4 for r in rows)  # the number can depend on it (per-tensor scales)
    for r in rows:
        if r.method == "absmax":  # its entry's `tasks: []`: perplexity only, and no eval path claimed
            assert r.protocol["path"] is None
            continue
        assert r.protocol["path"] == "fast:shared"
        acc = r.metrics["lm_eval/piqa/0shot/acc"]
        n = 6
        assert r.metrics["lm_eval/piqa/0shot/acc_stderr"] == pytest.approx(math.sqrt(acc * (1 - acc) * n / (n - 1) / n))
    spread = (tmp_path / "out" / "table_seeds.md").read_text()
    line = next(ln for ln in spread.splitlines() if "| gptq |" in ln)
    mean = (gptq[0].metrics[ppl] + gptq[1].metrics[ppl]) / 2
    std = abs(gptq[0].metrics[ppl] - gptq[1].metrics[ppl]) / math.sqrt(2)
    assert f"{mean:.2f} ± {std:.2f}" in line and "| 2 |" in line, line
    csv = (tmp_path / "out" / "table_seeds.csv").read_text().splitlines()
    assert f"{ppl}_std" in csv[0].split(",")
    per_seed = (tmp_path / "out" / "table.csv").read_text().splitlines()
    assert "calib_seed" in per_seed[0] and sum(",gptq," in ln for ln in per_seed) == 2


def test_plots_draw_seed_spread_as_min_max_bars(tmp_path, monkeypatch):
    import matplotlib.axes
    from report_rows import row, run_dir

    from ptq_bench.report import render

    rows = [row("m", "fp16", "none", 16, 16, 20.0, [])]
    for seed, ppl in ((0, 30.0), (1, 34.0), (2, 32.0)):
        r = row("m", "fp16", "gptq", 4, 16, ppl, [], quant={"effective_bits": 4.25, "seconds": 0.1})
        r["metrics"]["kld/wikitext2/seq128/mean"] = ppl / 100
        rows.append({**r, "calib_seed": seed})
    bars = []
    real = matplotlib.axes.Axes.errorbar
    monkeypatch.setattr(matplotlib.axes.Axes, "errorbar",
                        lambda self, x, y, yerr=None, **kw: bars.append((x, y, yerr)) or real(self, x, y, yerr=yerr, **kw))
    render(run_dir(tmp_path, rows))
    assert ([4.0], [32.0], [[2.0], [2.0]]) in bars  # ppl_vs_bits: mean 32, min 30, max 34
    assert any(x == [4.25] and y[0] == pytest.approx(0.32) for x, y, _ in bars)  # kld_vs_bits at eff. bits
    assert "| 3 |" in (tmp_path / "run" / "table_seeds.md").read_text()
