"""Every registered model family x every PTQ method: the invariants that make a row honest.

Tiny random checkpoints of each family (transformers' own config classes, no download; see
tests/family_checks.py): the method runs; it quantizes exactly the linears the families registry predicts,
which is every nn.Linear / Conv1D in the blocks; the stored weights lie on their grids; smoothing alone
keeps the logits; the block-by-block runner replays the real forward; BitNet checkpoints are refused.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from family_checks import (
    FAMILY_TYPES,
    METHOD_PARAMS,
    build_case,
    calib_tokens,
    case_config,
    case_family,
    count_block_linears,
    lively_model,
    logits,
    n_on_grid,
    predicted_linears,
    quantize,
    replay_delta,
    smoothing_only_delta,
)

from ptq_bench.errors import QuantError, RecipeError
from ptq_bench.families import SUPPORTED_MODEL_TYPES, layouts
from ptq_bench.quant import METHODS
from ptq_bench.quant.calibrate import block_family, decoder_layers
from ptq_bench.quant.linears import GRID_ATTR, is_linear

PTQ_FAMILIES = [t for t in FAMILY_TYPES if not case_family(t).low_bit]
LOW_BIT = [t for t in FAMILY_TYPES if case_family(t).low_bit]
SMOOTHED = [t for t in PTQ_FAMILIES if case_family(t).smooth]
UNSMOOTHED = [t for t in PTQ_FAMILIES if not case_family(t).smooth]  # OLMo 1 (norms without parameters), 2, 3
PARAMETER_FREE_NORMS = {"olmo", "nanochat"}  # their norms feed linears but have nothing to fold into
POST_LN = {"openai-gpt"}  # a norm's output is the block's output: scaling it changes the residual
RESIDUAL_NORMS = {"minimax"}  # `residual = norm(x)`: a norm's output feeds linears and is the residual stream
# Gemma 3n: LAuReL adds input_layernorm's output (its input) back to the residual stream; the MLP norm alone could be
# smoothed, and a row naming SmoothQuant must have smoothed every norm feeding a quantized linear
LAUREL = {"gemma3n_text": "input_layernorm", "gemma3n": "input_layernorm"}  # gemma3n: its multimodal wrapper
# hyper-connections (Qwen4-Exp): the norm over the residual streams feeds the streams' float mixing gates, and
# attention / MLP read a gated mix of its output, not the output itself
HYPER_STREAMS = {"qwen4_exp_text", "qwen4_exp"}
# A.X-K2: q_gate_proj reads q_a_layernorm's output joined to its input (q_a_proj's raw output): a fold into the norm
# would reach only the first half of the linear's input columns
CONCATENATED = {"axk2": ("self_attn.q_a_layernorm", "self_attn.q_gate_proj")}


@pytest.fixture(scope="module")
def models():
    cache: dict = {}
    return lambda t: cache.setdefault(t, lively_model(t))


@pytest.fixture(scope="module")
def calib():
    return calib_tokens(4, 32)


def test_every_registered_family_is_tested():
    cases = {case_config(t).model_type for t in FAMILY_TYPES}
    assert cases == set(SUPPORTED_MODEL_TYPES), "a family needs its tiny config in tests/tiny_families.py"
    picked = {id(case_family(t)) for t in FAMILY_TYPES}
    untested = [(t, f.requires) for t in SUPPORTED_MODEL_TYPES for f in layouts(t) if id(f) not in picked]
    assert not untested, "a further layout needs its tiny config (\"<model_type>:<layout>\") in tests/tiny_families.py"
    assert set(METHOD_PARAMS) == set(METHODS), "a method needs its matrix setting in tests/family_checks.py:METHOD_PARAMS"


@pytest.mark.parametrize("method", sorted(METHOD_PARAMS))
@pytest.mark.parametrize("model_type", PTQ_FAMILIES)
def test_method_on_family(models, calib, model_type, method):
    model = models(model_type)
    if method == "smoothquant" and model_type in UNSMOOTHED:
        with pytest.raises(QuantError, match="names no smoothing pairs"):
            quantize(model, method, calib, **METHOD_PARAMS[method])
        return
    q, rep = quantize(model, method, calib, **METHOD_PARAMS[method])
    expected = predicted_linears(model)
    assert expected == count_block_linears(model)  # the registry names every linear of the blocks
    assert rep.n_linears == expected
    gridded, on = n_on_grid(q)
    assert gridded == expected, f"{gridded} of {expected} linears carry a grid"
    assert on == expected, f"{expected - on} linears off their grid"
    assert rep.details.get("kept_float", {}) == weights_left_float(q)  # the row names what stayed float
    assert torch.isfinite(logits(q, calib[:1])).all()


def weights_left_float(model: torch.nn.Module) -> dict[str, int]:
    """Block modules holding a matrix weight (linears, routers; RecurrentGemma's RG-LRU holds its gates' per-head
    matrices as bare parameters) that carry no grid, by name -> blocks."""
    out: dict[str, int] = {}
    for layer in decoder_layers(model):
        for name, m in layer.named_modules():
            w = m._parameters.get("weight")
            gates = any(n.endswith("_gate_weight") for n in m._parameters)
            if (w is not None and w.dim() == 2 or gates) and not hasattr(m, GRID_ATTR):
                out[name] = out.get(name, 0) + 1
    return out


def norm_outputs_read(model: torch.nn.Module, ids: torch.Tensor) -> tuple[list[str], dict[str, torch.Tensor], Any]:
    """(the norms of the first block whose output, in a real forward, is the input some linear reads;
    every norm's output; the block's output)."""
    layer = decoder_layers(model)[0]
    outs, ins, block_out = {}, [], []
    hooks = [layer.register_forward_hook(lambda _m, _a, y: block_out.append(y[0] if isinstance(y, (tuple, list)) else y))]
    for name, m in layer.named_modules():
        if "norm" in type(m).__name__.lower():
            # a hook returning a value replaces the output: setdefault's would hand a norm called twice (Llama 4's
            # one qk_norm for q and k) its first output again
            hooks.append(m.register_forward_hook(lambda _m, _a, y, name=name: [outs.setdefault(name, y)] and None))
        elif is_linear(m):
            hooks.append(m.register_forward_pre_hook(lambda _m, a: ins.append(a[0])))
    try:  # the model is shared by the module's tests: no hook may stay on it
        with torch.no_grad():
            model(ids)
    finally:
        for h in hooks:
            h.remove()
    flat = [x.reshape(-1, x.shape[-1]) for x in ins]  # a MoE block reads its input as (tokens, hidden)
    read = [n for n, y in outs.items() if any(x.shape == y.reshape(-1, y.shape[-1]).shape
                                              and torch.equal(x, y.reshape(-1, y.shape[-1])) for x in flat)]
    return read, outs, block_out[0]


def block0_io(model: torch.nn.Module, norm: str, linears: list[str] | None, ids: torch.Tensor) -> tuple[dict, Any]:
    """(the inputs of block 0's `linears` (None: every linear) by name, its norm `norm`'s output) in a real forward."""
    layer, seen, out = decoder_layers(model)[0], {}, []
    names = [n for n, m in layer.named_modules() if is_linear(m)] if linears is None else linears
    hooks = [layer.get_submodule(n).register_forward_pre_hook(lambda _m, a, n=n: [seen.setdefault(n, a[0])] and None)
             for n in names]
    hooks.append(layer.get_submodule(norm).register_forward_hook(lambda _m, _a, y: [out.append(y)] and None))
    try:
        with torch.no_grad():
            logits(model, ids)
    finally:
        for h in hooks:
            h.remove()
    return seen, out[0]


def norm_readers(model: torch.nn.Module, norm: str, ids: torch.Tensor) -> list[str]:
    """The linears of block 0 whose input, in a real forward, is its norm `norm`'s output."""
    seen, y = block0_io(model, norm, None, ids)
    y = y.reshape(-1, y.shape[-1])  # a MoE block reads (tokens, hidden)
    flat = {n: x.reshape(-1, x.shape[-1]) for n, x in seen.items()}
    return [n for n, x in flat.items() if x.shape == y.shape and torch.equal(x, y)]


