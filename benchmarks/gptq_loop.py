"""GPTQ's column walk on one decoder block's linears: the reference's loop against ptq-bench's.

    python benchmarks/gptq_loop.py                      # SmolLM2-135M's block shapes, on the CPU
    python benchmarks/gptq_loop.py --device cuda        # the same on a GPU, where the loop is launch-bound
    python benchmarks/gptq_loop.py --hidden 2048 --intermediate 5632 --heads 32 --kv-heads 4 --layers 22

GPTQ quantizes a matrix column by column, and every column costs a few small kernels. On a GPU these
launches, not the arithmetic, bound a small model's quantization (an H200 spent 34-51 s per GPTQ cell on
SmolLM2-135M, 2026-12-04: results/smollm2_ptq_cuda_bf16). Two ways of walking one block's 7 linears
(q, k, v, o, gate, up, down) against random Hessians of the right sizes:

- `reference`: one linear at a time, with the loop of the reference implementation (IST-DASLab `gptq.py`,
  as GPTQModel keeps it): the loss is summed column by column. This was ptq-bench's loop until 2026-12-04.
- `ptq-bench`: the library as it is. Linears that read one input are solved as one stacked matrix where the
  stack is no larger than the block's largest linear (`quant.apply.sharing`: q/k/v, not gate/up), and the
  loss is summed once per block of columns (`quant.ldlq.error_feedback`).

Both ways round each column with the library's GPTQ rounding (`quantize_int_zero` since 2026-12-07: six kernels,
`w / scale` rounded before the zero point is added, as the reference's quant.py; `quantize_scalar`, five kernels,
from 2026-12-04; six and a copy before), so the two differ by their loops only.

The script prints, for each way, the columns walked, the kernels dispatched (aten operations that are not views,
counted by a TorchDispatchMode over one block), and the seconds per block (the best of --repeats). It also
projects both to --layers blocks and checks that both ways give the same weights bit for bit.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_args import device, exit_with, method_config, positive  # noqa: E402
from kernel_count import KernelCount  # noqa: E402

from ptq_bench.quant import gptq as gptq_mod  # noqa: E402
from ptq_bench.quant import ldlq  # noqa: E402
from ptq_bench.quant.apply import Stacked, sharing, solve_stacked  # noqa: E402
from ptq_bench.quant.linears import weight_matrix  # noqa: E402


def reference_error_feedback(W: Tensor, U: Tensor, quant_col: Callable, block_size: int = 128) -> tuple[Tensor, float]:
    """The reference's column loop (IST-DASLab gptq.py `fasterquant`): the loss summed column by column."""
    cols = W.shape[1]
    Q = torch.zeros_like(W)
    loss = torch.zeros((), device=W.device)
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        W1 = W[:, i1:i2]
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
        W[:, i2:] -= Err1 @ U[i1:i2, i2:]
    return Q, float(loss)


class Weight(torch.nn.Module):
    """A linear as the solver reads it (`weight_matrix`), and not a scratch `Stacked`: the library copies it
    before its column walk as it copies a model's linear, and leaves it as it was for the next repeat."""

    def __init__(self, weight: Tensor) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(weight, requires_grad=False)


def block_problem(a: argparse.Namespace, device: str) -> tuple[dict[str, Stacked], dict[str, Tensor]]:
    """The block's linears (name -> a module holding its weight) and their statistics (name -> Hessian; the
    linears that read one input share one object), at the block's shapes."""
    g = torch.Generator().manual_seed(0)
    h, kv, inter = a.hidden, a.hidden // a.heads * a.kv_heads, a.intermediate

    def hessian(n: int) -> Tensor:
        x = torch.randn(4 * n, n, generator=g) * torch.rand(n, generator=g)
        return (2 * x.T @ x / x.shape[0]).to(device)

    shapes = {"q": (h, h), "k": (kv, h), "v": (kv, h), "o": (h, h), "gate": (inter, h), "up": (inter, h),
              "down": (h, inter)}
    linears = {n: Weight((torch.randn(*shape, generator=g) * 0.02).to(device)) for n, shape in shapes.items()}
    attn_in, attn_out, mlp_in, mlp_out = hessian(h), hessian(h), hessian(h), hessian(inter)
    stats = {"q": attn_in, "k": attn_in, "v": attn_in, "o": attn_out, "gate": mlp_in, "up": mlp_in, "down": mlp_out}
    return linears, stats


