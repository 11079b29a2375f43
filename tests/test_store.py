"""The result store under damage: torn tail, lock, foreign rows, damaged manifest or row, versions."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from smoke_ref import ROOT, cli, reference, workspace

from ptq_bench.lock import run_lock
from ptq_bench.recipe import load_recipe
from ptq_bench.results import RESULTS, SCHEMA_VERSION, Row, current, load_rows, read_rows


@pytest.fixture(scope="session")
def ref(tmp_path_factory):
    return reference(tmp_path_factory.getbasetemp())


def _table_rows(out: Path) -> int:
    return len((out / "table.csv").read_text().strip().splitlines()) - 1


def _one_line(stderr: str) -> str:
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, stderr[-2000:]
    return lines[0]


# ----------------------------------------------------------------------------------------------
# Row schema (no run needed)


def test_row_round_trip_and_schema_checks(ref):
    row = Row.from_dict(ref.rows[0])
    assert row.schema == SCHEMA_VERSION and Row.from_json(row.to_json()) == row
    with pytest.raises(ValueError, match="newer than this ptq-bench"):
        Row.from_dict({**row.to_dict(), "schema": SCHEMA_VERSION + 1})
    with pytest.raises(ValueError, match="not a JSON object"):
        Row.from_json("[1, 2]")
    with pytest.raises(ValueError, match="missing key 'metrics'"):
        Row.from_dict({k: v for k, v in row.to_dict().items() if k != "metrics"})
    with pytest.raises(ValueError, match="'w_bits' is not"):
        Row.from_dict({**row.to_dict(), "w_bits": "4"})
    # JSON true/false are no numbers, though Python's bool is an int: a hand edit writing one read as 1 or 0
    flag = {"metrics": {**row.metrics, next(iter(row.metrics)): False}}
    for edit, what in (({"w_bits": True}, "'w_bits' is not"), ({"schema": True}, "'schema' is not"),
                       (flag, "'metrics' value .* is not a number")):
        with pytest.raises(ValueError, match=what):
            Row.from_dict({**row.to_dict(), **edit})


def test_rows_written_before_schema_versions_still_read():
    rows = load_rows(ROOT / "tests" / "fixtures" / "schema0_run", strict=True)  # results/quickstart of 2026-11-24
    assert rows and all(r.schema == 0 and r.recipe_hash is None for r in rows)


def test_a_later_version_of_a_cell_supersedes_the_earlier(ref):
    a = Row.from_dict(ref.rows[-1])
    b = dataclasses.replace(a, cell_id="other", method_version=(a.method_version or 0) + 1)
    assert current([a, b]) == [b]


# ----------------------------------------------------------------------------------------------
# runs over damaged folders


def test_torn_tail_is_cut_kept_aside_and_recomputed(ref, tmp_path):
    recipe, out, _ = workspace(ref, tmp_path, copy_out=True)
    data = (out / RESULTS).read_bytes()
    cut = len(data) - 120  # mid-row, no newline: a write cut short
    (out / RESULTS).write_bytes(data[:cut])
    proc = cli("run", str(recipe))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "cut a torn last line" in proc.stdout and "6 already done, 1 to run" in proc.stdout
    aside = list(out.glob(RESULTS + ".torn-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == data[data.rfind(b"\n", 0, cut) + 1 : cut]
    lines = (out / RESULTS).read_text().splitlines()
    assert len(lines) == 7 and all(json.loads(ln)["cell_id"] for ln in lines)
    rows = read_rows(out, strict=True)
    assert {(r["model"], r["label"]): r["metrics"] for r in rows} == ref.metrics()
    assert _table_rows(out) == 7


def _second_run_beside_a_first(ref, tmp_path, before_second=lambda out: None) -> tuple[int, str, Path]:
    """Start a run of the smoke recipe, wait for its lock, `before_second(out)`, then run it again beside
    it: (the first's pid, the second's one stderr line and exit status checked after both end, folder)."""
    recipe, out, _ = workspace(ref, tmp_path)
    first = subprocess.Popen([sys.executable, "-m", "ptq_bench.cli", "run", str(recipe)], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / ".lock.owner").is_file():
        time.sleep(0.1)
    before_second(out)
    second = cli("run", str(recipe))
    assert first.wait(timeout=600) == 0
    assert second.returncode == 2, second.stdout[-2000:]
    ids = [r.cell_id for r in load_rows(out, strict=True)]
    assert len(ids) == 7 and len(set(ids)) == 7
    return first.pid, _one_line(second.stderr), out


def test_second_run_of_a_folder_exits_2_naming_the_holder(ref, tmp_path):
    pid, line, _ = _second_run_beside_a_first(ref, tmp_path)
    assert "in use by another ptq-bench run" in line and f"pid {pid}" in line


def test_a_deleted_lock_does_not_let_a_second_run_in(ref, tmp_path):
    """With `.lock` deleted under a running run, a second one took a new lock file and both wrote every
    cell (18 rows for 9); the first run's `.lock.owner` names a live ptq-bench process, and that refuses."""
    pid, line, _ = _second_run_beside_a_first(ref, tmp_path, lambda out: (out / ".lock").unlink())
    assert f"pid {pid}" in line and ".lock was deleted" in line, line


