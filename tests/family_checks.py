"""The invariants that make a PTQ method honest on a model family, as measuring functions.

Shared by tests/test_families.py (which asserts them) and benchmarks/family_matrix.py (which prints the
family x method matrix). Models are tiny random checkpoints from transformers' own config classes
(tests/tiny_families.py), made "lively": block linears re-drawn with std 1/sqrt(in) and every smoothing
norm's weight (and bias) perturbed, so that a wrong mask, a wrong norm fold or a skipped linear shows.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from unittest import mock

import torch
import torch.nn as nn
from tiny_families import FAMILY_CONFIGS, tiny_config, tiny_model

from ptq_bench.families import Family, family_of_config
from ptq_bench.models.experts import unfuse_experts
from ptq_bench.quant import METHODS, load_all
from ptq_bench.quant.calibrate import (
    block_family,
    block_names,
    decoder_layers,
    model_family,
    quantizable_linears,
    run_blockwise,
)
from ptq_bench.quant.linears import GRID_ATTR, is_linear, weight_matrix
from ptq_bench.quant.primitives import on_grid

load_all()
VOCAB = 512
# model_type -> extra tiny checkpoints not built by tiny_families (multimodal Gemma 3: text decoder inside)
GEMMA3_TEXT = {"vocab_size": VOCAB, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
               "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "sliding_window": 16,
               "layer_types": ["sliding_attention", "full_attention"], "max_position_embeddings": 256,
               "bos_token_id": None, "eos_token_id": None, "pad_token_id": None}
GEMMA3_VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                 "image_size": 28, "patch_size": 14}
GEMMA4_VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                 "num_key_value_heads": 2, "head_dim": 16}
# Gemma 3n: a tiny audio tower (Gemma3nAudioEncoder: one conformer block); its vision tower is timm's, stood in below
GEMMA3N_AUDIO = {"hidden_size": 32, "conf_num_attention_heads": 2, "conf_num_hidden_layers": 1, "input_feat_size": 16,
                 "sscp_conv_channel_size": [8, 4]}
QWEN3_5_VISION = {"depth": 1, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 64}


class TowerStandIn(nn.Module):
    """A float tower for one built from a package not installed here (Gemma 3n's vision tower is timm's
    TimmWrapperModel): one linear of the sub-config's width; a text-only forward never calls it."""

    def __init__(self, config: Any):
        super().__init__()
        self.proj = nn.Linear(config.hidden_size, config.hidden_size)


@contextmanager
def stand_ins(towers: dict[str, Callable[[Any], nn.Module]]) -> Iterator[None]:
    """transformers' AutoModel.from_config (which composite models call for their towers) builds a sub-config
    whose model_type `towers` names with its stand-in; everything else as usual."""
    from transformers import AutoModel

    real = AutoModel.from_config
    build = staticmethod(lambda config, **kw: towers[config.model_type](config) if config.model_type in towers
                         else real(config, **kw))
    with mock.patch.object(AutoModel, "from_config", build):
        yield


