"""Matched training: the same seed, token stream, order, budget and tokenizer for every model.

Only the optimizer schedule differs, each from its paper:
- fp16 (LLaMA baseline): AdamW (0.9, 0.95), linear warm-up, cosine decay to 10% of peak, weight decay 0.1.
- bitnet_b158: the b1.58 training FAQ's two stages: linear decay from a high peak; at the halfway
  point the LR drops to a lower second peak (2/3 of the first, as 1.5e-3 -> 1e-3) and decays
  linearly to 0; weight decay 0.1 in stage one, 0 in stage two.
- bitnet_b1: Adam (0.9, 0.98), a large LR with polynomial (linear) decay, weight decay 0.01.
A NaN or inf loss stops training and is recorded as divergence: a result, not a crash; so are NaN or inf
weights left by the last update (`diverged_at` = that last step, whose update no later loss saw).
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from ptq_bench.errors import DataError
from ptq_bench.kinds import SCHEDULES, get_kind, train_steps

# Part of every trained model's cache key (so of its cells' ids): bump it whenever a change to training (this
# file, the model's init in models/build.py, BitLinear, the token stream) can change a trained model or its
# train_info, so a re-run retrains instead of reusing what the old code made (687e7d2 changed `diverged`; the
# cached models kept the old value). 1, the code before the key had it, is left out (`prepare.model_key`), so
# caches and run folders written before keep their keys.
TRAIN_VERSION = 1


@dataclass(frozen=True)
class Schedule:
    lr: float  # peak LR (stage one for b1.58)
    weight_decay: float
    betas: tuple[float, float]
    kind: str  # "cosine" | "two_stage" | "linear"
    lr_stage2: float = 0.0  # b1.58 second-stage peak
    wd_stage2: float = 0.0  # b1.58 second-stage weight decay


def make_schedule(kind: str, lr: float | None = None, lr_stage2: float | None = None, wd: float | None = None) -> Schedule:
    """The default schedule of model `kind` (see ptq_bench/kinds.py), with the recipe's overrides."""
    d = dict(SCHEDULES[get_kind(kind).schedule])
    if lr is not None:
        if "lr_stage2" in d and lr_stage2 is None:  # keep the paper's stage-2/stage-1 ratio
            d["lr_stage2"] = lr * d["lr_stage2"] / d["lr"]
        d["lr"] = lr
    if lr_stage2 is not None:
        d["lr_stage2"] = lr_stage2
    if wd is not None:
        d["weight_decay"] = wd
    return Schedule(**d)


def lr_at(s: Schedule, step: int, total: int, warmup: int) -> tuple[float, float]:
    """(learning rate, weight decay) at `step` (0-based) of `total`."""
    if step < warmup:
        return s.lr * (step + 1) / warmup, s.weight_decay
    if s.kind == "cosine":
        p = (step - warmup) / max(1, total - warmup)
        return s.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p))), s.weight_decay
    if s.kind == "linear":
        p = (step - warmup) / max(1, total - warmup)
        return s.lr * (1 - p), s.weight_decay
    half = total // 2  # two_stage
    if step < half:
        p = (step - warmup) / max(1, half - warmup)
        return s.lr * (1 - 0.2 * p), s.weight_decay  # stage one: a gentle linear decay from the high peak
    p = (step - half) / max(1, total - half)
    return s.lr_stage2 * (1 - p), s.wd_stage2


@dataclass
class TrainResult:
    steps: int
    tokens: int
    seconds: float
    diverged: bool = False
    diverged_at: int | None = None
    curve: list[dict] = field(default_factory=list)  # [{"step", "tokens", "loss", "lr"}]