def test_lock_held_in_process_refuses_cli(tmp_path):
    with run_lock(tmp_path / "out"):
        proc = cli("run", str(ROOT / "recipes" / "smoke.yaml"), "--output-dir", str(tmp_path / "out"))
    assert proc.returncode == 2 and f"pid {os.getpid()}" in _one_line(proc.stderr)


def test_rows_of_another_recipe_are_refused_without_a_manifest(ref, tmp_path):
    recipe, out, _ = workspace(ref, tmp_path, copy_out=True, seed=1)
    (out / "manifest.json").unlink()
    before = (out / RESULTS).read_bytes()
    proc = cli("run", str(recipe))
    assert proc.returncode == 2
    assert "results.jsonl:1: a row of another recipe" in _one_line(proc.stderr)
    assert (out / RESULTS).read_bytes() == before and not (out / "manifest.json").exists()


@pytest.mark.parametrize("damage, expect", [
    ("manifest_truncated", "manifest.json: damaged manifest (not valid JSON"),
    ("manifest_list", "manifest.json: damaged manifest (not a JSON object"),
    ("row_list", "results.jsonl:4: damaged row (not a JSON object"),
    ("row_garbage", "results.jsonl:4: damaged row ("),
    ("manifest_eval_str", "damaged manifest ('eval' is not an object whose 'by_tokenizer'"),  # an AttributeError before
    ("manifest_data_sha_str", "damaged manifest ('data_sha256' is not an object of sha256 strings)"),  # check off
    ("manifest_data_sha_int", "damaged manifest ('data_sha256' is not an object of sha256 strings)"),  # TypeError
])
def test_damage_is_one_line_in_run_and_report_renders_intact_rows(ref, tmp_path, damage, expect):
    recipe, out, _ = workspace(ref, tmp_path, copy_out=True)
    manifest, results = out / "manifest.json", out / RESULTS
    lines = results.read_text().splitlines(keepends=True)
    if damage == "manifest_truncated":
        manifest.write_text(manifest.read_text()[:200])
    elif damage == "manifest_list":
        manifest.write_text("[1, 2]")
    elif damage.startswith("manifest_"):
        m = json.loads(manifest.read_text())
        m.update({"manifest_eval_str": {"eval": "x"}, "manifest_data_sha_str": {"data_sha256": "abc"},
                  "manifest_data_sha_int": {"data_sha256": dict.fromkeys(m["data_sha256"], 5)}}[damage])
        manifest.write_text(json.dumps(m))
    else:
        lines.insert(3, "[1, 2]\n" if damage == "row_list" else '{"cell_id": "x", "metr\n')
        results.write_text("".join(lines))
    before = results.read_bytes()
    proc = cli("run", str(recipe))
    assert proc.returncode == 2 and expect in _one_line(proc.stderr), proc.stderr[-2000:]
    assert results.read_bytes() == before
    (out / "table.csv").unlink()
    rep = cli("report", str(out))
    assert rep.returncode == 0, rep.stderr[-2000:]
    assert "warning" in rep.stderr and _table_rows(out) == 7


def test_an_edited_row_is_a_damaged_row(ref, tmp_path):
    """A stored row carries the sha256 of its content: a hand-edited number (or a changed byte that still
    parses) no longer passes for the computed one. It was trusted before schema 3."""
    recipe, out, _ = workspace(ref, tmp_path, copy_out=True)
    results = out / RESULTS
    lines = results.read_text().splitlines(keepends=True)
    row = json.loads(lines[3])
    key = sorted(row["metrics"])[0]
    row["metrics"][key] *= 0.5
    lines[3] = json.dumps(row, sort_keys=True) + "\n"
    results.write_text("".join(lines))
    before = results.read_bytes()
    proc = cli("run", str(recipe))
    expect = "results.jsonl:4: damaged row (its sha256 does not match its content (edited or damaged after it"
    assert proc.returncode == 2 and expect in _one_line(proc.stderr), proc.stderr[-2000:]
    assert results.read_bytes() == before
    rep = cli("report", str(out))
    assert rep.returncode == 0 and "warning" in rep.stderr and _table_rows(out) == 6, rep.stderr[-2000:]


def test_rows_are_stored_sealed_and_older_schemas_need_no_seal(ref):
    row = Row.from_dict(ref.rows[0])
    assert row.schema == 3 and row.sha256 == row.digest() and row.problem() is None
    assert Row.from_dict({**ref.rows[0], "sha256": None}).problem() == "no sha256 (a schema-3 row is stored with one)"
    old = Row.from_dict({**ref.rows[0], "sha256": None, "schema": 2})
    assert old.problem() is None  # the committed results folders' rows (schema 2) keep reading


def _problems(folder: Path, lines: list[str]) -> list[str | None]:
    from ptq_bench.results import scan_rows

    folder.mkdir(exist_ok=True)
    (folder / RESULTS).write_text("".join(x + "\n" for x in lines))
    return [problem for _, _, problem in scan_rows(folder)]


