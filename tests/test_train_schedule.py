"""Training schedules against the papers' shapes written out by hand, and as the optimizer sees them.

`lr_at` is compared with independent formulas (LLaMA: cosine to 10% of the peak; BitNet b1.58: two
stages, weight decay 0.1 then 0, stage two decaying linearly to 0), and `train` is run with a global
optimizer step hook that records every param group's lr and weight decay at every step, so a value that
`lr_at` computes but never reaches the optimizer fails too.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from ptq_bench.models.build import ArchConfig, build_model
from ptq_bench.models.train import lr_at, make_schedule, train

ARCH = ArchConfig(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2, max_seq_len=64)
PATTERN = np.tile(np.arange(50), 400).astype(np.int32)
STEPS, WARMUP = 12, 2


def cosine_reference(peak: float, step: int, total: int, warmup: int) -> float:
    """LLaMA (Touvron et al. 2023): linear warm-up, then cosine decay to 10% of the peak at the end."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / (total - warmup)
    floor = 0.1 * peak
    return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def stage_two_reference(peak2: float, step: int, total: int) -> float:
    """BitNet b1.58 stage two (second half): linear decay from the second peak to 0."""
    half = total // 2
    return peak2 * (1 - (step - half) / (total - half))


def optimizer_trace(kind: str) -> tuple:
    """Train a tiny model for STEPS steps; per step, [(lr, weight_decay) per param group] at opt.step()."""
    seen: list[list[tuple[float, float]]] = []

    def hook(opt: torch.optim.Optimizer, _args: tuple, _kwargs: dict) -> None:
        seen.append([(g["lr"], g["weight_decay"]) for g in opt.param_groups])

    schedule = make_schedule(kind)
    handle = register_optimizer_step_pre_hook(hook)
    try:
        res = train(build_model(kind, ARCH, 128, seed=0), PATTERN, schedule, total_tokens=STEPS * 4 * 32,
                    seq_len=32, batch_size=4, warmup_steps=WARMUP, seed=0, grad_clip=0.0, log_every=1)
    finally:
        handle.remove()
    assert res.steps == STEPS and len(seen) == STEPS
    return schedule, seen


def test_cosine_decays_to_ten_percent_of_the_peak():
    s = make_schedule("fp16")
    total, warm = 1000, 50
    lrs = [lr_at(s, step, total, warm)[0] for step in range(total)]
    for step in (0, 49, 50, 300, 525, 800, 999):
        assert lrs[step] == pytest.approx(cosine_reference(s.lr, step, total, warm), rel=1e-9)
    assert 0.1 * s.lr <= min(lrs[warm:]) and lrs[-1] <= 0.1001 * s.lr
    assert all(lr_at(s, step, total, warm)[1] == 0.1 for step in range(total))


def test_fp16_optimizer_follows_the_cosine_schedule():
    s, seen = optimizer_trace("fp16")
    for step, groups in enumerate(seen):
        want = cosine_reference(s.lr, step, STEPS, WARMUP)
        assert [g[0] for g in groups] == pytest.approx([want, want], rel=1e-9)
        assert groups[0][1] == 0.1 and groups[1][1] == 0.0  # decayed matrices; norms, biases, embeddings not
    assert seen[-1][0][0] > 0.12 * s.lr  # 10% floor: without it the last step would be at ~2.4% of the peak


def test_b158_stage_two_reaches_the_optimizer():
    s, seen = optimizer_trace("bitnet_b158")
    half = STEPS // 2
    for step, groups in enumerate(seen):
        assert groups[1][1] == 0.0
        if step < half:
            assert groups[0][1] == 0.1, f"step {step}: stage one weight decay {groups[0][1]}"
            assert step < WARMUP or groups[0][0] > s.lr_stage2  # after warm-up, above the second peak
        else:
            assert groups[0][1] == 0.0, f"step {step}: stage two weight decay {groups[0][1]} reached the optimizer"
            assert groups[0][0] == pytest.approx(stage_two_reference(s.lr_stage2, step, STEPS), rel=1e-9)
        assert groups[0][0] == groups[1][0]
    assert s.lr_stage2 == pytest.approx(s.lr * 2 / 3)  # 1.5e-3 -> 1e-3 in the b1.58 training FAQ
