"""The benchmark scripts measure both sides alike and report agreement over all the work."""

from __future__ import annotations

import importlib.util
import sys

import pytest
from smoke_ref import ROOT

BENCH = ROOT / "benchmarks"


def _module(name: str, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))  # the scripts import their sibling modules
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, mod)  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def test_max_delta_refuses_unequal_response_lists(monkeypatch):
    """An agreement figure over a truncated list (zip stops at the shorter) would cover a subset of the work."""
    mod = _module("eval_speed_report", monkeypatch)
    assert mod.max_delta({"t": [(-1.0, True), (-2.0, False)]}, {"t": [(-1.5, True), (-2.0, True)]}) == (0.5, 1)
    with pytest.raises(ValueError):
        mod.max_delta({"t": [(-1.0, True), (-9.0, False)]}, {"t": [(-1.0, True)]})
    with pytest.raises(KeyError):
        mod.max_delta({"t": [(-1.0, True)], "u": [(-1.0, True)]}, {"t": [(-1.0, True)]})
