"""Shared test set-up: the data folder, and small helpers."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("PTQ_BENCH_DATA", str((ROOT.parent / "shared" / "data").resolve()))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Under pytest-xdist (`make test` runs 2 workers, one per core): one thread per worker and in the runs it
# starts (two workers of 2 threads each would oversubscribe the cores), and a temp folder per worker, so a
# test comparing the temp folder before and after its run sees only its own worker's files.
WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if WORKER:
    os.environ["OMP_NUM_THREADS"] = "1"
    _tmp = Path(tempfile.gettempdir()) / f"ptq-bench-tests-{WORKER}-{os.getpid()}"
    _tmp.mkdir(exist_ok=True)
    os.environ["TMPDIR"] = str(_tmp)
    tempfile.tempdir = None  # gettempdir() reads $TMPDIR again


def pytest_sessionfinish(session: pytest.Session) -> None:
    if WORKER:
        shutil.rmtree(os.environ["TMPDIR"], ignore_errors=True)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = Path(os.environ["PTQ_BENCH_DATA"])
    if not path.is_dir():
        pytest.fail(f"benchmark data not found at {path}: set PTQ_BENCH_DATA")
    return path
