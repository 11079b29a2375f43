"""Pure tensor quantizers: grids, scales, fake quantization. Nothing here touches a model.

Every weight grid in ptq-bench is one uniform form, per group of columns of a row::

    w_hat = scale * (q - zero),   q integer in [0, maxq]

- absmax, b bits (symmetric, round-to-nearest): qmax = 2^(b-1) - 1, scale = max|w| / qmax,
  zero = qmax, maxq = 2 qmax            -> levels scale * {-qmax, ..., qmax}
- min-max symmetric, b bits (the GPTQ reference `quant.py`, sym=True): maxq = 2^b - 1,
  scale = 2 max|w| / maxq, zero = (maxq + 1) / 2 -> levels scale * {-2^(b-1), ..., 2^(b-1) - 1}
- min-max asymmetric (sym=False): scale = (max - min) / maxq, zero = round(-min / scale)
- ternary absmean (b1.58): scale = mean|w|, zero = 1, maxq = 2 -> {-scale, 0, +scale}
- sign (b1, 1 bit): beta = mean|w|, scale = 2 beta, zero = 1/2, maxq = 1 -> {-beta, +beta}
  (w = 0 maps to -beta, the paper's Sign(0) = -1)

A `Grid` records scale and zero per (row, group); `on_grid` checks that a weight lies on it, so a test
can prove that a method stored what it claims. Scales are computed and applied in float32; the
dequantized weight is cast back to the input dtype.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from ptq_bench.fixed_order import mean_in_fixed_order
from ptq_bench.quant.configs import TERNARY, WEIGHT_GRANULARITIES

SCALE_BITS = 16  # scales (and float zeros) are stored as fp16


@dataclass
class Grid:
    """The grid one weight matrix (rows, cols) was quantized onto: w_hat = scale * (q - zero).

    scale, zero: (rows or 1, n_groups) float32; column j belongs to group j // group_size, counted in
    the order `perm` (GPTQ act-order) when given. `transform` maps the stored weight into the basis in
    which it lies on the grid (QuIP's incoherence rotation); None = the stored weight itself.
    """

    scale: Tensor
    zero: Tensor
    maxq: int
    group_size: int
    bits: float  # nominal bits per weight (1, 1.58, 2..8)
    zero_bits: float = 0.0  # bits stored per group for the zero point (0 = implicit, symmetric)
    perm: Tensor | None = None
    transform: Callable[[Tensor], Tensor] | None = None
    extra_bits: float = 0.0  # other side information per matrix (e.g. QuIP's fp16 column rescaling)

    def storage_bits(self, n_weights: int) -> float:
        """Total stored bits: codes + 16-bit scales + zero points + side information + the group index of
        every column when groups are counted in `perm`'s order (GPTQ act-order's g_idx)."""
        n_groups = self.scale.shape[1]
        index = self.perm.numel() * math.ceil(math.log2(n_groups)) if self.perm is not None and n_groups > 1 else 0
        return (self.bits * n_weights + SCALE_BITS * self.scale.numel() + self.zero_bits * self.zero.numel()
                + self.extra_bits + index)

    def split_rows(self, sizes: list[int]) -> list[Grid]:
        """The grids of consecutive row blocks of `sizes` rows (linears solved as one stacked matrix)."""
        if self.transform is not None or self.extra_bits or self.scale.shape[0] != sum(sizes):
            raise ValueError("only a grid with per-row scales and no per-matrix transform splits by rows")
        return [replace(self, scale=s.clone(), zero=z.clone())
                for s, z in zip(self.scale.split(sizes), self.zero.split(sizes))]


# ----------------------------------------------------------------------------- grouping


def expand_groups(t: Tensor, group_size: int, cols: int) -> Tensor:
    """(rows, n_groups) per-group values -> (rows, cols) per-column values."""
    return t.repeat_interleave(group_size, dim=1)[:, :cols]


def _grouped(w: Tensor, group_size: int) -> tuple[Tensor, Tensor]:
    """(rows, cols) -> zero-padded (rows, n_groups, group_size) and a matching 0/1 mask of real entries."""
    rows, cols = w.shape
    n_groups = math.ceil(cols / group_size)
    pad = n_groups * group_size - cols
    wp = torch.nn.functional.pad(w, (0, pad)).view(rows, n_groups, group_size)
    mask = torch.nn.functional.pad(torch.ones_like(w), (0, pad)).view(rows, n_groups, group_size)
    return wp, mask


def group_size_for(w: Tensor, granularity: str, group_size: int) -> int:
    """Columns per group for a granularity: 'channel'/'tensor' use one group spanning the row."""
    if granularity not in WEIGHT_GRANULARITIES:
        raise ValueError(f"granularity must be one of {WEIGHT_GRANULARITIES}, got {granularity!r}")
    return group_size if granularity == "group" else w.shape[1]


def _reduce(w: Tensor, granularity: str, group_size: int, kind: str) -> Tensor:
    """Per-group max|w| ('max') or mean|w| ('mean'); (rows, n_groups), or (1, 1) for 'tensor'."""
    a = w.float().abs()
    if granularity == "tensor":
        r = a.amax() if kind == "max" else mean_in_fixed_order(a)
        return r.view(1, 1)
    g, mask = _grouped(a, group_size_for(w, granularity, group_size))
    if kind == "max":
        return g.amax(dim=-1)
    return g.sum(dim=-1) / mask.sum(dim=-1)


# ----------------------------------------------------------------------------- grids


def absmax_grid(w: Tensor, bits: int, granularity: str = "channel", group_size: int = 128) -> Grid:
    """Symmetric absmax, `bits` >= 2: scale = max|w| / (2^(bits-1) - 1) per row/group/tensor."""
    qmax = 2 ** (int(bits) - 1) - 1
    scale = (_reduce(w, granularity, group_size, "max") / qmax).clamp(min=1e-8)
    gs = w.shape[1] if granularity == "tensor" else group_size_for(w, granularity, group_size)
    return Grid(scale, torch.full_like(scale, float(qmax)), 2 * qmax, gs, float(bits))


def ternary_grid(w: Tensor, granularity: str = "channel", group_size: int = 128) -> Grid:
    """b1.58 absmean: levels {-g, 0, g} with g = mean|w| (clamped >= 1e-5) per row/group/tensor."""
    scale = _reduce(w, granularity, group_size, "mean").clamp(min=1e-5)
    gs = w.shape[1] if granularity == "tensor" else group_size_for(w, granularity, group_size)
    return Grid(scale, torch.ones_like(scale), 2, gs, TERNARY)


def sign_grid(w: Tensor, granularity: str = "channel", group_size: int = 128) -> Grid:
    """b1 sign: levels {-beta, +beta} with beta = mean|w| (clamped >= 1e-5)."""
    beta = _reduce(w, granularity, group_size, "mean").clamp(min=1e-5)
    gs = w.shape[1] if granularity == "tensor" else group_size_for(w, granularity, group_size)
    return Grid(2 * beta, torch.full_like(beta, 0.5), 1, gs, 1.0)


def weight_grid(w: Tensor, bits: float, granularity: str = "channel", group_size: int = 128) -> Grid:
    """The naive (absmax family) grid for `bits`: 1 = sign, 1.58 = ternary, 2..8 = absmax."""
    if bits == 1:
        return sign_grid(w, granularity, group_size)
    if bits == TERNARY:
        return ternary_grid(w, granularity, group_size)
    return absmax_grid(w, int(bits), granularity, group_size)


def minmax_params(w: Tensor, bits: float, sym: bool = True) -> tuple[Tensor, Tensor, int]:
    """Per-row scale/zero of the GPTQ reference quantizer (`quant.py` find_params, weight=True).

    w: (rows, g) -> scale, zero: (rows,) and maxq. sym: zero = (maxq+1)/2, range +-max|w|;
    asym: range [min(w,0), max(w,0)], zero = round(-min/scale). A row of zeros gets the range [-1, 1].
    bits == 1.58 gives the ternary absmean grid (scale = mean|w|, zero = 1, maxq = 2).
    """
    w = w.float()
    if bits == TERNARY:
        scale = w.abs().mean(dim=1).clamp(min=1e-5)
        return scale, torch.ones_like(scale), 2
    maxq = 2 ** int(bits) - 1
    zeros = torch.zeros(w.shape[0], device=w.device)
    xmin, xmax = torch.minimum(w.min(dim=1).values, zeros), torch.maximum(w.max(dim=1).values, zeros)
    if sym:
        xmax = torch.maximum(xmin.abs(), xmax)
        xmin = torch.where(xmin < 0, -xmax, xmin)
    dead = (xmin == 0) & (xmax == 0)
    xmin, xmax = torch.where(dead, -1.0, xmin), torch.where(dead, 1.0, xmax)
    scale = (xmax - xmin) / maxq
    zero = torch.full_like(scale, (maxq + 1) / 2) if sym else torch.round(-xmin / scale)
    return scale, zero, maxq


# ----------------------------------------------------------------------------- quantize / check


def quantize_scalar(w: Tensor, scale: Tensor, zero: Tensor, maxq: int, out: Tensor | None = None) -> Tensor:
    """Round-to-nearest onto scale * (q - zero), q in [0, maxq], for a zero point that may be fractional (QuIP's
    2^b levels on [-s, s]); all arguments broadcast; written into `out` when given. Five kernels, each value that
    of clamp(round(w / scale + zero), 0, maxq) and scale * (q - zero) bit for bit: addcdiv adds 1 * w / scale to
    zero (no rounding step fused), the rest works in place. QuIP's column loop calls it once per column, where
    kernel launches bound a GPU's time."""
    q = torch.addcdiv(zero, w, scale).round_().clamp_(0, maxq)
    return torch.mul(scale, q.sub_(zero), out=out)


