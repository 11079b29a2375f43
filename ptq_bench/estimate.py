"""`ptq-bench estimate`: a recipe's training and perplexity time projected from this machine's measured
throughput, before anything is run or written.

Every model the recipe trains is built at its shape (the recipe's `arch` with the model's overrides,
`tokenizer.vocab_size` ids) on the chosen device and runs `warmup` + `steps` optimizer steps of the real
training step (`models.train.forward_loss` + `update`: AdamW, gradient clipping, bf16 autocast on CUDA)
on random token ids of the recipe's batch shape; the recipe's step count times the median timed step is
the projection (the median: a shared CPU stalls single steps). For every model, trained or loaded
(`source:`), one perplexity forward batch (`eval.batch_size` windows of `eval.perplexity.seq_len`) is
timed the same way. Quantization solves and zero-shot tasks are not projected (their cost depends on
calibration data and task text).

Nothing is written: no cache entry, no run folder.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

from ptq_bench.recipe import Recipe, expand_cells, model_arch


@dataclass
class Measured:
    """One model's measured throughput and the recipe's projection from it (steps 0: loaded, not trained)."""

    name: str
    kind: str
    params: int
    step_s: float  # median seconds of the timed optimizer steps
    steps: int  # the recipe's optimizer steps for this model
    ppl_batch_s: float  # seconds per perplexity forward batch
    peak_bytes: int | None  # CUDA peak allocated memory over the probe (None on CPU)

    @property
    def train_s(self) -> float:
        return self.step_s * self.steps


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn: Any, device: str, warmup: int, repeats: int) -> float:
    """Median seconds of `fn()` over `repeats` calls after `warmup` untimed ones (the median: a shared CPU
    stalls single steps now and then)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _model(recipe: Recipe, name: str, device: str) -> tuple[Any, int]:
    """(model on `device`, its vocabulary size): built at its shape when trained here, else loaded."""
    spec = recipe.models[name]
    if spec.source is not None:
        from ptq_bench.models.build import load_model

        model = load_model(spec.source, device=device)[0]
        return model, model.config.vocab_size
    from ptq_bench.models.build import build_model

    vocab = recipe.tokenizer.vocab_size
    return build_model(spec.kind, model_arch(recipe, name), vocab, seed=recipe.seed).to(device), vocab


def _train_step_s(recipe: Recipe, name: str, model: Any, vocab: int, device: str, steps: int, warmup: int) -> float:
    """Median seconds of the real training step (AdamW, clipping, bf16 autocast on CUDA) on random ids."""
    import torch

    from ptq_bench.models.train import forward_loss, make_optimizer, make_schedule, update

    spec, t = recipe.models[name], recipe.train
    opt = make_optimizer(model, make_schedule(spec.kind, spec.lr, spec.lr_stage2, spec.weight_decay))
    batch = torch.randint(0, vocab, (t.batch_size, t.seq_len + 1), generator=torch.Generator().manual_seed(0))
    batch = batch.to(device)

    def step() -> None:
        loss = forward_loss(model, batch)
        loss.item()  # the real loop reads the loss every step (its divergence check)
        update(model, opt, loss, t.grad_clip)

    model.train()
    try:
        return _timed(step, device, warmup, steps)
    finally:
        model.eval()


def _ppl_batch_s(recipe: Recipe, model: Any, vocab: int, device: str, repeats: int) -> float:
    """Median seconds of one perplexity forward batch (eval.batch_size windows of eval.perplexity.seq_len)."""
    import torch

    p = recipe.eval.perplexity
    rows = min(recipe.eval.batch_size, p.max_windows or recipe.eval.batch_size)
    windows = torch.randint(0, vocab, (rows, p.seq_len), generator=torch.Generator().manual_seed(1)).to(device)

    def forward() -> None:
        with torch.no_grad():
            model(windows).logits.float()

    return _timed(forward, device, 1, repeats)


