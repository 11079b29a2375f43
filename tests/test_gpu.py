"""The GPU path, run (`pytest -m gpu` on a machine with CUDA; skipped elsewhere): the smoke recipe on CUDA
in bf16 (`dtype: bfloat16`; training under bf16 autocast) writes the same rows (model, method, seed) as on the CPU. The metrics' differences are printed
(benchmarks/gpu_vs_cpu.py), not bounded: no GPU has been lent to this project, so bf16-on-CUDA has no
measured tolerance yet; read them. `ptq-bench estimate` times the GPU recipe. The
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
                           "--dtypes", "auto", "bfloat16", "--out", str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
    print(proc.stdout[-5000:])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_estimate_times_the_gpu_recipe_on_cuda(capsys):
    """`ptq-bench estimate` on the single-GPU recipe: bf16 training steps of its three ~125M models, a
    seqlen-2048 perplexity batch, a zero-shot sample and each PTQ setting on a few blocks, timed on CUDA
    (the figures the recipe's size is to be stated from)."""
    from ptq_bench.cli import main

    assert main(["estimate", str(ROOT / "recipes" / "bitnet_table3_gpu.yaml"), "--hours", "1"]) == 0
    out = capsys.readouterr().out
    with capsys.disabled():
        print(out)
    assert out.count("s/step") == 3 and "peak" in out and "train.tokens that fit 1 h" in out
    assert out.count("every task once:") == 3
    assert "for 9 PTQ cells" in out  # absmax x3, smoothquant x3, gptq x2, quip: timed on 2 and 4 blocks
