"""What every method does to one linear: read its weight as (out, in), store a quantized weight and its
grid, quantize its input activations, count its stored bits; and the refusal of already low-bit models.

A "linear" is an `nn.Linear` (weight (out, in)) or a transformers `Conv1D` (GPT-2; weight stored
transposed, (in, out)). `weight_matrix` gives both as an (out, in) view, so solvers, grids and tests see
one orientation and writes through the view land in the module's own layout.

Already low-bit models are refused, not quantized: a BitNet layer (ptq-bench's `BitLinear`,
transformers' `BitLinear` / `AutoBitLinear`, any `bitnet` family checkpoint, any checkpoint that carries
a `quantization_config`) re-quantizes its stored weight and its input on every call, so a PTQ grid written
into it would not be the grid the forward uses, and a row labelled "W4" would be a lie. Defining PTQ on
such models (quantizing effective weights and post-norm inputs) is not implemented.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from ptq_bench.errors import QuantError
from ptq_bench.families import LOW_BIT_CLASSES, low_bit_reason
from ptq_bench.quant.primitives import Grid, fake_quant_act

GRID_ATTR = "ptq_grid"  # attribute on a quantized linear holding its primitives.Grid


def is_conv1d(module: nn.Module) -> bool:
    """True for transformers' `Conv1D` (GPT-2 style, weight (in, out))."""
    from transformers.pytorch_utils import Conv1D

    return isinstance(module, Conv1D)


def is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or is_conv1d(module)


def weight_matrix(module: nn.Module) -> Tensor:
    """The weight as an (out, in) view of the stored parameter data (in-place writes land in the module)."""
    w = module.weight.data
    return w.T if is_conv1d(module) else w


@torch.no_grad()
def replace_weight(linear: nn.Module, w: Tensor) -> None:
    """Give the linear the (out, in) weight `w` (dtype preserved) in new memory. The old storage is never
    written: it may be a view of a memory-mapped checkpoint (`from_pretrained`), where writes make private
    copies of the mapped pages that live as long as the mapping does."""
    w = w.to(linear.weight.dtype)
    linear.weight.data = (w.T if is_conv1d(linear) else w).contiguous()


@torch.no_grad()
def set_weight(linear: nn.Module, w_hat: Tensor, grid: Grid | None) -> None:
    """Replace a linear's weight by w_hat (out, in), dtype preserved, and record the grid it lies on."""
    replace_weight(linear, w_hat)
    setattr(linear, GRID_ATTR, grid)


def refuse_non_finite(linear: nn.Module, name: str) -> None:
    """Raise QuantError when a linear's weight holds NaN or inf: no grid fits it (absmax's scale becomes inf,
    every weight of its row or group NaN; GPTQ and QuIP spread it through their error feedback)."""
    w = weight_matrix(linear)
    if not bool(torch.isfinite(w).all()):
        bad = int((~torch.isfinite(w)).sum())
        raise QuantError(f"{name}: {bad} of its {w.numel()} weights are NaN or inf (a checkpoint that overflowed or "
                         "diverged?); no grid fits them: quantize a model whose weights are finite")


class ActQuant:
    """Forward pre-hook: fake-quantize the first positional input of a linear (dynamic absmax)."""

    def __init__(self, bits: int, granularity: str) -> None:
        self.bits, self.granularity = bits, granularity

    @property
    def token_local(self) -> bool:
        """Per-token scales round each token from its own vector only (no batch mate, no later position
        enters): eval/fast_lm.py may then compute a shared prefix once. Per-tensor scales mix the batch."""
        return self.granularity == "token"

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        return (fake_quant_act(args[0], self.bits, self.granularity), *args[1:])

    def __repr__(self) -> str:
        return f"ActQuant(bits={self.bits}, granularity={self.granularity!r})"


def attach_act_quant(linear: nn.Module, bits: int, granularity: str) -> None:
    """Install (once) activation fake quantization on a linear's input; bits 16 = nothing."""
    if bits >= 16:
        return
    if any(isinstance(h, ActQuant) for h in linear._forward_pre_hooks.values()):
        raise ValueError("activation quantization already attached to this linear")
    linear.register_forward_pre_hook(ActQuant(bits, granularity))


def detach_act_quant(module: nn.Module) -> None:
    """Remove every activation quantizer `attach_act_quant` installed in `module` and its children."""
    for m in module.modules():
        for key in [k for k, h in m._forward_pre_hooks.items() if isinstance(h, ActQuant)]:
            del m._forward_pre_hooks[key]


def _class_name(module: nn.Module) -> str:
    return f"{type(module).__module__}.{type(module).__qualname__}"


def refuse_low_bit(model: nn.Module) -> None:
    """Raise QuantError when the model's linears are already low-bit (see the module docstring)."""
    reason = low_bit_reason(model.config)
    if reason is not None:
        raise QuantError(f"PTQ refused: the checkpoint is already low-bit ({reason}); its layers re-quantize "
                         "weights and activations on every call")
    low = sorted({type(m).__name__ for m in model.modules() if _class_name(m) in LOW_BIT_CLASSES})
    if low:
        raise QuantError(f"PTQ refused: the model's linears are already low-bit ({', '.join(low)}); "
                         "a PTQ grid written into them is not what their forward uses")


__all__ = ["ActQuant", "GRID_ATTR", "attach_act_quant", "detach_act_quant", "is_conv1d", "is_linear", "refuse_low_bit",
           "refuse_non_finite", "replace_weight", "set_weight", "weight_matrix"]
