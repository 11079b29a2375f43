"""Absmax round-to-nearest (RTN): the naive PTQ baseline, weights and (optionally) activations.

Weights: symmetric absmax per output channel, per group of input columns, or per tensor; 1 bit =
sign x mean|w|, 1.58 bits = ternary absmean (see `primitives`). Activations: dynamic absmax per token
or per tensor, applied by a forward pre-hook on each quantized linear (SmoothQuant `W8A8Linear` style).
No calibration: the family's linears are walked directly (`apply.quantize_model`).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ptq_bench.quant.apply import quantize_model, rtn_solver
from ptq_bench.quant.configs import AbsmaxConfig
from ptq_bench.quant.registry import QuantReport, register


@register("absmax", version=2)  # 2: ties round as the references (w / s half to even)
def quantize_absmax(model: nn.Module, cfg: AbsmaxConfig, calib: torch.Tensor | None = None) -> QuantReport:
    """Absmax RTN of every linear in the decoder blocks; optional dynamic activation quantization."""
    solve = rtn_solver(cfg.w_bits, cfg.w_granularity, cfg.group_size)
    return quantize_model(model, solve, cfg.a_bits, cfg.a_granularity)
