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


def _git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True,
                          env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                               "GIT_COMMITTER_EMAIL": "t@t", "PATH": "/usr/bin:/bin"}).stdout.strip()


def test_git_hash_of_an_install_inside_another_repository(tmp_path, monkeypatch):
    """A wheel installed into a venv inside the user's own project: that project's commit is not ours."""
    from ptq_bench import provenance

    _git("init", "-q", cwd=tmp_path)
    (tmp_path / "a").write_text("a")
    _git("add", "a", cwd=tmp_path)
    _git("commit", "-qm", "theirs", cwd=tmp_path)
    site = tmp_path / ".venv" / "lib" / "site-packages" / "ptq_bench"
    site.mkdir(parents=True)
    monkeypatch.setattr(provenance, "__file__", str(site / "provenance.py"))
    assert provenance.git_hash() == "unknown"


def test_git_hash_of_the_checkout():
    from ptq_bench.provenance import git_hash

    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    assert git_hash().split("-")[0] == _git("rev-parse", "HEAD", cwd=ROOT)


def _dependencies() -> dict[str, object]:
    """pyproject's [project] dependencies by normalized name (read without tomllib: Python 3.10 lacks it)."""
    import re

    from packaging.requirements import Requirement

    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    block = re.search(r"^dependencies = \[(.*?)^\]", text, re.S | re.M).group(1)
    reqs = [Requirement(s) for s in re.findall(r'^\s*"([^"]+)"', block, re.M)]
    return {re.sub(r"[-_.]+", "-", r.name).lower(): r for r in reqs}


def _floor(specifier: object) -> object:
    from packaging.version import Version

    return max((Version(s.version) for s in specifier if s.operator in (">=", "==")), default=Version("0"))


@pytest.mark.parametrize("name", ["torch", "accelerate"])
def test_floors_meet_transformers_own(name):
    """transformers keeps torch and accelerate in its `torch` extra, which we do not ask for: a floor of ours
    below its own lets pip keep a version with which transformers disables torch or refuses to load."""
    from importlib.metadata import requires

    from packaging.requirements import Requirement

    theirs = [Requirement(r) for r in requires("transformers") or []]
    floor = max(_floor(r.specifier) for r in theirs if r.name == name and r.marker is not None)
    assert _floor(_dependencies()[name].specifier) >= floor, f"{name}: transformers needs >= {floor}"


def test_every_import_is_declared():
    """Each third-party package ptq_bench imports (at the top or inside a function) is a dependency of its
    own, not only one of another dependency's, which may drop it."""
    import ast
    import re
    from importlib.metadata import packages_distributions

    dists = packages_distributions()
    roots = set()
    for path in (ROOT / "ptq_bench").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                roots |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                roots.add(node.module.split(".")[0])
    third = roots - set(sys.stdlib_module_names) - {"ptq_bench", "__future__"}
    declared = set(_dependencies())
    missing = {m: dists.get(m) for m in third
               if not {re.sub(r"[-_.]+", "-", d).lower() for d in dists.get(m, [m])} & declared}
    assert not missing, f"imported but not in pyproject's dependencies: {missing}"


# The lm-eval APIs ptq_bench calls that came after 0.4.0, with the first release that has them
# (TaskManager is not in 0.4.1, lm-evaluation-harness#1574; `include_defaults` came with #1856, 2024-05).
LM_EVAL_SINCE = {("lm_eval.tasks", "TaskManager", "include_defaults"): "0.4.3"}


@pytest.mark.parametrize(("module", "name", "param"), list(LM_EVAL_SINCE))
def test_lm_eval_floor_has_the_apis_used(module, name, param):
    import importlib
    import inspect

    from packaging.version import Version

    assert param in inspect.signature(getattr(importlib.import_module(module), name)).parameters
    since = Version(LM_EVAL_SINCE[module, name, param])
    assert _floor(_dependencies()["lm-eval"].specifier) >= since, f"{module}.{name}({param}=) needs lm-eval >= {since}"
