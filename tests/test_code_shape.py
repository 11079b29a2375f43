"""The code shape the next person can carry on: short functions, files read in one sitting, and
`ptq-bench validate` that loads neither torch nor pandas.

`python tests/test_code_shape.py` prints the measurements (longest functions, longest files).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ptq_bench"
MAX_FUNCTION_LINES = 60
MAX_FILE_LINES = 400


def function_lengths() -> list[tuple[int, str]]:
    """(lines, "file:line name") for every function and method in ptq_bench/, decorators excluded."""
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                out.append((n, f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"))
    return sorted(out, reverse=True)


def file_lengths() -> list[tuple[int, str]]:
    return sorted(((len(p.read_text(encoding="utf-8").splitlines()), str(p.relative_to(ROOT)))
                   for p in PACKAGE.rglob("*.py")), reverse=True)


def test_no_function_over_limit():
    long = [f"{n} lines: {where}" for n, where in function_lengths() if n > MAX_FUNCTION_LINES]
    assert not long, "functions over the limit:\n" + "\n".join(long)


def test_no_file_over_limit():
    long = [f"{n} lines: {where}" for n, where in file_lengths() if n > MAX_FILE_LINES]
    assert not long, "files over the limit:\n" + "\n".join(long)


def test_validate_imports_neither_torch_nor_pandas(tmp_path):
    probe = (
        "import sys; from ptq_bench.cli import main; rc = main(['validate', sys.argv[1]]); "
        "heavy = [m for m in ('torch', 'pandas', 'transformers', 'matplotlib') if m in sys.modules]; "
        "print('HEAVY', heavy); sys.exit(rc)"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", probe, str(ROOT / "recipes" / "quickstart.yaml")], cwd=tmp_path,
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout, out.stdout


if __name__ == "__main__":
    print(f"longest functions (limit {MAX_FUNCTION_LINES}):")
    for n, where in function_lengths()[:5]:
        print(f"  {n:4d}  {where}")
    print(f"longest files (limit {MAX_FILE_LINES}):")
    for n, where in file_lengths()[:5]:
        print(f"  {n:4d}  {where}")