def reference_way(problem: tuple, bits: int, group: int) -> list[Tensor]:
    """One linear at a time, each with its own copy of the Hessian, the reference's loop."""
    linears, stats = problem
    ldlq_loop, gptq_mod.error_feedback = gptq_mod.error_feedback, reference_error_feedback
    try:
        return [gptq_mod.gptq_solve(m.weight, stats[n], bits, group)[0] for n, m in linears.items()]
    finally:
        gptq_mod.error_feedback = ldlq_loop


def runs(problem: tuple) -> list[list[str]]:
    """The library's own choice of which linears to solve stacked (`quant.apply.sharing`)."""
    linears, stats = problem
    return sharing(linears, stats, max(m.weight.numel() for m in linears.values()))


def library_way(problem: tuple, bits: int, group: int) -> list[Tensor]:
    """The library: the runs `sharing` picks, stacked by `quant.apply.solve_stacked`, and its loop."""
    linears, stats = problem

    def solve(linear: torch.nn.Module, H: Tensor) -> tuple:  # gptq_solver's call, the Hessian kept for repeats
        return gptq_mod.gptq_solve(weight_matrix(linear), H, bits, group, consume_w=isinstance(linear, Stacked))

    out = []
    for names in runs(problem):
        solved = (solve_stacked(solve, [linears[n] for n in names], stats[names[0]]) if len(names) > 1
                  else [solve(linears[names[0]], stats[names[0]])])
        out += [w_hat for w_hat, _, _ in solved]
    return out


def measure(way: Callable, problem: dict, a: argparse.Namespace, device: str) -> tuple[list[Tensor], int, float]:
    """(weights, kernels per block, best seconds per block)."""
    with KernelCount() as k:
        out = way(problem, a.bits, a.group_size)
    best = float("inf")
    for _ in range(a.repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        way(problem, a.bits, a.group_size)
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return out, k.n, best


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=positive, default=576)
    p.add_argument("--intermediate", type=positive, default=1536)
    p.add_argument("--heads", type=positive, default=9)
    p.add_argument("--kv-heads", type=positive, default=3)
    p.add_argument("--layers", type=positive, default=30)
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--group-size", type=int, default=128)
    p.add_argument("--repeats", type=positive, default=3)
    p.add_argument("--device", type=device, default="cpu")
    a = p.parse_args()
    if a.hidden % a.heads or a.heads % a.kv_heads:
        p.error(f"--heads must divide --hidden, and --kv-heads --heads (got --hidden {a.hidden}, --heads {a.heads}, "
                f"--kv-heads {a.kv_heads})")
    method_config(p, "gptq", "--bits/--group-size", w_bits=a.bits, group_size=a.group_size)
    assert ldlq.error_feedback is gptq_mod.error_feedback
    problem = block_problem(a, a.device)
    print(f"device {a.device}, torch {torch.__version__}, {torch.get_num_threads()} threads; block: hidden {a.hidden}, "
          f"intermediate {a.intermediate}, {a.heads} heads / {a.kv_heads} kv; W{a.bits} g{a.group_size}; x {a.layers} blocks")
    ways = {"reference": reference_way, "ptq-bench": library_way}
    linears = problem[0]
    cols = {"reference": sum(m.weight.shape[1] for m in linears.values()),
            "ptq-bench": sum(linears[names[0]].weight.shape[1] for names in runs(problem))}
    print("solved together:", ", ".join("/".join(names) for names in runs(problem)))
    res = {name: measure(way, problem, a, a.device) for name, way in ways.items()}
    print(f"{'':<11}{'columns/block':>14}{'kernels/block':>15}{'s/block':>10}{'s/model':>10}")
    for name, (_, kernels, s) in res.items():
        print(f"{name:<11}{cols[name]:>14,}{kernels:>15,}{s:>10.3f}{s * a.layers:>10.1f}")
    (ref, kr, sr), (lib, kl, sl) = res["reference"], res["ptq-bench"]
    same = all(torch.equal(x, y) for x, y in zip(ref, lib))
    print(f"reference / ptq-bench: columns {cols['reference'] / cols['ptq-bench']:.2f}x, kernels {kr / kl:.2f}x, "
          f"time {sr / sl:.2f}x; weights bit for bit equal: {'yes' if same else 'NO'}")
    return 0 if same else 1


if __name__ == "__main__":
    exit_with(main)
