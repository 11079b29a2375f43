"""BitLinear: weight / activation grids, straight-through gradients, 2-bit packing vs transformers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ptq_bench.models.bitlinear import (
    BitLinear,
    activation_quant,
    activation_quant_int,
    pack_ternary,
    unpack_ternary,
    weight_quant_binary,
    weight_quant_ternary,
)


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- weights


def test_ternary_hand_example():
    w = torch.tensor([[0.1, -0.5, 0.02, 0.3]])  # mean|w| = 0.23 -> w * s = [0.43, -2.17, 0.09, 1.30]
    q, s = weight_quant_ternary(w)
    assert torch.equal(q, torch.tensor([[0.0, -1.0, 0.0, 1.0]]))
    assert s.item() == pytest.approx(1 / 0.23)


def test_ternary_grid_and_scale():
    w = _randn(32, 48) * 0.05
    q, s = weight_quant_ternary(w)
    assert set(q.unique().tolist()) == {-1.0, 0.0, 1.0}
    assert s.item() == pytest.approx(1 / w.abs().mean().item(), rel=1e-6)
    assert torch.equal(q, (w * s).round().clamp(-1, 1))
    assert torch.equal(weight_quant_ternary(torch.zeros(4, 4))[0], torch.zeros(4, 4))  # eps clamp, no NaN


def test_binary_hand_example_and_grid():
    w = torch.tensor([[0.3, -0.1, 0.2, 0.0]])  # mean = 0.1: 0.3 > 0.1, -0.1 < 0.1, 0.2 > 0.1, 0.0 < 0.1
    q, s = weight_quant_binary(w)
    assert torch.equal(q, torch.tensor([[1.0, -1.0, 1.0, -1.0]]))
    assert s.item() == pytest.approx(1 / 0.15)  # beta = mean|w| = 0.15
    q, _ = weight_quant_binary(torch.full((2, 4), 0.5))  # all equal to the mean: Sign(0) = -1
    assert torch.equal(q, -torch.ones(2, 4))
    q, s = weight_quant_binary(_randn(32, 48) + 0.3)
    assert set(q.unique().tolist()) == {-1.0, 1.0}


@pytest.mark.parametrize("mode", ["b158", "b1"])
def test_effective_weight_on_grid(mode):
    layer = BitLinear(48, 32, mode=mode)
    q, s = layer.quantized_weight()
    grid = {-1.0, 0.0, 1.0} if mode == "b158" else {-1.0, 1.0}
    assert set(q.unique().tolist()) <= grid
    w = layer.weight.detach()
    assert s.item() == pytest.approx(1 / w.abs().mean().item(), rel=1e-6)  # W ≈ q / s in both modes
    assert (q / s - w).abs().mean() < w.abs().mean()  # the grid approximates the latent weight


# ----------------------------------------------------------------------------- activations


def test_activation_quant_per_token_grid():
    x = _randn(3, 5, 16)
    x[1, 2] *= 100.0  # one loud token must not change the others' grids
    xq = activation_quant(x)
    scale = 127 / x.abs().amax(-1, keepdim=True)
    ints = xq * scale
    assert torch.allclose(ints, ints.round(), atol=1e-4)
    assert ints.round().min() >= -128 and ints.round().max() <= 127
    assert torch.allclose(ints.abs().amax(-1), torch.full((3, 5), 127.0), atol=1e-4)  # absmax hits 127
    assert ((xq - x).abs() <= 0.5 / scale + 1e-6).all()
    quiet = activation_quant(x[0])  # same tokens without the loud one in the batch
    assert torch.equal(quiet, xq[0])


def test_activation_quant_zero_token_and_dtype():
    x = torch.zeros(2, 8)
    assert torch.equal(activation_quant(x), x)
    xb = _randn(2, 8).to(torch.bfloat16)
    assert activation_quant(xb).dtype == torch.bfloat16


# ----------------------------------------------------------------------------- module


def _reference_forward(layer, x):
    xn = layer.rms_norm(x)
    q, s = layer.quantized_weight()
    return F.linear(activation_quant(xn), q / s)


@pytest.mark.parametrize("mode", ["b158", "b1"])
def test_forward_matches_definition_in_both_paths(mode):
    torch.manual_seed(0)
    layer = BitLinear(16, 8, mode=mode)
    with torch.no_grad():
        layer.rms_norm.weight.uniform_(0.5, 1.5)
    x = _randn(2, 3, 16)
    ref = _reference_forward(layer, x).detach()
    y_ste = layer(x)  # grad enabled -> training form
    with torch.no_grad():
        y_int = layer(x)  # integer form
    assert y_ste.requires_grad and not y_int.requires_grad
    assert torch.allclose(y_ste, ref, atol=1e-5)
    assert torch.allclose(y_int, ref, atol=1e-5)


@pytest.mark.parametrize("mode", ["b158", "b1"])
def test_ste_gradients_are_straight_through(mode):
    torch.manual_seed(0)
    layer = BitLinear(16, 8, mode=mode)
    with torch.no_grad():
        layer.rms_norm.weight.uniform_(0.5, 1.5)
    x = _randn(2, 3, 16).requires_grad_()
    g = _randn(2, 3, 8, seed=1)
    (layer(x) * g).sum().backward()

    # Straight-through by hand: quantized values as leaves, their grads passed unchanged to latents.
    xn = layer.rms_norm(x.detach().requires_grad_())
    q, s = layer.quantized_weight()
    w_leaf = (q / s).detach().requires_grad_()
    x_leaf = activation_quant(xn).detach().requires_grad_()
    (F.linear(x_leaf, w_leaf) * g).sum().backward()
    grad_x = torch.autograd.grad(layer.rms_norm(x), x, grad_outputs=x_leaf.grad)[0]

    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
    assert torch.allclose(layer.weight.grad, w_leaf.grad, atol=1e-5)
    assert torch.allclose(x.grad, grad_x, atol=1e-5)
    assert layer.rms_norm.weight.grad is not None and layer.rms_norm.weight.grad.abs().sum() > 0


def _float_kernel(layer, x, monkeypatch):
    """The integer path with the float matmul (the int8 kernel switched off)."""
    with monkeypatch.context() as m:
        m.setattr(BitLinear, "_int8_kernel_exact", lambda self, x: False)
        return layer(x)


@pytest.mark.parametrize("mode", ["b158", "b1"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(2, 5, 96), (7, 96), (1, 1, 96)])
def test_int8_kernel_equals_float_matmul(mode, dtype, shape, monkeypatch):
    """The int8 kernel is the float matmul's output exactly (integer sums below 2^24), bias included;
    activations spread over several orders of magnitude so many tokens use the full int8 range."""
    layer = BitLinear(96, 40, bias=True, mode=mode).to(dtype)
    with torch.no_grad():
        layer.weight.copy_(_randn(40, 96, seed=2))
        layer.bias.copy_(_randn(40, seed=3))
        layer.rms_norm.weight.uniform_(0.5, 1.5)
    x = (_randn(*shape, seed=4) * torch.logspace(-3, 3, shape[-1])).to(dtype)
    with torch.no_grad():
        assert layer._int8_kernel_exact(x)
        y = layer(x)
        ref = _float_kernel(layer, x, monkeypatch)
    assert y.dtype == dtype and y.shape == (*shape[:-1], 40)
    assert torch.equal(y, ref)


def _uncached(layer, x):
    """The inference form computed from the latent weight afresh: no cache, the float matmul."""
    x_q, s_x = activation_quant_int(layer.rms_norm(x))
    w_q, s_w = layer.quantized_weight()
    y = F.linear(x_q, w_q.to(x.dtype)) / (s_w.to(x.dtype).reshape(1) * s_x)
    return y if layer.bias is None else y + layer.bias


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])  # the int8 kernel; the float path
def test_weight_cache_follows_the_weight(dtype):
    """An in-place change of the latent weight (an optimizer step, a load), a new tensor or a cast is seen
    by the next forward, on either path; each forward equals the uncached computation exactly."""
    layer = BitLinear(32, 16, mode="b158").to(dtype)
    x = _randn(3, 32, seed=5).to(dtype)
    with torch.no_grad():
        before = layer(x)
        assert torch.equal(before, _uncached(layer, x))
        layer.weight.mul_(-1.0)
        after = layer(x)
        assert torch.equal(after, _uncached(layer, x))
        assert not torch.equal(after, before)
        layer.weight.data = _randn(16, 32, seed=6).to(dtype)  # a new tensor, not an in-place change
        assert torch.equal(layer(x), _uncached(layer, x))
        layer.to(torch.float16)
        assert torch.equal(layer(x.half()), _uncached(layer, x.half()))


@pytest.mark.parametrize("mode", ["b158", "b1"])
def test_float_path_reuses_the_quantized_weight(mode):
    """On the float path (bf16 here; CUDA alike) the weight is quantized once, not every forward."""
    layer = BitLinear(32, 16, mode=mode).to(torch.bfloat16)
    x = _randn(2, 32, seed=7).to(torch.bfloat16)
    calls = []
    real = layer.quantized_weight
    layer.quantized_weight = lambda: calls.append(1) or real()
    with torch.no_grad():
        ys = [layer(x) for _ in range(3)]
    assert len(calls) == 1 and all(torch.equal(y, ys[0]) for y in ys)


def test_bad_mode():
    with pytest.raises(ValueError, match="mode"):
        BitLinear(8, 8, mode="b2")


# ----------------------------------------------------------------------------- packing


def _ternary(*shape, seed=0):
    return torch.randint(-1, 2, shape, generator=torch.Generator().manual_seed(seed)).float()


@pytest.mark.parametrize("shape", [(4,), (8, 3), (64, 48), (12, 5, 2)])
def test_pack_round_trip(shape):
    q = _ternary(*shape)
    before = q.clone()
    packed = pack_ternary(q)
    assert packed.dtype == torch.uint8 and packed.shape == (shape[0] // 4, *shape[1:])
    assert torch.equal(q, before)  # input untouched
    assert torch.equal(unpack_ternary(packed), q)
    assert unpack_ternary(packed, torch.bfloat16).dtype == torch.bfloat16


def test_pack_errors():
    with pytest.raises(ValueError, match="divisible by 4"):
        pack_ternary(_ternary(6, 3))
    with pytest.raises(ValueError, match=r"\{-1, 0, 1\}"):
        pack_ternary(torch.tensor([0.0, 1.0, 2.0, -1.0]))


def test_unpack_golden_from_transformers_docstring():
    packed = torch.tensor([[0b10100001, 0b00011000], [0b10010000, 0b00001010]], dtype=torch.uint8)
    expected = torch.tensor([[0, -1], [-1, 1], [-1, 1], [-1, 1], [1, 0], [0, -1], [1, -1], [1, -1]]).float()
    assert torch.equal(unpack_ternary(packed), expected)
    assert torch.equal(pack_ternary(expected), packed)


@pytest.mark.parametrize("shape", [(4, 7), (64, 48), (16,)])
def test_pack_layout_equals_transformers(shape):
    from transformers.integrations.bitnet import pack_weights, unpack_weights

    q = _ternary(*shape, seed=3)
    theirs = pack_weights(q.clone())  # theirs adds 1 in place
    assert torch.equal(pack_ternary(q), theirs)
    with torch._dynamo.config.patch(disable=True):  # their unpack is torch.compile'd; eager is the same math
        assert torch.equal(unpack_ternary(theirs), unpack_weights(theirs, dtype=torch.float32))


@pytest.mark.parametrize("mode", ["b158", "b1"])
def test_float16_zero_token_is_not_nan(mode):
    """In float16, s_x = 127 / max|x|.clamp(1e-5) overflowed to inf for every token with max|x| < 127 / 65504, and a
    token of zeros (a zero embedding, padding) came out of the integer path as a NaN row: 0 * inf."""
    lin = BitLinear(16, 8, mode=mode, dtype=torch.float16).eval()
    x = _randn(3, 16).half()
    x[1] = 0
    x[2] *= 1e-3
    with torch.no_grad():
        y = lin(x)
    assert bool(torch.isfinite(y).all()), y
    assert torch.equal(y[1], torch.zeros_like(y[1]))
    q, s = activation_quant_int(x)
    assert bool(torch.isfinite(s).all()) and bool(q.abs().le(128).all())
