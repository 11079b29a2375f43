"""Independent check of ptq_bench's SmoothQuant (and, with --gptq, its GPTQ) against llm-compressor 0.14.

    PTQ_BENCH_DATA=/work/shared/data OMP_NUM_THREADS=1 .venv/bin/python benchmarks/smoothquant_vs_llmcompressor.py \
        [--nsamples 8] [--seqlen 512] [--seed 0] [--alpha 0.5] [--ppl-windows 4] [--tolerance 1e-5] \
        [--noise-seeds 2] [--gptq | --only-gptq] [--gptq-bits 4] [--gptq-group-size 64] [--gptq-ppl-windows 16] \
        [--gptq-tolerance 0.05] [--cache-dir .ptq_cache/sources]

Model: SmolLM2-135M (`source: smollm2-135m`, the plain checkpoint folder under .ptq_cache/sources), fp32,
CPU. Calibration: the same `--nsamples` x `--seqlen` C4-train windows for both sides (`encode_stream` of
`calibration_documents` -> `calibration_windows(stream, n, seqlen, seed)`), handed to llm-compressor's
`oneshot` as a datasets.Dataset of input_ids (no BOS, no padding, not shuffled); a hook on the embedding
checks that llm-compressor saw exactly those rows.

1. Smoothing scales. Ours: `get_method("smoothquant")` W8A8 (alpha, per-channel weights, per-token
   activations), with `ptq_bench.quant.smoothquant.smooth` wrapped to record, per norm, the act_amax
   the calibration runner collected and the scales s it folded (the library is not modified). Paper:
   s_j = max|X_j|^alpha / max|W_j|^(1 - alpha), max|X_j| over every calibration token of the norm's
   output, max|W_j| over the rows of the concatenated targets (q/k/v, gate/up).
   llm-compressor: `SmoothQuantModifier` run by `oneshot(..., pipeline="basic")` (one float pass over
   the calibration data, then every mapping smoothed at the epoch end: the same float statistics as ours;
   its default mappings for Llama are the same two pairs per block). Its own statistics (read in
   llmcompressor/modifiers/transform/smoothquant/base.py) differ from the paper's:
       activation_scales = max_channel_vals - min_channel_vals     (the range, not max|X|)
       weight_scales     = 2.0 * max over the balance layers' rows of |W|
       s = act^alpha / w^(1 - alpha)   (act where w == 0), then clamped to >= 1e-5
   `RecordingSmoothQuant` (a subclass) records the scales it applies; with `paper=True` it first turns
   the recorded min/max into max|X| (min := 0, max := max(|min|, |max|)) and drops the factor 2.
   Check: per norm, max_j |s_ours - s_llmc| / s_llmc with paper statistics <= --tolerance (exit 1 otherwise).
   Also printed: the same distance to llm-compressor's DEFAULT statistics, and WikiText-2 perplexity
   (GPTQ protocol, first --ppl-windows windows of --seqlen) of W8A8 after each smoothing: ours end to end;
   llm-compressor's smoothing followed by our absmax W8A8 (so only the scales differ); and
   llm-compressor's smoothing + its own `QuantizationModifier(scheme="W8A8")` (int8 per-channel weights,
   dynamic per-token int8 activations, compressed-tensors fake quantization), fully independent of ours.

2. --gptq: ours `gptq` (w_bits, group_size, damp 0.01, block 128, act_order=True, static_groups=True: its
   groups' scales are fitted up front on the original weights; sequential over blocks on the quantized
   model's activations, no true_sequential) against `GPTQModifier` (sym int, group strategy, actorder
   "static" = its default, dampening_frac 0.01, block_size 128) run by `oneshot(..., pipeline="sequential")`
   (block by block on its quantized outputs, as ours). --gptq-group-size must divide 576 (64 or 192).
   Check: |ppl_ours / ppl_llmc - 1| <= --gptq-tolerance. Also printed (llmc_gptq_agreement.py): bit-identical
   weights per block, both solvers on one shared Hessian, both sides on noisy weights, ours float-propagated.

Measured (SmolLM2-135M, 8 x 512 calibration windows, seed 0; figures and commands in benchmarks/README.md;
2026-12-02, 1 thread): with the paper's statistics the 60 norms' scales agree to max rel. diff 2.3e-6 (float
rounding). llm-compressor's DEFAULT statistics are far from the paper's: max rel. diff 0.88 (per norm
0.36..0.88; the factor 2 on max|W| alone makes every scale 2^-0.5 = 0.71 times the paper's at alpha 0.5, the
range adds up to 2x on the activation side). W8A8 WikiText-2 ppl (4 x 512): FP 30.96; ours 31.43; its
paper-statistics smoothing + our W8A8 31.63 (31.36..31.40 with 1e-6 weight noise: per-token int8 activations
make this model's ppl chaotic at the ~1% level), + its W8A8 31.16; its default statistics 31.96 (our W8A8) /
31.91 (its W8A8). GPTQ W4 g64 act-order static groups (16 x 512; 2026-12-07, 2 threads, --only-gptq
--noise-seeds 1, GPTQ method version 3): ours 56.39, llm-compressor 56.64 (ratio 0.996); on the FP weights x
(1 + 1e-6 N(0,1)), seed 0: 56.45 and 56.52 (at method version 2 ours moved 57.55 -> 59.64: chaotic error
feedback, hence the default --gptq-tolerance 5%). Bit-identical quantized weights: block 0 99.99%, block 1
94.84%, blocks 2-29 79.74%..89.09%; on one shared Hessian our gptq_solve gives llm-compressor's quantize_weight
bit for bit (0 of 106,168,320 weights differ).

Install (llm-compressor pins an older transformers, hence --no-deps; torch and transformers untouched):

    .venv/bin/pip install --no-deps llmcompressor==0.14.0.1 compressed-tensors==0.19.0 loguru==0.7.3

(`make llmcompressor`). Exit status: 0 agree, 1 disagree, 2 llm-compressor missing.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import llmc_gptq_agreement as agreement  # noqa: E402  (benchmarks/, the script's folder, is on the path)
from bench_args import (  # noqa: E402
    at_least,
    comparison_texts,
    exit_with,
    folder,
    method_config,
    new_or_folder,
    non_negative,
    positive,
    source,
)
from gptq_envelope import perturbed  # noqa: E402

INSTALL_HINT = ("llm-compressor is not installed: .venv/bin/pip install --no-deps llmcompressor==0.14.0.1 "
                "compressed-tensors==0.19.0 loguru==0.7.3 (see benchmarks/README.md)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", type=source, default="smollm2-135m", help="ptq_bench source name")
    p.add_argument("--cache-dir", type=new_or_folder, default=".ptq_cache/sources", help="converted-source cache (load_source)")
    p.add_argument("--nsamples", type=positive, default=8, help="calibration windows")
    p.add_argument("--seqlen", type=at_least(2), default=512, help="calibration and evaluation window length")
    p.add_argument("--seed", type=non_negative, default=0, help="calibration window sampling seed")
    p.add_argument("--alpha", type=float, default=0.5, help="SmoothQuant migration strength")
    p.add_argument("--ppl-windows", type=non_negative, default=4, help="WikiText-2 windows scored (0 = no perplexity)")
    p.add_argument("--tolerance", type=at_least(0, float), default=1e-5, help="max relative difference of the scales")
    p.add_argument("--noise-seeds", type=non_negative, default=2, help="W8A8 ppl noise-floor runs (1e-6 weight noise)")
    p.add_argument("--gptq", action="store_true", help="also compare GPTQ against llm-compressor's GPTQModifier")
    p.add_argument("--gptq-bits", type=int, default=4)
    p.add_argument("--gptq-group-size", type=int, default=64)
    p.add_argument("--gptq-ppl-windows", type=non_negative, default=16, help="WikiText-2 windows for the GPTQ ppl")
    p.add_argument("--only-gptq", action="store_true", help="skip the SmoothQuant part (implies --gptq)")
    p.add_argument("--gptq-tolerance", type=at_least(0, float), default=0.05,
                   help="allowed |ppl ours/llmc - 1| (W4 GPTQ on this model moves 3.6%% under 1e-6 weight noise)")
    p.add_argument("--data-dir", type=folder, default=None, help="data folder (default: $PTQ_BENCH_DATA)")
    p.add_argument("--threads", type=positive, default=os.environ.get("OMP_NUM_THREADS", "1"))
    p.add_argument("--verbose", action="store_true", help="show llm-compressor's own logging")
    args = p.parse_args(argv)
    method_config(p, "smoothquant", "--alpha", alpha=args.alpha)
    method_config(p, "gptq", "--gptq-bits/--gptq-group-size", w_bits=args.gptq_bits, group_size=args.gptq_group_size)
    return args


# --------------------------------------------------------------------------------------------- ours


def ours_smoothquant(fp: Any, calib: Any, alpha: float) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """(W8A8 model, {norm name: scales}, {norm name: act_amax}) from ptq_bench's SmoothQuant, unmodified:
    `smoothquant.smooth` is wrapped for the call only, to record what the calibration handed it."""
    import ptq_bench.quant.smoothquant as sq
    from ptq_bench.quant.registry import get_method

    model = copy.deepcopy(fp)
    names = {id(m): n for n, m in model.named_modules()}
    scales: dict[str, Any] = {}
    amax: dict[str, Any] = {}
    original = sq.smooth

    def recording(norm: Any, linears: list, act_amax: Any, a: float, kind: str = "gain") -> Any:
        amax[names[id(norm)]] = act_amax.detach().clone()
        s = original(norm, linears, act_amax, a, kind)
        scales[names[id(norm)]] = s.detach().clone()
        return s

    method = get_method("smoothquant")
    cfg = method.make_config({"alpha": alpha, "w_bits": 8, "a_bits": 8, "w_granularity": "channel",
                              "a_granularity": "token"})
    sq.smooth = recording
    try:
        method.apply(model, cfg, calib)
    finally:
        sq.smooth = original
    return model, scales, amax


def ours_absmax_w8a8(model: Any) -> Any:
    """Our absmax W8A8 (per-channel weights, dynamic per-token activations) on a copy of `model`."""
    from ptq_bench.quant.registry import get_method

    model = copy.deepcopy(model)
    method = get_method("absmax")
    method.apply(model, method.make_config({"w_bits": 8, "a_bits": 8, "w_granularity": "channel",
                                            "a_granularity": "token"}), None)
    return model


def ours_gptq(fp: Any, calib: Any, bits: int, group_size: int, sequential: bool = True) -> Any:
    """Our registered `gptq` on a copy of `fp`. `sequential=False`: the same solver, but every block calibrated
    on the FP model's activations (`quantize_model(..., sequential=False)`) instead of the quantized blocks'."""
    from ptq_bench.quant.apply import hessian_stat, quantize_model
    from ptq_bench.quant.gptq import gptq_solver
    from ptq_bench.quant.registry import get_method

    model = copy.deepcopy(fp)
    method = get_method("gptq")
    cfg = method.make_config({"w_bits": bits, "group_size": group_size, "damp": 0.01, "block_size": 128,
                              "act_order": True, "static_groups": True, "sym": True, "true_sequential": False})
    if sequential:
        method.apply(model, cfg, calib)
    else:
        quantize_model(model, gptq_solver(cfg), cfg.a_bits, calib=calib, make_stat=hessian_stat, sequential=False,
                       stack_shared=True)
    return model


# --------------------------------------------------------------------------------------------- llm-compressor


def recording_modifier_class() -> type:
    """SmoothQuantModifier that records the scales it applies; `paper=True` swaps in the paper's statistics."""
    import torch
    from llmcompressor.modifiers.transform.smoothquant import SmoothQuantModifier
    from pydantic import Field

    class RecordingSmoothQuant(SmoothQuantModifier):
        paper: bool = False
        recorded_: dict | None = Field(default=None, repr=False)

        def _apply_smoothing(self, model: torch.nn.Module) -> None:
            self.recorded_ = {} if self.recorded_ is None else self.recorded_
            if self.paper:  # max - min of (0, max|X|) is max|X|
                for st in self.scales_.values():
                    st.max_channel_vals = torch.maximum(st.max_channel_vals.abs(), st.min_channel_vals.abs())
                    st.min_channel_vals = torch.zeros_like(st.max_channel_vals)
            super()._apply_smoothing(model)

        def _calculate_smoothing_scales(self, balance_layers: list, activation_scales: torch.Tensor) -> torch.Tensor:
            if self.paper:
                w = torch.cat([m.weight.abs().max(dim=0, keepdim=True)[0] for m in balance_layers]).max(dim=0)[0]
                s = activation_scales.pow(self.smoothing_strength) / w.pow(1 - self.smoothing_strength)
                s = torch.where(w > 0.0, s, activation_scales)
            else:
                s = super()._calculate_smoothing_scales(balance_layers, activation_scales)
            name = next(m.smooth_name for m in self.resolved_mappings_ if m.balance_layers is balance_layers)
            self.recorded_[name] = torch.clamp(s, min=1e-5).detach().clone()  # the parent's clamp, as applied
            return s

    return RecordingSmoothQuant


