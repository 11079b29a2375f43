"""QuIP (Chee et al., arXiv 2307.13304), after Cornell-RelaxML/QuIP `method.py`, `quant.py`, `bal.py`.

Per linear W (m, n) with Hessian H (n, n), as the reference `preproc` -> `ldlq` -> `postproc`:

1. rescale (optional): H /= max|H|; c = (diag H / diag W^T W)^(1/4); W <- W diag(c),
   H <- diag(c)^-1 H diag(c)^-1 (the per-column scale c is stored, 16 bits each);
2. incoherence: H <- H n / tr(H) + 1e-2 I; W <- U W V^T, H <- V H V^T with random orthogonal U (m x m)
   and V (n x n);
3. GPTQ's H fix-up: dead columns, damping `damp` * mean(diag H);
4. grid (the reference's qfn='b'): one per-tensor scale s = 2.4 RMS(W); 2^b levels evenly spaced on
   [-s, s]; W is clamped to [-s, s] before rounding (the clamp error is not fed back, as in `bal.py`);
5. LDLQ: rounding with linear feedback from the LDL factor of H, computed in GPTQ's form (the
   reference's `ldl_gptqequiv`): the same loop as `ldlq.error_feedback` on a fixed grid;
6. undo: W_hat = U^T Q V diag(c)^-1 is stored (fake quantization; the grid lives in the rotated basis,
   `Grid.transform` maps a stored weight back there).

Transforms (`transform`), both structured so nothing n x n is formed for the weight:
- "hadamard" (QuIP#-style randomized Hadamard): R = (H_{2^k} (x) Q_m) diag(signs), n = 2^k m with m odd,
  H_{2^k} the normalized Sylvester Hadamard matrix, Q_m one random orthogonal m x m matrix (Kronecker
  factor), signs random +-1. A power-of-two n is a pure randomized Hadamard; an odd n falls back to a
  dense random orthogonal matrix.
- "orthogonal" (QuIP's default `pre_proj_extra 0`): the reference's two-factor random butterfly:
  random input permutation, n/p1 independent random p1 x p1 orthogonal blocks, n/p2 blocks of p2 x p2,
  random output permutation, with n = p1 p2 split from n's prime factors alternately. A prime n is one
  dense random orthogonal matrix.

Not reproduced: QuIP's greedy refinement passes (`npasses`, 0 by default in the reference's LLM scripts)
after LDLQ, and the packed storage.

Checked against the reference's own code (`benchmarks/quip_vs_reference.py`, which imports an unmodified
checkout of Cornell-RelaxML/QuIP and gives it this module's rotations): the grid codes equal the
reference's `ldl_gptqequiv` path's (0 of 147,456 differ at the benchmark's default size), except after an
exact rounding tie, which this module breaks half to even (`torch.round`) and the reference half up
(floor(x + 1/2)); error feedback carries such a flip along the rest of its row (124 of 2,359,296 codes, in
4 rows, at 128 x 256 over 3 seeds). Where the reference differs:
- its LLM scripts round with `--quant ldlq` (`vector_balance.round_ldl`): LDLQ in the opposite column
  order (last to first, on cholesky(H)). Both are LDLQ, with the same expected loss (the paper's OPTQ /
  LDLQ equivalence); the order moves a quarter of the codes and not the proxy loss on average;
- it stores the result (and, for an fp16 model, the rescaled and rotated weight before rounding) in the
  layer's dtype; here everything up to W_hat stays float32;
- its butterfly blocks are drawn from SO(p) (`special_ortho_group`, a random angle for p = 2); here from
  O(p) (QR of a Gaussian), so about half the blocks have determinant -1. Either is a random orthogonal
  matrix of the same butterfly structure (same factor split, same permutations: the reference's
  `mul_ortho_butterfly` reproduces `Rotation.dense()` from these blocks exactly).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from torch import Tensor

from ptq_bench.fixed_order import mean_in_fixed_order
from ptq_bench.quant.apply import Solver, hessian_stat, quantize_model
from ptq_bench.quant.configs import QuIPConfig
from ptq_bench.quant.ldlq import error_feedback, inverse_hessian_factor
from ptq_bench.quant.linears import weight_matrix
from ptq_bench.quant.primitives import SCALE_BITS, Grid, quantize_scalar
from ptq_bench.quant.registry import QuantReport, register
from ptq_bench.quant.statistics import Hessian

# ----------------------------------------------------------------------------- structured rotations


def random_orthogonal(p: int, gen: torch.Generator, count: int = 1) -> Tensor:
    """(count, p, p) Haar-random orthogonal matrices (QR of a Gaussian, signs fixed by diag R)."""
    q, r = torch.linalg.qr(torch.randn(count, p, p, generator=gen, dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)).float()


@functools.lru_cache(maxsize=8)
def hadamard(n: int) -> Tensor:
    """Normalized Sylvester Hadamard matrix, n a power of two. One tensor per n, shared by every rotation
    (read only): each QuIP linear keeps its rotations in its grid, and at hidden size 2048 an unshared
    Hadamard factor was 16.8 MB per rotation, nine of them per Llama block."""
    h = torch.ones(1, 1)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h / math.sqrt(n)


def prime_factors(n: int) -> list[int]:
    out, p = [], 2
    while p * p <= n:
        while n % p == 0:
            out.append(p)
            n //= p
        p += 1
    return out + ([n] if n > 1 else [])


@dataclass
class Rotation:
    """A structured orthogonal n x n matrix R acting on vectors v (rows of a matrix):

        R v = P_out B_k ... B_1 P_in (signs * v)

    Stage i splits n = (prod of earlier factors) x p_i x (prod of later factors) and applies one p_i x p_i
    block to each of the n / p_i index slices along its p_i axis (blocks: (n / p_i, p_i, p_i); a Kronecker
    factor is one block repeated). Permutations gather: (P v)_i = v[perm[i]].
    """

    n: int
    stages: list[tuple[int, Tensor]]  # (p, blocks of shape (n // p, p, p) or (1, p, p) = shared)
    signs: Tensor | None = None
    perm_in: Tensor | None = None
    perm_out: Tensor | None = None
    factors: list[int] = field(init=False)

    def __post_init__(self) -> None:
        self.factors = [p for p, _ in self.stages]
        assert math.prod(self.factors) == self.n

    def _stage(self, X: Tensor, i: int, transpose: bool, in_place: bool = False) -> Tensor:
        p, blocks = self.stages[i]
        pre, post = math.prod(self.factors[:i]), math.prod(self.factors[i + 1:])
        r = X.shape[0]
        x = X.reshape(r, pre, p, post).permute(0, 1, 3, 2).reshape(r, pre * post, p)  # (rows, slices, p)
        b = blocks.to(X.device).expand(pre * post, p, p)
        y = torch.einsum("jba,rjb->rja" if transpose else "jab,rjb->rja", b, x)
        del x  # before the result is laid out: an (n, n) X then has one temporary less
        y = y.reshape(r, pre, post, p).permute(0, 1, 3, 2)  # (rows, pre, p, post)
        if in_place:  # laid out by the copy itself, with no (rows, n) temporary
            X.unflatten(1, (pre, p, post)).copy_(y)
            return X
        return y.reshape(r, self.n)

    def rows(self, X: Tensor, in_place: bool = False) -> Tensor:
        """X R^T: R applied to every row of X (rows, n). in_place: written into X's own storage (X is
        overwritten; the same floats, since every stage computes the same products from the same layout)."""
        if self.signs is not None:
            X = X.mul_(self.signs.to(X.device)) if in_place else X * self.signs.to(X.device)
        if self.perm_in is not None:
            X = X.copy_(X[:, self.perm_in]) if in_place else X[:, self.perm_in]
        for i in range(len(self.stages)):
            X = self._stage(X, i, transpose=False, in_place=in_place)
        if self.perm_out is not None:
            X = X.copy_(X[:, self.perm_out]) if in_place else X[:, self.perm_out]
        return X

    def rows_inv(self, X: Tensor) -> Tensor:
        """X R: R^T = R^-1 applied to every row of X (rows, n)."""
        if self.perm_out is not None:
            X = X[:, torch.argsort(self.perm_out)]
        for i in reversed(range(len(self.stages))):
            X = self._stage(X, i, transpose=True)
        if self.perm_in is not None:
            X = X[:, torch.argsort(self.perm_in)]
        return X * self.signs.to(X.device) if self.signs is not None else X

    def dense(self) -> Tensor:
        """R as an (n, n) matrix (tests and small sizes)."""
        return self.rows(torch.eye(self.n)).T


def randomized_hadamard(n: int, gen: torch.Generator) -> Rotation:
    """(H_{2^k} kron Q_m) diag(signs), n = 2^k m, m odd; odd n: a dense random orthogonal Q_n."""
    two = n & -n  # largest power of two dividing n
    stages = []
    if two > 1:
        stages.append((two, hadamard(two).unsqueeze(0)))
    if n // two > 1:
        stages.append((n // two, random_orthogonal(n // two, gen)))
    signs = torch.randint(0, 2, (n,), generator=gen).float() * 2 - 1
    return Rotation(n, stages, signs=signs)


def random_butterfly(n: int, gen: torch.Generator) -> Rotation:
    """QuIP's two-factor random orthogonal butterfly with random input/output permutations."""
    pf = prime_factors(n)
    ps = [p for p in (math.prod(pf[0::2]), math.prod(pf[1::2])) if p > 1] or [1]
    stages = [(p, random_orthogonal(p, gen, n // p)) for p in ps]
    return Rotation(n, stages, perm_in=torch.randperm(n, generator=gen), perm_out=torch.randperm(n, generator=gen))


def make_rotation(kind: str, n: int, gen: torch.Generator) -> Rotation:
    return randomized_hadamard(n, gen) if kind == "hadamard" else random_butterfly(n, gen)


def rotate_both(W: Tensor, U: Rotation, V: Rotation) -> Tensor:
    """U W V^T for W (m, n)."""
    return U.rows(V.rows(W).T).T


def unrotate_both(W: Tensor, U: Rotation, V: Rotation) -> Tensor:
    """U^T W V for W (m, n)."""
    return U.rows_inv(V.rows_inv(W).T).T


def symmetrize_(H: Tensor, band: int = 256) -> Tensor:
    """H <- (H + H^T) / 2 in place, band by band: both entries of a mirrored pair get (a + b) / 2, the value
    the out-of-place form gives each of them (a float sum does not depend on its order)."""
    for i in range(0, H.shape[0], band):
        j = i + band
        diag = H[i:j, i:j]
        diag.copy_((diag + diag.T).div_(2))
        upper = (H[i:j, j:] + H[j:, i:j].T).div_(2)
        H[i:j, j:] = upper
        H[j:, i:j] = upper.T
    return H


@dataclass
class GridBasis:
    """Maps a stored QuIP weight back to the basis where it lies on the grid: U (W diag(c)) V^T."""

    U: Rotation
    V: Rotation
    c: Tensor  # (n,) column rescaling

    def __call__(self, w: Tensor) -> Tensor:
        return rotate_both(w.float().to(self.c.device) * self.c, self.U, self.V)


# ----------------------------------------------------------------------------- the solver


@torch.no_grad()
def quip_solve(
    weight: Tensor,
    H: Tensor,
    bits: int,
    transform: str = "hadamard",
    rescale: bool = True,
    damp: float = 0.01,
    gen: torch.Generator | None = None,
    block_size: int = 128,
    consume_h: bool = False,
) -> tuple[Tensor, Grid, float]:
    """Quantize one weight (m, n) with incoherence processing + LDLQ.

    Returns (stored weight W_hat in weight's dtype, its Grid in the rotated basis, LDLQ loss). H is not
    modified, unless `consume_h`: then a float32 H is the solver's scratch space (the block runner hands
    over a statistic it has popped). The (n, n) steps work in place where the values allow it (the same
    floats as the out-of-place forms), so the solve holds few copies of H at once.
    """
    gen = gen if gen is not None else torch.Generator().manual_seed(0)
    W = weight.to(torch.float32, copy=True)
    H = H.to(torch.float32, copy=not consume_h)
    m, n = W.shape
    dev = W.device
    c = torch.ones(n, device=dev)
    if rescale:
        lo, hi = torch.aminmax(H)  # H / max|H|, without an |H| copy; a zero H (inputs all 0: dead columns) stays 0
        H.div_(torch.maximum(-lo, hi).clamp(min=torch.finfo(torch.float32).tiny))
        c = (torch.diag(H).clamp(min=1e-8) / (W * W).sum(0).clamp(min=1e-8)).pow(0.25).clamp(min=1e-8)
        W.mul_(c)
        H.div_(c[None, :]).div_(c[:, None])
    U, V = make_rotation(transform, m, gen), make_rotation(transform, n, gen)
    H.mul_(n / (torch.trace(H) + 1e-8)).diagonal().add_(1e-2)  # H n / tr(H) + 1e-2 I
    W = rotate_both(W, U, V)
    V.rows(V.rows(H, in_place=True).T, in_place=True)  # H <- V H V^T, in its own storage
    H = symmetrize_(H)
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0

    maxq = 2**bits - 1
    s = 2.4 * mean_in_fixed_order(W.square()).sqrt() + 1e-16  # qfn 'b': grid spans +-2.4 RMS(W)
    scale, zero = 2 * s / maxq, torch.tensor(maxq / 2, device=dev)
    W.clamp_(-s, s)
    Uinv = inverse_hessian_factor(H, damp)
    Q, loss = error_feedback(W, Uinv, lambda col, w, _W, out: quantize_scalar(w, scale, zero, maxq, out), block_size)
    del H, Uinv, W  # the factor (n, n) and the rounded-from weight are done with before Q is rotated back

    W_hat = unrotate_both(Q, U, V).div_(c)
    grid = Grid(scale.view(1, 1), zero.view(1, 1), maxq, n, float(bits), transform=GridBasis(U, V, c),
                extra_bits=SCALE_BITS * n if rescale else 0.0)
    return W_hat.to(weight.dtype), grid, loss


def quip_solver(cfg: QuIPConfig) -> Solver:
    """One linear: QuIP of its (out, in) weight; one generator seeds every linear's rotations in order."""
    gen = torch.Generator().manual_seed(cfg.seed)

    def solve(linear: nn.Module, stat: Hessian) -> tuple[Tensor, Grid, float]:
        return quip_solve(weight_matrix(linear), stat.H, cfg.w_bits, cfg.transform, cfg.rescale, cfg.damp, gen,
                          cfg.block_size, consume_h=True)  # the runner's popped statistic (`take_stat`)

    return solve


@register("quip")
def quantize_quip(model: nn.Module, cfg: QuIPConfig, calib: Tensor) -> QuantReport:
    """QuIP every linear of every decoder block, block by block on the quantized model's activations."""
    return quantize_model(model, quip_solver(cfg), cfg.a_bits, calib=calib, make_stat=hessian_stat,
                          details={"transform": cfg.transform})
