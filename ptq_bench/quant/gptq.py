"""GPTQ (Frantar et al., arXiv 2210.17323), after IST-DASLab/gptq `gptq.py` / `quant.py`.

Per linear, with H = (2/n) sum x x^T over its calibration inputs (fp32):

1. dead input columns (H_ii = 0): H_ii = 1 and W[:, i] = 0;
2. H += damp * mean(diag H) * I; U = upper Cholesky factor of H^-1
   (chol -> cholesky_inverse -> chol(upper)), so U_ii^2 is the conditional variance of column i;
3. columns in blocks of `block_size`: q_i = quant(w_i) (round(w / scale) + zero, clamped, in quant.py's order);
   err = (w_i - q_i) / U_ii;
   W[:, i:block end] -= err U[i, i:block end]; after the block, the columns to its right get the
   lazy update W[:, rest] -= Err U[block, rest];
4. group_size g: the quantizer (min-max, `quant.py`) is re-fitted every g columns on the current,
   already error-compensated weights (-1 = one fit per row, before the loop); act_order processes
   columns by descending diag H; static_groups fits every group on the original weights up front.

Unlike the reference (which fits on a stale copy), a group that starts inside a block is fitted on the
current, error-compensated values; the results are identical to the reference whenever groups start at
block boundaries (the defaults, 128 and 128), and independent of block_size whenever one of
group_size, block_size divides the other.
Blocks are quantized in order, each on the outputs of
the already-quantized blocks ("sequential"); `true_sequential` additionally quantizes the block's
linears group by group in the family's order (`families.Family.groups`: q/k/v, o, gate/up, down).
Linears that read one input share its Hessian and are solved as one row-stacked matrix where the stack is
no larger than the block's largest linear (`apply.sharing`: q/k/v); rows are independent given H, so the
weights are bit for bit those of one-at-a-time solves, with fewer kernel launches
(benchmarks/gptq_loop.py).
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from ptq_bench.quant.apply import Solver, Stacked, hessian_stat, quantize_model
from ptq_bench.quant.configs import GPTQConfig
from ptq_bench.quant.ldlq import error_feedback, inverse_hessian_factor
from ptq_bench.quant.linears import weight_matrix
from ptq_bench.quant.primitives import Grid, minmax_params, quantize_int_zero
from ptq_bench.quant.registry import QuantReport, register
from ptq_bench.quant.statistics import Hessian


@torch.no_grad()
def gptq_solve(
    weight: Tensor,
    H: Tensor,
    bits: float,
    group_size: int = 128,
    damp: float = 0.01,
    block_size: int = 128,
    act_order: bool = False,
    sym: bool = True,
    static_groups: bool = False,
    consume_h: bool = False,
    consume_w: bool = False,
) -> tuple[Tensor, Grid, float]:
    """Quantize one weight (rows, cols) against its Hessian (cols, cols).

    Returns (dequantized weight in weight's dtype, its Grid, the reference's summed loss
    sum_i (w_i - q_i)^2 / U_ii^2). H is not modified, unless `consume_h`: then a float32 H is used as the
    solver's scratch space (the block runner hands over a statistic it has popped), which saves one
    (cols, cols) copy; likewise `consume_w` for a float32 weight that is a scratch copy (`apply.Stacked`).
    """
    W = weight.to(torch.float32, copy=not consume_w)
    rows, cols = W.shape
    H = H.to(torch.float32, copy=not consume_h)
    gs = cols if group_size == -1 else group_size

    fit = minmax_params(W, bits, sym) if group_size == -1 else None  # per-row, before dead columns
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    static = [minmax_params(W[:, i:i + gs], bits, sym) for i in range(0, cols, gs)] if static_groups else None

    perm = None
    if act_order:
        perm = torch.argsort(torch.diag(H), descending=True)
        W, H = W[:, perm], H[perm][:, perm]

    U = inverse_hessian_factor(H, damp)
    fits: list[tuple[Tensor, Tensor, int]] = []  # (scale, zero, maxq) per group, in processing order

    def quant_col(col: int, w: Tensor, W: Tensor, out: Tensor | None = None) -> Tensor:
        nonlocal fit
        if static is not None:
            fit = static[(int(perm[col]) if perm is not None else col) // gs]
        elif group_size != -1 and col % gs == 0:
            fit = minmax_params(W[:, col:col + gs], bits, sym)
            fits.append(fit)
        return quantize_int_zero(w, *fit, out=out)

    Q, losses = error_feedback(W, U, quant_col, block_size)

    grid_perm = None
    if static is not None:
        fits = static
    elif group_size == -1:
        fits = [fit]
    else:
        grid_perm = perm  # groups were formed in act-order
    if perm is not None:
        Q = Q[:, torch.argsort(perm)]
    return Q.to(weight.dtype), _grid(fits, gs, bits, sym, grid_perm), float(losses)


def _grid(fits: list[tuple[Tensor, Tensor, int]], group_size: int, bits: float, sym: bool,
          perm: Tensor | None) -> Grid:
    """The Grid of per-group (scale (rows,), zero (rows,), maxq) fits, in processing order."""
    return Grid(scale=torch.stack([f[0] for f in fits], dim=1), zero=torch.stack([f[1] for f in fits], dim=1),
                maxq=fits[0][2], group_size=group_size, bits=float(bits), zero_bits=0.0 if sym else float(bits),
                perm=perm)


def gptq_solver(cfg: GPTQConfig) -> Solver:
    """One linear: GPTQ of its (out, in) weight against its Hessian."""

    def solve(linear: nn.Module, stat: Hessian) -> tuple[Tensor, Grid, float]:
        return gptq_solve(weight_matrix(linear), stat.H, cfg.w_bits, cfg.group_size, cfg.damp, cfg.block_size,
                          cfg.act_order, cfg.sym, cfg.static_groups, consume_h=True, consume_w=isinstance(linear, Stacked))

    return solve


@register("gptq", version=3)  # 2: act-order groups count their g_idx in effective_bits; 3: round(w / scale) + zero
def quantize_gptq(model: nn.Module, cfg: GPTQConfig, calib: Tensor) -> QuantReport:
    """GPTQ every linear of every decoder block, block by block on the quantized model's activations."""
    return quantize_model(model, gptq_solver(cfg), cfg.a_bits, calib=calib, make_stat=hessian_stat,
                          true_sequential=cfg.true_sequential, stack_shared=True)


__all__ = ["GPTQConfig", "error_feedback", "gptq_solve", "gptq_solver", "inverse_hessian_factor", "quantize_gptq"]
