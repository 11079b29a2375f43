"""The Hessian-weighted rounding loop shared by GPTQ and QuIP: GPTQ's column loop with lazy block
updates, which is LDLQ (QuIP) in GPTQ's column order, and the inverse-Hessian Cholesky factor it uses."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ptq_bench.errors import QuantError
from ptq_bench.fixed_order import lapack_threads


def inverse_hessian_factor(H: Tensor, damp: float) -> Tensor:
    """Upper Cholesky factor U of (H + damp * mean(diag H) I)^-1, computed in H's own storage.

    H (contiguous) is overwritten, and U is returned as a column-major view of it: LAPACK works on that
    layout in place, so no n x n temporary is made (for an MLP's down projection these are 0.1-0.5 GB
    each). Only H's lower triangle is read, as torch.linalg.cholesky(H) reads it (it is mirrored onto the
    upper one first), so U is bit for bit that of the out-of-place chain chol -> cholesky_inverse -> chol.
    """
    if not bool(torch.isfinite(H).all()):  # no damp or calibration size helps: the inputs themselves are NaN / inf
        raise QuantError(f"the Hessian of a {H.shape[0]}-column linear holds NaN or inf: its calibration inputs are "
                         "not finite (a model that diverged in training?); quantize a model whose forward is finite")
    H.diagonal().add_(damp * torch.mean(torch.diag(H)))  # diag: a contiguous copy, summed as the reference sums it
    _mirror_lower(H)
    A = H.T  # column-major
    try:
        with lapack_threads():  # the factor, and every row computed from it, is the same at any thread count
            torch.linalg.cholesky(A, out=A)
            torch.cholesky_inverse(A, out=A)
            torch.linalg.cholesky(A, upper=True, out=A)
    except torch.linalg.LinAlgError:
        raise QuantError(f"the damped Hessian of a {H.shape[0]}-column linear is not positive definite (damp "
                         f"{damp}): raise damp, or calibrate on more tokens (calibration.n_samples x seq_len)") from None
    return A


def _mirror_lower(H: Tensor, step: int = 512) -> None:
    """H's upper triangle := its lower one, in place, a band of rows at a time."""
    for i in range(0, H.shape[0], step):
        j = i + step
        diag = H[i:j, i:j]
        diag.copy_(diag.tril() + diag.tril(-1).T)
        H[i:j, j:] = H[j:, i:j].T


@torch.no_grad()
def error_feedback(
    W: Tensor, U: Tensor, quant_col: Callable[[int, Tensor, Tensor, Tensor], Tensor], block_size: int = 128
) -> tuple[Tensor, float]:
    """GPTQ's column loop with lazy block updates (== LDLQ in GPTQ's column order), in place on W.

    W: (rows, cols) float32, modified; U: upper Cholesky factor of H^-1 (cols, cols);
    quant_col(col, w, W, out) rounds column `col` (its current value w, (rows,)) onto the grid into `out`
    (W is the whole current matrix, for fitting groups). Returns (Q, sum_i (w_i - q_i)^2 / U_ii^2).
    """
    cols = W.shape[1]
    Q = torch.zeros_like(W)
    loss = torch.zeros((), device=W.device)
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        W1 = W[:, i1:i2]  # (rows, block) view: in-block updates land in W, so group fits see them
        Q1, Err1, U1 = torch.zeros_like(W1), torch.zeros_like(W1), U[i1:i2, i1:i2]
        for i in range(i2 - i1):
            # per-column work is kept to the few kernels that must run per column (their launches bound the loop
            # on a GPU): the loss, err^2 = (w - q)^2 / d^2, is summed once per block below
            w, q = W1[:, i], Q1[:, i]
            quant_col(i1 + i, w, W, q)
            err = torch.div(w - q, U1[i, i], out=Err1[:, i])
            W1[:, i:] -= err.unsqueeze(1) @ U1[i, i:].unsqueeze(0)
        Q[:, i1:i2] = Q1
        loss += (Err1 * Err1).sum()
        W[:, i2:] -= Err1 @ U[i1:i2, i2:]  # lazy update of everything right of the block
    return Q, float(loss)
