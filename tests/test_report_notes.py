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
