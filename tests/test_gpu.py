"""The GPU path, run (`pytest -m gpu` on a machine with CUDA; skipped elsewhere): the smoke recipe on CUDA
writes the same rows (model, method, seed) as on the CPU. The metrics' differences are printed
(benchmarks/gpu_vs_cpu.py), not bounded: no GPU has been lent to this project, so bf16-on-CUDA has no
measured tolerance yet; read them. The
block-placement test is `tests/test_calib_memory.py::test_device_placement_moves_one_block_to_cuda_and_back`."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from smoke_ref import ROOT

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device: pytest -m gpu")]


def test_smoke_recipe_on_cuda_writes_the_cpu_rows(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_vs_cpu.py"), str(ROOT / "recipes" / "smoke.yaml"),
                           "--out", str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
    print(proc.stdout[-5000:])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