def quantize_int_zero(w: Tensor, scale: Tensor, zero: Tensor, maxq: int, out: Tensor | None = None) -> Tensor:
    """Round-to-nearest onto scale * (q - zero) for an integer zero point: q = clamp(round(w / scale) + zero, 0,
    maxq), as GPTQ's quant.py, SmoothQuant's fake_quant and BitNet's RoundClip round. round(w / scale + zero)
    differs: it moves every tie by one level where zero is odd, and it rounds w / scale to the float32 spacing of
    zero's size first (2^-20 at zero 8), which flips the rare value within that of a half level (GPTQ's error
    feedback carries each flip on). Six kernels, written into `out` when given; GPTQ's column loop calls it once
    per column."""
    q = torch.div(w, scale).round_().add_(zero).clamp_(0, maxq)
    return torch.mul(scale, q.sub_(zero), out=out)


def quantize(w: Tensor, grid: Grid) -> Tensor:
    """Round-to-nearest of w (rows, cols) onto `grid`; returns a new tensor in w's dtype."""
    wf = w.float()
    cols = w.shape[1]
    scale = expand_groups(grid.scale, grid.group_size, cols)
    zero = expand_groups(grid.zero, grid.group_size, cols)
    if grid.maxq == 1:
        # Sign: q = [w > 0] exactly. round(w / scale + 1/2) gave -beta to every 0 < w < 2^-24 scale (the sum is 1/2 in
        # float32, a tie rounded to even, 0).
        return torch.mul(scale, (wf > 0).float().sub_(zero)).to(w.dtype)
    integer = torch.equal(grid.zero, grid.zero.round())
    return (quantize_int_zero if integer else quantize_scalar)(wf, scale, zero, grid.maxq).to(w.dtype)


