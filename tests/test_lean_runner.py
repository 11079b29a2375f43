"""The block runner's `lean` mode skips work whose result is not used, and changes no value: linears
that read one input tensor share one calibration statistic (`quant.statistics.SharedInputs`), never a
wrong sum when the sharing pattern is not what the first batch showed; a block run only for statistics
stops at its last hooked linear; a linear no input reached is an error. (The capture's pass-through is
tested in test_calib_memory.py.)"""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn as nn
from quant_fixtures import calib_tokens
from tiny_families import FAMILY_CONFIGS, tiny_model

import ptq_bench.quant.apply as apply
from ptq_bench.errors import QuantError
from ptq_bench.models.experts import unfuse_experts
from ptq_bench.quant import get_method
from ptq_bench.quant.apply import hessian_stat
from ptq_bench.quant.calibrate import Call, _collect, run_blockwise
from ptq_bench.quant.statistics import ChannelAbsMax, Hessian

FAMILIES = [f for f in FAMILY_CONFIGS if f != "bitnet"]


def statistics(model: nn.Module, share: bool, make_stat=hessian_stat, true_sequential: bool = False) -> list[dict]:
    """Every block's statistics by linear name, as the runner hands them to `on_group` (nothing quantized)."""
    seen: list[dict] = []
    run_blockwise(model, calib_tokens(4, 24), make_stat, lambda idx, layer, group, stats: seen.append(dict(stats)),
                  true_sequential=true_sequential, lean=share)
    return seen


def groups(stats: dict) -> list[list[str]]:
    """Names that hold one statistic object, for objects held by more than one name."""
    by_id: dict[int, list[str]] = {}
    for name, s in stats.items():
        by_id.setdefault(id(s), []).append(name)
    return sorted(sorted(v) for v in by_id.values() if len(v) > 1)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("true_sequential", [False, True])
def test_shared_statistics_equal_one_per_linear(family, true_sequential):
    model = tiny_model(family)
    unfuse_experts(model)  # as loading does
    shared, separate = statistics(model, True, true_sequential=true_sequential), \
        statistics(model, False, true_sequential=true_sequential)
    assert [sorted(g) for g in shared] == [sorted(g) for g in separate]
    for got, want in zip(shared, separate, strict=True):
        assert groups(want) == []
        for name in want:
            assert got[name].n == want[name].n  # each batch counted once, not once per reader
            assert torch.equal(got[name].H, want[name].H), name


def test_llama_shares_qkv_and_gate_up():
    block = statistics(tiny_model("llama"), True)[0]
    group_stats = statistics(tiny_model("llama"), True, true_sequential=True)
    assert groups(block) == [["mlp.gate_proj", "mlp.up_proj"], ["self_attn.k_proj", "self_attn.q_proj", "self_attn.v_proj"]]
    assert [groups(g) for g in group_stats[:4]] == [[["self_attn.k_proj", "self_attn.q_proj", "self_attn.v_proj"]], [],
                                                    [["mlp.gate_proj", "mlp.up_proj"]], []]


@pytest.mark.parametrize("method, cfg", [("gptq", {"w_bits": 3, "group_size": 16}),
                                         ("gptq", {"w_bits": 4, "group_size": 16, "act_order": True, "true_sequential": True}),
                                         ("quip", {"w_bits": 2}), ("smoothquant", {"w_bits": 8, "a_bits": 8})])
@pytest.mark.parametrize("family", ["llama", "opt", "phi3"])
def test_methods_give_the_same_model_lean_or_not(family, method, cfg, monkeypatch):
    """GPTQ consumes its Hessian in place: a shared one must reach every reader intact (`take_stat`)."""
    m = get_method(method)
    models = []
    for share in (True, False):
        monkeypatch.setattr(apply, "run_blockwise", functools.partial(run_blockwise, lean=share))
        model = tiny_model(family)
        m.apply(model, m.config_cls(**cfg), calib_tokens(4, 32))
        models.append(model.state_dict())
    for name, value in models[1].items():
        assert torch.equal(models[0][name], value), name


class TwoReaders(nn.Module):
    """Two linears on one input; `between` runs on the input between the two reads."""

    def __init__(self, between=lambda x, call: x) -> None:
        super().__init__()
        self.a, self.b, self.between, self.calls = nn.Linear(8, 8), nn.Linear(8, 8), between, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        y = self.a(x)
        return y + self.b(self.between(x, self.calls))


def collect(block: nn.Module, make_stat=hessian_stat, batches: int = 3) -> dict:
    torch.manual_seed(0)
    hidden = [torch.randn(2, 5, 8) for _ in range(batches)]
    stats, _ = _collect(block, hidden, [Call((), {})] * batches, {"a": block.a, "b": block.b}, make_stat)
    return stats


def test_a_reader_that_stops_sharing_is_an_error():
    block = TwoReaders(lambda x, call: x if call == 1 else x.clone())
    with pytest.raises(QuantError, match="b read a's input on the first calibration batch but not on a later one"):
        collect(block)


def test_an_input_changed_between_reads_is_not_shared():
    stats = collect(TwoReaders(lambda x, call: x.mul_(2)))
    assert stats["a"] is not stats["b"]
    assert torch.allclose(stats["b"].H, 4 * stats["a"].H)


def test_statistics_of_other_types_are_not_shared():
    stats = collect(TwoReaders(), lambda name, linear: Hessian(8) if name == "a" else ChannelAbsMax(8))
    assert isinstance(stats["a"], Hessian) and isinstance(stats["b"], ChannelAbsMax)


def test_a_statistics_pass_stops_before_the_last_linear_runs():
    """GPTQ propagates the quantized block's outputs, so the float pass that feeds the statistics need not
    compute the down projection: with `lean` it runs once per batch (the propagation), else twice."""
    runs = {}
    for lean in (True, False):
        model = tiny_model("llama")
        calls = []
        for layer in model.model.layers:
            layer.mlp.down_proj.register_forward_hook(lambda m, a, o, calls=calls: calls.append(1))
        run_blockwise(model, calib_tokens(4, 24), hessian_stat, lambda *a: None, batch_size=2, lean=lean)
        runs[lean] = len(calls)
    # 2 blocks x 2 batches: the capture runs block 0 (the last block never runs there), then per block the
    # statistics pass (lean: stopped before down_proj) and the propagation
    assert runs == {True: 2 + 4, False: 2 + 4 + 4}


def test_a_linear_no_input_reached_is_an_error():
    class Skips(TwoReaders):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.a(x)

    block = Skips()
    for outputs in (True, False):
        with pytest.raises(QuantError, match="no calibration input reached b"):
            _collect(block, [torch.randn(2, 5, 8)], [Call((), {})], {"a": block.a, "b": block.b}, hessian_stat,
                     outputs=outputs)