@contextlib.contextmanager
def _quiet(verbose: bool) -> Iterator[None]:
    """llm-compressor's loguru output and stderr silenced unless `verbose`."""
    if verbose:
        yield
        return
    from loguru import logger

    logger.disable("llmcompressor")
    with open(os.devnull, "w") as sink, contextlib.redirect_stderr(sink):
        try:
            yield
        finally:
            logger.enable("llmcompressor")


def llmc_oneshot(model: Any, calib: Any, recipe: list, pipeline: str, verbose: bool) -> None:
    """llm-compressor's oneshot on `model` in place, on exactly the rows of `calib`; checks what it saw."""
    import torch
    from datasets import Dataset
    from llmcompressor import oneshot

    seen: list = []
    hook = model.get_input_embeddings().register_forward_hook(lambda m, a, o: seen.append(a[0].detach().clone()))
    ds = Dataset.from_dict({"input_ids": calib.tolist(), "attention_mask": torch.ones_like(calib).tolist()})
    try:
        with _quiet(verbose):
            oneshot(model=model, dataset=ds, recipe=recipe, pipeline=pipeline, num_calibration_samples=len(calib),
                    max_seq_length=calib.shape[1], shuffle_calibration_samples=False, batch_size=1)
    finally:
        hook.remove()
    if pipeline != "basic":  # the sequential pipeline traces the model (meta tensors): not checked
        return
    rows = sorted(tuple(r.tolist()) for t in seen for r in t.reshape(-1, t.shape[-1]))
    if rows != sorted(tuple(r.tolist()) for r in calib):
        raise RuntimeError(f"llm-compressor calibrated on {len(rows)} other rows than the {len(calib)} given")


