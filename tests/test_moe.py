"""Mixtures of experts (models/experts.py): the unfused experts compute transformers' own model, every
expert's statistics come from exactly the tokens the model routes to it (checked against transformers'
fused block and router, not our hooks), and an expert no calibration token reaches is an error. (Offloaded
mixtures of experts: tests/test_offload.py and tests/test_in_place.py.)
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
import torch.nn as nn
from family_checks import calib_tokens, case_family, lively_model, quantize
from test_source_pipeline import checkpoint, recipe, tokenizer_dir  # noqa: F401  (a fixture)
from tiny_families import FAMILY_CONFIGS, tiny_config, tiny_model

from ptq_bench.cli import main
from ptq_bench.errors import QuantError
from ptq_bench.families import family_of_config
from ptq_bench.models.experts import LinearExperts, unfuse_experts
from ptq_bench.quant.apply import hessian_stat
from ptq_bench.quant.calibrate import run_blockwise, submodule_or_none

# cases whose blocks hold experts (not those whose config asks for none: Granite 4.0-H with num_local_experts 0,
# Jamba with num_experts 1, have their dense layout alone)
DENSE_CASES = {"granitemoehybrid:dense", "jamba:dense"}
MOE = [t for t in FAMILY_CONFIGS if family_of_config(tiny_config(t)).experts and t not in DENSE_CASES]
ONE_IMPLEMENTATION = {"llama4_text"}  # no experts implementations to choose from (set_experts_implementation)


@torch.no_grad()
def fused_model(model_type: str, implementation: str = "eager", layers: int = 2) -> nn.Module:
    """transformers' own tiny model of the family, block weights redrawn at scale 1/sqrt(in) so that routing
    is decisive and every expert matters."""
    model = tiny_model(model_type, layers=layers)
    if model_type not in ONE_IMPLEMENTATION:
        model.set_experts_implementation(implementation)
    g = torch.Generator().manual_seed(3)
    for p in model.model.layers.parameters():
        if p.dim() >= 2:
            p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
    return model


@torch.no_grad()
def logits(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    return model(tokens, use_cache=False).logits


@pytest.mark.parametrize("model_type", MOE)
def test_unfused_experts_compute_transformers_model(model_type):
    ref = fused_model(model_type)
    ours = copy.deepcopy(ref)
    path = family_of_config(ref.config).experts  # mlp.experts, or Granite's block_sparse_moe.experts
    moe_blocks = [i for i, layer in enumerate(ref.model.layers) if submodule_or_none(layer, path) is not None]
    assert unfuse_experts(ours) == len(moe_blocks) > 0 and unfuse_experts(ours) == 0  # each such block, once
    assert all(isinstance(ours.model.layers[i].get_submodule(path), LinearExperts) for i in moe_blocks)
    tokens = calib_tokens(2, 32, seed=5)
    if model_type in ONE_IMPLEMENTATION:  # Llama 4: its experts' batched matmuls over every token
        assert torch.allclose(logits(ref, tokens), logits(ours, tokens), atol=1e-5, rtol=0)
        return
    assert torch.equal(logits(ref, tokens), logits(ours, tokens))  # transformers' eager loop, bit for bit
    default = fused_model(model_type, "grouped_mm")  # transformers' default experts implementation
    assert torch.allclose(logits(default, tokens), logits(ours, tokens), atol=1e-5, rtol=0)


def moe_path(config: Any) -> str:
    """Where transformers keeps the family's MoE block (mlp; Granite's block_sparse_moe, Llama 4's feed_forward)."""
    return family_of_config(config).experts.removesuffix(".experts")


def moe_input(model: nn.Module, tokens: torch.Tensor, block: int) -> torch.Tensor:
    """The MoE block's input (its norm's output) in `block`, (tokens, hidden)."""
    seen = []
    moe = model.model.layers[block].get_submodule(moe_path(model.config))
    hook = moe.register_forward_pre_hook(lambda _m, a: seen.append(a[0]))
    logits(model, tokens)
    hook.remove()
    return seen[0].reshape(-1, seen[0].shape[-1])


