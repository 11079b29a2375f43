"""Run folders, checkpoints and results that come from someone else: what they hold must not make ptq-bench
write outside its folders, put their text into tables as structure or formulas, or exhaust memory."""

from __future__ import annotations

from pathlib import Path

import pytest

from ptq_bench.cli import main

SMOKE = Path(__file__).resolve().parents[1] / "recipes" / "smoke.yaml"


@pytest.mark.parametrize(("name", "folder"), [("results.jsonl", False), (".lock.owner", False), (".lock", False),
                                              ("curves", True)])
def test_a_run_folder_entry_that_is_a_link_is_refused_before_writing(tmp_path, capsys, name, folder):
    """A copied run folder whose results.jsonl pointed at a one-line file without a newline: `run` took the line for
    a torn write and truncated the file it points at; a linked .lock.owner was overwritten with the lock's JSON, a
    linked curves/ received the curves."""
    victim, out = tmp_path / "elsewhere", tmp_path / "run"
    victim.mkdir()
    out.mkdir()
    target = victim / ("dir" if folder else "notes.txt")
    target.mkdir() if folder else target.write_text("my notes, no trailing newline")
    (out / name).symlink_to(target)
    assert main(["run", str(SMOKE), "--output-dir", str(out), "--executor", "local"]) == 2
    err = capsys.readouterr().err
    assert f"output_dir: {name} in " in err and " is a symbolic link" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in out.iterdir()) == [name]
    assert sorted(p.name for p in victim.rglob("*")) == [target.name]
    assert folder or target.read_text() == "my notes, no trailing newline"


def test_the_run_lock_refuses_a_linked_owner_file(tmp_path):
    """`sweep.run` (the Python API, no CLI checks) takes the lock first: it refuses too."""
    from ptq_bench.errors import PtqBenchError
    from ptq_bench.lock import run_lock

    (tmp_path / "notes.txt").write_text("mine\n")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / ".lock.owner").symlink_to(tmp_path / "notes.txt")
    with pytest.raises(PtqBenchError, match="is a symbolic link"), run_lock(tmp_path / "run"):
        pass
    assert (tmp_path / "notes.txt").read_text() == "mine\n"
