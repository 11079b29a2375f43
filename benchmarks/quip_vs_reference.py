"""Independent check of ptq_bench's QuIP (`quant.quip.quip_solve`) against the authors' reference code.

    OMP_NUM_THREADS=1 python benchmarks/quip_vs_reference.py --reference DIR [--m 64] [--n 96] [--tokens N]
        [--seeds 0 1] [--tie 1e-4]

DIR: a checkout of https://github.com/Cornell-RelaxML/QuIP at 0beddb6 (default $QUIP_REFERENCE). Its method.py,
bal.py, quant.py and vector_balance.py are imported from there unmodified; none of its code is in this
repository. A missing `primefac` gets a trial-division stand-in (`primefac(n)`: prime factors, ascending), a
missing `transformers` a stub with an empty `Conv1D` (the reference only uses it in isinstance checks).

1. The "orthogonal" transform (the reference's `pre_proj_extra 0` butterfly): for n in 2..2999 and the LLM
   widths, our `random_butterfly(n).factors` against its `butterfly_factors(n)` (a prime's trailing 1
   dropped); our blocks and permutations fed to its `mul_ortho_butterfly` against our product.
2. End to end, same W, H (outlier weights, anisotropic correlated inputs, optionally two dead columns) and
   the same rotations: ours, drawn as `quip_solve` draws them, are handed to the reference's `preproc` in
   place of `rand_ortho_butterfly` (U first, then V). The reference runs its preproc -> fasterquant ->
   postproc with the paper's LLM settings (pre_gptqH, pre_proj, pre_proj_extra 0, percdamp .01, qfn 'b',
   npasses 0) for qmethod `ldl_gptqequiv` (LDLQ in GPTQ's column order, our algorithm) and `ldlq`
   (`round_ldl`, last column first on cholesky(H): what the paper's LLM runs used). It casts its result to
   fp16, so codes are compared: its codes are read back from U (W_hat diag(c)) V^T on its grid (half-width
   from its own `Quantizer.quantize`, qfn 'b'), ours from our Grid. Per case: share of codes that differ,
   max |W_ours - W_ref|, proxy losses tr((W - W_hat) H (W - W_hat)^T) on the original W and H, relative
   difference of the grid half-widths, damping (ours as `inverse_hessian_factor` adds it; the reference's
   from its damped H, mean(diag) * .01 / 1.01).

Exit status 0 when the factor splits agree, the products agree to 1e-5, and every row whose codes differ
from `ldl_gptqequiv` starts at a rounding tie (the value ours rounded there within --tie of k + 1/2: a
float-level tie, which error feedback carries along the row); 1 otherwise; 2 without a reference. The `ldlq`
rows are information: the other rounding order changes 25-30% of the codes, at proxy losses 0.91-1.08x
ours case by case and 1.002x on average at the default size (1.013x with other rotations).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import io
import itertools
import math
import os
import statistics
import sys
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from bench_args import at_least, exit_with, non_negative, positive  # noqa: E402
from torch import Tensor  # noqa: E402

from ptq_bench.quant import quip  # noqa: E402

CLONE_HINT = ("no QuIP reference checkout: pass --reference DIR or set QUIP_REFERENCE "
              "(git clone https://github.com/Cornell-RelaxML/QuIP && git -C QuIP checkout 0beddb6)")
REFERENCE_MODULES = ("quant", "method", "vector_balance", "bal")  # import order: each only needs earlier ones
LLM_WIDTHS = (768, 2048, 4096, 5120, 11008, 13824, 14336)
PRODUCT_SIZES = (12, 64, 96, 97, 120, 210) + LLM_WIDTHS
PERCDAMP = 0.01


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reference", default=os.environ.get("QUIP_REFERENCE"),
                   help="Cornell-RelaxML/QuIP checkout at 0beddb6 (default: $QUIP_REFERENCE)")
    p.add_argument("--m", type=int, default=64, help="weight rows (out features)")
    p.add_argument("--n", type=int, default=96, help="weight columns (in features)")
    p.add_argument("--tokens", type=positive, default=None, help="calibration rows of X (default max(256, 2n))")
    p.add_argument("--seeds", type=non_negative, nargs="+", default=[0], help="problem and rotation seeds")
    p.add_argument("--tie", type=at_least(0, float), default=1e-4,
                   help="a row may differ from ldl_gptqequiv only from a code ours rounded within this of k + 1/2")
    p.add_argument("--threads", type=positive, default=1)
    args = p.parse_args(argv)
    if args.m < 2 or args.n < 16:
        p.error("--m must be at least 2 and --n at least 16 (the dead-column cases zero two input columns)")
    return args


# ------------------------------------------------------------------------------ importing the reference
def _primefac_standin() -> types.SimpleNamespace:
    """`primefac.primefac(n)`: n's prime factors in ascending order, by trial division (our own code)."""

    def primefac(n: int) -> Iterator[int]:
        d = 2
        while d * d <= n:
            while n % d == 0:
                yield d
                n //= d
            d += 1
        yield from [n] if n > 1 else []

    return types.SimpleNamespace(primefac=primefac)


