"""The protocol notes under every table name the protocol the numbers were computed with."""

from __future__ import annotations

from report_rows import row

from ptq_bench.report.tables import protocol_notes


def _ppl_note(max_windows: int | None) -> str:
    r = row("m", "fp16", "none", 16, 16, 20.0, [("piqa", "acc", 0.5)])
    r["protocol"] = {**r["protocol"], "ppl": {"seq_len": 128, "max_windows": max_windows}}
    return next(line for line in protocol_notes([r]) if line.startswith("- `ppl_gptq"))


def test_the_perplexity_note_says_how_many_windows_were_scored():
    assert "all windows" in _ppl_note(None) and "first" not in _ppl_note(None)
    assert "first 8 windows" in _ppl_note(8) and "all windows" not in _ppl_note(8)


def test_rows_of_different_eval_versions_are_said_to_be_so(tmp_path):
    """A folder an older ptq-bench wrote, whose rerun stopped before every cell was recomputed, holds rows of
    two protocol versions side by side: the notes say which, not only the manifest's latest version."""
    from report_rows import run_dir

    from ptq_bench.report import render

    t3 = [("hellaswag", "acc_norm", 0.3)]
    rows = [row("fp16", "fp16", "none", 16, 16, 15.0, t3, eval_version=6),
            row("fp16", "fp16", "absmax", 8, 16, 15.1, t3, eval_version=6, method_version=2),
            row("fp16", "fp16", "absmax", 4, 16, 16.0, t3, eval_version=3, method_version=1)]
    d = run_dir(tmp_path, rows, layout="bitnet_table3")
    render(d)
    said = "- Rows were evaluated under different protocol versions (`eval v`): v3 (1 rows), v6 (2 rows);"
    for name in ("table.md", "paper_table.md"):
        assert said in (d / name).read_text(encoding="utf-8")
    one = run_dir(tmp_path / "one", rows[:2], layout="bitnet_table3")
    render(one)
    assert "different protocol versions" not in (one / "table.md").read_text(encoding="utf-8")


def test_titles_limits_and_wall_time_name_every_row_and_invocation():
    """A run mixing shot counts is not titled by its first; rows with a document limit beside rows without one
    are `/limit<mixed>`, not every document; the wall time sums every invocation, not the last."""
    from ptq_bench.report.run import shots
    from ptq_bench.report.tables import limit_suffix, provenance

    r0, r5 = (row("m", "fp16", "none", 16, 16, 20.0, [("piqa", "acc", 0.5)]) for _ in range(2))
    r5["protocol"] = {**r5["protocol"], "num_fewshot": 5, "limit": 200}
    r0["protocol"] = {**r0["protocol"], "num_fewshot": 0, "limit": None}
    assert shots([r0, r5]) == "mixed: zero-shot, 5-shot" and shots([r5]) == "5-shot"
    assert limit_suffix([r0, r5]) == "/limit<mixed>" and limit_suffix([r5]) == "/limit200" and limit_suffix([r0]) == ""
    inv = [{"wall_s": 60.0, "hardware": {}}, {"wall_s": 120.0, "hardware": {}}]
    assert "wall time 3.0 min over 2 invocation(s)" in provenance({"invocations": inv, "recipe_hash": "h"})