# multimodal model types (the hub's checkpoints of them) whose text decoder AutoModelForCausalLM builds:
# case -> (config class, text config, vision config, further config values[, stand-ins: sub-config model_type ->
# the float module built for it, a tower whose package is not installed here (`stand_ins`)])
COMPOSITE: dict[str, tuple[Any, ...]] = {
    "gemma3": ("Gemma3Config", GEMMA3_TEXT, GEMMA3_VISION, {"mm_tokens_per_image": 4}),
    "qwen3_5": ("Qwen3_5Config", "qwen3_5_text", QWEN3_5_VISION, {}),  # text: a tiny_families case
    # Gemma 4's layout values sit in its text_config; its forward masks multimodal ids with the pad id
    **{f"gemma4{case.removeprefix('gemma4_text')}": ("Gemma4Config", (case, {"pad_token_id": 0}), GEMMA4_VISION,
                                                      {"audio_config": None})
       for case in ("gemma4_text", "gemma4_text:k_eq_v", "gemma4_text:moe", "gemma4_text:moe_per_layer")},
    # Gemma 3n: gemma3n_text's blocks; text ids stay below the towers' vocab_offset, as in the hub's checkpoints
    "gemma3n": ("Gemma3nConfig", "gemma3n_text", {"hidden_size": 32}, {"audio_config": GEMMA3N_AUDIO},
                {"gemma3n_vision": TowerStandIn}),
    "qwen3_5_moe": ("Qwen3_5MoeConfig", "qwen3_5_moe_text", QWEN3_5_VISION, {}),
    "qwen4_exp": ("Qwen4ExpConfig", "qwen4_exp_text", QWEN3_5_VISION, {}),
    # dots3.note: AutoModelForCausalLM builds its text decoder alone; the towers' adapters must output its width
    "dots3_note": ("Dots3NoteConfig", "dots3_note_text", {"adapter_out_dim": 64}, {"audio_config": {"adapter_out_dim": 64}}),
}
# every test case: a model_type, or "<model_type>:<layout>" for a further layout of one (tiny_families.py)
FAMILY_TYPES = (*FAMILY_CONFIGS, *COMPOSITE)
# one setting per method for the matrix; a_bits 16 so that logits can be compared with weights alone
METHOD_PARAMS: dict[str, dict[str, Any]] = {
    "absmax": {"w_bits": 4}, "gptq": {"w_bits": 4, "true_sequential": True, "group_size": 16},
    "quip": {"w_bits": 4}, "smoothquant": {"w_bits": 4, "a_bits": 16},
}


def calib_tokens(n: int = 4, seqlen: int = 32, seed: int = 1) -> torch.Tensor:
    """(n, seqlen) token ids; 32 tokens > the tiny configs' sliding window of 16."""
    return torch.randint(0, VOCAB, (n, seqlen), generator=torch.Generator().manual_seed(seed))


def case_config(case: str, vocab: int = VOCAB) -> Any:
    """The transformers config of a test case (see FAMILY_TYPES)."""
    if case not in COMPOSITE:
        return tiny_config(case, vocab)
    import transformers

    cls, text, vision, more = COMPOSITE[case][:4]
    if isinstance(text, tuple):  # a tiny_families case with some values of its own
        text = {**tiny_config(text[0], vocab).to_dict(), **text[1]}
    text = tiny_config(text, vocab).to_dict() if isinstance(text, str) else text
    return getattr(transformers, cls)(text_config=text, vision_config=vision, **more)


def case_family(case: str) -> Family:
    """The registered layout the registry picks for a test case's config."""
    return family_of_config(case_config(case))


def case_stand_ins(case: str) -> dict[str, Callable[[Any], nn.Module]]:
    """A COMPOSITE case's stand-ins (sub-config model_type -> its float module), {} for most."""
    return dict(*COMPOSITE.get(case, ())[4:5])


def build_case(case: str, vocab: int = VOCAB) -> nn.Module:
    """A test case's tiny model as transformers builds it (a COMPOSITE case's towers from its stand-ins)."""
    if case not in COMPOSITE:
        return tiny_model(case, vocab)
    from transformers import AutoModelForCausalLM

    with torch.random.fork_rng(devices=[]), stand_ins(case_stand_ins(case)):
        torch.manual_seed(0)
        return AutoModelForCausalLM.from_config(case_config(case, vocab)).float().eval()


