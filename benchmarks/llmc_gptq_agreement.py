"""What `smoothquant_vs_llmcompressor.py --gptq` prints beside the perplexities: how far the two GPTQ runs
agree below the noise.

- `weight_agreement`: per decoder block, the share of quantized weights that are bit-identical in our
  model and llm-compressor's, and each side's weight error sum (Q - W)^2 against the FP weights W;
- `solver_agreement`: while llm-compressor's GPTQ runs, every weight and Hessian its `quantize_weight`
  receives is also handed to our `gptq_solve` (same bits, group, damp, block, act order + static groups),
  so the two solvers are compared on one shared Hessian, linear by linear;
- `print_noise_rows`: both sides' perplexities on 1e-6 weight-noise copies of the FP model, and their spread.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any


def block_linears(model: Any) -> dict[int, dict[str, Any]]:
    """{block index: {linear name in the block (self_attn.q_proj, ...): module}} of the decoder blocks (where
    the family registry puts them: `quant.calibrate.decoder_layers`)."""
    import torch.nn as nn

    from ptq_bench.quant.calibrate import decoder_layers

    return {i: {name: m for name, m in layer.named_modules() if isinstance(m, nn.Linear)}
            for i, layer in enumerate(decoder_layers(model))}


def weight_agreement(fp: Any, ours: Any, theirs: Any) -> dict[int, dict[str, tuple[int, int, float, float]]]:
    """{block: {linear: (weights equal, weights, sum (Q_ours - W)^2, sum (Q_llmc - W)^2)}}, W the FP
    weight."""
    import torch

    blocks_fp, blocks_ours, blocks_theirs = block_linears(fp), block_linears(ours), block_linears(theirs)
    if blocks_fp.keys() != blocks_ours.keys() or blocks_fp.keys() != blocks_theirs.keys():
        raise RuntimeError("the FP model and the two quantized models have different decoder blocks")
    out: dict[int, dict[str, tuple[int, int, float, float]]] = {}
    with torch.no_grad():
        for b, linears in blocks_fp.items():
            out[b] = {}
            for name, m in linears.items():
                w = m.weight.float()
                q_o, q_l = blocks_ours[b][name].weight.float(), blocks_theirs[b][name].weight.float()
                out[b][name] = (int((q_o == q_l).sum()), w.numel(), float((q_o - w).pow(2).sum()),
                                float((q_l - w).pow(2).sum()))
    return out


def _totals(rows: dict[str, tuple[int, int, float, float]]) -> tuple[float, float]:
    """(share of equal weights, error ours / error llm-compressor - 1) over some linears."""
    equal, n, e_ours, e_llmc = (sum(r[k] for r in rows.values()) for k in range(4))
    return equal / n, e_ours / e_llmc - 1


def print_weight_agreement(fp: Any, ours: Any, theirs: Any, detail: tuple[int, ...] = (0, 1)) -> None:
    """Blocks `detail` linear by linear, the others as min..max over blocks."""
    stats = weight_agreement(fp, ours, theirs)
    print("quantized weights, ours vs llm-compressor: share bit-identical; weight error sum (Q - W)^2 over "
          "the block's linears, ours / llm-compressor - 1")
    for b in detail:
        share, err = _totals(stats[b])
        per = ", ".join(f"{name.rsplit('.', 1)[-1]} {100 * r[0] / r[1]:.2f}%" for name, r in stats[b].items())
        print(f"  block {b}: {100 * share:.2f}% equal, error {100 * err:+.3f}%  ({per})", flush=True)
    rest = sorted(set(stats) - set(detail))
    if rest:
        shares, errs = zip(*(_totals(stats[b]) for b in rest), strict=True)
        print(f"  blocks {rest[0]}-{rest[-1]}: {100 * min(shares):.2f}%..{100 * max(shares):.2f}% equal "
              f"per block, error {100 * min(errs):+.3f}%..{100 * max(errs):+.3f}%", flush=True)


@contextlib.contextmanager
def solver_agreement(bits: int, group_size: int) -> Iterator[dict[Any, tuple[int, int]]]:
    """While llm-compressor's GPTQ runs: {its linear module: (weights where our gptq_solve on the same weight
    and Hessian equals its quantize_weight, weights)}, filled as it goes. Its functions are wrapped for the
    call only; what it computes is unchanged (our solve gets copies of its inputs)."""
    import llmcompressor.modifiers.gptq.base as base

    from ptq_bench.quant.gptq import gptq_solve

    found: dict[Any, tuple[int, int]] = {}
    batch: list[Any] = []
    prepare, quantize = base.prepare_batch, base.quantize_weight

    def recording_prepare(modules: list, *args: Any, **kwargs: Any) -> Any:
        batch[:] = modules
        return prepare(modules, *args, **kwargs)

    def comparing_quantize(weights: Any, hessians: Any, *args: Any, **kwargs: Any) -> Any:
        w, h = weights.clone(), hessians.clone()  # its quantize_weight works in place on both
        out = quantize(weights, hessians, *args, **kwargs)
        if len(batch) != len(w):
            raise RuntimeError(f"llm-compressor quantized {len(w)} weights for {len(batch)} linears")
        for i, module in enumerate(batch):
            q, _, _ = gptq_solve(w[i], h[i], bits, group_size, kwargs.get("percdamp", 0.01),
                                 kwargs.get("blocksize", 128), act_order=True, sym=True, static_groups=True)
            found[module] = (int((q == out[0][i]).sum()), q.numel())
        return out

    base.prepare_batch, base.quantize_weight = recording_prepare, comparing_quantize
    try:
        yield found
    finally:
        base.prepare_batch, base.quantize_weight = prepare, quantize


def print_solver_agreement(theirs: Any, found: dict[Any, tuple[int, int]]) -> None:
    """One line: overall, block 0, and the least agreeing linear of `theirs` (the model llm-compressor
    quantized)."""
    names = {m: name for name, m in theirs.named_modules()}
    rows = {names[m]: r for m, r in found.items()}
    if not rows:
        raise RuntimeError("llm-compressor's quantize_weight was never called")
    block0 = [r for name, r in rows.items() if ".layers.0." in name]
    worst = min(rows, key=lambda name: rows[name][0] / rows[name][1])

    def share(rs: list[tuple[int, int]]) -> str:
        return f"{100 * sum(r[0] for r in rs) / sum(r[1] for r in rs):.3f}%"

    equal, total = (sum(r[i] for r in rows.values()) for i in (0, 1))
    print(f"one shared Hessian (each weight and Hessian llm-compressor's quantize_weight got, also solved by "
          f"our gptq_solve), {len(rows)} linears: {share(list(rows.values()))} of weights equal "
          f"({total - equal:,} of {total:,} differ), "
          f"block 0 {share(block0)}, least {share([rows[worst]])} ({worst})", flush=True)


def print_noise_rows(noisy_models: Iterable[Any], runs: dict[str, Callable[[Any], float]],
                     unperturbed: dict[str, float]) -> None:
    """For each FP model x (1 + 1e-6 N(0,1)) (seeds 0, 1, ...): a row per side, the perplexity `runs[side]`
    gives (ratio to the side's unperturbed run); then each side's range with its unperturbed run, and all runs
    together."""
    values = {side: [p] for side, p in unperturbed.items()}
    for seed, noisy in enumerate(noisy_models):
        for side, run in runs.items():
            values[side].append(run(noisy))
            print(f"  {side} on the FP weights x (1 + 1e-6 N(0,1)), seed {seed}: {values[side][-1]:.4f} "
                  f"(ratio to {side} unperturbed {values[side][-1] / unperturbed[side]:.4f})", flush=True)
    if all(len(v) > 1 for v in values.values()):
        spans = [*values.items(), ("all runs", [x for v in values.values() for x in v])]
        ranges = (f"{side} {min(v):.2f}..{max(v):.2f} ({100 * (max(v) / min(v) - 1):.1f}%)"
                  for side, v in spans)
        print("  range with the unperturbed run (max / min - 1): " + ", ".join(ranges), flush=True)