@torch.no_grad()
def fold_delta(model: torch.nn.Module, norm: str, ids: torch.Tensor) -> float:
    """max |Δ logits| after folding random per-channel scales into block 0's norm `norm` (w * s) and out of
    every linear that reads its output (W / s): zero, up to rounding, where the norm feeds nothing else."""
    model = copy.deepcopy(model)
    layer, readers = decoder_layers(model)[0], norm_readers(model, norm, ids)
    before = logits(model, ids)
    y = layer.get_submodule(norm).weight
    s = torch.rand(y.shape[-1], generator=torch.Generator().manual_seed(0)) + 0.5
    layer.get_submodule(norm).weight.mul_(s)
    for name in readers:
        layer.get_submodule(name).weight.div_(s)
    return float((logits(model, ids) - before).abs().max()) if readers else 0.0


def test_the_fold_check_keeps_a_pre_norm_blocks_logits(models, calib):
    """fold_delta's control: Llama's input_layernorm feeds only q, k, v, so the fold keeps its logits."""
    assert fold_delta(models("llama"), "input_layernorm", calib[:1]) < 1e-4


def test_unsmoothed_families_have_no_norm_with_parameters_feeding_a_linear(models, calib):
    """What makes SmoothQuant's refusal right, by what runs: every norm output that some linear reads
    comes from a norm without parameters (OLMo 1, NanoChat), and OLMo 2/3 have no such norm at all; in a
    post-LN block (GPT-1) the block's output is a norm's output, so the norms' outputs are the residual;
    where the residual is a norm's output (MiniMax; Gemma 3n's attention norm, through LAuReL), a fold into that norm
    and its readers moves the logits;
    with hyper-connections (Qwen4-Exp) the streams' norm feeds only their float mixing gates; in A.X-K2 a norm's
    output reaches q_gate_proj joined to another tensor."""
    assert UNSMOOTHED
    for model_type in UNSMOOTHED:
        layer = decoder_layers(models(model_type))[0]
        feeding, outs, block_out = norm_outputs_read(models(model_type), calib[:1])
        if model_type in POST_LN:
            assert feeding and any(torch.equal(y, block_out) for y in outs.values()), (model_type, feeding)
            continue
        if model_type in RESIDUAL_NORMS:
            assert feeding and all(fold_delta(models(model_type), n, calib[:1]) > 1e-2 for n in feeding), model_type
            continue
        if model_type in LAUREL:
            assert LAUREL[model_type] in feeding and fold_delta(models(model_type), LAUREL[model_type], calib[:1]) > 1e-2
            continue
        if model_type in HYPER_STREAMS:  # hc_norm's readers: only the float mixing gates, no quantized linear
            floats = set(case_family(model_type).floats)
            assert feeding and all(set(norm_readers(models(model_type), n, calib[:1])) <= floats for n in feeding)
            continue
        if model_type in CONCATENATED:
            assert joined_input(models(model_type), *CONCATENATED[model_type], calib[:1]), model_type
            continue
        assert all(not list(layer.get_submodule(n).parameters()) for n in feeding), (model_type, feeding)
        assert bool(feeding) == (model_type in PARAMETER_FREE_NORMS), (model_type, feeding)


