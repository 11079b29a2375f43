"""Calibration statistics with and without sharing between linears that read one input, in one run.

    .venv/bin/python benchmarks/calib_stats.py                      # SmolLM2-135M's shape, 16 x 512 tokens
    .venv/bin/python benchmarks/calib_stats.py --windows 128 --seqlen 2048 --layers 4   # GPTQ's reference size

The model is SmolLM2-135M's Llama shape (hidden 576, MLP 1536, 30 blocks, 9 heads, 3 KV heads, vocab 49152),
randomly initialised from its config (nothing downloaded), fp32. The timed pass is the block runner with
GPTQ's Hessian on every linear (`quant.apply.hessian_stat`) and no solve: `run_blockwise` with
`share_stats` True (q/k/v share one Hessian, gate/up another: `quant.statistics.SharedInputs`) and False
(one per linear, the reference's accounting), alternating, `--repeats` times each; it prints the median
seconds of each, their ratio, and whether every Hessian of the last repeat was equal (`torch.equal`) and
counted the same tokens. The multiply-adds of the statistics per token are printed beside it: per block,
sum over linears of in_features^2, against the same sum over distinct inputs.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from ptq_bench.quant.apply import hessian_stat
from ptq_bench.quant.calibrate import run_blockwise
from ptq_bench.quant.statistics import take_stat

SMOLLM2 = {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
           "num_key_value_heads": 3, "vocab_size": 49152, "max_position_embeddings": 8192, "tie_word_embeddings": True}


def build(layers: int) -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**{**SMOLLM2, "num_hidden_layers": layers})).float().eval()


def timed(model: LlamaForCausalLM, calib: torch.Tensor, share: bool) -> tuple[float, list[dict], int]:
    """Seconds of one statistics pass, every block's statistics (taken as a solver would take them), and
    the multiply-adds per token of the statistics of block 0 (sum of cols^2 over distinct statistics)."""
    taken: list[dict] = []

    def on_group(idx, layer, group, stats) -> None:
        if idx == 0:
            cost.append(sum(s.H.shape[0] ** 2 for s in {id(s): s for s in stats.values()}.values()))
        taken.append({name: take_stat(stats, name) for name in group})

    cost: list[int] = []
    t0 = time.perf_counter()
    run_blockwise(model, calib, hessian_stat, on_group, share_stats=share)
    return time.perf_counter() - t0, taken, cost[0]


def equal(a: list[dict], b: list[dict]) -> bool:
    return all(x.keys() == y.keys() and all(torch.equal(x[n].H, y[n].H) and x[n].n == y[n].n for n in x)
               for x, y in zip(a, b, strict=True))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--windows", type=int, default=16)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--layers", type=int, default=30, help="decoder blocks (SmolLM2: 30)")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    model = build(args.layers)
    calib = torch.randint(0, SMOLLM2["vocab_size"], (args.windows, args.seqlen), generator=torch.Generator().manual_seed(1))
    print(f"SmolLM2-135M shape, {args.layers} blocks, calibration {args.windows} x {args.seqlen} tokens, "
          f"{torch.get_num_threads()} threads")
    seconds: dict[bool, list[float]] = {True: [], False: []}
    last: dict[bool, list[dict]] = {}
    cost: dict[bool, int] = {}
    for _ in range(args.repeats):
        for share in (False, True):
            s, last[share], cost[share] = timed(model, calib, share)
            seconds[share].append(s)
            print(f"  share_stats={share!s:<5} {s:8.2f} s")
    sep, sh = statistics.median(seconds[False]), statistics.median(seconds[True])
    print(f"statistic multiply-adds per token and block: {cost[False]:,} one per linear, {cost[True]:,} shared "
          f"({cost[False] / cost[True]:.2f}x)")
    print(f"median: one per linear {sep:.2f} s, shared {sh:.2f} s, ratio {sep / sh:.2f}x; "
          f"Hessians equal: {equal(last[True], last[False])}")


if __name__ == "__main__":
    main()
