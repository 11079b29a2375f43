"""SmoothQuant (Xiao et al., arXiv 2211.10438), after mit-han-lab/smoothquant `smooth.py` / `fake_quant.py`.

Per norm -> linears pair of the model's family (`families.Family.smooth`), with a_j = max|X_j| over the calibration
inputs of those linears and w_j = max over the linears and their rows of |W_ij|:

    s_j = clamp(a_j^alpha / clamp(w_j, 1e-5)^(1 - alpha), 1e-5)
    norm output /= s;   W[:, j] *= s_j for every linear fed by the norm

(the norm's output is divided per its semantics: w / s for a gain, (1 + w) / s - 1 for Gemma's 1 + gain,
weight and bias / s for a LayerNorm; a Conv1D's weight is (in, out), so its rows are scaled)
which leaves the float model's output unchanged and moves activation outliers into the weights. Then
absmax fake quantization as `W8A8Linear`: weights per channel (or tensor / group), activations dynamic
per token (or tensor), on every linear of every block (o_proj and down_proj are quantized, not
smoothed; fused projections such as Phi-3's qkv_proj are one target like any other). Activation
maxima are collected on the float model, as the reference does.

A mixture of experts' MLP norm feeds its router (kept in float), any shared expert and every expert: all are
smoothed with one s, as the reference's Mixtral code does; a_j is the router's input maximum, i.e. the
maximum over the experts' inputs (`norm_amax`).

Not reproduced: the reference's optional output quantization of q/k/v (`quantize_bmm_input`).
A pair that cannot be resolved (norm or target missing, widths that disagree) is an error, never a
silent skip.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ptq_bench.errors import QuantError
from ptq_bench.families import EXPERT, Family, Smooth, smoothing_refusal
from ptq_bench.quant.apply import quantize_model, rtn_solver
from ptq_bench.quant.calibrate import block_family, block_names, is_expert, model_family, submodule_or_none
from ptq_bench.quant.configs import SmoothQuantConfig
from ptq_bench.quant.linears import replace_weight, weight_matrix
from ptq_bench.quant.registry import QuantReport, register
from ptq_bench.quant.statistics import ChannelAbsMax, stat_inputs


def smoothing_scales(act_amax: torch.Tensor, weights: list[torch.Tensor], alpha: float) -> torch.Tensor:
    """s_j = a_j^alpha / w_j^(1-alpha); act_amax (in,), weights: (out_k, in) each -> s (in,) float32."""
    if not bool(torch.isfinite(act_amax).all()):  # an inf / NaN s would be folded into the norm and the weights
        raise QuantError(f"the activation maxima of a {act_amax.numel()}-channel norm output hold NaN or inf: its "
                         "calibration inputs are not finite (a model that diverged in training?); quantize a model "
                         "whose forward is finite")
    w_amax = torch.stack([w.float().abs().amax(dim=0) for w in weights]).amax(dim=0).clamp(min=1e-5)
    return (act_amax.float().pow(alpha) / w_amax.pow(1 - alpha)).clamp(min=1e-5)


@torch.no_grad()
def fold_into_norm(norm: nn.Module, s: torch.Tensor, kind: str = "gain") -> None:
    """Make the norm's output y' = y / s, per its semantics (see `ptq_bench.families`)."""
    w = norm.weight
    if kind == "one_plus_gain":  # (1 + w') = (1 + w) / s; kept in fp32: Gemma norms compute in fp32
        norm.weight.data = ((1 + w.float()) / s - 1).to(torch.promote_types(w.dtype, torch.float32))
    else:
        norm.weight.data = w / s.to(w.dtype)  # "gain" and "layernorm": y = w * n(x) (+ b), both terms / s
    bias = getattr(norm, "bias", None)  # a LayerNorm's, (1 + w) ones too (Nemotron's LayerNorm1P)
    if bias is not None:  # new tensors, never written in place (`linears.replace_weight` says why)
        bias.data = bias / s.to(bias.dtype)


@torch.no_grad()
def smooth(norm: nn.Module, linears: list[nn.Module], act_amax: torch.Tensor, alpha: float,
           kind: str = "gain") -> torch.Tensor:
    """Fold the smoothing scales into `norm` (output / s) and the input columns of `linears` (x s).

    `kind` is the norm's semantics ("gain", "one_plus_gain", "layernorm"); linears may be nn.Linear or
    Conv1D (their (out, in) view is scaled). Returns s (in,) float32.
    """
    mats = [weight_matrix(m) for m in linears]
    # s capped at what every dtype holds: alpha 0 gives a zero weight column s = 1 / 1e-5, inf in float16 (W * s = NaN)
    top = min(torch.finfo(t.dtype).max for t in (norm.weight, *mats))
    s = smoothing_scales(act_amax, mats, alpha).clamp(max=top).to(norm.weight.device)
    fold_into_norm(norm, s, kind)
    for m in linears:
        w = weight_matrix(m)  # (out, in) view: a Conv1D's rows are scaled through it
        replace_weight(m, w * s.to(w.dtype).view(1, -1))
    return s


def _resolve(layer: nn.Module, family: Family, pair: Smooth, names: tuple[str, ...],
             group: dict[str, nn.Module]) -> tuple[nn.Module, list[nn.Module]]:
    """The norm module and every module it feeds (`names`, the pair's targets in this block: the group's
    linears, and modules the family keeps in float, e.g. a router); anything missing is an error."""
    try:
        norm = layer.get_submodule(pair.norm)
    except AttributeError:
        norm = None
    fcs = [submodule_or_none(layer, n) if n in family.floats else group.get(n) for n in names]
    weight = getattr(norm, "weight", None)
    if weight is None or any(m is None for m in fcs):
        raise QuantError(f"{type(layer).__name__}: cannot resolve smoothing pair {pair.norm} -> {', '.join(pair.targets)}")
    if any(weight.shape != (stat_inputs(m),) for m in fcs):
        raise QuantError(f"{type(layer).__name__}.{pair.norm}: width {tuple(weight.shape)} does not match its targets")
    return norm, fcs


def is_named(name: str, registry_name: str) -> bool:
    """Whether a block's module name is a registry name (an EXPERT part matching any expert's index)."""
    a, b = name.split("."), registry_name.split(".")
    return len(a) == len(b) and all(p == q or (q == EXPERT and p.isdigit()) for p, q in zip(a, b))


def norm_amax(names: tuple[str, ...], family: Family, stats: dict[str, Any]) -> torch.Tensor:
    """max|x| per channel of the norm's output: over the inputs of every quantized linear it feeds. Linears
    reading the whole output share one statistic; experts each read their tokens, and every token reaches
    one expert at least, so their maximum is the whole output's, exactly (the router's input)."""
    probes = {id(stats[n]): stats[n] for n in names if n not in family.floats}
    return torch.stack([stat.amax for stat in probes.values()]).amax(dim=0)


@register("smoothquant", version=2)  # 2: weight ties round as the references
def quantize_smoothquant(model: nn.Module, cfg: SmoothQuantConfig, calib: torch.Tensor) -> QuantReport:
    """Smooth every norm -> linears pair of the family, then absmax W/A fake quantization of every linear."""
    family = model_family(model)
    pairs = family.smooth
    probes = [t for f in family.all_layouts for pair in f.smooth for t in pair.targets if t not in f.floats]
    details: dict[str, Any] = {"smoothed_norms": 0}

    def smooth_block(idx: int, layer: nn.Module, group: dict[str, nn.Module], stats: dict[str, Any]) -> None:
        own = block_family(layer, family)
        for pair in own.smooth:
            names = block_names(layer, own, pair.targets)
            norm, fcs = _resolve(layer, own, pair, names, group)
            smooth(norm, fcs, norm_amax(names, own, stats), cfg.alpha, pair.kind)
            details["smoothed_norms"] += 1

    def make_stat(name: str, linear: nn.Module) -> ChannelAbsMax | None:
        fed = any(is_named(name, probe) for probe in probes)
        required = not is_expert(family, name)  # an expert no token reaches is fine: the others' maximum
        return ChannelAbsMax(stat_inputs(linear), linear.weight.device, required=required) if fed else None

    if not pairs:
        raise QuantError(smoothing_refusal(model.config.model_type))
    return quantize_model(model, rtn_solver(cfg.w_bits, cfg.w_granularity, cfg.group_size), cfg.a_bits,
                          cfg.a_granularity, calib=calib, make_stat=make_stat, before_group=smooth_block,
                          sequential=False, details=details)