def joined_input(model: torch.nn.Module, norm: str, linear: str, ids: torch.Tensor) -> bool:
    """Whether block 0's `linear` reads, in a real forward, its norm `norm`'s output as the first part of a wider
    input (the norm's output joined to another tensor)."""
    seen, y = block0_io(model, norm, [linear], ids)
    x = seen[linear]
    return x.shape[-1] > y.shape[-1] and torch.equal(x[..., :y.shape[-1]], y)


@pytest.mark.parametrize("model_type", SMOOTHED)
def test_every_norm_with_parameters_feeding_a_linear_is_smoothed(models, calib, model_type):
    """The other half of the smoothing pairs' truth (smoothing alone keeping the logits is the first): no norm
    whose output some linear reads, by what runs, is left out of them (a MoE's dense block 0 included)."""
    model = models(model_type)
    feeding, _, _ = norm_outputs_read(model, calib[:1])
    layer = decoder_layers(model)[0]
    smoothed = {pair.norm for pair in block_family(layer, case_family(model_type)).smooth}
    assert {n for n in feeding if list(layer.get_submodule(n).parameters())} <= smoothed, (feeding, smoothed)


@pytest.mark.parametrize("model_type", SMOOTHED)
def test_smoothing_alone_keeps_logits(models, calib, model_type):
    model = models(model_type)
    delta, smoothed = smoothing_only_delta(model, calib, calib_tokens(2, 32, seed=7))
    family = case_family(model_type)
    assert smoothed == sum(len(block_family(layer, family).smooth) for layer in decoder_layers(model))
    assert delta <= 1e-4, delta


@pytest.mark.parametrize("model_type", FAMILY_TYPES)
def test_block_replay_equals_real_forward(models, calib, model_type):
    assert replay_delta(models(model_type), calib) <= 1e-5


@pytest.mark.parametrize("method", ["absmax", "gptq"])
def test_gemma3n_wrapper_quantizes_its_text_blocks_as_gemma3n_text(models, calib, method):
    """The hub's gemma3n (Gemma3nForConditionalGeneration: towers beside the text model) feeds text ids to
    gemma3n_text's blocks unchanged (text ids sit below the towers' vocab_offset): with the wrapper's text weights,
    Gemma3nForCausalLM has its logits, and a method quantizes both models' blocks to the same weights."""
    wrapper, text = models("gemma3n"), build_case("gemma3n_text")
    prefix = "model.language_model."
    text.load_state_dict({k.replace(prefix, "model."): v for k, v in wrapper.state_dict().items()
                          if k.startswith((prefix, "lm_head."))}, strict=True)
    assert torch.equal(logits(wrapper, calib), logits(text, calib))
    (qw, rw), (qt, rt) = (quantize(m, method, calib, **METHOD_PARAMS[method]) for m in (wrapper, text))
    assert rw.n_linears == rt.n_linears == count_block_linears(wrapper) > 0
    blocks = {k: v for k, v in qt.state_dict().items() if k.startswith("model.layers.")}
    assert all(torch.equal(qw.state_dict()[k.replace("model.", prefix, 1)], v) for k, v in blocks.items())
    assert torch.equal(logits(qw, calib), logits(qt, calib))