def import_reference(ref_dir: Path) -> tuple[types.SimpleNamespace, list[str]]:
    """The reference's modules, imported unmodified from ref_dir, and notes on what was stood in for."""
    notes = []
    if importlib.util.find_spec("primefac") is None:
        sys.modules["primefac"] = _primefac_standin()
        notes.append("primefac not installed: a trial-division stand-in was registered")
    if importlib.util.find_spec("transformers") is None:
        sys.modules["transformers"] = types.SimpleNamespace(Conv1D=type("Conv1D", (), {}))
        notes.append("transformers not installed: a stub with an empty Conv1D was registered")
    import scipy.stats  # noqa: F401  method.py reaches scipy.stats through a bare `import scipy`

    sys.path.insert(0, str(ref_dir))
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink):  # quant.py prints 'CUDA extension not installed.' on CPU
        mods = {name: importlib.import_module(name) for name in REFERENCE_MODULES}
    for name, mod in mods.items():
        if Path(mod.__file__).resolve().parent != ref_dir.resolve():
            raise SystemExit(f"module {name!r} was imported from {mod.__file__}, not from {ref_dir}")
    if sink.getvalue().strip():
        notes.append(f"quant.py printed: {sink.getvalue().strip()!r}")
    return types.SimpleNamespace(**mods), notes


# ------------------------------------------------------------------------------ 1. butterfly structure
@contextlib.contextmanager
def patched(module: types.ModuleType, **replacements: Callable) -> Iterator[None]:
    """module.<name> = replacements[name] while the block runs (the name is looked up at call time)."""
    originals = {name: getattr(module, name) for name in replacements}
    for name, f in replacements.items():
        setattr(module, name, f)
    try:
        yield
    finally:
        for name, f in originals.items():
            setattr(module, name, f)


def identity_blocks() -> contextlib.AbstractContextManager:
    """random_butterfly with identity blocks: the factor split does not depend on them, and Haar-sampling
    a dense block for every prime n up to 2999 would take minutes."""
    return patched(quip, random_orthogonal=lambda p, gen, count=1: torch.eye(p).expand(count, p, p))


def factor_splits(ref: types.SimpleNamespace) -> list[int]:
    """Sizes where our butterfly's factors differ from the reference's (its trailing 1 of a prime dropped)."""
    bad = []
    with identity_blocks():
        for n in list(range(2, 3000)) + list(LLM_WIDTHS):
            theirs = tuple(p for p in ref.method.butterfly_factors(n) if p > 1)
            ours = tuple(quip.random_butterfly(n, torch.Generator().manual_seed(0)).factors)
            if theirs != ours:
                bad.append(n)
    return bad