def batch_order(n_windows: int, steps: int, batch_size: int, seed: int) -> np.ndarray:
    """Window indices, (steps, batch_size): one fixed permutation shared by every model."""
    rng = np.random.default_rng(seed)
    need = steps * batch_size
    reps = -(-need // n_windows)
    order = np.concatenate([rng.permutation(n_windows) for _ in range(reps)])[:need]
    return order.reshape(steps, batch_size)


def make_optimizer(model: torch.nn.Module, schedule: Schedule) -> torch.optim.AdamW:
    """AdamW with weight decay on the 2-D non-embedding weights only (group 0) and none elsewhere (group 1)."""
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed" not in n)]
    groups = [{"params": decay, "weight_decay": schedule.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=schedule.lr, betas=schedule.betas, eps=1e-8)


def batch_windows(tokens: np.ndarray, idx: np.ndarray, seq_len: int) -> np.ndarray:
    """(len(idx), seq_len + 1) int64: window i of `tokens` for each i in idx (inputs plus the next token)."""
    return np.stack([tokens[i * seq_len : i * seq_len + seq_len + 1] for i in idx]).astype(np.int64)


def autocast_dtype(device_type: str) -> torch.dtype | None:
    """The dtype training computes in under autocast on this kind of device (bf16 on CUDA; none elsewhere):
    part of what a trained model is, so its training info records it (`trained_on`)."""
    return torch.bfloat16 if device_type == "cuda" else None


def trained_on(device_type: str) -> dict[str, str | None]:
    amp = autocast_dtype(device_type)
    return {"device": device_type, "autocast": str(amp).removeprefix("torch.") if amp else None}


def forward_loss(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy of `batch` (rows of seq_len + 1 ids), under autocast where `autocast_dtype` says."""
    amp = autocast_dtype(batch.device.type)
    with torch.autocast(batch.device.type, dtype=amp or torch.bfloat16, enabled=amp is not None):
        logits = model(batch[:, :-1]).logits
    return torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))


def update(model: torch.nn.Module, opt: torch.optim.Optimizer, loss: torch.Tensor, grad_clip: float) -> None:
    """One optimizer step on `loss` (gradient norm clipped to `grad_clip` when > 0)."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()


def weights_finite(model: torch.nn.Module) -> bool:
    """Every parameter finite: a loss only sees the weights before its step's update, so the final update (or
    a row of the embedding / head no batch reached) can leave NaN or inf weights behind a finite loss curve."""
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def train(
    model: torch.nn.Module,
    tokens: np.ndarray,
    schedule: Schedule,
    *,
    total_tokens: int,
    seq_len: int,
    batch_size: int,
    warmup_steps: int,
    seed: int,
    grad_clip: float = 1.0,
    log_every: int = 10,
    desc: str = "train",
) -> TrainResult:
    """Train `model` on windows of `tokens` (a 1-D id array) in the seed's fixed order."""
    device = next(model.parameters()).device
    n_windows = (len(tokens) - 1) // seq_len
    if n_windows < 1:  # known only once the text is tokenized: `validate` cannot see it
        raise DataError(f"the training text has {len(tokens):,} tokens, fewer than train.seq_len + 1 = {seq_len + 1:,}")
    steps = train_steps(total_tokens, seq_len, batch_size)
    order = batch_order(n_windows, steps, batch_size, seed)
    opt = make_optimizer(model, schedule)
    torch.manual_seed(seed)
    model.train()
    result = TrainResult(steps=0, tokens=0, seconds=0.0)
    t0 = time.perf_counter()
    # in a log (stderr not a tty) one update per 30 s, not a \r-joined line of ten a second for the whole run
    bar = tqdm(range(steps), desc=desc, unit="step", leave=False, dynamic_ncols=True,
               mininterval=0.1 if sys.stderr.isatty() else 30.0)
    for step in bar:
        lr, wd = lr_at(schedule, step, steps, warmup_steps)
        opt.param_groups[0]["lr"] = opt.param_groups[1]["lr"] = lr
        opt.param_groups[0]["weight_decay"] = wd
        batch = torch.from_numpy(batch_windows(tokens, order[step], seq_len)).to(device)  # (batch, seq_len + 1)
        loss = forward_loss(model, batch)
        value = loss.item()
        if not math.isfinite(value):
            result.diverged, result.diverged_at = True, step
            result.curve.append({"step": step, "tokens": step * seq_len * batch_size, "loss": value, "lr": lr})
            break
        update(model, opt, loss, grad_clip)
        if step % log_every == 0 or step == steps - 1:
            result.curve.append({"step": step, "tokens": (step + 1) * seq_len * batch_size, "loss": value, "lr": lr})
            bar.set_postfix(loss=f"{value:.3f}", lr=f"{lr:.2e}", refresh=False)  # shown at the next update
        result.steps = step + 1
    bar.close()
    if not result.diverged and not weights_finite(model):  # the last update went non-finite: no loss saw it
        result.diverged, result.diverged_at = True, result.steps - 1
    result.tokens = result.steps * seq_len * batch_size
    result.seconds = time.perf_counter() - t0
    model.eval()
    return result
