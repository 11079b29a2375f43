"""Calibration in bounded memory: only the block being calibrated is materialized on the device, and the
results are bit-identical to the all-on-device path.

`DiskPlacement` keeps every other block's parameters as `meta` tensors (their values in one safetensors
file per block), so a runner that touched, or kept, another block would either fail or be caught by the
probe below, which records at every linear call which blocks hold real parameters.
"""

from __future__ import annotations

import copy

import pytest
import torch
from quant_fixtures import calib_tokens
from tiny_families import tiny_model

from ptq_bench.quant import get_method
from ptq_bench.quant.apply import FloatBlocks
from ptq_bench.quant.calibrate import capture_inputs, decoder_layers, run_layer
from ptq_bench.quant.linears import GRID_ATTR, is_linear
from ptq_bench.quant.placement import DevicePlacement, DiskPlacement, use_placement


def materialized(model: torch.nn.Module) -> list[int]:
    """Indices of the blocks whose parameters are real (not meta)."""
    return [i for i, layer in enumerate(decoder_layers(model)) if not any(p.is_meta for p in layer.parameters())]


def probe(model: torch.nn.Module) -> list[tuple[int, list[int]]]:
    """Record (block of the linear called, blocks materialized at that moment) at every linear call."""
    seen: list[tuple[int, list[int]]] = []
    for idx, layer in enumerate(decoder_layers(model)):
        for m in layer.modules():
            if is_linear(m):
                m.register_forward_pre_hook(lambda mod, args, i=idx: seen.append((i, materialized(model))))
    return seen


def gptq(model: torch.nn.Module, method: str = "gptq", **cfg) -> None:
    m = get_method(method)
    cfg = {"group_size": 16, **cfg} if method == "gptq" else cfg
    m.apply(model, m.config_cls(w_bits=4, **cfg), calib_tokens(4, 32))


@pytest.mark.parametrize("family", ["llama", "gemma2", "gpt2"])
def test_only_the_calibrated_block_is_materialized(family, tmp_path):
    model = tiny_model(family)
    seen = probe(model)
    with use_placement(DiskPlacement(tmp_path)):
        gptq(model)
    assert seen, "no linear ran"
    assert {i for i, _ in seen} == set(range(len(decoder_layers(model))))
    bad = [(i, live) for i, live in seen if live != [i]]
    assert not bad, f"blocks other than the calibrated one were materialized: {bad[:3]}"
    assert materialized(model) == list(range(len(decoder_layers(model))))  # finish: usable again


@pytest.mark.parametrize(("family", "method", "cfg"), [
    ("llama", "gptq", {"true_sequential": True}),
    ("llama", "gptq", {}),
    ("gpt2", "gptq", {"act_order": True}),
    ("qwen2", "quip", {}),
])
def test_offloaded_results_are_bit_identical(family, method, cfg, tmp_path):
    base = tiny_model(family)
    ref, disk, dev = copy.deepcopy(base), copy.deepcopy(base), copy.deepcopy(base)
    gptq(ref, method, **cfg)
    with use_placement(DiskPlacement(tmp_path)):
        gptq(disk, method, **cfg)
    with use_placement(DevicePlacement("cpu")):
        gptq(dev, method, **cfg)
    want = ref.state_dict()
    changed = [k for k, v in want.items() if not torch.equal(v, base.state_dict()[k])]
    assert changed, "nothing was quantized"
    for other in (disk, dev):
        got = other.state_dict()
        assert sorted(got) == sorted(want)
        assert all(torch.equal(got[k], want[k]) for k in want), [k for k in want if not torch.equal(got[k], want[k])]


def test_smoothquant_offloaded_is_bit_identical(tmp_path):
    base = tiny_model("opt")
    ref, disk = copy.deepcopy(base), copy.deepcopy(base)
    m = get_method("smoothquant")
    cfg = m.config_cls(w_bits=8, a_bits=8)
    m.apply(ref, cfg, calib_tokens(4, 32))
    with use_placement(DiskPlacement(tmp_path)):
        m.apply(disk, cfg, calib_tokens(4, 32))
    ids = calib_tokens(2, 16)
    assert torch.equal(ref(ids).logits, disk(ids).logits)