def butterfly_product(ref: types.SimpleNamespace, n: int) -> float:
    """max |reference mul_ortho_butterfly(our blocks, our perms) - our R|, on I (n <= 512) or a random X."""
    R = quip.random_butterfly(n, torch.Generator().manual_seed(n))
    blocks = [b for _, b in R.stages]
    if len(blocks) == 1:  # prime n: the reference's second stage is n blocks of 1 x 1
        blocks.append(torch.ones(n, 1, 1))
    X = torch.eye(n) if n <= 512 else torch.randn(n, 16, generator=torch.Generator().manual_seed(1))
    theirs = ref.method.mul_ortho_butterfly((blocks, R.perm_in, R.perm_out), X)
    return float((theirs - R.rows(X.T).T).abs().max())


def structure_check(ref: types.SimpleNamespace) -> tuple[list[int], float]:
    print("== 1. butterfly structure (transform 'orthogonal') ==")
    bad = factor_splits(ref)
    print(f"factor split, n = 2..2999 and LLM widths: {len(bad)} sizes differ {bad[:10] if bad else ''}")
    print(f"{'n':>6} {'reference':>12} {'ours':>12} {'max|diff| of the products':>26}")
    worst = 0.0
    for n in PRODUCT_SIZES:
        diff = butterfly_product(ref, n)
        worst = max(worst, diff)
        with identity_blocks():
            ours = quip.random_butterfly(n, torch.Generator()).factors
        print(f"{n:>6} {str(ref.method.butterfly_factors(n)):>12} {str(tuple(ours)):>12} {diff:>26.2e}")
    dets = torch.cat([torch.linalg.det(b.double()) for _, b in
                      quip.random_butterfly(4096, torch.Generator().manual_seed(0)).stages])
    theirs = torch.cat([torch.linalg.det(ref.method.gen_rand_orthos(32, p).double()) for p in (2, 64)])
    print(f"block determinants at n=4096: ours +1 x{int((dets > 0).sum())}, -1 x{int((dets < 0).sum())} "
          f"(Haar on O(p)); reference gen_rand_orthos: {sorted(set(theirs.round().tolist()))} (SO(p))")
    return bad, worst


# ------------------------------------------------------------------------------ 2. end to end
@dataclass(frozen=True)
class Case:
    kind: str
    dead: bool
    rescale: bool
    bits: int
    seed: int


@dataclass
class Side:
    W: Tensor  # the stored weight, float64
    codes: Tensor  # grid codes in the rotated basis
    margin: float  # largest distance of a recovered code to its integer (recovery is sound well below 0.5)
    s: float  # grid half-width: levels evenly spaced on [-s, s]
    damp: float
    pre: Tensor | None = None  # ours: each code's value just before rounding, w / scale + zero (code units)


