"""BitLinear for BitNet b1.58 (ternary) and BitNet b1 (binary), plus 2-bit weight packing.

Forward of one BitLinear, for an input x of shape (..., in_features)::

    x  = RMSNorm(x)                                   # learnable gain `rms_norm.weight`, shape (in,)
    s_x = 127 / max(|x|, per token).clamp(min=1e-5)   # activation scale, shape (..., 1)
    x_q = round(x * s_x).clamp(-128, 127)             # int8 grid
    W_q, s_w = weight_quant(W)                        # W_q in {-1, 0, 1} (b1.58) or {-1, +1} (b1)
    y  = (x_q @ W_q^T) / (s_x * s_w)

b1.58 (arXiv 2402.17764): s_w = 1 / mean|W|, W_q = RoundClip(W * s_w, -1, 1).
b1    (arXiv 2310.11453): W_q = Sign(W - mean(W)) with Sign(0) = -1, s_w = 1 / beta, beta = mean|W|.

Both modes use one convention: a weight quantizer returns (W_q, s_w) with W ≈ W_q / s_w. This is the
convention of transformers' offline `BitLinear` (`integrations/bitnet.py`), whose `weight_scale`
buffer is exactly s_w, so export is a straight copy (see `build.export_hf`).

Deviations from the papers, all made so that both modes run unchanged in transformers' BitNet format:
- b1 activations use the b1.58 recipe: per-token absmax with Q_b = 127 and clamp [-128, 127]; the b1
  paper uses Q_b = 2^(b-1) = 128, clip to [-Q_b + eps, Q_b - eps], a per-tensor gamma in training,
  and a shift by min(x) into [0, Q_b] before ReLU-like non-linearities (not done here).
- b1's SubLN is an RMSNorm (as in b1.58), not a LayerNorm.
- No group quantization: one weight scale per tensor.

Training uses the straight-through estimator `x + (q(x) - x).detach()` on weights and activations;
the latent weight is the ordinary fp32 (or bf16) `.weight` parameter. Without autograd (eval under
`torch.no_grad()`), the forward takes the integer path above, which is the same math in the same
operation order as transformers' `BitLinear`; the two paths differ only by float rounding.

Integer kernel. In the integer path x_q @ W_q^T multiplies integers (|x_q| <= 128, |W_q| <= 1), so in
fp32 every partial sum is an integer of magnitude <= 128 * in_features: below 2^24 (in_features <
131072) fp32 holds each one exactly, in any summation order, and the float matmul is the exact integer
dot product. On CPU, for fp32 / fp64 inputs, the product is therefore taken by an int8 x int8 -> int32
matmul (`torch._int_mm`, ~4-5x the fp32 GEMM's speed on AVX512-VNNI) on a cached int8 copy of W_q^T:
the same output values (`torch.equal` in `tests/test_bitlinear.py` and `benchmarks/bitlinear_kernel.py`).
Elsewhere (CUDA, bf16 / fp16, in_features >= 131072) the float matmul runs on that cached copy cast to
x's dtype: W_q's values exactly, without re-quantizing the latent weight (about 9 small kernels per linear,
which on a GPU are launches a small model's forward waits on) every forward.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ptq_bench.fixed_order import mean_in_fixed_order

MODES = ("b158", "b1")
VALUES_PER_BYTE = 4  # 2 bits per ternary value


# ----------------------------------------------------------------------------- pure quantizers

def weight_quant_ternary(w: Tensor) -> tuple[Tensor, Tensor]:
    """b1.58 absmean: s = 1 / mean|w| (mean clamped >= 1e-5), q = round(w * s).clamp(-1, 1).

    Returns (q, s): q has w's shape with values in {-1, 0, 1} (dtype float32), s is a 0-d float32
    tensor; w ≈ q / s.
    """
    w = w.float()
    scale = 1.0 / mean_in_fixed_order(w.abs()).clamp(min=1e-5)
    return (w * scale).round().clamp(-1, 1), scale


def weight_quant_binary(w: Tensor) -> tuple[Tensor, Tensor]:
    """b1: q = Sign(w - mean(w)) with Sign(0) = -1, beta = mean|w| (clamped >= 1e-5).

    Returns (q, s) with s = 1 / beta, the same convention as `weight_quant_ternary`: w ≈ q / s.
    q has values in {-1, +1} (dtype float32).
    """
    w = w.float()
    beta = mean_in_fixed_order(w.abs()).clamp(min=1e-5)
    q = torch.where(w - mean_in_fixed_order(w) > 0, 1.0, -1.0)
    return q, 1.0 / beta


WEIGHT_QUANTIZERS = {"b158": weight_quant_ternary, "b1": weight_quant_binary}


def activation_quant_int(x: Tensor, bits: int = 8) -> tuple[Tensor, Tensor]:
    """Per-token absmax: s = Qp / max|x| over the last dim (clamped >= 1e-5), q = round(x * s).

    Qp = 2^(bits-1) - 1, q clamped to [-2^(bits-1), Qp]. Returns (q, s): q integer-valued in x's
    dtype, s of shape (..., 1) in x's dtype; x ≈ q / s. s is at most the dtype's largest finite value: in
    float16, Qp / 1e-5 overflows, and a token of zeros (max|x| < Qp / 65504) became 0 * inf = NaN.
    """
    qn, qp = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    scale = (qp / x.abs().amax(dim=-1, keepdim=True).clamp(min=1e-5)).clamp(max=torch.finfo(x.dtype).max)
    return (x * scale).round().clamp(qn, qp), scale


def activation_quant(x: Tensor, bits: int = 8) -> Tensor:
    """Fake-quantize activations on the per-token `bits`-bit absmax grid (computed in fp32)."""
    q, scale = activation_quant_int(x.float(), bits)
    return (q / scale).to(x.dtype)


# ----------------------------------------------------------------------------- packing


def pack_ternary(q: Tensor) -> Tensor:
    """Pack ternary values {-1, 0, 1} 4 per byte along dim 0, in transformers' `pack_weights` layout.

    q: (out, ...) with out % 4 == 0. Returns uint8 (out // 4, ...): rows [i*out/4, (i+1)*out/4) of
    q + 1 sit in bits 2i..2i+1 of the packed rows. Does not modify q.
    """
    if q.shape[0] % VALUES_PER_BYTE:
        raise ValueError(f"pack_ternary needs dim 0 divisible by {VALUES_PER_BYTE}, got shape {tuple(q.shape)}")
    if not bool(((q == -1) | (q == 0) | (q == 1)).all()):
        raise ValueError("pack_ternary needs values in {-1, 0, 1}")
    rows = q.shape[0] // VALUES_PER_BYTE
    u = (q.to(torch.int16) + 1).to(torch.uint8)  # {0, 1, 2}
    packed = torch.zeros((rows, *q.shape[1:]), dtype=torch.uint8, device=q.device)
    for i in range(VALUES_PER_BYTE):
        packed |= u[i * rows : (i + 1) * rows] << (2 * i)
    return packed


def unpack_ternary(packed: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """Inverse of `pack_ternary`: uint8 (rows, ...) -> (4 * rows, ...) values in {-1, 0, 1} of `dtype`."""
    parts = [(packed >> (2 * i)) & 3 for i in range(VALUES_PER_BYTE)]
    return torch.cat(parts, dim=0).to(dtype) - 1


# ----------------------------------------------------------------------------- module


class RMSNorm(nn.Module):
    """Same math, parameter name and op order as transformers' `LlamaRMSNorm` (bit-identical output)."""

    token_local = True  # each token normalized from its own vector (eval/fast_lm.py: prefix sharing allowed)

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.variance_epsilon = eps

    def forward(self, x: Tensor) -> Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * x.to(dtype)


class BitLinear(nn.Linear):
    """nn.Linear with an internal RMSNorm, 8-bit per-token activations and b1.58 / b1 weights.

    `mode`: "b158" (ternary) or "b1" (binary). `.weight` holds the latent high-precision weight.
    """

    token_local = True  # per-token activation scales, weights fixed: rounding never mixes tokens (fast_lm.py)

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = False,
        mode: str = "b158",
        rms_norm_eps: float = 1e-5,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"BitLinear mode must be one of {MODES}, got {mode!r}")
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.mode = mode
        self.rms_norm = RMSNorm(in_features, eps=rms_norm_eps).to(device=device, dtype=dtype)

    @classmethod
    def from_linear(cls, linear: nn.Linear, mode: str, rms_norm_eps: float) -> BitLinear:
        """A BitLinear whose latent weight (and bias) is a copy of `linear`'s."""
        w = linear.weight
        new = cls(linear.in_features, linear.out_features, linear.bias is not None, mode, rms_norm_eps,
                  device=w.device, dtype=w.dtype)
        with torch.no_grad():
            new.weight.copy_(w)
            if linear.bias is not None:
                new.bias.copy_(linear.bias)
        return new

    def quantized_weight(self) -> tuple[Tensor, Tensor]:
        """(W_q, s_w) of the current latent weight, fp32; W ≈ W_q / s_w."""
        return WEIGHT_QUANTIZERS[self.mode](self.weight.detach())

    def forward(self, x: Tensor) -> Tensor:
        x = self.rms_norm(x)
        needs_grad = torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad)
        if needs_grad:
            return self._forward_ste(x)
        return self._forward_int(x)

    def _forward_ste(self, x: Tensor) -> Tensor:
        """Training form: fake-quantized weights and activations, straight-through gradients."""
        w = self.weight
        w_q, s_w = self.quantized_weight()
        w = w + ((w_q / s_w).to(w.dtype) - w).detach()
        x = x + (activation_quant(x) - x).detach()
        return F.linear(x, w, self.bias)

    def _forward_int(self, x: Tensor) -> Tensor:
        """Inference form, op for op as transformers' BitLinear: (x_q @ W_q^T) / (s_w * s_x)."""
        x_q, s_x = activation_quant_int(x)  # in x's dtype, as transformers does
        w_t, s_w = self._int8_weight()
        if self._int8_kernel_exact(x):
            flat = torch._int_mm(x_q.reshape(-1, x.shape[-1]).to(torch.int8), w_t)  # exact int32 sums
            y = flat.to(x.dtype).reshape(*x.shape[:-1], w_t.shape[1])
        else:  # W_q's values exactly (they are -1, 0, 1), without re-quantizing the weight every forward
            y = F.linear(x_q, w_t.T.to(x.dtype))
        y = y / (s_w.to(x.dtype).reshape(1) * s_x)
        if self.bias is not None:
            y = y + self.bias
        return y

    def _int8_kernel_exact(self, x: Tensor) -> bool:
        """True where the int8 matmul gives the float matmul's output values exactly (module docstring)."""
        return x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and self.in_features < 2 ** 17

    def _int8_weight(self) -> tuple[Tensor, Tensor]:
        """(W_q^T as int8 (in, out), s_w) of the current latent weight, cached until the weight changes."""
        w = self.weight
        # an inference tensor has no version counter: a change could not be seen, so it is not cached
        key = None if w.is_inference() else (w.data_ptr(), w._version, w.dtype, self.mode)
        cached = getattr(self, "_int8_cache", None)
        if key is None or cached is None or cached[0] != key:
            w_q, s_w = self.quantized_weight()
            cached = (key, w_q.to(torch.int8).T.contiguous(), s_w)
            if key is not None:
                self._int8_cache = cached
        return cached[1], cached[2]

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, mode={self.mode}"
