"""The package as a user installs it: the command's entry points, where provenance comes from."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import ptq_bench
from ptq_bench.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_version_flag(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"ptq-bench {ptq_bench.__version__}"


def test_python_dash_m_ptq_bench(tmp_path):
    out = subprocess.run([sys.executable, "-m", "ptq_bench", "--help"], cwd=tmp_path, capture_output=True,
                         text=True, env={"PYTHONPATH": str(ROOT), "PATH": ""}, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: ptq-bench")
