"""The seed-spread table (table_seeds) against the rows it pools."""

from __future__ import annotations

from report_rows import row, run_dir

from ptq_bench.report import render


def _seed_rows(accs_on_seed0_only: bool = True) -> list[dict]:
    rows = [row("m", "fp16", "none", 16, 16, 20.0, [("piqa", "acc", 0.5)])]
    for seed, ppl in ((0, 30.0), (1, 34.0), (2, 32.0)):
        accs = [("piqa", "acc", 0.75)] if seed == 0 or not accs_on_seed0_only else []
        rows.append({**row("m", "fp16", "gptq", 4, 16, ppl, accs), "calib_seed": seed})
    return rows


def _line(md: str, method: str) -> list[str]:
    line = next(ln for ln in md.splitlines() if f"| {method} |" in ln)
    return [c.strip() for c in line.strip("|").split("|")]


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
