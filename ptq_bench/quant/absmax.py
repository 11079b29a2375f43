"""Absmax round-to-nearest (RTN): the naive PTQ baseline, weights and (optionally) activations.

Weights: symmetric absmax per output channel, per group of input columns, or per tensor; 1 bit =
sign x mean|w|, 1.58 bits = ternary absmean (see `primitives`). Activations: dynamic absmax per token
or per tensor, applied by a forward pre-hook on each quantized linear (SmoothQuant `W8A8Linear` style).
No calibration: the family's linears are walked directly (`apply.quantize_model`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ptq_bench.quant.apply import quantize_model, rtn_solver
from ptq_bench.quant.primitives import check_a_bits, check_w_bits, check_weight_granularity
from ptq_bench.quant.registry import QuantReport, register


@dataclass(frozen=True)
class AbsmaxConfig:
    w_bits: float = 8  # weight bits: 1 (sign), 1.58 (ternary), 2..8, 16 = unquantized
    w_granularity: str = "channel"  # one scale per "tensor", per output "channel", or per "group"
    group_size: int = 128  # input columns per scale when w_granularity == "group"
    a_bits: int = 16  # activation bits, dynamic absmax; 16 = not quantized
    a_granularity: str = "token"  # one activation scale per "token" or per "tensor"

    def __post_init__(self) -> None:
        check_w_bits(self.w_bits)
        check_weight_granularity(self.w_granularity, self.group_size)
        check_a_bits(self.a_bits, self.a_granularity)


@register("absmax", AbsmaxConfig)
def quantize_absmax(model: nn.Module, cfg: AbsmaxConfig, calib: torch.Tensor | None = None) -> QuantReport:
    """Absmax RTN of every linear in the decoder blocks; optional dynamic activation quantization."""
    solve = rtn_solver(cfg.w_bits, cfg.w_granularity, cfg.group_size)
    return quantize_model(model, solve, cfg.a_bits, cfg.a_granularity)
