"""The seed-spread table (table_seeds) against the rows it pools."""

from __future__ import annotations

from report_rows import md_cells, row, run_dir

from ptq_bench.report import render


def _seed_rows(accs_on_seed0_only: bool = True) -> list[dict]:
    rows = [row("m", "fp16", "none", 16, 16, 20.0, [("piqa", "acc", 0.5)])]
    for seed, ppl in ((0, 30.0), (1, 34.0), (2, 32.0)):
        accs = [("piqa", "acc", 0.75)] if seed == 0 or not accs_on_seed0_only else []
        rows.append({**row("m", "fp16", "gptq", 4, 16, ppl, accs), "calib_seed": seed})
    return rows


def _line(md: str, method: str) -> list[str]:
    line = next(ln for ln in md.splitlines() if f"| {method} |" in ln)
    return md_cells(line)


def test_a_cell_measured_on_fewer_seeds_shows_them_not_a_dash(tmp_path):
    """Tasks run on seed 0 only (an entry's `tasks:`): the pooled cell is that seed's number, said in a note;
    "–" (not measured) was shown while the paper table showed the same cell as measured."""
    render(run_dir(tmp_path, _seed_rows()))
    md = (tmp_path / "run" / "table_seeds.md").read_text()
    head = _line(md, "model")
    cells = dict(zip(head, _line(md, "gptq")))
    assert cells["piqa/0shot/acc"] == "75.00" and cells["avg_acc"] == "75.00"
    assert cells["ppl_gptq/wikitext2/seq128"] == "32.00 ± 2.00" and cells["n"] == "3"
    assert "from 1 of 3 seeds" in md and "piqa/0shot/acc" in md.split("from 1 of 3 seeds")[0].splitlines()[-1]


def _gptq_lines(md: str) -> list[list[str]]:
    return [md_cells(ln) for ln in md.splitlines() if "| gptq |" in ln]


def test_seeds_of_other_versions_or_devices_are_not_pooled(tmp_path):
    """A run resumed after an eval-version change (or on another device) holds seed 0 of the old protocol
    beside seeds 1 and 2 of the new: one mean ± std over the three named only seed 0's version."""
    rows = _seed_rows(accs_on_seed0_only=False)
    for r in rows:
        r.update(method_version=1, eval_version=5)
        r["protocol"] = {**r["protocol"], "device": "cpu", "dtype": "float32"}
    rows[1]["eval_version"] = 4
    cuda = {**rows[3], "calib_seed": 3, "protocol": {**rows[3]["protocol"], "device": "cuda", "dtype": "bfloat16"}}
    render(run_dir(tmp_path, [*rows, cuda]))
    md = (tmp_path / "run" / "table_seeds.md").read_text()
    head = _line(md, "model")
    lines = [dict(zip(head, cells)) for cells in _gptq_lines(md)]
    assert sorted((ln["eval v"], ln["n"], ln["calib_seeds"]) for ln in lines) == [("4", "1", "–"), ("5", "1", "–"),
                                                                                   ("5", "2", "1 2")]
    assert next(ln for ln in lines if ln["n"] == "2")["ppl_gptq/wikitext2/seq128"] == "33.00 ± 1.41"


def test_figures_do_not_average_seeds_of_other_versions(tmp_path, monkeypatch):
    """ppl_vs_bits drew seed 0 (eval v4) and seeds 1-2 (eval v5) as one mean with one min–max bar."""
    from ptq_bench.report import plots

    rows = _seed_rows()
    for r in rows:
        r.update(method_version=1, eval_version=5)
    rows[1]["eval_version"] = 4
    drawn = []
    real = plots.Marks.spread_line
    monkeypatch.setattr(plots.Marks, "spread_line", lambda self, ax, xs, ys, **kw: drawn.append(
        (kw.get("label"), list(ys))) or real(self, ax, xs, ys, **kw))
    render(run_dir(tmp_path, rows))
    ppl = sorted((label, ys) for label, ys in drawn if ys and 1 < max(ys) < 50)  # the perplexity series
    assert ppl == [("m + gptq A16 group (eval v4)", [30.0]), ("m + gptq A16 group (eval v5)", [34.0, 32.0])]


def test_seeds_of_another_method_version_are_not_pooled(tmp_path):
    """A method-version bump recomputes its rows' seeds one by one: seed 0 of the old solver beside seeds 1
    and 2 of the new is two settings, not one mean ± std over two quantizers."""
    rows = _seed_rows(accs_on_seed0_only=False)
    for r in rows:
        r.update(method_version=2, eval_version=5)
    rows[1]["method_version"] = 1
    render(run_dir(tmp_path, rows))
    md = (tmp_path / "run" / "table_seeds.md").read_text()
    head = _line(md, "model")
    lines = [dict(zip(head, cells)) for cells in _gptq_lines(md)]
    assert sorted((ln["method v"], ln["n"]) for ln in lines) == [("1", "1"), ("2", "2")]


def test_seeds_differing_only_by_fastlm_path_are_pooled(tmp_path):
    """`protocol.path` is None on a seed that ran no task (an entry's tasks on seed 0 only): it is not a
    protocol difference, so the three seeds stay one setting with n = 3."""
    rows = _seed_rows()
    rows[1]["protocol"] = {**rows[1]["protocol"], "path": "fast:shared"}
    for r in rows[2:]:
        r["protocol"] = {**r["protocol"], "path": None}
    render(run_dir(tmp_path, rows))
    md = (tmp_path / "run" / "table_seeds.md").read_text()
    head = _line(md, "model")
    assert [dict(zip(head, cells))["n"] for cells in _gptq_lines(md)] == ["3"]


def test_a_column_no_seed_measured_gets_no_fewer_seeds_note(tmp_path):
    """Tasks measured on the base row only: the pooled rows show "–" there, and no note claims a number
    "from 0 of 3 seeds"."""
    rows = _seed_rows()
    for r in rows[1:]:
        r["metrics"] = {k: v for k, v in r["metrics"].items() if not k.startswith("lm_eval/")}
    render(run_dir(tmp_path, rows))
    md = (tmp_path / "run" / "table_seeds.md").read_text()
    assert "of 3 seeds" not in md


def test_a_run_of_one_calibration_seed_has_no_seed_table(tmp_path):
    """table_seeds exists only when some setting ran on more than one seed: a run of one seed per setting (a
    calibrated row with its seed, the base row with none) gets no copy of table.md with every `n` 1."""
    rows = [row("m", "fp16", "none", 16, 16, 20.0, []), {**row("m", "fp16", "gptq", 4, 16, 30.0, []), "calib_seed": 0}]
    render(run_dir(tmp_path, rows))
    assert (tmp_path / "run" / "table.md").is_file()
    assert not list((tmp_path / "run").glob("table_seeds*"))


def test_the_seed_csv_gives_the_sample_std_of_each_pooled_column(tmp_path):
    """table_seeds.csv's `<column>_std` is the sample std over the seeds (30, 34, 32: 2.0), the number the md
    prints after ±; not their range (4.0) nor the population std (1.63)."""
    import csv

    render(run_dir(tmp_path, _seed_rows()))
    with open(tmp_path / "run" / "table_seeds.csv", encoding="utf-8") as fh:
        rec = next(r for r in csv.DictReader(fh) if r["method"] == "gptq")
    ppl = next(c for c in rec if c.startswith("ppl_gptq/") and not c.endswith("_std"))
    assert float(rec[ppl]) == 32.0 and float(rec[f"{ppl}_std"]) == 2.0
