"""Mixture-of-experts blocks as one `nn.Linear` pair per expert, so that every method quantizes experts as
it quantizes any linear.

transformers 5 stores a block's experts fused, as 3-D parameters (`gate_up_proj` (E, 2I, H), `down_proj`
(E, H, I)), and runs them through an "experts implementation" (`grouped_mm` by default, or the `eager`
loop). A grid per expert, a Hessian per expert from the tokens routed to it, and per-token activation
quantization of each expert's input all need the experts as separate linears. `unfuse_experts` replaces
each block's fused experts (at the family's `experts` path) by `LinearExperts`: expert e's `gate_up_proj`
and `down_proj` are `nn.Linear`s holding slices e of the fused parameters, and its forward is transformers'
eager loop with those linears: the same operations, so the float model's outputs are bit for bit the eager
implementation's (tests/test_moe.py compares with transformers' own model, eager and default).

Only the layout of Mixtral / OLMoE / Qwen-MoE experts is known here (gate and up concatenated, weights
(out, in), no biases, no per-expert norm); an experts class declaring another (GPT-OSS's transposed,
interleaved, biased one) is refused by name. The routers stay float modules (`Family.floats`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ptq_bench.errors import QuantError
from ptq_bench.families import family_of_config

# what `transformers.integrations.moe.use_experts_implementation` records on an experts class, as this
# module's loop computes it
EAGER_LAYOUT = {"is_transposed": False, "is_concatenated": True, "has_bias": False, "has_gate": True,
                "has_post_expert_norm": False}


def _linear(weight: torch.Tensor) -> nn.Linear:
    """An nn.Linear holding `weight` (out, in) in its own memory (safetensors refuses shared storage)."""
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
    linear.weight = nn.Parameter(weight.detach().clone(), requires_grad=False)
    return linear


class ExpertMLP(nn.Module):
    """One expert: act(gate) * up from one fused gate_up linear, then down."""

    token_local = True  # row by row, as any float MLP (eval/model_traits)

    def __init__(self, gate_up: torch.Tensor, down: torch.Tensor, act_fn: nn.Module) -> None:
        super().__init__()
        self.gate_up_proj, self.down_proj, self.act_fn = _linear(gate_up), _linear(down), act_fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(self.act_fn(gate) * up)


class LinearExperts(nn.ModuleList):
    """A block's experts, one `ExpertMLP` each, called as transformers' fused experts module is:
    (hidden_states (tokens, H), top_k_index (tokens, k), top_k_weights (tokens, k)) -> (tokens, H)."""

    token_local = True  # each token's output reads its own routing and its own row only (eval/model_traits)

    @classmethod
    def from_fused(cls, fused: nn.Module) -> LinearExperts:
        layout = {key: getattr(fused, key, None) for key in EAGER_LAYOUT}
        if layout != EAGER_LAYOUT or fused.gate_up_proj.dim() != 3:
            odd = ", ".join(f"{k}={v!r}" for k, v in layout.items() if v != EAGER_LAYOUT[k])
            raise QuantError(f"{type(fused).__name__}: experts stored as {odd or 'other tensors'}; only "
                             "concatenated gate/up (out, in) experts without bias are known (models/experts.py)")
        gate_up, down = fused.gate_up_proj.data, fused.down_proj.data
        return cls(ExpertMLP(gate_up[e], down[e], fused.act_fn) for e in range(gate_up.shape[0]))

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                top_k_weights: torch.Tensor) -> torch.Tensor:
        """transformers' eager experts loop (e.g. `MixtralExperts.forward`), expert by expert in index order."""
        out = torch.zeros_like(hidden_states)
        with torch.no_grad():
            mask = nn.functional.one_hot(top_k_index, num_classes=len(self) + 1).permute(2, 1, 0)
            hit = torch.greater(mask.sum(dim=(-1, -2)), 0).nonzero()
        for e in hit[:, 0].tolist():
            if e == len(self):  # transformers' slot for tokens routed elsewhere (expert parallelism)
                continue
            top_k_pos, token_idx = torch.where(mask[e])
            y = self[e](hidden_states[token_idx]) * top_k_weights[token_idx, top_k_pos, None]
            out.index_add_(0, token_idx, y.to(out.dtype))
        return out


def unfuse_experts(model: Any) -> int:
    """Replace every block's fused experts by `LinearExperts` (once: unfused ones are left); returns how many
    blocks changed. A no-op for families without experts."""
    family = family_of_config(model.config)
    if not family.experts:
        return 0
    changed = 0
    parent_path, _, leaf = family.experts.rpartition(".")
    for layer in model.get_submodule(family.blocks):
        parent = layer.get_submodule(parent_path) if parent_path else layer
        fused = getattr(parent, leaf, None)
        if fused is None and family.dense is not None:  # a dense block of a mixture of experts
            continue
        if fused is None:
            raise QuantError(f"{type(layer).__name__}: no experts at '{family.experts}' (family registry)")
        if not isinstance(fused, LinearExperts):
            setattr(parent, leaf, LinearExperts.from_fused(fused))
            changed += 1
    return changed


__all__ = ["EAGER_LAYOUT", "ExpertMLP", "LinearExperts", "unfuse_experts"]
