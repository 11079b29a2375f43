"""GPTQ (Frantar et al., arXiv 2210.17323), after IST-DASLab/gptq `gptq.py` / `quant.py`.

Per linear, with H = (2/n) sum x x^T over its calibration inputs (fp32):

1. dead input columns (H_ii = 0): H_ii = 1 and W[:, i] = 0;
2. H += damp * mean(diag H) * I; U = upper Cholesky factor of H^-1
   (chol -> cholesky_inverse -> chol(upper)), so U_ii^2 is the conditional variance of column i;
3. columns in blocks of `block_size`: q_i = quant(w_i); err = (w_i - q_i) / U_ii;
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
the already-quantized blocks ("sequential"); `true_sequential` additionally orders q/k/v, o,
gate/up, down inside a block.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn as nn
from torch import Tensor

from ptq_bench.quant.absmax import attach_act_quant, report_bits, set_weight
from ptq_bench.quant.calibrate import SEQUENTIAL_GROUPS, Hessian, layer_linears, run_blockwise
from ptq_bench.quant.configs import GPTQ_W_BITS, GPTQConfig  # noqa: F401 - re-exported
from ptq_bench.quant.primitives import Grid, minmax_params, quantize_scalar
from ptq_bench.quant.registry import QuantReport, register


def inverse_hessian_factor(H: Tensor, damp: float) -> Tensor:
    """Upper Cholesky factor U of (H + damp * mean(diag H) I)^-1; H is modified (damped) in place."""
    idx = torch.arange(H.shape[0], device=H.device)
    H[idx, idx] += damp * torch.mean(torch.diag(H))
    L = torch.linalg.cholesky(H)
    return torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True)


@torch.no_grad()
def error_feedback(
    W: Tensor, U: Tensor, quant_col: Callable[[int, Tensor, Tensor], Tensor], block_size: int = 128
) -> tuple[Tensor, float]:
    """GPTQ's column loop with lazy block updates (== LDLQ in GPTQ's column order), in place on W.

    W: (rows, cols) float32, modified; U: upper Cholesky factor of H^-1 (cols, cols);
    quant_col(col, w, W) rounds column `col` (its current value w, (rows,)) onto the grid (W is the
    whole current matrix, for fitting groups). Returns (Q, sum_i (w_i - q_i)^2 / U_ii^2).
    """
    cols = W.shape[1]
    Q = torch.zeros_like(W)
    loss = torch.zeros((), device=W.device)
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        W1 = W[:, i1:i2]  # (rows, block) view: in-block updates land in W, so group fits see them
        Q1, Err1, U1 = torch.zeros_like(W1), torch.zeros_like(W1), U[i1:i2, i1:i2]
        for i in range(i2 - i1):
            w, d = W1[:, i], U1[i, i]
            q = quant_col(i1 + i, w, W)
            Q1[:, i] = q
            loss += ((w - q) ** 2).sum() / d**2
            err = (w - q) / d
            W1[:, i:] -= err.unsqueeze(1) @ U1[i, i:].unsqueeze(0)
            Err1[:, i] = err
        Q[:, i1:i2] = Q1
        W[:, i2:] -= Err1 @ U[i1:i2, i2:]  # lazy update of everything right of the block
    return Q, float(loss)


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
) -> tuple[Tensor, Grid, float]:
    """Quantize one weight (rows, cols) against its Hessian (cols, cols).

    Returns (dequantized weight in weight's dtype, its Grid, the reference's summed loss
    sum_i (w_i - q_i)^2 / U_ii^2). H is not modified.
    """
    W = weight.float().clone()
    rows, cols = W.shape
    H = H.float().clone()
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

    def quant_col(col: int, w: Tensor, W: Tensor) -> Tensor:
        nonlocal fit
        if static is not None:
            fit = static[(int(perm[col]) if perm is not None else col) // gs]
        elif group_size != -1 and col % gs == 0:
            fit = minmax_params(W[:, col:col + gs], bits, sym)
            fits.append(fit)
        return quantize_scalar(w, *fit)

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
    maxq = fits[0][2]
    grid = Grid(
        scale=torch.stack([f[0] for f in fits], dim=1),
        zero=torch.stack([f[1] for f in fits], dim=1),
        maxq=maxq, group_size=gs, bits=float(bits), zero_bits=0.0 if sym else float(bits), perm=grid_perm,
    )
    return Q.to(weight.dtype), grid, float(losses)


@register("gptq", GPTQConfig, needs_calibration=True)
def quantize_gptq(model: nn.Module, cfg: GPTQConfig, calib: Tensor) -> QuantReport:
    """GPTQ every linear of every decoder block, block by block on the quantized model's activations."""
    t0 = time.perf_counter()
    done: dict[str, tuple[nn.Linear, Grid]] = {}
    losses: dict[str, float] = {}

    def on_layer(idx: int, layer: nn.Module, stats: dict[str, Hessian]) -> None:
        linears = layer_linears(layer)
        for name, stat in stats.items():
            lin = linears[name]
            w_hat, grid, loss = gptq_solve(lin.weight.data, stat.H, cfg.w_bits, cfg.group_size, cfg.damp,
                                           cfg.block_size, cfg.act_order, cfg.sym, cfg.static_groups)
            set_weight(lin, w_hat, grid)
            attach_act_quant(lin, cfg.a_bits, "token")
            done[f"model.layers.{idx}.{name}"] = (lin, grid)
            losses[f"model.layers.{idx}.{name}"] = loss

    run_blockwise(model, calib, lambda name, lin: Hessian(lin.in_features, lin.weight.device), on_layer,
                  groups=SEQUENTIAL_GROUPS if cfg.true_sequential else None)
    linears = {n: lin for n, (lin, _) in done.items()}
    return QuantReport(
        effective_bits=report_bits(linears, [g for _, g in done.values()]),
        seconds=time.perf_counter() - t0,
        n_linears=len(done),
        details={"loss_sum": sum(losses.values())},
    )
