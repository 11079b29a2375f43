"""Property test (issue 9 item 7): mutated recipes through `validate` and `run`, in-process.

Every mutation of smoke.yaml / quickstart.yaml must end in exit 0 or 2 — never a traceback —, within
REFUSED_WITHIN s (recipe_mutations), with a single error line under 300 characters; every recipe `validate`
accepts must pass the independent oracle `looks_invalid`; and a recipe `validate` refuses must be refused by `run` too,
before anything is written. benchmarks/recipe_fuzz.py runs the same cases in larger numbers and
prints the counts.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from recipe_mutations import REFUSED_WITHIN, looks_invalid, mutations, run_case

SETTINGS = dict(deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def check(outcome, data: bytes) -> None:
    assert outcome.code in (0, 2), outcome.err[-2000:]
    assert outcome.seconds < REFUSED_WITHIN, outcome.seconds
    if outcome.code == 2:
        line = outcome.err.strip()
        assert line.count("\n") == 0 and len(line) < 300, line[:400]
    else:
        assert looks_invalid(yaml.safe_load(data.decode())) == [], "accepted but invalid"


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def test_validate_mutations(folder):
    @settings(max_examples=250, **SETTINGS)
    @given(mutations())
    def case(m):
        label, data = m
        check(run_case(data, folder, "validate"), data)

    run_case((Path(__file__).parents[1] / "recipes" / "smoke.yaml").read_bytes(), folder)  # warm imports
    case()


def test_run_refuses_what_validate_refuses(tmp_path, monkeypatch):
    """`run` on a refused recipe exits 2 and writes nothing (cwd is a scratch folder, so a relative
    output_dir or cache_dir would land there; the sweep itself is replaced by a tripwire)."""
    import ptq_bench.sweep

    def tripwire(*a, **k):
        raise AssertionError("run reached the sweep")

    monkeypatch.setattr(ptq_bench.sweep, "run", tripwire)
    monkeypatch.chdir(tmp_path)
    refused = []

    @settings(max_examples=60, **SETTINGS)
    @given(mutations())
    def case(m):
        label, data = m
        if run_case(data, tmp_path, "validate").code != 2:
            return
        before = {str(p) for p in tmp_path.rglob("*")}
        outcome = run_case(data, tmp_path, "run")
        assert outcome.code == 2 and outcome.err.strip().count("\n") == 0, outcome.err[-2000:]
        assert {str(p) for p in tmp_path.rglob("*")} == before, label
        refused.append(label)

    case()
    assert len(refused) >= 20