def llmc_smoothquant(fp: Any, calib: Any, alpha: float, paper: bool, w8a8: bool, verbose: bool) -> tuple[Any, dict]:
    """(smoothed (and with `w8a8` llm-compressor-quantized) model, {norm name: scales applied})."""
    from llmcompressor.modifiers.quantization import QuantizationModifier

    model = copy.deepcopy(fp)
    sq = recording_modifier_class()(smoothing_strength=alpha, paper=paper)
    recipe = [sq] + ([QuantizationModifier(targets="Linear", scheme="W8A8", ignore=["lm_head"])] if w8a8 else [])
    llmc_oneshot(model, calib, recipe, "basic", verbose)
    return model, dict(sq.recorded_ or {})


def llmc_gptq(fp: Any, calib: Any, bits: int, group_size: int, verbose: bool) -> Any:
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from llmcompressor.modifiers.quantization import GPTQModifier

    weights = QuantizationArgs(num_bits=bits, type="int", symmetric=True, strategy="group", group_size=group_size)
    scheme = QuantizationScheme(targets=["Linear"], weights=weights)
    model = copy.deepcopy(fp)
    mod = GPTQModifier(config_groups={"group_0": scheme}, ignore=["lm_head"], block_size=128, dampening_frac=0.01)
    llmc_oneshot(model, calib, [mod], "sequential", verbose)
    return model