def routed_inputs(model: nn.Module, tokens: torch.Tensor, block: int) -> dict[str, torch.Tensor]:
    """Every expert's gate_up and down inputs in `block`, from transformers' fused block: its router's top-k
    choice on the block's MoE input, its gate_up weights and activation."""
    path = moe_path(model.config)
    moe, x = model.model.layers[block].get_submodule(path), moe_input(model, tokens, block)
    if model.config.model_type == "llama4_text":  # Llama 4: an expert's input is the token times its score
        scores, _ = moe.router(x)
        routed = [x[scores[:, e] > 0] * scores[scores[:, e] > 0, e, None] for e in range(scores.shape[1])]
        flags = {"is_transposed": True, "has_bias": False}
    else:
        _, _, chosen = (moe.router if hasattr(moe, "router") else moe.gate)(x)
        routed = [x[(chosen == e).any(dim=-1)] for e in range(moe.experts.gate_up_proj.shape[0])]
        flags = {"is_transposed": moe.experts.is_transposed, "has_bias": moe.experts.has_bias}
    out, experts = {}, moe.experts
    for e, xe in enumerate(routed):
        w = experts.gate_up_proj[e] if flags["is_transposed"] else experts.gate_up_proj[e].T  # (in, out)
        h = xe @ w + (experts.gate_up_proj_bias[e] if flags["has_bias"] else 0)
        gate, up = h.chunk(2, dim=-1)
        down_in = experts._apply_gate(h) if hasattr(experts, "_apply_gate") else up * experts.act_fn(gate)
        out[f"{path}.experts.{e}.gate_up_proj"], out[f"{path}.experts.{e}.down_proj"] = xe, down_in
    return out


@pytest.mark.parametrize("model_type", ["mixtral", "qwen2_moe", "glm4_moe", "granitemoeshared", "gpt_oss", "llama4_text",
                                        "qwen3_next", "jamba", "kimi_linear", "bailing_hybrid"])
# glm4_moe, llama4_text: block 0 dense; qwen3_next: block 0 a Gated DeltaNet; jamba: block 0 a dense Mamba block;
# kimi_linear, bailing_hybrid: block 0 a dense KDA block, block 1 latent attention with experts (Bailing: clamped)
def test_each_experts_hessian_is_its_routed_tokens(model_type):
    ref = fused_model(model_type)
    tokens = calib_tokens(4, 32)
    path = moe_path(ref.config)
    blocks = [i for i, layer in enumerate(ref.model.layers) if hasattr(layer.get_submodule(path), "experts")]
    want = {(i, n): x for i in blocks for n, x in routed_inputs(ref, tokens, i).items()}
    ours, got = copy.deepcopy(ref), {}
    unfuse_experts(ours)

    def keep(idx: int, layer: nn.Module, group: dict, stats: dict) -> None:
        got.update({(idx, n): copy.deepcopy(stats[n]) for n in group if n.startswith(f"{path}.experts.")})

    run_blockwise(ours, tokens, hessian_stat, keep, true_sequential=True)
    assert set(got) == set(want)
    for key, x in want.items():
        assert got[key].n == x.shape[0] > 0, key
        h = 2 / x.shape[0] * x.double().T @ x.double()
        assert torch.allclose(got[key].H.double(), h, rtol=1e-5, atol=1e-6), key


@pytest.mark.parametrize("method", ["gptq", "quip"])
def test_the_row_says_how_few_tokens_an_expert_saw(method):
    """`fewest_expert_tokens`: the least any expert's Hessian saw, as transformers' router counts them (one block)."""
    ref, tokens = fused_model("mixtral", layers=1), calib_tokens(4, 32)
    routed = routed_inputs(ref, tokens, 0)
    _, rep = quantize(ref, method, tokens, w_bits=4)
    assert rep.details["fewest_expert_tokens"] == min(x.shape[0] for x in routed.values()) > 0
    assert "fewest_expert_tokens" not in quantize(ref, "smoothquant", tokens, w_bits=8)[1].details  # no Hessians


