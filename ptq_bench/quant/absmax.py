"""Absmax round-to-nearest (RTN): the naive PTQ baseline, weights and (optionally) activations.

Weights: symmetric absmax per output channel, per group of input columns, or per tensor; 1 bit =
sign x mean|w|, 1.58 bits = ternary absmean (see `primitives`). Activations: dynamic absmax per token
or per tensor, applied by a forward pre-hook on each quantized linear (SmoothQuant `W8A8Linear` style).
"""

from __future__ import annotations

import time

import torch
import torch.nn as nn

from ptq_bench.quant.calibrate import quantizable_linears
from ptq_bench.quant.configs import A_BITS, W_BITS, AbsmaxConfig  # noqa: F401 - re-exported
from ptq_bench.quant.primitives import (
    Grid,
    effective_bits,
    fake_quant_act,
    fake_quant_weight,
    on_grid,
)
from ptq_bench.quant.registry import QuantReport, register

GRID_ATTR = "ptq_grid"  # attribute on a quantized linear holding its primitives.Grid


class ActQuant:
    """Forward pre-hook: fake-quantize the first positional input of a linear (dynamic absmax)."""

    def __init__(self, bits: int, granularity: str) -> None:
        self.bits, self.granularity = bits, granularity

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        return (fake_quant_act(args[0], self.bits, self.granularity), *args[1:])

    def __repr__(self) -> str:
        return f"ActQuant(bits={self.bits}, granularity={self.granularity!r})"


def attach_act_quant(linear: nn.Linear, bits: int, granularity: str) -> None:
    """Install (once) activation fake quantization on a linear's input; bits 16 = nothing."""
    if bits >= 16:
        return
    if any(isinstance(h, ActQuant) for h in linear._forward_pre_hooks.values()):
        raise ValueError("activation quantization already attached to this linear")
    linear.register_forward_pre_hook(ActQuant(bits, granularity))


@torch.no_grad()
def set_weight(linear: nn.Linear, w_hat: torch.Tensor, grid: Grid | None) -> None:
    """Replace a linear's weight by its dequantized value (dtype preserved) and record the grid."""
    linear.weight.data.copy_(w_hat.to(linear.weight.dtype))
    setattr(linear, GRID_ATTR, grid)


@torch.no_grad()
def quantize_linear_rtn(linear: nn.Linear, w_bits: float, granularity: str, group_size: int) -> Grid | None:
    """Round-to-nearest of one linear's weight in place; returns its grid (None for 16 bits)."""
    if w_bits >= 16:
        return None
    w_hat, grid = fake_quant_weight(linear.weight.data, w_bits, granularity, group_size)
    set_weight(linear, w_hat, grid)
    return grid


def weight_on_grid(linear: nn.Linear, tol: float = 1e-2) -> bool:
    """True iff a quantized linear's weight lies on the grid its method recorded (see primitives.on_grid)."""
    grid = getattr(linear, GRID_ATTR, None)
    if grid is None:
        raise ValueError("this linear has no recorded grid (not quantized, or 16-bit)")
    return on_grid(linear.weight.data, grid, tol)


def report_bits(linears: dict[str, nn.Linear], grids: list[Grid | None]) -> float:
    """Effective stored bits per weight over `linears` (16 for unquantized ones)."""
    sizes = [m.weight.numel() for m in linears.values()]
    if all(g is None for g in grids):
        return 16.0
    total = sum(16.0 * n if g is None else g.storage_bits(n) for g, n in zip(grids, sizes))
    return total / max(sum(sizes), 1)


@register("absmax", AbsmaxConfig)
def quantize_absmax(model: nn.Module, cfg: AbsmaxConfig, calib: torch.Tensor | None = None) -> QuantReport:
    """Absmax RTN of every linear in the decoder blocks; optional dynamic activation quantization."""
    t0 = time.perf_counter()
    linears = quantizable_linears(model)
    grids = [quantize_linear_rtn(m, cfg.w_bits, cfg.w_granularity, cfg.group_size) for m in linears.values()]
    for m in linears.values():
        attach_act_quant(m, cfg.a_bits, cfg.a_granularity)
    return QuantReport(
        effective_bits=report_bits(linears, grids),
        seconds=time.perf_counter() - t0,
        n_linears=len(linears),
    )


__all__ = ["AbsmaxConfig", "ActQuant", "GRID_ATTR", "attach_act_quant", "quantize_absmax", "quantize_linear_rtn",
           "quantizable_linears", "report_bits", "effective_bits", "weight_on_grid"]
