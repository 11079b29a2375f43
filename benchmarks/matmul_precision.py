"""Can float32 matrix multiplies be bought faster on this CPU without leaving float32's accuracy? (one run)

    OMP_NUM_THREADS=2 python benchmarks/matmul_precision.py [--shape 4096 576 1536] [--repeats 10]

FastLM's float ratio over a batched HFLM is bounded by the work it can skip (`eval_speed.py`'s `exact
ceiling`, ~2.0x on SmolLM2-135M); the rest of a 3x would have to come from cheaper multiplies, which take
86-88% of a float forward here (`forward_profile.py`). A CPU with AMX multiplies bfloat16 and int8 far
faster than float32, and float32 can be emulated from them exactly enough in principle: split each
operand into bfloat16 pieces (hi + mid + lo) and sum the pieces' products with float32 accumulation (as
cuBLAS's BF16x9), or split into int8 slices with exact int32 products (the Ozaki scheme). For one
SmolLM2-shaped linear (rows x in x out; default: 4096 tokens through the MLP's up projection) this prints
each way's seconds per multiply, its speed against float32 and its largest error against float64:
  fp32          torch's float32 matmul (oneDNN, fp32_precision "ieee")
  bf16 round    both operands rounded to bfloat16, bfloat16 output (the speed AMX gives at its best)
  bf16x1..x6    the pieces' products as one float32 matmul under fp32_precision "bf16" (oneDNN multiplies
                in bfloat16 with float32 accumulation; the pieces are bfloat16 numbers, so nothing is
                rounded going in); x3: hi*hi + hi*lo + lo*hi, x6 adds mid*mid, hi*lo', lo'*hi of 3 pieces
  split         the seconds to cut the activation into 3 bfloat16 pieces (paid per multiply, weights once),
                as a share of the fp32 multiply's
  int8 _int_mm  one int8 x int8 -> int32 multiply (torch._int_mm); an exact emulation needs >= 6 of them
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from bench_args import exit_with, positive

PAIRS = {"bf16x1": [(0, 0)], "bf16x3": [(0, 0), (0, 1), (1, 0)],
         "bf16x6": [(0, 0), (0, 1), (1, 0), (1, 1), (0, 2), (2, 0)]}


def seconds(f: Callable[[], object], repeats: int) -> float:
    f()
    start = time.perf_counter()
    for _ in range(repeats):
        f()
    return (time.perf_counter() - start) / repeats


def pieces(a: torch.Tensor, n: int = 3) -> list[torch.Tensor]:
    """`a` as n float32 tensors each exactly a bfloat16 number, summing to `a` within 2^-8n relative."""
    out, rest = [], a
    for _ in range(n):
        out.append(rest.bfloat16().float())
        rest = rest - out[-1]
    return out


def fp32_precision(mode: str) -> None:
    torch.backends.mkldnn.matmul.fp32_precision = mode


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", type=positive, nargs=3, default=[4096, 576, 1536], metavar=("ROWS", "IN", "OUT"))
    p.add_argument("--repeats", type=positive, default=10)
    args = p.parse_args()
    rows, k, n = args.shape
    torch.manual_seed(0)
    x, w = torch.randn(rows, k), torch.randn(n, k) / k ** 0.5
    exact = x.double() @ w.double().T
    base = seconds(lambda: x @ w.T, args.repeats)
    print(f"{rows} x {k} x {n}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"{'way':<14}{'s / multiply':>14}{'vs fp32':>9}{'max |err|':>12}")

    def line(name: str, s: float, err: float | None) -> None:
        print(f"{name:<14}{s:>14.5f}{base / s:>8.2f}x{'' if err is None else f'{err:>12.2e}'}")

    line("fp32", base, (x @ w.T - exact).abs().max().item())
    xb, wb = x.bfloat16(), w.bfloat16()
    line("bf16 round", seconds(lambda: xb @ wb.T, args.repeats), ((xb @ wb.T).double() - exact).abs().max().item())
    xs, ws = pieces(x), pieces(w)
    fp32_precision("bf16")
    try:
        for name, pairs in PAIRS.items():
            xc, wc = torch.cat([xs[i] for i, _ in pairs], 1), torch.cat([ws[j] for _, j in pairs], 1)
            s = seconds(lambda xc=xc, wc=wc: xc @ wc.T, args.repeats)
            line(name, s, ((xc @ wc.T).double() - exact).abs().max().item())
    finally:
        fp32_precision("ieee")
    split = seconds(lambda: torch.cat(pieces(x), 1), args.repeats)
    print(f"{'split':<14}{split:>14.5f}   (+{split / base:.0%} of an fp32 multiply, on every bf16xN one)")
    xi = torch.randint(-127, 128, (rows, k), dtype=torch.int8)
    wi = torch.randint(-127, 128, (k, n), dtype=torch.int8)
    line("int8 _int_mm", seconds(lambda: torch._int_mm(xi, wi), args.repeats), None)


if __name__ == "__main__":
    exit_with(main)