@torch.no_grad()
def lively_model(model_type: str, seed: int = 0) -> nn.Module:
    """A tiny model of the family whose blocks matter (see the module docstring)."""
    model = build_case(model_type)
    unfuse_experts(model)
    family = family_of_config(model.config)
    g = torch.Generator().manual_seed(seed)
    for layer in model.get_submodule(family.blocks):
        floats = [layer.get_submodule(name) for name in block_family(layer, family).floats]  # decisive routers
        for m in [*layer.modules()]:
            if is_linear(m) or any(m is f for f in floats if hasattr(f, "weight")):  # not RG-LRU's bare gates
                w = weight_matrix(m)
                w.copy_(torch.randn(w.shape, generator=g) / w.shape[1] ** 0.5)
        for pair in family.smooth:
            try:
                norm = layer.get_submodule(pair.norm)
            except AttributeError:  # an entry naming a norm the block lacks: the library's own error says so
                continue
            norm.weight.add_(0.1 * torch.randn(norm.weight.shape, generator=g))
            if getattr(norm, "bias", None) is not None:
                norm.bias.add_(0.1 * torch.randn(norm.bias.shape, generator=g))
    return model


def count_block_linears(model: nn.Module) -> int:
    """Every nn.Linear / Conv1D inside the decoder blocks but those the block's layout keeps in float (Qwen2-MoE's
    shared-expert gate, a Gated DeltaNet's b / a projections), counted without the registry's linear names."""
    family = model_family(model)
    return sum(is_linear(m) and not any(name == f or name.startswith(f"{f}.") for f in floats)
               for layer in decoder_layers(model) for floats in [block_family(layer, family).floats]
               for name, m in layer.named_modules())


def predicted_linears(model: nn.Module) -> int:
    family = model_family(model)
    return sum(len(block_names(layer, own, own.linears))
               for layer in decoder_layers(model) for own in [block_family(layer, family)])


@torch.no_grad()
def logits(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    return model(tokens, use_cache=False).logits.float()


def quantize(model: nn.Module, method: str, calib: torch.Tensor, **params: Any) -> tuple[nn.Module, Any]:
    """(quantized deep copy, QuantReport)."""
    m = METHODS[method]
    target = copy.deepcopy(model)
    return target, m.apply(target, m.config_cls(**params), calib if m.needs_calibration else None)


def n_on_grid(model: nn.Module) -> tuple[int, int]:
    """(linears carrying a grid, of those: weights on it) after a method ran."""
    gridded = [m for m in quantizable_linears(model).values() if getattr(m, GRID_ATTR, None) is not None]
    return len(gridded), sum(on_grid(weight_matrix(m), getattr(m, GRID_ATTR)) for m in gridded)


def smoothing_only_delta(model: nn.Module, calib: torch.Tensor, tokens: torch.Tensor) -> tuple[float, int]:
    """(max |logit change|, norms smoothed) of SmoothQuant W16A16 (alpha 0.5): smoothing alone."""
    q, rep = quantize(model, "smoothquant", calib, alpha=0.5, w_bits=16, a_bits=16)
    return float((logits(model, tokens) - logits(q, tokens)).abs().max()), rep.details["smoothed_norms"]


@torch.no_grad()
def replay_delta(model: nn.Module, calib: torch.Tensor, batch_size: int = 2) -> float:
    """max over blocks and batches of |block output in the runner's replay - in the real forward|.

    The replay is `run_blockwise` itself (no statistics, nothing quantized); block outputs are read by
    forward hooks, the runner's last call of each block being its output for the next block.
    """
    layers = decoder_layers(model)
    seen: list[list[torch.Tensor]] = [[] for _ in layers]
    hooks = [layer.register_forward_hook(lambda m, a, o, i=i: seen[i].append(o[0] if isinstance(o, (tuple, list)) else o))
             for i, layer in enumerate(layers)]
    try:
        for batch in calib.split(batch_size):
            model(batch, use_cache=False)
        real = [list(s) for s in seen]
        for s in seen:
            s.clear()
        run_blockwise(model, calib, lambda n, m: None, lambda *a: None, sequential=True, batch_size=batch_size)
    finally:
        for h in hooks:
            h.remove()
    n = len(real[0])
    return max(float((r - p).abs().max()) for i in range(len(layers)) for r, p in zip(real[i], seen[i][-n:],
                                                                                      strict=True))