class AvoidExpert(nn.Module):
    """A router that never picks expert `e` (its choice goes to expert 0 instead)."""

    def __init__(self, router: nn.Module, e: int) -> None:
        super().__init__()
        self.router, self.e = router, e

    @property
    def weight(self) -> nn.Parameter:  # what SmoothQuant scales
        return self.router.weight

    def forward(self, x: torch.Tensor) -> tuple:
        logits_, weights, chosen = self.router(x)
        return logits_, weights, torch.where(chosen == self.e, 0, chosen)


@pytest.mark.parametrize("method", ["gptq", "quip"])
def test_an_expert_no_calibration_token_reaches_is_an_error(method):
    model = lively_model("mixtral")
    model.model.layers[1].mlp.gate = AvoidExpert(model.model.layers[1].mlp.gate, 3)
    with pytest.raises(QuantError, match=r"^block 1 \(\w+\): no calibration input reached mlp\.experts\.3\.gate_up_proj"):
        quantize(model, method, calib_tokens(4, 32), w_bits=4)


def mlp_norm_readers(moe: nn.Module) -> list[torch.Tensor]:
    """The weights that read the MLP norm's output: a dense block's gate and up; else the router, every
    expert's gate and up, and a shared expert's gate and up (and Qwen2-MoE's shared-expert gate)."""
    if not hasattr(moe, "experts"):
        return [moe.gate_proj.weight, moe.up_proj.weight]
    shared = getattr(moe, "shared_expert", None) or getattr(moe, "shared_experts", None)
    gate = [moe.shared_expert_gate.weight] if hasattr(moe, "shared_expert_gate") else []
    router = getattr(moe, "router", None) or moe.gate
    router = getattr(router, "gate", router)  # AFMoE's router holds an nn.Linear
    transposed = getattr(moe.experts, "is_transposed", True)  # Llama 4's experts are stored (in, out), unflagged
    experts = moe.experts.gate_up_proj.transpose(1, 2) if transposed else moe.experts.gate_up_proj
    return [router.weight, *gate, *([shared.gate_proj.weight, shared.up_proj.weight] if shared else []), *experts]


def granite_readers(layer: nn.Module) -> list[torch.Tensor]:
    """Granite MoE Shared: the router, every expert's gate_up and the shared MLP's fused input_linear."""
    moe = layer.block_sparse_moe
    return [moe.router.weight, layer.shared_mlp.input_linear.weight, *moe.experts.gate_up_proj]


def parallel_readers(layer: nn.Module) -> list[torch.Tensor]:
    """Cohere 2 MoE's one norm: q, k, v, and everything the MLP norm feeds in a sequential block."""
    attn = layer.self_attn
    return [attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight, *mlp_norm_readers(layer.mlp)]


# case -> (the norm whose smoothing is checked, the weights reading its output), written from transformers'
# modeling files, not from the registry
REFERENCE_CASES = {
    "mixtral": ("post_attention_layernorm", lambda layer: mlp_norm_readers(layer.mlp)),
    "qwen2_moe": ("post_attention_layernorm", lambda layer: mlp_norm_readers(layer.mlp)),
    "glm4_moe": ("post_attention_layernorm", lambda layer: mlp_norm_readers(layer.mlp)),
    "gpt_oss": ("post_attention_layernorm", lambda layer: mlp_norm_readers(layer.mlp)),  # experts stored (in, out)
    "llama4_text": ("post_attention_layernorm", lambda layer: mlp_norm_readers(layer.feed_forward)),
    "afmoe": ("pre_mlp_layernorm", lambda layer: mlp_norm_readers(layer.mlp)),  # post_attention_: attention's output
    "granitemoeshared": ("post_attention_layernorm", granite_readers),
    "cohere2_moe:shared": ("input_layernorm", parallel_readers),
    "qwen3_next": ("post_attention_layernorm", lambda layer: mlp_norm_readers(layer.mlp)),  # (1 + w) norms
    "jamba": ("pre_ff_layernorm", lambda layer: mlp_norm_readers(layer.feed_forward)),  # block 0 Mamba, dense
}


