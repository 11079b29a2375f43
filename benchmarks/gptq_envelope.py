"""Our GPTQ under rounding-level changes (`gptq_vs_gptqmodel.py --envelope`): how far one run's perplexity moves
when nothing changes but float rounding. Three reruns of ours beside the shipped one:

- `summed as GPTQModel`: each Hessian summed as GPTQModel sums it (fp32 X^T X per batch, added up, scaled by 2/n
  once at the end), where ours and the reference GPTQ keep a running average rescaled at every batch;
- `float64`: the shipped sum accumulated in float64 and rounded to float32 once (the most exact of the three);
- `weights x (1 + 1e-6 N(0,1))`: the FP block parameters perturbed (seed 0), the shipped summation.

Each moves a Hessian by about 1e-7 relative, as GPTQModel's and ours differ; GPTQ's error feedback turns such
differences into other grid choices from the first block on. A gap between two implementations inside this
envelope is not a difference of method.

`gptq_vs_gptqmodel.py --perturb K` runs both sides on the same K perturbed copies of the FP weights (seeds 0..K-1)
besides the shipped weights, so each side's mean over K + 1 runs and its own spread are compared on equal inputs.
"""

from __future__ import annotations

import contextlib
import copy
import statistics
from collections.abc import Callable, Iterator
from typing import Any


def _summing(dtype: str) -> Callable[[Any, Any], None]:
    """A Hessian.add that sums X^T X in torch's `dtype`; after each batch H is the sum x 2/n, rounded to float32."""
    def add(self: Any, x: Any) -> None:
        import torch

        kind = getattr(torch, dtype)
        x = x.reshape(-1, x.shape[-1]).to(kind)
        if not hasattr(self, "sum"):
            self.sum = torch.zeros(self.H.shape, dtype=kind, device=self.H.device)
        self.sum += x.T @ x
        self.n += x.shape[0]
        self.H = (self.sum * (2.0 / self.n)).float()
    return add


HESSIAN_SUMS = {"summed as GPTQModel": _summing("float32"), "float64": _summing("float64")}


@contextlib.contextmanager
def hessian_summed(add: Callable[[Any, Any], None]) -> Iterator[None]:
    """Every Hessian statistic built inside accumulates with `add` in place of the shipped running average."""
    from ptq_bench.quant.statistics import Hessian

    shipped = Hessian.add
    Hessian.add = add
    try:
        yield
    finally:
        Hessian.add = shipped


def perturbed(model: Any, seed: int = 0, rel: float = 1e-6) -> Any:
    """A copy of `model` whose decoder-block parameters are multiplied by (1 + rel N(0, 1)): float-rounding-sized
    noise (the blocks in order, each block's parameters in order: the draws smoothquant_vs_llmcompressor.py took
    when it matched `.layers.` in the names)."""
    import torch

    from ptq_bench.quant.calibrate import decoder_layers

    out = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in decoder_layers(out).parameters():
            t.mul_(1 + rel * torch.randn(t.shape, generator=gen))
    return out


NOISE = "weights x (1 + 1e-6 N(0,1))"  # the envelope's perturbed run: seed 0, the shipped summation


def envelope(quantize: Callable[[Any], Any], score: Callable[[Any], float], fp: Any,
             done: dict[str, float] | None = None) -> dict[str, float]:
    """Perplexity of ours under each rounding-level change. `quantize(model or None)` quantizes a copy of the FP
    model (or the model given), `score(model)` is the comparison's perplexity; a change already in `done` (label:
    perplexity, run elsewhere in the same script) is not run again."""
    found = dict(done or {})
    for label, add in HESSIAN_SUMS.items():
        if label not in found:
            with hessian_summed(add):
                found[label] = score(quantize(None))
    if NOISE not in found:
        found[NOISE] = score(quantize(perturbed(fp)))
    return {label: found[label] for label in (*HESSIAN_SUMS, NOISE)}


def envelope_line(bits: int, shipped: float, theirs: float, found: dict[str, float]) -> str:
    """One line: each rerun's perplexity, the range with the shipped run, and whether GPTQModel's falls in it."""
    every = [shipped, *found.values()]
    low, high = min(every), max(every)
    inside = "inside" if low <= theirs <= high else "outside"
    return (f"[w{bits}] ours under rounding-level changes: " + ", ".join(f"{k} {v:.4f}" for k, v in found.items())
            + f"; with the shipped run {low:.2f}..{high:.2f} ({100 * (high / low - 1):.1f}%), mean "
            f"{sum(every) / len(every):.2f}; GPTQModel's {theirs:.2f} is {inside}")


def paired_line(bits: int, ours: list[float], theirs: list[float]) -> str:
    """One line over runs of both sides on the same FP weights (the shipped ones, then each perturbed copy): each
    side's mean and standard deviation within the seed (relative to its mean), the ratio of the means, and in
    how many runs ours is above."""
    n = len(ours)
    mean_o, mean_t = sum(ours) / n, sum(theirs) / n
    above = sum(o > t for o, t in zip(ours, theirs, strict=True))
    return (f"[w{bits}] both sides on the same {n} FP weights (shipped, then x (1 + 1e-6 N(0,1)) seeds 0..{n - 2}): "
            "ours " + ", ".join(f"{v:.4f}" for v in ours) + "; GPTQModel " + ", ".join(f"{v:.4f}" for v in theirs)
            + f"; means {mean_o:.2f} / {mean_t:.2f} = {mean_o / mean_t:.4f}, sd within the seed ours "
            f"{100 * _sd(ours) / mean_o:.1f}%, GPTQModel {100 * _sd(theirs) / mean_t:.1f}%; ours above in {above} of {n}")


def _sd(values: list[float]) -> float:
    """The sample standard deviation (0 for one value)."""
    return statistics.stdev(values) if len(values) > 1 else 0.0
