"""The report's provenance line of a Ray run names the workers that computed the cells.

The line was built from the invocation's `hardware`, which is the driver's: a sweep on GPU workers driven
from a CPU-only host read "Ran on CPU, 8 cores", a claim about where the rows came from that did not happen.
"""

from __future__ import annotations

from ptq_bench.report.tables import provenance

DRIVER = {"platform": "Linux-x", "cpu_count": 8, "torch_threads": 8, "cpu_capability": "AVX2"}


def _manifest(executor: dict | None) -> dict:
    inv = {"hardware": DRIVER, "wall_s": 60.0, "git": "abc", **({"executor": executor} if executor else {})}
    return {"recipe_hash": "h", "invocations": [inv]}


def test_a_ray_run_says_its_workers_ran_the_cells():
    ex = {"kind": "ray", "workers": ["gpu1 cuda torch_threads=4", "gpu2 cuda torch_threads=4"]}
    line = provenance(_manifest(ex))
    assert "Ran on Ray workers (gpu1 cuda torch_threads=4, gpu2 cuda torch_threads=4)" in line, line
    assert "driver on CPU, 8 cores, AVX2 kernels (Linux-x)" in line, line


def test_a_local_run_keeps_its_line():
    assert provenance(_manifest(None)).startswith("- Ran on CPU, 8 cores, AVX2 kernels (Linux-x); wall time 1.0 min")


def test_a_ray_invocation_that_ran_no_cell_keeps_the_driver_line():
    """A Ray re-run of a folder a local run had completed runs no task: its rows are the local host's."""
    line = provenance(_manifest({"kind": "ray", "workers": []}))
    assert line.startswith("- Ran on CPU, 8 cores, AVX2 kernels (Linux-x); wall time"), line