@pytest.mark.parametrize("method", sorted(METHOD_PARAMS))
@pytest.mark.parametrize("model_type", LOW_BIT)
def test_ptq_of_low_bit_family_is_refused(models, calib, model_type, method):
    with pytest.raises(QuantError, match=f"PTQ refused.*family '{model_type}'"):
        quantize(models(model_type), method, calib, **METHOD_PARAMS[method])


def test_unregistered_family_is_a_one_line_error(calib):
    with pytest.raises(RecipeError) as err:
        layouts("jetmoe")
    assert "'jetmoe'" in str(err.value) and "llama" in str(err.value) and "\n" not in str(err.value)
    model = lively_model("llama")
    model.config.model_type = "jetmoe"
    with pytest.raises(RecipeError, match="'jetmoe' is not supported"):
        quantize(model, "gptq", calib, w_bits=4)


def test_layouts_of_one_model_type_agree_on_what_its_name_decides():
    """`validate` reads low-bit and smoothability from a model_type alone (cells.ptq_refusal, sources)."""
    for model_type in SUPPORTED_MODEL_TYPES:
        assert len({(f.low_bit, bool(f.smooth), f.unsmoothable) for f in layouts(model_type)}) == 1, model_type


def test_a_layout_no_entry_of_a_several_layout_family_describes_is_refused(calib):
    model = lively_model("falcon:40b")
    model.config.parallel_attn = False  # transformers' FalconDecoderLayer would look for ln_attn in vain
    with pytest.raises(RecipeError, match="parallel_attn=False, new_decoder_architecture=True, "
                                          "num_ln_in_parallel_attn=2 is not supported \\(none of its 4"):
        quantize(model, "absmax", calib, w_bits=4)


@pytest.mark.parametrize("model_type, key, value", [("opt", "do_layer_norm_before", False),
                                                    ("gpt2", "add_cross_attention", True),
                                                    ("stablelm", "use_parallel_residual", True),
                                                    ("gpt_bigcode", "add_cross_attention", True),
                                                    ("bloom", "apply_residual_connection_post_layernorm", True)])
def test_layout_the_registry_does_not_describe_is_refused(calib, model_type, key, value):
    model = lively_model(model_type)
    setattr(model.config, key, value)
    with pytest.raises(RecipeError, match=f"{key}={value!r} is not supported"):
        quantize(model, "absmax", calib, w_bits=4)


def test_extra_linear_in_a_block_is_an_error(calib):
    model = lively_model("llama")
    decoder_layers(model)[1].mlp.extra = torch.nn.Linear(4, 4)
    with pytest.raises(QuantError, match="does not name: mlp.extra"):
        quantize(model, "absmax", calib, w_bits=4)


def test_ptq_of_exported_bitnet_checkpoint_is_refused(tmp_path, calib):
    """ptq-bench's b1.58 export: model_type llama, transformers' BitLinear layers, quant_method bitnet."""
    from transformers import AutoModelForCausalLM

    from ptq_bench.models.build import ArchConfig, build_model, export_hf

    arch = ArchConfig(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, max_seq_len=64)
    export_hf(build_model("bitnet_b158", arch, 512, seed=0), "bitnet_b158", tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert model.config.model_type == "llama"
    for method in sorted(METHOD_PARAMS):
        with pytest.raises(QuantError, match="PTQ refused.*quant_method 'bitnet'"):
            quantize(model, method, calib, **METHOD_PARAMS[method])


def test_config_json_mapping_without_torch():
    """What `validate` can ask from a checkpoint's config.json alone (families.py imports no torch)."""
    from ptq_bench.families import family_of_config, low_bit_reason

    assert family_of_config({"model_type": "gpt2", "add_cross_attention": False}).conv1d
    assert low_bit_reason({"model_type": "qwen2"}) is None
    assert low_bit_reason({"model_type": "bitnet"}) == "family 'bitnet'"
    assert low_bit_reason({"model_type": "llama", "quantization_config": {"quant_method": "bitnet"}}) == \
        "quant_method 'bitnet'"
    with pytest.raises(RecipeError, match="do_layer_norm_before=False"):
        family_of_config({"model_type": "opt", "do_layer_norm_before": False})