# --------------------------------------------------------------------------------------------- compare


def max_rel_diff(ours: dict[str, Any], theirs: dict[str, Any]) -> tuple[float, str, dict[str, float]]:
    """(max over norms of max_j |ours - theirs| / theirs, the worst norm, per-norm values); same keys required."""
    if set(ours) != set(theirs):
        missing = sorted(set(ours) ^ set(theirs))
        raise RuntimeError(f"the two sides smoothed different norms: {', '.join(missing[:6])}")
    per = {k: float(((ours[k].float() - theirs[k].float()).abs() / theirs[k].float()).max()) for k in ours}
    worst = max(per, key=per.get)
    return per[worst], worst, per


def ppl(model: Any, test_ids: Any, seqlen: int, windows: int) -> float:
    from ptq_bench.eval.perplexity import gptq_perplexity

    if windows <= 0:
        return float("nan")
    return float(gptq_perplexity(model, test_ids, seqlen, windows, progress=False)["ppl"])


def w8a8_rows(fp: Any, ours: Any, paper_model: Any, default_model: Any, calib: Any, test_ids: Any,
              args: argparse.Namespace) -> list[tuple[str, float]]:
    """(label, WikiText-2 ppl) of FP and of W8A8 after each smoothing; llmc = llm-compressor."""
    def score(model: Any) -> float:
        return ppl(model, test_ids, args.seqlen, args.ppl_windows)

    rows = [("FP", score(fp)), ("absmax W8A8, no smoothing (ours)", score(ours_absmax_w8a8(fp))),
            ("SmoothQuant W8A8, ours", score(ours)),
            ("llmc smoothing, paper stats + our W8A8", score(ours_absmax_w8a8(paper_model)))]
    for seed in range(args.noise_seeds):  # how far float-rounding-sized changes move a W8A8 perplexity
        rows.append((f"  same, weights x (1 + 1e-6 N(0,1)), seed {seed}",
                     score(ours_absmax_w8a8(perturbed(paper_model, seed)))))
    rows.append(("llmc smoothing, default stats + our W8A8", score(ours_absmax_w8a8(default_model))))
    for paper in (True, False):
        model, _ = llmc_smoothquant(fp, calib, args.alpha, paper, True, args.verbose)
        rows.append((f"llmc smoothing, {'paper' if paper else 'default'} stats + llmc W8A8", score(model)))
    return rows