def measure(recipe: Recipe, name: str, device: str, steps: int, warmup: int) -> Measured:
    """Time model `name`'s training step (models trained here only) and a perplexity forward on `device`."""
    import torch

    from ptq_bench.models.train import train_steps

    spec, t = recipe.models[name], recipe.train
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    model, vocab = _model(recipe, name, device)
    trained = spec.source is None
    step_s = _train_step_s(recipe, name, model, vocab, device, steps, warmup) if trained else 0.0
    ppl_s = _ppl_batch_s(recipe, model, vocab, device, max(1, steps // 2))
    peak = torch.cuda.max_memory_allocated() if device.startswith("cuda") else None
    kind = spec.kind if trained else "source"
    return Measured(name, kind, sum(x.numel() for x in model.parameters()), step_s,
                    train_steps(t.tokens, t.seq_len, t.batch_size) if trained else 0, ppl_s, peak)


def _hms(seconds: float) -> str:
    s = int(round(seconds))
    if s < 60:
        return f"{seconds:.1f} s"
    h, rest = divmod(s, 3600)
    return f"{h} h {rest // 60:02d} min" if h else f"{rest // 60} min {rest % 60:02d} s"


def report(recipe: Recipe, found: list[Measured], device: str, hours: float | None) -> list[str]:
    """The printed lines: per model, the total, and the perplexity projection."""
    t = recipe.train
    tok_per_step = t.seq_len * t.batch_size
    trained = [m for m in found if m.steps]
    lines = [f"device {device}" + (f"; train batch {t.batch_size} x {t.seq_len} tokens, {t.tokens:,} tokens per "
                                   "trained model" if trained else "")]
    for m in found:
        mem = f", peak {m.peak_bytes / 2**30:.2f} GiB" if m.peak_bytes is not None else ""
        what = (f"{m.step_s:8.3f} s/step ({tok_per_step / m.step_s:,.0f} tok/s){mem}  x {m.steps:,} steps = "
                f"{_hms(m.train_s)}" if m.steps else f"loaded, not trained{mem}")
        lines.append(f"  {m.name:<14} {m.kind:<12} {m.params / 1e6:8.2f}M params  {what}")
    if trained:
        total = sum(m.train_s for m in trained)
        lines.append(f"training, all {len(trained)} trained models one after another: {_hms(total)}")
    if hours is not None and not trained:
        lines.append("train.tokens: no model of this recipe is trained here")
    elif hours is not None:
        per_token = sum(m.step_s for m in trained) / tok_per_step
        fit = int(hours * 3600 / per_token) // tok_per_step * tok_per_step
        lines.append(f"train.tokens that fit {hours:g} h of training: {fit:,}")
    p, cells = recipe.eval.perplexity, len(expand_cells(recipe))
    if p.sets and found:
        per_batch = max(m.ppl_batch_s for m in found)
        rows = min(recipe.eval.batch_size, p.max_windows or recipe.eval.batch_size)
        if p.max_windows:
            per_cell = per_batch * -(-p.max_windows // rows) * len(p.sets)
            lines.append(f"perplexity: {_hms(per_batch)} per batch of {rows} x {p.seq_len} (slowest model); "
                         f"{p.max_windows} windows x {len(p.sets)} set{'s' * (len(p.sets) != 1)} = {_hms(per_cell)} per cell, "
                         f"{_hms(per_cell * cells)} for {cells} cells")
        else:
            lines.append(f"perplexity: {_hms(per_batch)} per batch of {rows} x {p.seq_len} (slowest model); "
                         "whole sets: the window count depends on the trained tokenizer")
    lines.append("not projected: tokenizer training, calibration and quantization solves, zero-shot tasks")
    return lines


def estimate(recipe: Recipe, device: str, steps: int = 10, warmup: int = 3, hours: float | None = None,
             progress: Any = print) -> list[str]:
    """Measure every model of the recipe (training steps only for those trained here); the report's lines."""
    found = []
    for name, spec in recipe.models.items():
        what = f"{warmup} + {steps} training steps" if spec.source is None else "perplexity forwards (loaded model)"
        progress(f"timing '{name}': {what} ...")
        found.append(measure(recipe, name, device, steps, warmup))
    return report(recipe, found, device, hours)