def problem(m: int, n: int, tokens: int, dead: bool, seed: int) -> tuple[Tensor, Tensor]:
    """W (m, n) with a few outlier weights; H = 2 X^T X / N, X anisotropic with a correlated block."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(m, n, generator=g) * 0.02
    W.view(-1)[torch.randint(0, m * n, (6,), generator=g)] *= 25
    X = torch.randn(tokens, n, generator=g) * torch.exp(torch.randn(n, generator=g))
    X[:, : min(8, n)] += 3 * torch.randn(tokens, 1, generator=g)
    if dead:
        X[:, [5 % n, (5 * n // 12) % n]] = 0
    return W, (2 * X.T.double() @ X.double() / tokens).float()


def proxy(W: Tensor, W_hat: Tensor, H: Tensor) -> float:
    d = W.double() - W_hat.double()
    return float(torch.trace(d @ H.double() @ d.T))


def read_codes(x: Tensor, s: float, maxq: int) -> tuple[Tensor, float]:
    """Codes of rotated-basis values x on the grid of 2^b levels on [-s, s], and the rounding margin."""
    f = (x.double() / s + 1) / 2 * maxq
    codes = f.round().clamp(0, maxq)
    return codes, float((f - codes).abs().max())


def run_ours(W: Tensor, H: Tensor, case: Case) -> tuple[Side, quip.Rotation, quip.Rotation]:
    """quip_solve, recording its damping (`inverse_hessian_factor`) and what its loop rounds, column by column
    (`quantize_scalar`, called once per column in order: round(w / scale + zero) is what it computes)."""
    damps, cols = [], []
    ihf, qs = quip.inverse_hessian_factor, quip.quantize_scalar

    def damped(Hm: Tensor, damp: float) -> Tensor:
        damps.append(float(damp * torch.mean(torch.diag(Hm))))
        return ihf(Hm, damp)

    def rounded(w: Tensor, scale: Tensor, zero: Tensor, maxq: int, out: Tensor | None = None) -> Tensor:
        cols.append(torch.addcdiv(zero, w, scale).double())
        return qs(w, scale, zero, maxq, out)

    with patched(quip, inverse_hessian_factor=damped, quantize_scalar=rounded):
        W_hat, grid, _ = quip.quip_solve(W, H, case.bits, case.kind, rescale=case.rescale, damp=PERCDAMP,
                                         gen=torch.Generator().manual_seed(1000 + case.seed))
    s = float(grid.scale) * grid.maxq / 2
    codes, margin = read_codes(grid.transform(W_hat), s, grid.maxq)
    side = Side(W_hat.double(), codes, margin, s, damps[0], torch.stack(cols, 1))
    return side, grid.transform.U, grid.transform.V


def injected(method: types.ModuleType, U: Tensor, V: Tensor) -> contextlib.AbstractContextManager:
    """The reference's preproc draws U (m x m), then V (n x n), from `rand_ortho_butterfly`: hand it ours."""
    queue = [U, V]

    def ours(k: int) -> Tensor:
        assert queue and queue[0].shape == (k, k), "the reference drew rotations other than U, then V"
        return queue.pop(0).clone()

    return patched(method, rand_ortho_butterfly=ours)


def first_flips(ours: Side, theirs: Side) -> tuple[int, float]:
    """Rows whose codes differ, and the largest distance to a rounding tie (k + 1/2) of the value ours
    rounded at each such row's first differing code: a float-level tie shows as ~1e-6."""
    d = ours.codes != theirs.codes
    rows = d.any(1).nonzero().flatten()
    if not len(rows):
        return 0, 0.0
    f = ours.pre[rows, d[rows].int().argmax(1)]
    return len(rows), float((f - f.floor() - 0.5).abs().max())


def run_reference(ref: types.SimpleNamespace, W: Tensor, H: Tensor, case: Case, U: Tensor, V: Tensor,
                  qmethod: str) -> Side:
    m, n = W.shape
    layer = torch.nn.Linear(n, m, bias=False)
    layer.weight.data = W.clone()
    qm = ref.bal.Balance(layer)
    qm.configure(qmethod, case.bits, 0, unbiased=False)
    qm.quantizer = ref.quant.Quantizer()
    qm.quantizer.configure(case.bits, perchannel=True, sym=False, qfn="b", mse=False)
    qm.H = H.clone()  # as post_batch leaves it: float32
    with injected(ref.method, U, V):
        qm.preproc(preproc_gptqH=True, percdamp=PERCDAMP, preproc_rescale=case.rescale, preproc_proj=True,
                   preproc_proj_extra=0)
    assert torch.equal(qm.projU, U) and torch.equal(qm.projV, V), "our rotations were not used"
    w_rot, damp = qm.layer.weight.data.clone(), float(torch.mean(torch.diag(qm.H))) * PERCDAMP / (1 + PERCDAMP)
    qm.fasterquant(lazy_batch=False)
    W_hat = qm.layer.weight.data.double()  # fp16 in the reference
    grid = ref.quant.Quantizer()
    grid.configure(case.bits, perchannel=True, sym=False, qfn="b", mse=False)
    grid.quantize(w_rot)  # qfn 'b' sets its scale (the grid half-width) from the weight it is given
    s = float(grid.scale)
    c = qm.scaleWH.double() if case.rescale else torch.ones(n, dtype=torch.float64)
    codes, margin = read_codes(U.double() @ (W_hat * c) @ V.double().T, s, 2**case.bits - 1)
    return Side(W_hat, codes, margin, s, damp)


