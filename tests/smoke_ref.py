"""One complete run of recipes/smoke.yaml shared by the slow tests (store, cache, pipeline).

It is built once per test session under pytest's base temp folder (a marker file says it is
complete, so each module's session fixture reuses it); tests copy its cache and results folder
before changing anything.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from filelock import FileLock

from ptq_bench.results import read_rows

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "recipes" / "smoke.yaml"


def cli(*args: str, **kw: Any) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ptq_bench.cli", *args], capture_output=True, text=True,
                          cwd=kw.pop("cwd", ROOT), **kw)


def write_recipe(path: Path, raw: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


@dataclass
class Ref:
    raw: dict[str, Any]  # the smoke recipe with this run's output_dir and cache_dir
    recipe: Path
    out: Path
    cache: Path
    rows: list[dict[str, Any]]

    def metrics(self) -> dict[tuple[str, str], dict[str, float]]:
        return {(r["model"], r["label"]): r["metrics"] for r in self.rows}


def reference(base: Path) -> Ref:
    """The shared smoke run (built on first call); $PTQ_BENCH_SMOKE_REF keeps it across sessions. Under
    pytest-xdist every worker has a base folder of its own in the session's: the run is built once there."""
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    work = Path(os.environ.get("PTQ_BENCH_SMOKE_REF") or shared / "smoke-ref")
    raw = yaml.safe_load(SMOKE.read_text(encoding="utf-8"))
    raw.update(output_dir=str(work / "out"), cache_dir=str(work / "cache"))
    recipe = work / "smoke.yaml"
    with FileLock(f"{work}.lock"):
        if not (work / "complete").is_file():
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            write_recipe(recipe, raw)
            proc = cli("run", str(recipe))
            assert proc.returncode == 0, proc.stderr[-3000:]
            (work / "complete").touch()
    return Ref(raw, recipe, work / "out", work / "cache", read_rows(work / "out"))


def workspace(ref: Ref, tmp: Path, copy_out: bool = False, **changes: Any) -> tuple[Path, Path, Path]:
    """(recipe file, output folder, cache folder) in `tmp`: a copy of the reference cache (and, with
    copy_out, of its results folder) and the smoke recipe with `changes` applied."""
    cache, out = tmp / "cache", tmp / "out"
    shutil.copytree(ref.cache, cache, ignore=shutil.ignore_patterns("*.lock"))
    if copy_out:
        shutil.copytree(ref.out, out, ignore=shutil.ignore_patterns(".lock*"))
    raw = {**ref.raw, "output_dir": str(out), "cache_dir": str(cache), **changes}
    return write_recipe(tmp / "recipe.yaml", raw), out, cache