def test_what_the_seal_lets_through_and_what_it_does_not(ref, tmp_path):
    """Reformatting passes (key order, spacing, 8.0 written as 8 as jq writes it); a lowered schema, a
    duplicate key hiding an edit, or an older row after sealed ones do not (found by an outside audit)."""
    raw = [json.loads(x) for x in (ref.out / RESULTS).read_text().splitlines()]
    first = raw[0]
    second = next(r for r in raw if isinstance(r["w_bits"], float) and r["w_bits"].is_integer())  # 8.0
    as_jq = json.dumps({**second, "w_bits": int(second["w_bits"])}, indent=None, separators=(",", ":"))
    reordered = json.dumps(dict(reversed(list(first.items()))), indent=1).replace("\n", " ")
    assert _problems(tmp_path / "ok", [reordered, as_jq]) == [None, None]
    edited = {**second, "metrics": {k: v * 0.5 for k, v in second["metrics"].items()}}
    lowered = json.dumps({**edited, "schema": 2})
    assert "a sha256 in a schema-2 row" in _problems(tmp_path / "low", [lowered])[0]
    unsealed = json.dumps({k: v for k, v in edited.items() if k != "sha256"} | {"schema": 2})
    assert _problems(tmp_path / "after", [json.dumps(first), unsealed])[1].startswith("a schema-2 row after schema-3")
    assert _problems(tmp_path / "before", [unsealed, json.dumps(first)]) == [None, None]  # an old folder resumed
    twice = json.dumps(second)[:-1] + ', "w_bits": ' + json.dumps(second["w_bits"]) + "}"
    assert _problems(tmp_path / "dup", [twice])[0] == "duplicate key 'w_bits'"


def test_method_version_bump_recomputes_its_rows(ref, tmp_path):
    recipe, out, _ = workspace(ref, tmp_path, copy_out=True)
    bump = ("import dataclasses, sys\nfrom ptq_bench.quant import METHODS, load_all\nload_all()\n"
            "METHODS['absmax'] = dataclasses.replace(METHODS['absmax'], version=METHODS['absmax'].version + 1)\n"
            "from ptq_bench.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    proc = subprocess.run([sys.executable, "-c", bump, "run", str(recipe)], cwd=ROOT, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "3 already done, 4 to run" in proc.stdout
    stored = load_rows(out, strict=True)
    assert len(stored) == 11
    rows = read_rows(out)
    assert len(rows) == 7 and _table_rows(out) == 7
    from ptq_bench.quant import METHODS, load_all

    load_all()
    assert {r["method_version"] for r in rows if r["method"] == "absmax"} == {METHODS["absmax"].version + 1}
    assert {(r["model"], r["label"]): r["metrics"] for r in rows} == ref.metrics()


def test_recipe_hash_ignores_what_changes_no_result(ref, tmp_path):
    recipe, out, _ = workspace(ref, tmp_path, copy_out=True, description="edited", name="renamed")
    base = load_recipe(ref.recipe)
    assert load_recipe(recipe).digest() == base.digest()
    assert dataclasses.replace(base, seed=1).digest() != base.digest()
    proc = cli("run", str(recipe))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "7 already done, 0 to run" in proc.stdout


@pytest.mark.parametrize("entry, make", [("results.jsonl", "dir"), ("manifest.json", "dir"), ("curves", "file")])
def test_a_run_folder_entry_of_the_wrong_type_is_one_line(tmp_path, entry, make):
    """A folder where a file belongs (or the reverse): tracebacks before, one after the base cell was computed."""
    out = tmp_path / "out"
    out.mkdir()
    (out / entry).mkdir() if make == "dir" else (out / entry).write_text("x")
    recipe = tmp_path / "r.yaml"
    recipe.write_text((ROOT / "recipes" / "smoke.yaml").read_text()
                      .replace("output_dir: runs/smoke", f"output_dir: {out}\ncache_dir: {tmp_path / 'cache'}"))
    proc = cli("run", str(recipe))
    assert proc.returncode == 2 and f"{out / entry}: not a {'folder' if make == 'file' else 'file'}; move it aside" \
        in _one_line(proc.stderr), proc.stderr[-2000:]


def test_a_manifest_without_rows_does_not_block_another_recipe(tmp_path):
    """A run refused after its manifest was written (e.g. max_windows beyond the set, found only once the set
    is tokenized) left a folder that refused the corrected recipe, though it held no results."""
    from ptq_bench.results import open_run

    run = tmp_path / "out"
    open_run(run, "aaaa", {"recipe_name": "r"})
    manifest, rows = open_run(run, "bbbb", {"recipe_name": "r"})
    assert manifest["recipe_hash"] == "bbbb" and len(manifest["invocations"]) == 1 and rows == []
    (run / RESULTS).write_text("")  # an empty results file holds no rows either
    assert open_run(run, "cccc", {"recipe_name": "r"})[0]["recipe_hash"] == "cccc"
