"""Every registered quantization method, parametrized from the registry."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from quant_fixtures import calib_tokens, logits, quantized_copy, relative_error, tiny_llama

from ptq_bench.quant import METHODS, QuantReport, load_all
from ptq_bench.quant.calibrate import quantizable_linears
from ptq_bench.quant.primitives import on_grid

load_all()
NAMES = sorted(METHODS)


@pytest.fixture(scope="module")
def model():
    return tiny_llama()


def valid_bits(cls, candidates=(2, 3, 4, 8)):
    out = []
    for b in candidates:
        try:
            cls(w_bits=b)
            out.append(b)
        except ValueError:
            pass
    return out


def test_all_methods_registered():
    assert {"absmax", "gptq", "smoothquant", "quip"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_config_contract(name):
    cls = METHODS[name].config_cls
    fields = {f.name for f in dataclasses.fields(cls)}
    assert {"w_bits", "a_bits"} <= fields
    cfg = cls()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.w_bits = 3
    for key, bad in [("w_bits", 9), ("w_bits", 0), ("a_bits", 1), ("a_bits", 12)]:
        try:
            cls(**{key: bad})
        except ValueError as exc:
            assert key in str(exc), exc
        else:
            pytest.fail(f"{name}: {cls.__name__}({key}={bad}) was accepted; bounds are checked by "
                        "`check_fields(self)` in the config's __post_init__ (ptq_bench/config.py)")


def test_setting_label_names_the_groups_of_any_method_that_always_groups(monkeypatch):
    """GPTQ has `group_size` but no `w_granularity`: it always groups. A new method like it was labelled ""
    (the rule named "gptq"), so its rows at two group sizes looked alike in every table."""
    from ptq_bench.quant import configs

    @dataclasses.dataclass(frozen=True)
    class GroupedConfig:
        w_bits: int = 4
        group_size: int = 128
        a_bits: int = 16

    monkeypatch.setitem(configs.CATALOG, "grouped", configs.MethodEntry(GroupedConfig, False, "Grouped"))
    assert configs.setting_label("grouped", {"w_bits": 4, "group_size": 32, "a_bits": 16}) == "g32"
    assert configs.setting_label("gptq", {"w_bits": 4, "group_size": -1}) == "channel"
    assert configs.setting_label("absmax", {"w_bits": 4, "w_granularity": "group", "group_size": 64}) == "g64"
    assert configs.setting_label("quip", {"w_bits": 2}) == ""


@pytest.mark.parametrize("name", NAMES)
def test_on_grid_and_error_falls_with_bits(model, name):
    method = METHODS[name]
    calib = calib_tokens(8, 32)
    tokens = calib_tokens(4, 32, seed=5)
    ref = logits(model, tokens)
    bits = valid_bits(method.config_cls)
    assert len(bits) >= 3
    errors = []
    for b in bits:
        q, rep = quantized_copy(model, name, calib, w_bits=b, a_bits=16)
        assert isinstance(rep, QuantReport) and rep.seconds > 0 and rep.n_linears == 14
        assert b <= rep.effective_bits < b + 1
        lin = quantizable_linears(q)
        assert all(on_grid(m.weight, m.ptq_grid) for m in lin.values()), f"{name} w{b}: weight off its grid"
        assert all(m.weight.dtype == torch.float32 for m in lin.values())
        assert torch.equal(q.lm_head.weight, model.lm_head.weight)
        assert torch.equal(q.model.embed_tokens.weight, model.model.embed_tokens.weight)
        errors.append(relative_error(ref, logits(q, tokens)))
    assert errors == sorted(errors, reverse=True), f"{name}: {dict(zip(bits, errors))}"
    assert errors[-1] < 0.2


@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
@pytest.mark.parametrize("name", NAMES)
def test_non_finite_weight_is_refused(name, bad):
    """One inf or NaN weight made absmax's row scale inf and every weight of the row NaN (GPTQ and SmoothQuant
    likewise; QuIP's rotation spread it to the whole matrix, or blamed the calibration inputs), and the row was
    reported like any other. Every method now refuses it in one line naming the linear."""
    from ptq_bench.errors import QuantError

    model = tiny_llama()
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[3, 5] = bad
    method = METHODS[name]
    with pytest.raises(QuantError, match=r"model\.layers\.1\.mlp\.down_proj: 1 of its 8192 weights are NaN or inf"):
        method.apply(model, method.config_cls(), calib_tokens(4, 16) if method.needs_calibration else None)
