"""Absmax RTN and the tensor primitives under it."""

from __future__ import annotations

import pytest
import torch
from quant_fixtures import calib_tokens, logits, quantized_copy, relative_error, tiny_llama

from ptq_bench.quant.absmax import AbsmaxConfig
from ptq_bench.quant.calibrate import quantizable_linears
from ptq_bench.quant.linears import ActQuant
from ptq_bench.quant.primitives import (
    fake_quant_act,
    fake_quant_weight,
    minmax_params,
    on_grid,
    quantize_scalar,
)


@pytest.fixture(scope="module")
def model():
    return tiny_llama()


def test_primitive_levels():
    w = torch.randn(16, 40)
    for bits, n_levels in [(1, 2), (1.58, 3), (2, 3), (3, 7), (4, 15)]:
        w_hat, grid = fake_quant_weight(w, bits, "channel")
        assert on_grid(w_hat, grid)
        assert max(len(torch.unique(r)) for r in w_hat) <= n_levels
        assert not on_grid(w, grid)  # the float weight itself is not on the grid
    w_hat, _ = fake_quant_weight(w, 1, "tensor")
    assert torch.allclose(w_hat.abs(), w.abs().mean().expand_as(w))  # sign x mean|w|
    assert torch.equal(w_hat > 0, w > 0)
    # GPTQ's symmetric min-max grid: 2^b levels, scale = 2 max|w| / (2^b - 1)
    scale, zero, maxq = minmax_params(w, 3, sym=True)
    q = quantize_scalar(w, scale[:, None], zero[:, None], maxq)
    assert maxq == 7 and torch.all(zero == 4) and max(len(torch.unique(r)) for r in q) <= 8


def test_act_quant_per_token():
    x = torch.randn(2, 5, 32) * torch.arange(1, 11).view(2, 5, 1)
    xq = fake_quant_act(x, 8, "token")
    scale = x.abs().amax(-1, keepdim=True) / 127
    assert torch.allclose(xq / scale, (xq / scale).round(), atol=1e-3)
    assert relative_error(x, xq) < 1e-4
    assert relative_error(x, fake_quant_act(x, 8, "tensor")) > relative_error(x, xq)


@pytest.mark.parametrize("gran", ["tensor", "channel", "group"])
def test_absmax_on_grid_and_error_falls(model, gran):
    tokens = calib_tokens(4, 32)
    ref = logits(model, tokens)
    errors = []
    for bits in [1, 1.58, 3, 4, 6, 8]:
        groups = {"group_size": 16} if gran == "group" else {}
        q, rep = quantized_copy(model, "absmax", w_bits=bits, w_granularity=gran, **groups)
        lin = quantizable_linears(q)
        assert rep.n_linears == len(lin) == 14
        assert all(on_grid(m.weight, m.ptq_grid) for m in lin.values())
        assert bits <= rep.effective_bits <= bits + 1.01
        errors.append(relative_error(ref, logits(q, tokens)))
    assert errors[1:] == sorted(errors[1:], reverse=True), errors  # from ternary on, strictly better
    assert errors[-1] < 1e-2


def test_absmax_leaves_embeddings_and_head(model):
    q, _ = quantized_copy(model, "absmax", w_bits=2)
    assert torch.equal(q.lm_head.weight, model.lm_head.weight)
    assert torch.equal(q.model.embed_tokens.weight, model.model.embed_tokens.weight)


def test_absmax_activations(model):
    tokens = calib_tokens(4, 32)
    ref = logits(model, tokens)
    with pytest.raises(ValueError, match="w_bits 16 with a_bits 16 quantizes nothing"):  # not a row
        AbsmaxConfig(w_bits=16, a_bits=16)
    q8, _ = quantized_copy(model, "absmax", w_bits=16, a_bits=8)
    q4, _ = quantized_copy(model, "absmax", w_bits=16, a_bits=4)
    assert sum(isinstance(h, ActQuant) for m in quantizable_linears(q8).values()
               for h in m._forward_pre_hooks.values()) == 14
    e8, e4 = relative_error(ref, logits(q8, tokens)), relative_error(ref, logits(q4, tokens))
    assert 0 < e8 < 1e-2 < e4


def test_dtype_preserved():
    m = tiny_llama().half()
    q, _ = quantized_copy(m, "absmax", w_bits=4)
    lin = quantizable_linears(q)
    assert all(x.weight.dtype == torch.float16 and on_grid(x.weight, x.ptq_grid) for x in lin.values())


@pytest.mark.parametrize("kw, field", [
    ({"w_bits": 9}, "w_bits"), ({"w_bits": 1.5}, "w_bits"), ({"w_granularity": "row"}, "w_granularity"),
    ({"group_size": 0}, "group_size"), ({"group_size": 32}, "group_size 32 needs w_granularity"),
    ({"a_bits": 12}, "a_bits"), ({"a_granularity": "channel"}, "a_granularity"),
    ({"a_bits": 16, "a_granularity": "tensor"}, "a_granularity 'tensor' needs a_bits below 16"),
])
def test_bad_config(kw, field):
    with pytest.raises(ValueError, match=field):
        AbsmaxConfig(**kw)



def test_rtn_ties_round_as_the_references():
    """A weight exactly halfway between two levels rounds as SmoothQuant's fake_quant (round(w / s) * s), GPTQ's
    quant.py (round(x / s) + zero) and BitNet b1.58's RoundClip(w / g, -1, 1) round it: half to even of w / s.
    Rounding w / s + zero instead moved every tie by one level where zero is odd (absmax: zero = qmax), and the
    weights of a Q4_1-dequantized checkpoint lie on coarse grids where ties are common (SmolLM2-135M: 34,865
    of its 106M block weights at W4 per channel, 0.9% of WikiText-2 PPL)."""
    from ptq_bench.quant.registry import METHODS

    w = torch.tensor([[3.0, 1.5, -1.5, 2.5, 0.5, -0.5, -2.5]])  # absmax W3: scale = 3 / 3 = 1
    w_hat, _ = fake_quant_weight(w, 3, "channel")
    assert torch.equal(w_hat, torch.round(w)), w_hat
    w = torch.tensor([[1.5, -1.5, 0.5, -0.5]])  # ternary: g = mean|w| = 1
    w_hat, _ = fake_quant_weight(w, 1.58, "channel")
    assert torch.equal(w_hat, torch.round(w).clamp(-1, 1)), w_hat
    assert METHODS["absmax"].version >= 2 and METHODS["smoothquant"].version >= 2  # their numbers changed


def test_sign_grid_keeps_the_sign_of_tiny_positive_weights():
    """b1's Sign(w) is +1 for every w > 0. Rounding w / (2 beta) + 1/2 sent a positive weight below about
    6e-8 beta to -beta: the sum rounds to 1/2 in float32, a tie that rounds to 0."""
    w = torch.tensor([[1.0, -1.0, 1e-9, -1e-9, 0.0, -0.0, 3e-8, 1e-30, 1e-45]])
    w_hat, grid = fake_quant_weight(w, 1, "channel")
    assert torch.equal(w_hat > 0, w > 0), w_hat  # Sign(0) = -1, as before
    assert on_grid(w_hat, grid) and len(torch.unique(w_hat)) == 2
