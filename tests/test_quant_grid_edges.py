"""Edges of the weight grids that the method tests do not reach: a partial last group, one-signed rows of
the min-max fit, the asymmetric zero point, W16's stored bits, and `on_grid` itself (the oracle of the
method tests). Each was found by planting a bug the rest of the suite let through."""

from __future__ import annotations

import torch
from quant_fixtures import quantized_copy, tiny_llama

from ptq_bench.quant.gptq import gptq_solve
from ptq_bench.quant.primitives import (
    absmax_grid,
    fake_quant_weight,
    minmax_params,
    on_grid,
    sign_grid,
    ternary_grid,
)
from ptq_bench.quant.statistics import ChannelAbsMax, Hessian


def test_a_partial_last_group_averages_its_real_columns():
    w = torch.randn(3, 10)  # groups of 4: the last holds 2 columns, not 4 (no zero padding in the mean)
    want = w[:, 8:].abs().mean(dim=1)
    assert torch.allclose(ternary_grid(w, "group", 4).scale[:, 2], want)
    assert torch.allclose(sign_grid(w, "group", 4).scale[:, 2], 2 * want)


def test_symmetric_minmax_keeps_the_reference_range_of_a_non_negative_row():
    w = torch.tensor([[0.5, 1.5, 3.0], [-1.0, 0.5, 2.0]])  # quant.py: xmin < 0 only takes -xmax
    scale, zero, maxq = minmax_params(w, 4, sym=True)
    assert maxq == 15 and torch.all(zero == 8)
    assert torch.allclose(scale, torch.tensor([3.0 / 15, 4.0 / 15]))


def test_asymmetric_zero_point_rounds_to_nearest():
    w = torch.tensor([[-1.3, 2.0]])  # scale 3.3 / 15 = 0.22, -xmin / scale = 5.909...
    scale, zero, _ = minmax_params(w, 4, sym=False)
    assert torch.allclose(scale, torch.tensor([0.22])) and zero.item() == 6.0


def test_w16_activation_only_rows_store_16_bits_per_weight():
    _, rep = quantized_copy(tiny_llama(), "absmax", w_bits=16, a_bits=8)
    assert rep.n_linears == 14 and rep.effective_bits == 16.0


def test_on_grid_refuses_codes_out_of_range_and_off_grid_values():
    w = torch.randn(4, 32)
    w_hat, grid = fake_quant_weight(w, 4, "channel")
    assert grid.storage_bits(w.numel()) == 4 * w.numel() + 16 * 4  # one fp16 scale per row
    assert on_grid(w_hat, grid)
    assert not on_grid(2 * w_hat.abs(), absmax_grid(w, 4))  # integer codes beyond maxq (none below 0)
    assert not on_grid(w_hat + 0.05 * grid.scale, grid)  # 0.05 of a level off the grid


def test_asymmetric_gptq_stores_and_counts_its_zero_points():
    w, h = torch.randn(4, 16), torch.eye(16)
    _, grid, _ = gptq_solve(w, h, 4, group_size=8, sym=False)
    assert grid.zero_bits == 4.0  # one 4-bit zero per (row, group), beside the fp16 scale
    assert grid.storage_bits(w.numel()) == 4 * 64 + (16 + 4) * 4 * 2


def test_hessian_of_several_batches_is_the_mean_over_all_their_tokens():
    x = torch.randn(3, 5, 8)  # three calibration batches of five tokens
    stat = Hessian(8)
    for batch in x:
        stat.add(batch)
    flat = x.reshape(-1, 8)
    assert stat.n == 15 and torch.allclose(stat.H, 2 / 15 * flat.T @ flat, atol=1e-5)


def test_smoothquant_activation_maxima_are_of_absolute_values():
    stat = ChannelAbsMax(3)
    stat.add(torch.tensor([[[-5.0, 1.0, -0.5], [2.0, -3.0, 0.25]]]))
    assert torch.equal(stat.amax, torch.tensor([5.0, 3.0, 0.5]))
