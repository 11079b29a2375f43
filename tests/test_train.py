"""Matched training: schedules from the papers, a shared batch order, divergence as a result; PTQ of BitNet refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from family_checks import METHOD_PARAMS

from ptq_bench.errors import QuantError
from ptq_bench.models.build import ArchConfig, build_model
from ptq_bench.models.train import batch_order, lr_at, make_schedule, train
from ptq_bench.quant import METHODS, load_all
from ptq_bench.quant.configs import CATALOG

ARCH = ArchConfig(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2, max_seq_len=64)
TOKENS = np.random.default_rng(0).integers(0, 128, size=20_000).astype(np.int32)
PATTERN = np.tile(np.arange(50), 400).astype(np.int32)  # learnable: each token predicts the next


def test_b158_two_stage_schedule_drops_lr_and_weight_decay_at_half():
    s = make_schedule("bitnet_b158")
    total, warm = 100, 10
    before, after = lr_at(s, 49, total, warm), lr_at(s, 50, total, warm)
    assert after[0] < before[0] and before[1] == 0.1 and after[1] == 0.0
    assert lr_at(s, 99, total, warm)[0] < 0.02 * s.lr_stage2 + 1e-12
    assert lr_at(s, 0, total, warm)[0] == pytest.approx(s.lr / warm)


def test_kinds_have_their_own_schedules():
    fp, b1 = make_schedule("fp16"), make_schedule("bitnet_b1")
    assert fp.kind == "cosine" and b1.kind == "linear" and b1.betas == (0.9, 0.98)
    assert b1.lr > fp.lr  # BitNet benefits from a large LR
    assert make_schedule("fp16", lr=1e-3).lr == 1e-3


def test_batch_order_is_a_function_of_the_seed_only():
    assert np.array_equal(batch_order(100, 7, 4, seed=3), batch_order(100, 7, 4, seed=3))
    assert not np.array_equal(batch_order(100, 7, 4, seed=3), batch_order(100, 7, 4, seed=4))


def run(kind: str, lr: float, steps: int = 6) -> tuple:
    model = build_model(kind, ARCH, 128, seed=0)
    res = train(model, PATTERN, make_schedule(kind, lr=lr), total_tokens=steps * 4 * 32, seq_len=32, batch_size=4,
                warmup_steps=1, seed=0, grad_clip=0.0, log_every=1)
    return model, res


@pytest.mark.parametrize("kind", ["fp16", "bitnet_b158", "bitnet_b1"])
def test_training_lowers_the_loss(kind):
    _, res = run(kind, lr=1e-2, steps=20)
    assert not res.diverged and res.steps == 20
    assert res.curve[-1]["loss"] < res.curve[0]["loss"] - 1.0


def test_divergence_is_recorded_not_raised():
    _, res = run("fp16", lr=1e9, steps=20)
    assert res.diverged and res.diverged_at is not None and res.diverged_at < 20
    assert not np.isfinite(res.curve[-1]["loss"])


@pytest.mark.parametrize("name", sorted(CATALOG))  # every method (it named four: a fifth went unchecked)
def test_ptq_of_bitnet_is_refused(name):
    """BitLinear re-quantizes its latent weights on every call: a PTQ grid written there would be a lie."""
    load_all()
    model = build_model("bitnet_b158", ARCH, 128, seed=0).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calib = torch.from_numpy(TOKENS[: 4 * 32].reshape(4, 32).astype(np.int64))
    method = METHODS[name]
    with pytest.raises(QuantError, match="PTQ refused.*BitLinear"):
        method.apply(model, method.config_cls(**METHOD_PARAMS[name]), calib if method.needs_calibration else None)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # untouched


@pytest.mark.parametrize("kind,lr", [("fp16", 1e37), ("bitnet_b158", 1e6)])
def test_non_finite_weights_after_the_last_update_are_divergence(kind, lr):
    """The loss of a step sees the weights before its update: a last update to NaN / inf left a model whose
    logits are NaN recorded as converged (measured: fp16 at lr 1e37, b1.58 at 1e6, both after 2 steps)."""
    model, res = run(kind, lr=lr, steps=2)
    assert not all(bool(torch.isfinite(p).all()) for p in model.parameters())
    assert res.diverged and res.diverged_at == res.steps - 1


def test_a_training_text_shorter_than_one_window_is_one_line():
    """train.seq_len beyond the tokenized training text (a 4M-token window, 3.3M tokens at vocab 16000) ended
    the run in ZeroDivisionError (batch_order); it is known only after tokenization, so train() says it."""
    from ptq_bench.errors import DataError

    model = build_model("fp16", ARCH, 128, seed=0)
    with pytest.raises(DataError, match="training text has 64 tokens, fewer than train.seq_len \\+ 1 = 65"):
        train(model, PATTERN[:64], make_schedule("fp16"), total_tokens=64, seq_len=64, batch_size=1,
              warmup_steps=0, seed=0)


def test_the_tokens_trained_are_whole_batches():
    """The training log names the tokens trained, not the recipe's budget (it said 4,100 for 4,096)."""
    from ptq_bench.kinds import train_steps, trained_tokens

    assert (train_steps(4100, 64, 16), trained_tokens(4100, 64, 16)) == (4, 4096)
    assert trained_tokens(40960, 64, 16) == 40960


def test_no_progress_bar_flood_in_a_log(capfd):
    """stderr not a terminal (a log, a Ray worker): not a \\r-joined bar update ten times a second."""
    model = build_model("fp16", ARCH, 128, seed=0)
    train(model, PATTERN, make_schedule("fp16"), total_tokens=300 * 4 * 32, seq_len=32, batch_size=4,
          warmup_steps=1, seed=0, log_every=100)
    assert capfd.readouterr().err.count("step/s") <= 2


def test_a_diverged_bitnet_is_cached_without_an_hf_export(tmp_path):
    """A b1.58 model whose weights went NaN has no ternary weights to pack: the run ended in
    `ValueError: pack_ternary needs values in {-1, 0, 1}` (a traceback, no row) right after logging that the
    divergence was "recorded as a result". Its cache folder now has no hf/, and the run goes on."""
    from ptq_bench.prepare import export_checkpoint

    model, res = run("bitnet_b158", lr=1e6, steps=2)
    assert res.diverged
    assert export_checkpoint(model, "bitnet_b158", tmp_path / "hf") is False
    assert not (tmp_path / "hf").exists()
    model, res = run("bitnet_b158", lr=1e-3, steps=2)
    assert export_checkpoint(model, "bitnet_b158", tmp_path / "hf") is True
    assert (tmp_path / "hf" / "config.json").is_file()
