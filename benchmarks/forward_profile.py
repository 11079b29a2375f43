"""Where a float forward's time goes on this CPU, and whether torch.compile buys anything (one run).

    OMP_NUM_THREADS=2 python benchmarks/forward_profile.py --model DIR [--shape 32 40 --shape 8 160] [--compile]

The question behind it: FastLM's float ratio over a batched HFLM is bounded by the work it can skip
(`eval_speed.py`'s `exact ceiling`); beyond that it would need more model FLOPs per second than HFLM gets.
For each input shape (rows x tokens, random ids, LM head at the last position only as FastLM's stage 1;
--all-positions: at every position, as HFLM and perplexity)
this prints the share of CPU time spent in matrix multiplies (`aten::mm` + `aten::bmm`, torch profiler,
one forward) and the blocks' matmul rate (2 x block linear parameters x tokens / forward seconds, best of
--repeats). With --compile, the same forwards through `torch.compile` (inductor, dynamic shapes): the
first call's seconds, the eager / compiled time ratio, and max |Δ log-softmax| against eager.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_args import checkpoint, exit_with, positive  # noqa: E402

from ptq_bench.quant.calibrate import decoder_layers  # noqa: E402

MATMULS = ("aten::mm", "aten::bmm", "aten::addmm")


def block_linear_params(model: torch.nn.Module) -> int:
    return sum(m.weight.numel() for m in decoder_layers(model).modules() if isinstance(m, torch.nn.Linear))


def forward(model: Callable[..., object], ids: torch.Tensor, keep: int = 1) -> torch.Tensor:
    """Log-probabilities at the last `keep` positions (0: every position, as HFLM and perplexity)."""
    with torch.no_grad():
        return model(input_ids=ids, logits_to_keep=keep).logits.float().log_softmax(-1)


def best_seconds(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def matmul_share(model: torch.nn.Module, ids: torch.Tensor, keep: int) -> float:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        forward(model, ids, keep)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    return sum(e.self_cpu_time_total for e in events if e.key in MATMULS) / total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, type=checkpoint, help="a Hugging Face checkpoint folder (float)")
    ap.add_argument("--shape", type=positive, nargs=2, action="append", metavar=("ROWS", "TOKENS"))
    ap.add_argument("--repeats", type=positive, default=3)
    ap.add_argument("--compile", action="store_true", help="also time torch.compile(dynamic=True)")
    ap.add_argument("--all-positions", action="store_true", help="the LM head at every position (as HFLM)")
    args = ap.parse_args()
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    n_params = block_linear_params(model)
    shapes = [tuple(s) for s in args.shape or [(32, 40), (8, 160)]]
    g = torch.Generator().manual_seed(0)
    inputs = {s: torch.randint(0, model.config.vocab_size, s, generator=g) for s in shapes}
    print(f"{args.model}: {n_params / 1e6:.1f}M block linear parameters, {torch.get_num_threads()} threads")
    keep = 0 if args.all_positions else 1
    compiled = torch.compile(model, dynamic=True) if args.compile else None
    for shape, ids in inputs.items():
        reference = forward(model, ids, keep)
        eager_s = best_seconds(lambda ids=ids: forward(model, ids, keep), args.repeats)
        rate = 2 * n_params * ids.numel() / eager_s / 1e9
        line = (f"{shape[0]:>4} x {shape[1]:<4} eager {eager_s:.3f} s, matmul share {matmul_share(model, ids, keep):.1%}, "
                f"block matmuls {rate:.0f} GFLOP/s")
        if compiled is not None:
            t0 = time.perf_counter()
            out = forward(compiled, ids, keep)
            first = time.perf_counter() - t0
            comp_s = best_seconds(lambda ids=ids: forward(compiled, ids, keep), args.repeats)
            diff = (out - reference).abs().max().item()
            line += f"; compiled: first call {first:.1f} s, eager/compiled {eager_s / comp_s:.2f}, max |dlogp| {diff:.1e}"
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    exit_with(main)