def grid_codes(w: Tensor, grid: Grid) -> Tensor:
    """Real-valued codes q = w / scale + zero (float32) in the grid's basis and column order."""
    w = w.float()
    if grid.transform is not None:
        w = grid.transform(w)
    if grid.perm is not None:
        w = w[:, grid.perm]
    cols = w.shape[1]
    return w / expand_groups(grid.scale, grid.group_size, cols) + expand_groups(grid.zero, grid.group_size, cols)


def on_grid(w: Tensor, grid: Grid, tol: float = 1e-2) -> bool:
    """True iff every entry of w (after the grid's transform/permutation) is scale * (q - zero) with
    integer q in [0, maxq], up to `tol` in units of the scale (fp16 storage rounding is ~1e-3)."""
    q = grid_codes(w, grid)
    near = (q - q.round()).abs() <= tol
    inside = (q.round() >= 0) & (q.round() <= grid.maxq)
    return bool((near & inside).all())


def fake_quant_weight(w: Tensor, bits: float, granularity: str = "channel", group_size: int = 128
                      ) -> tuple[Tensor, Grid]:
    """Naive round-to-nearest of a weight: returns (dequantized weight in w's dtype, its grid)."""
    grid = weight_grid(w, bits, granularity, group_size)
    return quantize(w, grid), grid


def fake_quant_act(x: Tensor, bits: int, granularity: str = "token") -> Tensor:
    """Dynamic symmetric absmax of activations (..., features) onto scale * {-qmax..qmax}.

    granularity 'token': one scale per vector along the last dim; 'tensor': one scale for all of x.
    As `fake_quant.py` of SmoothQuant: scale = max|x| / (2^(bits-1) - 1) (clamped >= 1e-5).
    """
    qmax = 2 ** (bits - 1) - 1
    xf = x.float()
    amax = xf.abs().amax(dim=-1, keepdim=True) if granularity == "token" else xf.abs().amax()
    scale = amax.clamp(min=1e-5) / qmax
    return (torch.clamp(torch.round(xf / scale), -qmax, qmax) * scale).to(x.dtype)


def effective_bits(grids: list[Grid | None], n_weights: list[int]) -> float:
    """Stored bits per weight over several matrices: codes + scales + zeros (+ side information), divided
    by the number of weights; a matrix without a grid (None: left at 16 bits) counts 16 bits per weight."""
    total = sum(16.0 * n if g is None else g.storage_bits(n) for g, n in zip(grids, n_weights))
    return total / max(sum(n_weights), 1)