def run_case(ref: types.SimpleNamespace, args: argparse.Namespace, case: Case) -> dict:
    W, H = problem(args.m, args.n, args.tokens, case.dead, case.seed)
    ours, Ur, Vr = run_ours(W, H, case)
    gen = torch.Generator().manual_seed(1000 + case.seed)  # quip_solve's draws, repeated: U first, then V
    U, V = quip.make_rotation(case.kind, args.m, gen).dense(), quip.make_rotation(case.kind, args.n, gen).dense()
    assert torch.equal(U, Ur.dense()) and torch.equal(V, Vr.dense()), "rotations were not reproduced"
    row: dict = {"case": case, "ours": ours, "proxy_ours": proxy(W, ours.W, H)}
    for qmethod in ("ldl_gptqequiv", "ldlq"):
        theirs = run_reference(ref, W, H, case, U, V, qmethod)
        rows, tie = first_flips(ours, theirs)
        row[qmethod] = {"side": theirs, "differ": int((ours.codes != theirs.codes).sum()), "rows": rows,
                        "tie": tie, "maxdiff": float((ours.W - theirs.W).abs().max()), "proxy": proxy(W, theirs.W, H)}
    return row


def print_row(row: dict) -> None:
    g, q, o = row["ldl_gptqequiv"], row["ldlq"], row["ours"]
    n = o.codes.numel()
    c = row["case"]
    name = f"{c.kind[:4]} dead={int(c.dead)} resc={int(c.rescale)} b={c.bits} s{c.seed}"
    gqe = f"{g['differ'] / n:.4f} ({g['rows']})"
    print(f"{name:<28} {gqe:>12} {g['maxdiff']:>9.2e} {q['differ'] / n:>8.4f} "
          f"{q['maxdiff']:>9.2e} {row['proxy_ours']:>10.5f} {g['proxy']:>10.5f} {q['proxy']:>10.5f} "
          f"{q['proxy'] / row['proxy_ours']:>7.4f} {o.s / g['side'].s - 1:>+9.1e} "
          f"{o.damp:.5f}/{g['side'].damp:.5f}", flush=True)


def end_to_end(ref: types.SimpleNamespace, args: argparse.Namespace) -> list[dict]:
    print(f"\n== 2. end to end (m={args.m}, n={args.n}, X: {args.tokens} rows; seeds {args.seeds}) ==")
    head = (f"{'case':<28} {'gqe != (rows)':>12} {'gqe |dW|':>9} {'ldlq !=':>8} {'ldlq |dW|':>9} {'proxy ours':>10} "
            f"{'proxy gqe':>10} {'proxy ldlq':>10} {'ldlq/o':>7} {'s o/r-1':>9} damp o/r")
    print("gqe = reference ldl_gptqequiv, ldlq = reference ldlq (round_ldl); != : share of codes that differ "
          "from ours (rows where any does); |dW| = max |W_ours - W_ref|")
    print(head + "\n" + "-" * len(head))
    rows = []
    for seed, kind, dead, rescale, bits in itertools.product(args.seeds, ("orthogonal", "hadamard"), (False, True),
                                                             (False, True), (2, 3, 4)):
        rows.append(run_case(ref, args, Case(kind, dead, rescale, bits, seed)))
        print_row(rows[-1])
    return rows