@pytest.mark.parametrize("blocks", [1, 2, 4])
def test_capture_releases_each_block_after_it_runs(blocks, tmp_path):
    model = tiny_model("llama", layers=blocks)
    place = DiskPlacement(tmp_path)
    layers = decoder_layers(model)
    place.start(layers)
    assert materialized(model) == []
    seen = probe(model)
    inputs = capture_inputs(model, calib_tokens(2, 16), placement=place)
    assert {i for i, _ in seen} == ({0} if blocks > 1 else set())  # the last block is never run
    assert all(live == [i] for i, live in seen)
    assert materialized(model) == []
    place.fetch(0, layers[0])
    assert run_layer(layers[0], inputs.hidden, inputs.calls[0])[0].shape == inputs.hidden[0].shape


@pytest.mark.parametrize("family", ["llama", "gpt2", "opt"])
def test_capture_computes_block_0_only_and_restores_the_blocks(family):
    """Blocks 1 .. n-2 only pass their input on during the capture; afterwards every block is itself
    again, an instance-level forward (a wrapper's) included. `run_blockwise`'s replay of the captured calls
    is checked against the model's own forward for every family in tests/test_families.py."""
    model = tiny_model(family, layers=4)  # blocks 1 and 2 pass on
    layers = decoder_layers(model)
    wrapped = layers[2].forward
    layers[2].forward = lambda *a, **k: wrapped(*a, **k)
    mine = layers[2].forward
    seen = probe(model)
    inputs = capture_inputs(model, calib_tokens(2, 16))
    assert {i for i, _ in seen} == {0}
    assert [len(c) for c in inputs.calls] == [1, 1, 1, 1]
    assert layers[2].forward is mine and all("forward" not in layers[i].__dict__ for i in (0, 1, 3))
    out = run_layer(layers[1], inputs.hidden, inputs.calls[1])[0]
    assert out.shape == inputs.hidden[0].shape


CUDA = pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                                       reason="needs a CUDA device: pytest -m gpu")])


@pytest.mark.parametrize("device", ["cpu", CUDA])
@pytest.mark.parametrize(("family", "method", "cfg"), [
    ("llama", "gptq", {}),
    ("gemma", "smoothquant", {"w_bits": 8, "a_bits": 8}),  # Gemma's 1 + gain norm is refolded in fp32
])
def test_float_blocks_restore_the_base_bit_for_bit(family, method, cfg, device, tmp_path):
    """`in_place`: quantize the model itself, then restore its float blocks, on the device they live on."""
    base = tiny_model(family).to(torch.bfloat16).to(device)
    model = copy.deepcopy(base)
    backup = FloatBlocks(model, tmp_path)
    m = get_method(method)
    m.apply(model, m.config_cls(**cfg), calib_tokens(4, 32).to(device))
    ids = calib_tokens(2, 16).to(device)
    assert not torch.equal(model(ids).logits, base(ids).logits)  # quantized in place
    backup.restore(model)
    want, got = base.state_dict(), model.state_dict()
    assert all(torch.equal(got[k], want[k]) and (got[k].dtype, got[k].device) == (want[k].dtype, want[k].device)
               for k in want)
    assert not any(hasattr(x, GRID_ATTR) or x._forward_pre_hooks for x in model.modules())
    assert torch.equal(model(ids).logits, base(ids).logits)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device: pytest -m gpu")
def test_device_placement_moves_one_block_to_cuda_and_back():
    base = tiny_model("llama")
    ref, home = copy.deepcopy(base).to("cuda"), copy.deepcopy(base)
    devices: list[tuple[int, list[str]]] = []
    for idx, layer in enumerate(decoder_layers(home)):
        layer.mlp.down_proj.register_forward_pre_hook(lambda mod, args, i=idx: devices.append(
            (i, [next(b.parameters()).device.type for b in decoder_layers(home)])))
    gptq(ref)
    with use_placement(DevicePlacement("cuda")):
        gptq(home)
    n = len(decoder_layers(home))
    assert devices and all(types == ["cuda" if j == i else "cpu" for j in range(n)] for i, types in devices)
    assert {p.device.type for p in home.parameters()} | {b.device.type for b in home.buffers()} == {"cpu"}
    want = ref.state_dict()
    assert all(torch.equal(v, want[k].cpu()) for k, v in home.state_dict().items())
