"""Quantizers against independent references: SmoothQuant's scales against the paper's formula written
out by hand, and ptq_bench's GPTQ solver against GPTQModel's output stored in tests/fixtures
(gptqmodel_golden.npz, written by tests/fixtures/make_gptqmodel_golden.py; GPTQModel is not needed here).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ptq_bench.quant.gptq import gptq_solve
from ptq_bench.quant.smoothquant import smoothing_scales

GOLDEN = Path(__file__).parent / "fixtures" / "gptqmodel_golden.npz"


# ---- SmoothQuant ------------------------------------------------------------------------------


def reference_scales(act_amax: list[float], weights: list[list[list[float]]], alpha: float) -> list[float]:
    """SmoothQuant (Xiao et al. 2023, eq. 4): s_j = max|X_j|^alpha / max|W_j|^(1 - alpha), where max|W_j|
    runs over input channel j of every linear fed by the same norm. Plain Python, one channel at a time."""
    scales = []
    for j, a in enumerate(act_amax):
        w = max(abs(row[j]) for weight in weights for row in weight)
        scales.append(a ** alpha / w ** (1.0 - alpha))
    return scales


@pytest.mark.parametrize("alpha", [0.2, 0.5, 0.8])
def test_smoothing_scales_follow_the_formula(alpha):
    gen = torch.Generator().manual_seed(0)
    cols = 24
    # asymmetric on purpose: activation maxima 0.5..40 (outlier channels), weight maxima ~0.01..2, so
    # a^alpha / w^(1-alpha) differs from a^(1-alpha) / w^alpha whenever alpha != 0.5
    act = torch.logspace(math.log10(0.5), math.log10(40.0), cols)[torch.randperm(cols, generator=gen)]
    weights = [torch.randn(16, cols, generator=gen) * torch.logspace(-2, 0.3, cols),
               torch.randn(8, cols, generator=gen) * 0.05]
    got = smoothing_scales(act, weights, alpha)
    want = torch.tensor(reference_scales(act.tolist(), [w.tolist() for w in weights], alpha))
    assert got.shape == (cols,) and got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-5, atol=0)
    if alpha != 0.5:  # the inputs do tell alpha from 1 - alpha
        swapped = torch.tensor(reference_scales(act.tolist(), [w.tolist() for w in weights], 1.0 - alpha))
        assert (got / swapped - 1).abs().max() > 0.5


# ---- GPTQ against GPTQModel ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def golden() -> dict:
    with np.load(GOLDEN) as data:
        return {k: data[k] for k in data.files}


def cases(golden: dict) -> list[str]:
    return sorted(k.removeprefix("case_") for k in golden if k.startswith("case_"))


def ours(golden: dict, name: str, block_size: int | None = None) -> torch.Tensor:
    bits, group_size, blocksize, act_order, static = (int(v) for v in golden[f"case_{name}"])
    W, H = torch.from_numpy(golden["W"]), torch.from_numpy(golden["H"])
    q, _, _ = gptq_solve(W, H, bits, group_size, float(golden["damp"]), block_size or blocksize,
                         act_order=bool(act_order), sym=True, static_groups=bool(static))
    return q


def hessian_error(golden: dict, q: torch.Tensor) -> float:
    """tr((W - Q) H (W - Q)^T): the layer-output error GPTQ minimizes."""
    d = torch.from_numpy(golden["W"]).double() - q.double()
    return float(torch.einsum("ij,jk,ik->", d, torch.from_numpy(golden["H"]).double(), d))


def test_golden_fixture_is_what_the_test_expects(golden):
    assert golden["W"].shape == (64, 128) and golden["H"].shape == (128, 128)
    assert str(golden["gptqmodel_version"]).startswith("7.")
    assert {"w4g32_b32", "w3g32_b32", "w4g32_ao_static", "w4g128_ao", "w3_ao_perchannel", "w4g32_b128"} <= set(cases(golden))


@pytest.mark.parametrize("name", ["w4g32_b32", "w3g32_b32", "w4g32_ao_static", "w3g32_ao_static", "w4g128_ao",
                                  "w3_ao_perchannel"])
def test_gptq_solve_reproduces_gptqmodel(golden, name):
    """Same weight, same Hessian, same settings: every weight on the same grid point as GPTQModel 7.7's
    (CPU fp32). Measured: bit-identical on the host that made the fixture; on an AVX512 host the floats
    differ by <= 8.2e-8 (a group's scale, fitted on error-compensated weights, moves by an ulp with the
    summation order), still 100% on the same grid point. On an AVX512-FP16 host (2026-12-06) one weight of
    w3g32_b32 (row 18, column 64) took the neighbouring point, and error feedback carried the difference
    through the rest of its row: 26 weights (0.32%), one row of 64, Hessian-weighted error 0.99968x
    GPTQModel's. Allowed, therefore: at most 3 of 64 rows with any weight on another point, each within one
    grid step, and the error within 0.1%. Planted bugs move every row or most: damp x1.1 leaves 0-78% of
    the rows identical, damp x3 0-5%."""
    theirs = torch.from_numpy(golden[f"Q_{name}"])
    q = ours(golden, name)
    step = float((theirs.max() - theirs.min()) / (2 ** int(golden[f"case_{name}"][0]) - 1))  # coarse bound
    same = (q - theirs).abs() <= 1e-4 * step  # same grid point, up to float noise
    rows = float(same.all(dim=1).float().mean())
    assert rows >= 61 / 64, f"{name}: {100 * rows:.1f}% of the rows on GPTQModel's grid points"
    assert float((q - theirs).abs().max()) <= step
    assert abs(hessian_error(golden, q) / hessian_error(golden, theirs) - 1) <= 1e-3


def test_gptq_groups_inside_a_block_use_the_current_weights(golden):
    """GPTQModel with blocksize 128 and groups of 32 fits a group starting inside a block on a stale copy of
    the block; ours fits every group on the current, error-compensated weights, whatever the block size:
    so ours at blocksize 128 equals GPTQModel at blocksize 32 (groups on block boundaries) up to float
    summation order (measured: max |dQ| 7.5e-8 on the fixture's host; on an AVX512 host 0.38% of the
    weights take a neighbouring grid point, rounding ties flipped by the other order), while GPTQModel's
    own blocksize-128 result differs from its blocksize-32 one on 66% of the weights. Its Hessian-weighted
    error is within 10% of GPTQModel's at blocksize 128 (measured +4.5%)."""
    q = ours(golden, "w4g32_b128")
    moved = float(((q - torch.from_numpy(golden["Q_w4g32_b32"])).abs() > 1e-6).float().mean())
    assert moved <= 0.01, f"{100 * moved:.2f}% of the weights differ from GPTQModel at blocksize 32"
    ratio = hessian_error(golden, q) / hessian_error(golden, torch.from_numpy(golden["Q_w4g32_b128"]))
    assert 0.9 <= ratio <= 1.1, ratio
