"""Property tests of the round-to-nearest primitives at their edges: zero, constant and huge-outlier rows, magnitudes
from 1e-40 (subnormal) to 1e30, negative zero, groups that leave a remainder or exceed the width, every grid."""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ptq_bench.quant.primitives import (
    expand_groups,
    fake_quant_act,
    fake_quant_weight,
    grid_codes,
    on_grid,
    quantize,
)

SETTINGS = dict(deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
MAGNITUDES = st.sampled_from([0.0, 1e-40, 1e-30, 1e-9, 1e-3, 1.0, 1e3, 1e30])


@st.composite
def matrices(draw) -> torch.Tensor:
    rows, cols = draw(st.integers(1, 4)), draw(st.integers(1, 12))
    w = torch.randn(rows, cols, generator=torch.Generator().manual_seed(draw(st.integers(0, 2**16))))
    w = w * torch.tensor([draw(MAGNITUDES) for _ in range(cols)])
    if draw(st.booleans()):
        w[0] = draw(MAGNITUDES)  # a constant (or zero) row
    if draw(st.booleans()):
        w[:, 0] *= 1e6  # one huge column
    if draw(st.booleans()):
        w[-1] = -0.0
    return w


@settings(max_examples=300, **SETTINGS)
@given(matrices(), st.sampled_from([1, 1.58, 2, 3, 4, 8]), st.sampled_from(["tensor", "channel", "group"]),
       st.integers(1, 16))
def test_rtn_lies_on_its_grid(w, bits, granularity, group_size):
    w_hat, grid = fake_quant_weight(w, bits, granularity, group_size)
    assert bool(torch.isfinite(w_hat).all()) and on_grid(w_hat, grid)
    assert torch.equal(quantize(w_hat, grid), w_hat)  # idempotent on its own grid
    codes = grid_codes(w_hat, grid).round()
    assert bool((codes >= 0).all()) and bool((codes <= grid.maxq).all())
    if bits == 1:
        assert torch.equal(w_hat > 0, w > 0)  # Sign(w), Sign(0) = -1
    else:
        assert torch.equal(quantize(-w, grid), -w_hat)  # symmetric grids
    if bits >= 2:  # absmax never clips: error at most half a step
        step = expand_groups(grid.scale, grid.group_size, w.shape[1])
        assert bool(((w_hat - w).abs() <= step / 2 * (1 + 1e-6)).all())


@settings(max_examples=100, **SETTINGS)
@given(matrices(), st.sampled_from([2, 4, 8]), st.sampled_from([torch.float32, torch.float16, torch.bfloat16]))
def test_per_token_activations_are_finite_and_independent_of_batch_mates(x, bits, dtype):
    x = x.clamp(-6e4, 6e4).to(dtype)
    y = fake_quant_act(x, bits)
    assert bool(torch.isfinite(y).all())
    assert all(torch.equal(fake_quant_act(x[i:i + 1], bits), y[i:i + 1]) for i in range(x.shape[0]))
