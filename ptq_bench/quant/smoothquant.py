"""SmoothQuant (Xiao et al., arXiv 2211.10438), after mit-han-lab/smoothquant `smooth.py` / `fake_quant.py`.

Per norm -> linears mapping (calibrate.SMOOTH_MAPPINGS), with a_j = max|X_j| over the calibration
inputs of those linears and w_j = max over the linears and their rows of |W_ij|:

    s_j = clamp(a_j^alpha / clamp(w_j, 1e-5)^(1 - alpha), 1e-5)
    norm.weight /= s (and its bias);   W[:, j] *= s_j for every linear fed by the norm

which leaves the float model's output unchanged and moves activation outliers into the weights. Then
absmax fake quantization as `W8A8Linear`: weights per channel (or tensor / group), activations dynamic
per token (or tensor), on every linear of every block (o_proj and down_proj are quantized, not
smoothed). Activation maxima are collected on the float model, as the reference does.

Not reproduced: the reference's optional output quantization of q/k/v (`quantize_bmm_input`).
A mapping is skipped (and named in the report) when its norm is missing or a target is not a plain
nn.Linear, e.g. BitLinear, whose own input RMSNorm would undo the smoothing.
"""

from __future__ import annotations

import time

import torch
import torch.nn as nn

from ptq_bench.quant.absmax import (
    attach_act_quant,
    quantize_linear_rtn,
    report_bits,
)
from ptq_bench.quant.calibrate import SMOOTH_MAPPINGS, ChannelAbsMax, layer_linears, run_blockwise
from ptq_bench.quant.configs import SmoothQuantConfig
from ptq_bench.quant.primitives import Grid
from ptq_bench.quant.registry import QuantReport, register


def smoothing_scales(act_amax: torch.Tensor, weights: list[torch.Tensor], alpha: float) -> torch.Tensor:
    """s_j = a_j^alpha / w_j^(1-alpha); act_amax (in,), weights: (out_k, in) each -> s (in,) float32."""
    w_amax = torch.stack([w.float().abs().amax(dim=0) for w in weights]).amax(dim=0).clamp(min=1e-5)
    return (act_amax.float().pow(alpha) / w_amax.pow(1 - alpha)).clamp(min=1e-5)


@torch.no_grad()
def smooth(norm: nn.Module, linears: list[nn.Linear], act_amax: torch.Tensor, alpha: float) -> torch.Tensor:
    """Fold the smoothing scales into `norm` (divide) and the input columns of `linears` (multiply)."""
    s = smoothing_scales(act_amax, [m.weight for m in linears], alpha).to(norm.weight.device)
    norm.weight.div_(s.to(norm.weight.dtype))
    if getattr(norm, "bias", None) is not None:
        norm.bias.div_(s.to(norm.bias.dtype))
    for m in linears:
        m.weight.mul_(s.to(m.weight.dtype).view(1, -1))
    return s


@register("smoothquant", SmoothQuantConfig, needs_calibration=True)
def quantize_smoothquant(model: nn.Module, cfg: SmoothQuantConfig, calib: torch.Tensor) -> QuantReport:
    """Smooth every norm -> linears mapping, then absmax W/A fake quantization of every block linear."""
    t0 = time.perf_counter()
    probes = {targets[0] for _, targets in SMOOTH_MAPPINGS}  # targets share the norm's output
    done: dict[str, tuple[nn.Linear, Grid | None]] = {}
    skipped: list[str] = []
    smoothed: list[str] = []

    def on_layer(idx: int, layer: nn.Module, stats: dict[str, ChannelAbsMax]) -> None:
        linears = layer_linears(layer)
        for norm_name, targets in SMOOTH_MAPPINGS:
            norm = getattr(layer, norm_name, None)
            fcs = [linears.get(t) for t in targets]
            if norm is None or getattr(norm, "weight", None) is None or any(type(m) is not nn.Linear for m in fcs):
                skipped.append(f"model.layers.{idx}.{norm_name}")
                continue
            smooth(norm, fcs, stats[targets[0]].amax, cfg.alpha)
            smoothed.append(f"model.layers.{idx}.{norm_name}")
        for name, lin in linears.items():
            grid = quantize_linear_rtn(lin, cfg.w_bits, cfg.w_granularity, cfg.group_size)
            attach_act_quant(lin, cfg.a_bits, cfg.a_granularity)
            done[f"model.layers.{idx}.{name}"] = (lin, grid)

    def make_stat(name: str, lin: nn.Linear) -> ChannelAbsMax | None:
        return ChannelAbsMax(lin.in_features, lin.weight.device) if name in probes else None

    run_blockwise(model, calib, make_stat, on_layer, sequential=False)
    linears = {n: lin for n, (lin, _) in done.items()}
    return QuantReport(
        effective_bits=report_bits(linears, [g for _, g in done.values()]),
        seconds=time.perf_counter() - t0,
        n_linears=len(done),
        details={"smoothed_norms": len(smoothed), "skipped": skipped},
    )