def scale_section(fp: Any, calib: Any, test_ids: Any, args: argparse.Namespace) -> bool:
    """Part 1: smoothing scales (paper statistics must agree) and W8A8 perplexities."""
    ours, s_ours, _ = ours_smoothquant(fp, calib, args.alpha)
    paper_model, s_paper = llmc_smoothquant(fp, calib, args.alpha, True, False, args.verbose)
    default_model, s_default = llmc_smoothquant(fp, calib, args.alpha, False, False, args.verbose)
    d_paper, worst_p, _ = max_rel_diff(s_ours, s_paper)
    d_default, worst_d, per_d = max_rel_diff(s_ours, s_default)
    ok = d_paper <= args.tolerance
    print(f"smoothing scales, {len(s_ours)} norms (alpha {args.alpha}):\n"
          f"  ours vs llm-compressor with the paper's statistics: max rel diff {d_paper:.3e} ({worst_p})  "
          f"{'OK' if ok else 'DISAGREE'} (tolerance {args.tolerance:g})\n"
          f"  ours vs llm-compressor's default statistics (range, 2 max|W|): max rel diff {d_default:.3f} "
          f"({worst_d}), min over norms {min(per_d.values()):.3f}", flush=True)
    if args.ppl_windows > 0:
        print(f"WikiText-2 ppl, first {args.ppl_windows} x {args.seqlen} windows:")
        for label, value in w8a8_rows(fp, ours, paper_model, default_model, calib, test_ids, args):
            print(f"  {label:<44} {value:9.4f}", flush=True)
    return ok