# ------------------------------------------------------------------------------ summary and main
def summarize(rows: list[dict], tie_tol: float) -> bool:
    g, q = [r["ldl_gptqequiv"] for r in rows], [r["ldlq"] for r in rows]
    total, n_rows = sum(r["ours"].codes.numel() for r in rows), sum(r["ours"].codes.shape[0] for r in rows)
    w_max = max(float(r["ours"].W.abs().max()) for r in rows)
    ulp = 2.0 ** (math.floor(math.log2(w_max)) - 10)  # fp16 spacing at w_max
    g_ratio = [x["proxy"] / r["proxy_ours"] for x, r in zip(g, rows)]
    q_ratio = [x["proxy"] / r["proxy_ours"] for x, r in zip(q, rows)]
    g_diff, q_diff, tie = sum(x["differ"] for x in g), sum(x["differ"] for x in q), max(x["tie"] for x in g)
    margin = max(x["side"].margin for x in g + q)
    s_rel = max(abs(r["ours"].s / x["side"].s - 1) for x, r in zip(g, rows))
    d_rel = max(abs(r["ours"].damp / x["side"].damp - 1) for x, r in zip(g, rows))
    print(f"\nours vs reference ldl_gptqequiv: {g_diff} of {total} codes differ (max |W_ours - W_ref| "
          f"{max(x['maxdiff'] for x in g):.2e}; largest |W_ours| {w_max:.3f}, fp16 spacing there {ulp:.2e}); proxy "
          f"ratio ref/ours mean {statistics.mean(g_ratio):.5f}, min {min(g_ratio):.5f}, max {max(g_ratio):.5f}")
    if g_diff:
        print(f"  they lie in {sum(x['rows'] for x in g)} of {n_rows} rows; each such row's first differing code is "
              f"a rounding tie: the value ours rounded there lies within {tie:.1e} of k + 1/2 (ours breaks an exact "
              f"half to even, the reference's floor(x + 1/2) up; one this close rounds either way with the other "
              f"side's float sums), and error feedback carries the flip along the row")
    print(f"ours vs reference ldlq (the paper's LLM runs' rounding order): {q_diff} of {total} codes differ "
          f"({100 * q_diff / total:.1f}%); proxy ratio ref/ours mean {statistics.mean(q_ratio):.4f}, "
          f"min {min(q_ratio):.4f}, max {max(q_ratio):.4f}")
    print(f"grid half-width: max |s_ours / s_ref - 1| {s_rel:.1e}; damping: max |damp_ours / damp_ref - 1| "
          f"{d_rel:.1e}; reference codes read back from its fp16 output within {margin:.3f} of an integer "
          f"(ours within {max(r['ours'].margin for r in rows):.1e})")
    ok = tie <= tie_tol and margin < 0.25
    print(f"ldl_gptqequiv agreement: {'yes' if ok else 'NO'} (the criterion: codes differ only after rounding "
          f"ties within {tie_tol:g}, and the reference's codes read back within 0.25 of an integer)")
    return ok


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ref_dir = Path(args.reference or ".").expanduser()
    missing = [f"{name}.py" for name in REFERENCE_MODULES if not (ref_dir / f"{name}.py").is_file()]
    if not args.reference or missing:
        print((f"{ref_dir} lacks {', '.join(missing)}; " if args.reference else "") + CLONE_HINT, file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    args.tokens = args.tokens or max(256, 2 * args.n)
    t0 = time.perf_counter()
    ref, notes = import_reference(ref_dir)
    print(f"reference: {ref_dir.resolve()} ({', '.join(REFERENCE_MODULES)} imported unmodified)")
    for note in notes:
        print(f"  {note}")
    bad, worst = structure_check(ref)
    rows = end_to_end(ref, args)
    ok = summarize(rows, args.tie)
    ok_struct = not bad and worst <= 1e-5
    print(f"butterfly: {len(bad)} factor splits differ, products max |diff| {worst:.1e} "
          f"({'agree' if ok_struct else 'DISAGREE'}); wall time {time.perf_counter() - t0:.1f} s")
    return 0 if ok and ok_struct else 1


if __name__ == "__main__":
    exit_with(main)
