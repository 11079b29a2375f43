"""Work per stored row: reading a folder of N rows parses each row once and resolves Row's types once."""

from __future__ import annotations

import typing
from pathlib import Path

from ptq_bench.report.run import load_run
from ptq_bench.results import RESULTS, Row, open_run

N = 40


def _row(i: int) -> Row:
    return Row(cell_id=f"c{i}", recipe="r", recipe_hash="h", model="m", model_kind="fp16", model_key="k",
               method="absmax", method_version=1, eval_version=6, label=f"W{i}", w_bits=4, a_bits=16,
               config={"w_bits": 4, "damp": i}, metrics={"ppl_gptq/wikitext2/seq64": 10.0 + i}, quant={},
               eval_seconds=0.1, protocol={}, diverged=False, untrained_metrics=None, finished="t")


def _folder(tmp_path: Path, damaged: bool = False) -> Path:
    lines = [_row(i).sealed().to_json() for i in range(N)] + (["{not json"] if damaged else [])
    (tmp_path / RESULTS).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return tmp_path


def _count_parses(monkeypatch) -> list[int]:
    calls = [0]
    parse = Row.from_json.__func__

    def counted(cls, text):
        calls[0] += 1
        return parse(cls, text)

    monkeypatch.setattr(Row, "from_json", classmethod(counted))
    return calls


def test_reading_rows_resolves_the_row_types_once(tmp_path, monkeypatch):
    calls = [0]
    hints = typing.get_type_hints

    def counted(*args, **kwargs):
        calls[0] += 1
        return hints(*args, **kwargs)

    monkeypatch.setattr(typing, "get_type_hints", counted)
    run = load_run(_folder(tmp_path))
    assert len(run.rows) == N and calls[0] <= 1  # was once per row (a third of `report`'s time at 3000 rows)


def test_resume_parses_each_stored_row_once(tmp_path, monkeypatch):
    calls = _count_parses(monkeypatch)
    manifest, rows = open_run(_folder(tmp_path), "h", {})
    assert rows == [_row(i).sealed() for i in range(N)] and calls[0] == N  # was 2 N: refused-row scan, then load


def test_report_parses_each_stored_row_once(tmp_path, monkeypatch):
    calls = _count_parses(monkeypatch)
    run = load_run(_folder(tmp_path, damaged=True))
    assert [r["cell_id"] for r in run.rows] == [f"c{i}" for i in range(N)] and calls[0] == N + 1  # was 2 (N + 1)
    assert [d for d in run.damage if "line 41 damaged" in d]


def test_checking_a_row_seal_copies_no_row(tmp_path, monkeypatch):
    import ptq_bench.results as results

    calls = [0]
    asdict = results.dataclasses.asdict

    def counted(*args, **kwargs):
        calls[0] += 1
        return asdict(*args, **kwargs)

    folder = _folder(tmp_path)
    monkeypatch.setattr(results.dataclasses, "asdict", counted)
    manifest, rows = open_run(folder, "h", {})
    assert len(rows) == N and calls[0] == 0  # was N: `digest` deep-copied each row (asdict) to hash it
    assert [r.digest() for r in rows] == [r.sha256 for r in rows]
