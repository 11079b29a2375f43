"""SmoothQuant: smoothing is float-exact, and it beats plain absmax W8A8 on activation outliers."""

from __future__ import annotations

import pytest
import torch
from quant_fixtures import (
    add_outlier_channels,
    calib_tokens,
    logits,
    quantized_copy,
    relative_error,
    tiny_llama,
)

from ptq_bench.errors import QuantError
from ptq_bench.quant.calibrate import decoder_layers
from ptq_bench.quant.smoothquant import SmoothQuantConfig, smooth, smoothing_scales


@pytest.fixture(scope="module")
def outlier_model():
    m = tiny_llama()
    add_outlier_channels(m, factor=50.0)
    return m


@pytest.fixture(scope="module")
def calib():
    return calib_tokens(16, 64)


def test_smoothing_alone_keeps_float_outputs(outlier_model, calib):
    tokens = calib_tokens(4, 64, seed=9)
    q, rep = quantized_copy(outlier_model, "smoothquant", calib, w_bits=16, a_bits=16)
    assert rep.details["smoothed_norms"] == 4
    for a, b in zip(decoder_layers(outlier_model), decoder_layers(q)):  # smoothing did happen
        assert not torch.allclose(a.input_layernorm.weight, b.input_layernorm.weight)
        assert not torch.allclose(a.mlp.up_proj.weight, b.mlp.up_proj.weight)
    ref, out = logits(outlier_model, tokens), logits(q, tokens)
    # measured max|diff| / max|ref| 1.15e-4 (fp32 rounding of the x50 outlier scales; 0.0 in float64)
    assert (ref - out).abs().max() < 3e-4 * ref.abs().max()


def test_alpha_half_balances_maxima():
    """alpha = 0.5: after smoothing, max|X_j| / s_j == max_i |W_ij| s_j for every channel j."""
    g = torch.Generator().manual_seed(0)
    act = torch.rand(32, generator=g) * 10 + 0.1
    fcs = [torch.nn.Linear(32, 16, bias=False), torch.nn.Linear(32, 8, bias=False)]
    norm = torch.nn.LayerNorm(32)
    w_before = torch.cat([f.weight for f in fcs]).abs().amax(0)
    s = smooth(norm, fcs, act, 0.5)
    assert torch.allclose(s, smoothing_scales(act, [f.weight / s for f in fcs], 0.5), rtol=1e-4)
    assert torch.allclose(act / s, w_before * s, rtol=1e-4)
    assert torch.allclose(torch.cat([f.weight for f in fcs]).abs().amax(0), w_before * s, rtol=1e-5)


# measured (outlier channels x50, model seed 0, calib 16 x 64, eval 8 x 64 tokens), relative logit error:
#   W8A8: absmax 0.0549, SmoothQuant(0.5) 0.0132;  W6A6: 0.258 vs 0.127;  W8A4: 0.541 vs 0.361
@pytest.mark.parametrize("w_bits, a_bits, ratio", [(8, 8, 0.5), (6, 6, 0.7), (8, 4, 0.8)])
def test_smoothquant_beats_absmax_on_outliers(outlier_model, calib, w_bits, a_bits, ratio):
    tokens = calib_tokens(8, 64, seed=7)
    ref = logits(outlier_model, tokens)
    qa, ra = quantized_copy(outlier_model, "absmax", w_bits=w_bits, a_bits=a_bits)
    qs, rep = quantized_copy(outlier_model, "smoothquant", calib, w_bits=w_bits, a_bits=a_bits)
    e_abs, e_sq = relative_error(ref, logits(qa, tokens)), relative_error(ref, logits(qs, tokens))
    assert e_sq < ratio * e_abs, (e_sq, e_abs)
    assert rep.effective_bits == pytest.approx(ra.effective_bits)  # same storage, better placement


def test_unresolvable_pair_is_an_error(calib):
    """A norm the family names that has no weight to fold into: an error, not a silently skipped pair."""
    m = tiny_llama()
    decoder_layers(m)[1].post_attention_layernorm = torch.nn.Identity()
    with pytest.raises(QuantError, match="cannot resolve smoothing pair post_attention_layernorm"):
        quantized_copy(m, "smoothquant", calib, w_bits=16, a_bits=16)


class _WideNorm(torch.nn.Module):
    """A norm that passes its input on but whose weight is wider than its targets' inputs."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(width))

    def forward(self, x):
        return x


def test_norm_width_mismatch_is_one_line(calib):
    """A pair whose norm is not as wide as its targets' inputs: the one-line refusal, not a broadcast error."""
    m = tiny_llama()
    layer = decoder_layers(m)[0]
    layer.post_attention_layernorm = _WideNorm(layer.post_attention_layernorm.weight.shape[0] + 8)
    with pytest.raises(QuantError, match="post_attention_layernorm: width .* does not match its targets"):
        quantized_copy(m, "smoothquant", calib, w_bits=8, a_bits=8)


@pytest.mark.parametrize("kw, field", [
    ({"alpha": 1.5}, "alpha"), ({"w_bits": 9}, "w_bits"), ({"a_bits": 9}, "a_bits"),
    ({"w_granularity": "x"}, "w_granularity"), ({"a_granularity": "channel"}, "a_granularity"),
    ({"w_granularity": "tensor", "group_size": 32}, "group_size 32 needs w_granularity"),
    ({"group_size": 0}, "group_size"),
    ({"a_bits": 16, "a_granularity": "tensor"}, "a_granularity 'tensor' needs a_bits below 16"),
])
def test_bad_config(kw, field):
    with pytest.raises(ValueError, match=field):
        SmoothQuantConfig(**kw)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_calibration_inputs_are_refused(calib, bad):
    """GPTQ and QuIP refuse a Hessian holding NaN / inf; SmoothQuant folded s = NaN (or inf, 0) into the norms and
    the weights of every block and reported the row (effective_bits 8.225, every q_proj weight NaN)."""
    model = tiny_llama()
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 7] = bad
    with pytest.raises(QuantError, match="activation maxima of a 64-channel norm output hold NaN or inf"):
        quantized_copy(model, "smoothquant", calib)


def test_float16_zero_weight_column_alpha_0_stays_finite(calib):
    """alpha 0 gives s_j = 1 / max|W_:j| = 1 / 1e-5 for a weight column of zeros (a pruned input): 1e5, inf in float16.
    The fold wrote W_:j * inf = NaN into q/k/v (24,576 NaN weights on the tiny model) and NaN logits, without an error.
    s is now capped at what the norm's and the linears' dtypes hold."""
    model = tiny_llama().to(torch.float16)
    with torch.no_grad():
        for layer in decoder_layers(model):
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.weight[:, 5] = 0
    quant, _ = quantized_copy(model, "smoothquant", calib[:4, :16], alpha=0.0, w_bits=8, a_bits=16)
    assert all(bool(torch.isfinite(p).all()) for p in quant.parameters())
    assert bool(torch.isfinite(logits(quant, calib[:2, :16])).all())