def norm_output(model: nn.Module, tokens: torch.Tensor, norm: nn.Module) -> torch.Tensor:
    """A norm's output in a forward, (tokens, hidden)."""
    seen = []
    hook = norm.register_forward_hook(lambda _m, _a, y: seen.append(y))
    logits(model, tokens)
    hook.remove()
    return seen[0].reshape(-1, seen[0].shape[-1])


@pytest.mark.parametrize("model_type", [*REFERENCE_CASES, "mixtral:avoid"])
def test_smoothquant_scales_are_the_references(model_type):
    """SmoothQuant's Mixtral code: s from max|x| at the router's input (the whole norm output) and max|W| over
    the router and every expert's gate and up (and a shared expert's, and Qwen2-MoE's shared-expert gate),
    per block. ":avoid": an expert that no token reaches is no error here (its weights still count in max|W|)."""
    case = model_type.removesuffix(":avoid")
    ref, tokens = fused_model(case), calib_tokens(4, 32)
    if model_type.endswith(":avoid"):
        ref.model.layers[1].mlp.gate = AvoidExpert(ref.model.layers[1].mlp.gate, 3)
    q, rep = quantize(ref, "smoothquant", tokens, alpha=0.5, w_bits=16, a_bits=16)
    norm_name, readers = REFERENCE_CASES[case]
    assert rep.details["smoothed_norms"] == (2 if norm_name == "input_layernorm" else 4)
    for i, layer in enumerate(ref.model.layers):
        norm = layer.get_submodule(norm_name)
        a = norm_output(ref, tokens, norm).abs().amax(dim=0)
        w = torch.cat(readers(layer)).abs().amax(dim=0).clamp(min=1e-5)
        s = (a.pow(0.5) / w.pow(0.5)).clamp(min=1e-5)
        gain = int(case_family(case).smooth[0].kind == "one_plus_gain")  # y = (1 + w) * rms(x)
        got = (gain + norm.weight) / (gain + q.model.layers[i].get_submodule(norm_name).weight)
        assert torch.allclose(got, s, rtol=1e-5), (i, (got / s - 1).abs().max())


def test_in_place_quantization_of_a_mixture_of_experts_gives_the_copys_rows(tmp_path, tokenizer_dir):  # noqa: F811
    """`in_place: true` saves and restores the unfused blocks between cells (FloatBlocks): same rows."""
    from ptq_bench.results import load_rows

    src = checkpoint(tmp_path, "mixtral", tokenizer_dir)
    rows = {}
    for in_place in (False, True):
        (tmp_path / str(in_place)).mkdir()
        path = recipe(tmp_path / str(in_place), {"m": {"source": str(src)}},
                      [{"method": "gptq", "w_bits": 3, "group_size": 32}, {"method": "smoothquant", "w_bits": 8}])
        path.write_text(path.read_text() + f"in_place: {str(in_place).lower()}\n")
        assert main(["run", str(path)]) == 0
        rows[in_place] = {r.label: (r.metrics, r.quant.get("n_linears")) for r in load_rows(path.parent / "out", strict=True)}
    assert rows[True] == rows[False] and len(rows[True]) == 3


def test_experts_of_an_unknown_layout_are_refused_by_name():
    """Ergo's experts have a norm after each expert: no ExpertMLP computes them, so they are refused."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model("ergo", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, vocab_size=64, head_dim=16,
                                  n_routed_experts=4, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32)
    experts = [m for m in AutoModelForCausalLM.from_config(config).modules() if type(m).__name__ == "ErgoExperts"][0]
    with pytest.raises(QuantError, match=r"ErgoExperts: experts with post_expert_norm\.weight; only experts"):
        LinearExperts.from_fused(experts)
