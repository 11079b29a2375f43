"""The block runner's calibration pass as it is against as it was, in one run: capture and statistics.

    .venv/bin/python benchmarks/calib_runner.py                     # SmolLM2-135M's shape, 16 x 512 tokens
    .venv/bin/python benchmarks/calib_runner.py --windows 128 --seqlen 2048 --layers 4   # GPTQ's reference size

The model is SmolLM2-135M's Llama shape (hidden 576, MLP 1536, 30 blocks, 9 heads, 3 KV heads, vocab 49152),
randomly initialised from its config (nothing downloaded), fp32, after one warm-up forward. "now" is
`run_blockwise(lean=True)` (the default), "as it was" `lean=False`, which does the reference's work:

- capture (`calibrate.capture_inputs`): only block 0 computes, blocks 1 .. n-2 pass their input on
  (`calibrate._passing_on`); as it was, every block computed;
- statistics: q/k/v share one Hessian, gate/up another (`quant.statistics.SharedInputs`); as it was, every
  linear had its own;
- a block run only for its statistics (GPTQ propagates the quantized block's outputs, computed after)
  stops at its last hooked linear's input (`calibrate._collect`): the down projection is not computed
  there; as it was, the whole block ran.

It times the capture alone both ways, then the whole pass (`run_blockwise` with GPTQ's Hessian on every
linear and no solve) both ways, alternating, `--repeats` times each, and prints the medians, their
ratios, and whether the captured calls replay to the same block outputs and every Hessian of the last
repeat is equal (`torch.equal`, same token count) both ways.

`--gptq CHECKPOINT` instead times GPTQ W4 g128 end to end (`get_method("gptq").apply` on a fresh copy,
solves included) both ways on a checkpoint folder (SmolLM2-135M: `.ptq_cache/sources/gguf-...` after
`make smollm2` and one run of its recipe), with random-token calibration of the same size, and checks
that the quantized models are equal.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections.abc import Callable

import torch
from bench_args import checkpoint, exit_with, positive
from transformers import LlamaConfig, LlamaForCausalLM

import ptq_bench.quant.calibrate as calibrate
from ptq_bench.quant.apply import hessian_stat
from ptq_bench.quant.statistics import take_stat

SMOLLM2 = {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
           "num_key_value_heads": 3, "vocab_size": 49152, "max_position_embeddings": 8192, "tie_word_embeddings": True}


def build(layers: int) -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**{**SMOLLM2, "num_hidden_layers": layers})).float().eval()


def timed(fn: Callable) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def runner_pass(model: LlamaForCausalLM, calib: torch.Tensor, now: bool) -> tuple[list[dict], int]:
    """Every block's statistics (taken as a solver takes them), and block 0's statistic multiply-adds per
    token (sum of cols^2 over its distinct statistics)."""
    taken: list[dict] = []
    cost: list[int] = []

    def on_group(idx, layer, group, stats) -> None:
        if idx == 0:
            cost.append(sum(s.H.shape[0] ** 2 for s in {id(s): s for s in stats.values()}.values()))
        taken.append({name: take_stat(stats, name) for name in group})

    calibrate.run_blockwise(model, calib, hessian_stat, on_group, lean=now)
    return taken, cost[0]


def replays(model: LlamaForCausalLM, calib: torch.Tensor, now: bool) -> list[torch.Tensor]:
    """Block n-2's outputs when the captured calls are replayed block by block (the runner's propagation)."""
    inputs = calibrate.capture_inputs(model, calib, lean=now)
    hidden = inputs.hidden
    for layer, calls in list(zip(calibrate.decoder_layers(model), inputs.calls, strict=True))[:-1]:
        hidden = calibrate.run_layer(layer, hidden, calls)
    return hidden


def gptq(folder: str, calib: torch.Tensor, repeats: int) -> None:
    """GPTQ W4 g128 end to end, as it was and now, alternating; the quantized states compared."""
    import copy

    from transformers import AutoModelForCausalLM

    import ptq_bench.quant.apply as apply
    from ptq_bench.quant import get_method

    base = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        base(calib[:1, :64])  # warm-up
    method, runner = get_method("gptq"), apply.run_blockwise
    seconds: dict[bool, list[float]] = {True: [], False: []}
    states: dict[bool, dict] = {}
    for _ in range(repeats):
        for now in (False, True):
            apply.run_blockwise = functools.partial(runner, lean=now)  # what every method's apply calls
            model = copy.deepcopy(base)
            s, _ = timed(functools.partial(method.apply, model, method.config_cls(w_bits=4, group_size=128), calib))
            seconds[now].append(s)
            states[now] = model.state_dict()
            print(f"  {'now' if now else 'as it was':<10} GPTQ W4 g128 {s:7.1f} s")
    apply.run_blockwise = runner
    old, new = statistics.median(seconds[False]), statistics.median(seconds[True])
    print(f"median GPTQ: as it was {old:.1f} s, now {new:.1f} s, ratio {old / new:.2f}x; quantized models equal: "
          f"{all(torch.equal(states[True][k], v) for k, v in states[False].items())}")


def equal(a: list[dict], b: list[dict]) -> bool:
    return all(x.keys() == y.keys() and all(torch.equal(x[n].H, y[n].H) and x[n].n == y[n].n for n in x)
               for x, y in zip(a, b, strict=True))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--windows", type=positive, default=16)
    ap.add_argument("--seqlen", type=positive, default=512)
    ap.add_argument("--layers", type=positive, default=30, help="decoder blocks (SmolLM2: 30)")
    ap.add_argument("--repeats", type=positive, default=2)
    ap.add_argument("--gptq", type=checkpoint, metavar="CHECKPOINT", help="time GPTQ W4 g128 end to end on this checkpoint folder instead")
    args = ap.parse_args()

    calib = torch.randint(0, SMOLLM2["vocab_size"], (args.windows, args.seqlen), generator=torch.Generator().manual_seed(1))
    if args.gptq:
        print(f"{args.gptq}, calibration {args.windows} x {args.seqlen} random tokens, {torch.get_num_threads()} threads")
        return gptq(args.gptq, calib, args.repeats)
    model = build(args.layers)
    with torch.no_grad():
        model(calib[:1, :64])  # warm-up
    print(f"SmolLM2-135M shape, {args.layers} blocks, calibration {args.windows} x {args.seqlen} tokens, "
          f"{torch.get_num_threads()} threads")
    capture: dict[bool, list[float]] = {True: [], False: []}
    whole: dict[bool, list[float]] = {True: [], False: []}
    last: dict[bool, tuple[list[dict], int]] = {}
    for _ in range(args.repeats):
        for now in (False, True):
            capture[now].append(timed(functools.partial(calibrate.capture_inputs, model, calib, lean=now))[0])
            seconds, last[now] = timed(functools.partial(runner_pass, model, calib, now))
            whole[now].append(seconds)
            print(f"  {'now' if now else 'as it was':<10} capture {capture[now][-1]:7.2f} s   whole pass {seconds:7.2f} s")
    same_replay = all(torch.equal(a, b) for a, b in zip(replays(model, calib, False), replays(model, calib, True), strict=True))
    med = {k: {now: statistics.median(v[now]) for now in v} for k, v in (("capture", capture), ("whole", whole))}
    print(f"statistic multiply-adds per token and block: {last[False][1]:,} one per linear, {last[True][1]:,} shared "
          f"({last[False][1] / last[True][1]:.2f}x)")
    for k in med:
        print(f"median {k:<8}: as it was {med[k][False]:7.2f} s, now {med[k][True]:7.2f} s, "
              f"ratio {med[k][False] / med[k][True]:.2f}x")
    print(f"captured calls replay to the same block outputs: {same_replay}; "
          f"Hessians equal: {equal(last[True][0], last[False][0])}")


if __name__ == "__main__":
    exit_with(main)
