"""A benchmark script or module (benchmarks/NAME.py) imported by a test, as the script itself would see it."""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

import pytest
from smoke_ref import ROOT

BENCH = ROOT / "benchmarks"


def bench_module(name: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """benchmarks/`name`.py, loaded with benchmarks/ on the path (the scripts import their sibling modules) and
    registered under `name` for the test's duration (dataclasses look their module up)."""
    monkeypatch.syspath_prepend(str(BENCH))
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, mod)
    spec.loader.exec_module(mod)
    return mod