def gptq_section(fp: Any, calib: Any, test_ids: Any, args: argparse.Namespace) -> bool:
    """Part 2: GPTQ W<bits> g<group> act-order + static groups, ours vs llm-compressor, by perplexity; then the
    agreement of their weights (`llmc_gptq_agreement`), the noise rows, and ours with float propagation."""
    bits, group, windows = args.gptq_bits, args.gptq_group_size, args.gptq_ppl_windows

    def score(model: Any) -> float:
        return ppl(model, test_ids, args.seqlen, windows)

    ours = ours_gptq(fp, calib, bits, group)
    with agreement.solver_agreement(bits, group) as solved:
        theirs = llmc_gptq(fp, calib, bits, group, args.verbose)
    p_ours, p_llmc = score(ours), score(theirs)
    ratio = p_ours / p_llmc
    ok = abs(ratio - 1) <= args.gptq_tolerance
    print(f"GPTQ W{bits} g{group} act-order static groups, WikiText-2 ppl ({windows} x {args.seqlen} windows): "
          f"ours {p_ours:.4f}, llm-compressor {p_llmc:.4f}, ratio {ratio:.4f}  "
          f"{'OK' if ok else 'DISAGREE'} (tolerance {100 * args.gptq_tolerance:g}%)", flush=True)
    agreement.print_weight_agreement(fp, ours, theirs)
    agreement.print_solver_agreement(theirs, solved)
    del ours, theirs
    runs = {"ours": lambda m: score(ours_gptq(m, calib, bits, group)),
            "llm-compressor": lambda m: score(llmc_gptq(m, calib, bits, group, args.verbose))}
    agreement.print_noise_rows((perturbed(fp, seed) for seed in range(args.noise_seeds)), runs,
                     {"ours": p_ours, "llm-compressor": p_llmc})
    p_float = score(ours_gptq(fp, calib, bits, group, sequential=False))
    print(f"  ours with float propagation (every block calibrated on the FP model's activations): {p_float:.4f} "
          f"(ratio to ours {p_float / p_ours:.4f})", flush=True)
    return ok


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    docs, text = comparison_texts(args.data_dir)  # a missing data folder or file: before anything is loaded
    try:
        import llmcompressor  # noqa: F401
    except ImportError:
        print(INSTALL_HINT, file=sys.stderr)
        return 2
    import numpy as np
    import torch

    from ptq_bench.source_load import load_source
    from ptq_bench.sources import inspect_source
    from ptq_bench.tokens import calibration_windows, encode_stream

    torch.set_num_threads(args.threads)
    fp, tok, _ = load_source(inspect_source(args.source), "cpu", cache_dir=Path(args.cache_dir))
    fp = fp.float().eval()
    calib = torch.from_numpy(calibration_windows(encode_stream(tok, docs), args.nsamples, args.seqlen, args.seed))
    test_ids = torch.from_numpy(np.asarray(tok(text, add_special_tokens=False)["input_ids"], dtype=np.int64))
    print(f"{args.source}: {sum(p.numel() for p in fp.parameters()) / 1e6:.1f}M params, fp32, CPU, "
          f"{args.threads} thread(s); calibration {args.nsamples} x {args.seqlen} C4-train windows (seed {args.seed})",
          flush=True)
    ok = True if args.only_gptq else scale_section(fp, calib, test_ids, args)
    if args.gptq or args.only_gptq:
        ok &= gptq_section(fp, calib, test_ids, args)
    return 0 if ok else 1


if __name__ == "__main__":
    exit_with(main)
