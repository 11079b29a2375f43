"""BitNet inference on CPU: BitLinear's int8 kernel against the float matmul it replaces, same model, one run.

    python benchmarks/bitlinear_kernel.py --model DIR --mode b158     # a HF checkpoint's shape as BitNet
    python benchmarks/bitlinear_kernel.py --tiny --mode b1            # quickstart's BitNet b1 architecture
    python benchmarks/bitlinear_kernel.py --model DIR --float-path    # bf16: cached W_q against re-quantizing
    python benchmarks/bitlinear_kernel.py --tiny --float-path --device cuda   # the same on a GPU

In no-grad mode `BitLinear` multiplies int8 activations by ternary / binary weights. Every partial sum is
an integer below 2^24, so fp32 holds it exactly and the int8 x int8 -> int32 matmul (`torch._int_mm`) is
the float matmul's result exactly (see `ptq_bench/models/bitlinear.py`). This script times whole-model
forwards with each kernel, alternating, best of --repeats, in two shapes: the zero-shot shape (LM head at
the last position only, as FastLM's stage 1) and the perplexity shape (logits at every position), and
checks that the logits are equal. The model is a random-latent BitNet of the checkpoint's shape (its
accuracy is not the point: the kernels see the same integers either way).

`--float-path` runs the model in bf16 instead, where the float matmul runs (as on CUDA), and compares two
ways of getting W_q: the cached int8 copy cast to bf16 (`BitLinear` now), against re-quantizing the latent
weight every forward (BitLinear before 2026-12-04, kept here as `requantizing`). It prints tokens/s and the
kernels one forward dispatches (non-view aten operations, `kernel_count.KernelCount`: on a GPU each is a launch a
small model waits on), and checks the logits are equal.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_args import checkpoint, device, exit_with, positive  # noqa: E402
from kernel_count import KernelCount  # noqa: E402

from ptq_bench.models.bitlinear import BitLinear, activation_quant_int  # noqa: E402


def load(args: argparse.Namespace) -> torch.nn.Module:
    from ptq_bench.models.build import ArchConfig, build_model, swap_bitlinears

    if args.tiny:  # recipes/quickstart.yaml's architecture and vocabulary size
        return build_model(f"bitnet_{args.mode}", ArchConfig(max_seq_len=256), 4096, seed=0).eval()
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    swap_bitlinears(model, args.mode, model.config.rms_norm_eps)
    return model


_EXACT = BitLinear._int8_kernel_exact  # the class's own test: int8 kernel where it is exact


def use_int8(on: bool) -> None:
    """BitLinear's int8 kernel where exact (on), or the float matmul everywhere (off)."""
    BitLinear._int8_kernel_exact = _EXACT if on else (lambda self, x: False)


def best_time(fn: Callable[[], torch.Tensor], repeats: int) -> tuple[float, torch.Tensor]:
    fn()  # warm-up (and the int8 weight cache)
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        if out.is_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return min(times), out


def alternate(model: torch.nn.Module, ids: torch.Tensor, keep: int, repeats: int,
              variants: dict[str, Callable[[], None]]) -> dict[str, tuple[float, torch.Tensor, int]]:
    """Each variant (a switch that sets it up) timed in turn, twice round, best of each:
    name -> (seconds per forward, logits, kernels one forward dispatches)."""
    def forward() -> torch.Tensor:
        with torch.inference_mode():
            return model(ids, logits_to_keep=keep).logits

    results: dict[str, tuple[float, torch.Tensor, int]] = {}
    for _ in range(2):
        for name, switch in variants.items():
            switch()
            t, out = best_time(forward, repeats)
            with KernelCount() as k:
                forward()
            old = results.get(name)
            results[name] = (min(t, old[0]) if old else t, out, k.n)
    return results


def compare(label: str, model: torch.nn.Module, ids: torch.Tensor, keep: int, repeats: int) -> None:
    res = alternate(model, ids, keep, repeats, {"float": lambda: use_int8(False), "int8": lambda: use_int8(True)})
    use_int8(True)
    tokens = ids.numel()
    (tf, lf, _), (ti, li, _) = res["float"], res["int8"]
    equal = torch.equal(lf, li)
    print(f"{label:<26} float {tokens / tf:8.0f} tok/s   int8 {tokens / ti:8.0f} tok/s   ratio {tf / ti:5.2f}   "
          f"logits equal: {equal} (max |Δ| {float((lf - li).abs().max()):.1e})")


def requantizing(self: BitLinear, x: torch.Tensor) -> torch.Tensor:
    """BitLinear's float path before 2026-12-04: W_q re-quantized from the latent weight every forward."""
    x_q, s_x = activation_quant_int(x)
    w_q, s_w = self.quantized_weight()
    y = torch.nn.functional.linear(x_q, w_q.to(x.dtype)) / (s_w.to(x.dtype).reshape(1) * s_x)
    return y if self.bias is None else y + self.bias


_CACHED = BitLinear._forward_int


def _use_forward(impl: Callable) -> Callable[[], None]:
    def switch() -> None:
        BitLinear._forward_int = impl
    return switch


def compare_float_path(label: str, model: torch.nn.Module, ids: torch.Tensor, keep: int, repeats: int) -> None:
    res = alternate(model, ids, keep, repeats, {"requantizing": _use_forward(requantizing), "cached": _use_forward(_CACHED)})
    BitLinear._forward_int = _CACHED
    tokens = ids.numel()
    (tr, lr, kr), (tc, lc, kc) = res["requantizing"], res["cached"]
    print(f"{label:<26} re-quantizing {tokens / tr:7.0f} tok/s, {kr:5} kernels   cached {tokens / tc:7.0f} tok/s, "
          f"{kc:5} kernels   time {tr / tc:4.2f}x, kernels {kr / kc:4.2f}x   logits equal: {torch.equal(lr, lc)}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=checkpoint, help="HF checkpoint directory (its shape, as BitNet)")
    p.add_argument("--tiny", action="store_true", help="quickstart's BitNet architecture instead of --model")
    p.add_argument("--mode", default="b158", choices=["b158", "b1"])
    p.add_argument("--batch", type=positive, default=4, help="rows per forward (4 x 128 = FastLM's 512 tokens on CPU)")
    p.add_argument("--seq", type=positive, default=128)
    p.add_argument("--repeats", type=positive, default=5)
    p.add_argument("--float-path", action="store_true", help="bf16: cached W_q against re-quantizing every forward")
    p.add_argument("--device", type=device, default="cpu", help="with --float-path: where the model runs (cuda: the GPU's float path)")
    args = p.parse_args()
    if not args.tiny and not args.model:
        p.error("give --model DIR or --tiny")
    if args.device != "cpu" and not args.float_path:
        p.error("--device is for --float-path (the int8 kernel is CPU-only)")
    model = load(args)
    n = sum(isinstance(m, BitLinear) for m in model.modules())
    print(f"{args.model or 'quickstart arch'} as BitNet {args.mode}: {n} BitLinears, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()}")
    ids = torch.randint(0, model.config.vocab_size, (args.batch, args.seq), generator=torch.Generator().manual_seed(0))
    run = compare
    if args.float_path:
        model, run, ids = model.to(torch.bfloat16).to(args.device), compare_float_path, ids.to(args.device)
    run(f"zero-shot ({args.batch}x{args.seq}, head 1)", model, ids, 1, args.repeats)
    run(f"perplexity ({args.batch}x{args.seq}, all)", model, ids, 0, args.repeats)


if __name__ == "__main__":
    exit_with(main)
