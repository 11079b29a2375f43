"""GPTQ-protocol perplexity (IST-DASLab/gptq `llama.py` `llama_eval`, also used by SmoothQuant and QuIP).

The evaluation text is one token stream (`ptq_bench.data.perplexity_text`: WikiText-2 test rows joined
by "\\n\\n", C4 documents by " ", tokenized in one call with the tokenizer's own special tokens, as
`tokenizer(text)` in GPTQ's datautils: a BOS-adding tokenizer puts one BOS at the start of the stream),
cut into floor(N / seqlen) non-overlapping windows; the tail is
dropped. Each window is scored on its own (no context carried over): the reference takes
CrossEntropyLoss over the seqlen - 1 shifted positions of a window (its first token is never
predicted), multiplies that mean by seqlen, sums over windows and divides by n_windows * seqlen.
Every window has the same seqlen - 1 predicted tokens, so that equals the mean NLL over all
n_windows * (seqlen - 1) predicted tokens, which is what we compute (in float64, per-token NLL from
float32 logits); ppl = exp(mean NLL).

`max_windows` keeps the first k windows — a documented subset with its own protocol name.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ptq_bench.console import bar_disable


def protocol_name(set_name: str, seqlen: int, max_windows: int | None) -> str:
    """e.g. "ppl_gptq/wikitext2/seq2048", or "ppl_gptq/wikitext2/seq256/first40win" for a subset."""
    name = f"ppl_gptq/{set_name}/seq{seqlen}"
    return name if max_windows is None else f"{name}/first{max_windows}win"


def window_batch(model: torch.nn.Module, batch_size: int) -> int:
    """Windows per forward: `batch_size`, or 1 for a model whose rounding mixes batch mates (per-tensor
    activation scales: `model_traits.mixes_tokens`). The protocol scores each window on its own; windows
    sharing one forward would share one activation scale, and the number would depend on eval.batch_size."""
    from ptq_bench.eval.model_traits import mixes_tokens

    return 1 if mixes_tokens(model) else batch_size


def windows(token_ids: torch.Tensor, seqlen: int, max_windows: int | None = None) -> torch.Tensor:
    """(n_windows, seqlen): floor(N / seqlen) non-overlapping windows, tail dropped, first max_windows kept."""
    if token_ids.dim() != 1:
        raise ValueError(f"token_ids must be 1-D, got shape {tuple(token_ids.shape)}")
    if seqlen < 2:
        raise ValueError(f"seqlen must be >= 2, got {seqlen}")
    n = token_ids.numel() // seqlen
    if max_windows is not None:
        if max_windows < 1:
            raise ValueError(f"max_windows must be >= 1 or None, got {max_windows}")
        n = min(n, max_windows)
    if n == 0:
        raise ValueError(f"{token_ids.numel()} tokens hold no window of {seqlen}")
    return token_ids[: n * seqlen].view(n, seqlen)


@torch.inference_mode()
def gptq_perplexity(
    model: torch.nn.Module,
    token_ids: torch.LongTensor,
    seqlen: int,
    max_windows: int | None = None,
    batch_size: int = 4,
    progress: bool = True,
) -> dict:
    """GPTQ-protocol perplexity of `model` (any causal LM: model(ids).logits) on a 1-D token stream.

    Returns {"ppl", "nll" (mean per predicted token, nats), "n_windows", "n_tokens" (predicted
    tokens = n_windows * (seqlen - 1))}. Runs on the model's device.
    """
    wins = windows(token_ids, seqlen, max_windows)
    device = next(model.parameters()).device
    batch_size = window_batch(model, batch_size)
    total, count = 0.0, 0
    for start in tqdm(range(0, len(wins), batch_size), desc=f"ppl seq{seqlen}", unit="batch",
                      disable=bar_disable(progress)):
        batch = wins[start:start + batch_size].to(device)  # (B, seqlen)
        logits = model(batch).logits[:, :-1, :].float()  # (B, seqlen - 1, vocab): position t predicts t + 1
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="none")
        total += nll.double().sum().item()
        count += nll.numel()
    mean = total / count
    return {"ppl": perplexity_of(mean), "nll": mean, "n_windows": len(wins), "n_tokens": count}


def perplexity_of(nll: float) -> float:
    """exp(mean NLL); +inf beyond float64 (NLL > ~709.8: logits that overflowed), where math.exp raises."""
    try:
        return math.exp(nll)
    except OverflowError:
        return math.inf
