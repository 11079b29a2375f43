"""Mixture-of-experts blocks as one `nn.Linear` pair per expert, so that every method quantizes experts as
it quantizes any linear.

transformers 5 stores a block's experts fused, as 3-D parameters (`gate_up_proj` (E, 2I, H), `down_proj`
(E, H, I)), and runs them through an "experts implementation" (`grouped_mm` by default, or the `eager`
loop). A grid per expert, a Hessian per expert from the tokens routed to it, and per-token activation
quantization of each expert's input all need the experts as separate linears. `unfuse_experts` replaces
each block's fused experts (at the family's `experts` path) by `LinearExperts`: expert e's `gate_up_proj`
and `down_proj` are `nn.Linear`s holding slices e of the fused parameters (transposed where the class stores
them (in, out), with its biases where it has them), the gate between them is the class's own `_apply_gate`,
and the forward is transformers' eager loop with those linears: the same operations, so the float model's
outputs are the eager implementation's bit for bit, GPT-OSS's (x @ W + b there, F.linear here) included
(tests/test_moe.py compares with transformers' own model, eager and default).

Gated experts without a per-expert norm are known here; an experts class declaring another layout (Ergo's
ungated experts with a norm after each) is refused by name. The routers stay float modules (`Family.floats`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ptq_bench.errors import QuantError
from ptq_bench.families import family_of_config

# what `transformers.integrations.moe.use_experts_implementation` records on an experts class: this module
# unfuses any layout without a per-expert norm (weights (out, in) or transposed, with or without biases; gated,
# gate and up concatenated or interleaved: the class's own `_apply_gate` splits them; or ungated)
KNOWN_LAYOUT = {"has_post_expert_norm": False}
LAYOUT_KEYS = ("is_transposed", "is_concatenated", "has_bias", "has_gate", *KNOWN_LAYOUT)
# an experts class's fused input weight, by its `has_gate`: gate and up at once, or up alone (Nemotron-H's
# relu^2 experts); an expert's input linear keeps that name
IN_PROJ = {True: "gate_up_proj", False: "up_proj"}


def _slice(fused: torch.Tensor, e: int, transposed: bool = False) -> torch.Tensor:
    """Expert e's slice of a fused weight ((E, out, in), or (E, in, out) when `transposed`) or bias (E, out),
    as an nn.Linear holds it, in its own memory (safetensors refuses shared storage)."""
    t = fused[e].T if transposed and fused.dim() == 3 else fused[e]
    return t.detach().clone(memory_format=torch.contiguous_format)


def _linear(weight: torch.Tensor, bias: torch.Tensor | None = None) -> nn.Linear:
    """An nn.Linear holding `weight` (out, in) and `bias`."""
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    linear.weight = nn.Parameter(weight, requires_grad=False)
    if bias is not None:
        linear.bias = nn.Parameter(bias, requires_grad=False)
    return linear


# a fused experts tensor -> the name of its per-expert slice in an `ExpertMLP`
FUSED_TO_LINEAR = {f"{name}{part}": f"{name}.{kind}" for name in (*IN_PROJ.values(), "down_proj")
                   for part, kind in (("", "weight"), ("_bias", "bias"))}


def split_fused(tensors: dict[str, torch.Tensor], experts: dict[str, bool]) -> dict[str, torch.Tensor]:
    """`tensors` with the fused experts' tensors at each path of `experts` (path -> stored transposed) replaced
    by `LinearExperts`' names and slices: `{path}.gate_up_proj` (E, ...) -> `{path}.{e}.gate_up_proj.weight`
    for each e, and so on (how a checkpoint read block by block fills unfused experts, models/lazy.py)."""
    out = dict(tensors)
    for path, transposed in experts.items():
        for fused, linear in FUSED_TO_LINEAR.items():
            if (t := out.pop(f"{path}.{fused}", None)) is not None:
                out.update((f"{path}.{e}.{linear}", _slice(t, e, transposed)) for e in range(t.shape[0]))
    return out


def concatenated_gate(module: nn.Module, gate_up: torch.Tensor) -> torch.Tensor:
    """transformers' default gate (`integrations.moe`): act(gate) * up, gate and up concatenated."""
    gate, up = gate_up.chunk(2, dim=-1)
    return module.act_fn(gate) * up


def activation_only(module: nn.Module, up: torch.Tensor) -> torch.Tensor:
    """An ungated expert's activation (Nemotron-H: relu^2 of up_proj's output)."""
    return module.act_fn(up)


class ExpertGate(nn.Module):
    """The fused experts class's own `_apply_gate` (gate_up output -> the down projection's input: its
    activation, the split of concatenated or interleaved gate / up, GPT-OSS's clamped SwiGLU), called on a
    module that keeps the attributes it reads (act_fn, alpha, limit, ...) and none of the fused weights."""

    token_local = True  # element by element (eval/model_traits)

    def __init__(self, fused: nn.Module, gated: bool = True) -> None:
        super().__init__()
        self.apply_gate = getattr(type(fused), "_apply_gate", concatenated_gate) if gated else activation_only
        for key, value in vars(fused).items():
            if not key.startswith("_") and key != "training" and not isinstance(value, torch.Tensor):
                setattr(self, key, value)
        for name, child in fused.named_children():
            self.add_module(name, child)

    def forward(self, gate_up: torch.Tensor) -> torch.Tensor:
        return self.apply_gate(self, gate_up)


class ExpertMLP(nn.Module):
    """One expert: its input linear (gate and up fused, `gate_up_proj`, or `up_proj` alone: `IN_PROJ`), the
    experts class's gate or activation (`glu`), then down."""

    token_local = True  # row by row, as any float MLP (eval/model_traits)

    def __init__(self, first: nn.Linear, down: nn.Linear, gate: ExpertGate, first_name: str = "gate_up_proj") -> None:
        super().__init__()
        self.first = first_name
        self.add_module(first_name, first)
        self.down_proj, self.glu = down, gate  # not `gate`: routers are called so

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.glu(getattr(self, self.first)(x)))


class LinearExperts(nn.ModuleList):
    """A block's experts, one `ExpertMLP` each, called as transformers' fused experts module is:
    (hidden_states (tokens, H), top_k_index (tokens, k), top_k_weights (tokens, k)) -> (tokens, H)."""

    token_local = True  # each token's output reads its own routing and its own row only (eval/model_traits)
    transposed = False  # whether the fused weights it was made from are stored (in, out) (`split_fused`)

    @classmethod
    def from_fused(cls, fused: nn.Module) -> LinearExperts:
        layout = {key: getattr(fused, key, None) for key in LAYOUT_KEYS}
        first = IN_PROJ.get(layout["has_gate"], "")
        weight = getattr(fused, first, None)
        known = {first, "down_proj", *((f"{first}_bias", "down_proj_bias") if layout["has_bias"] else ())}
        odd = [f"{k}={layout[k]!r}" for k, v in KNOWN_LAYOUT.items() if layout[k] != v]
        odd += [n for n, _ in fused.named_parameters() if n not in known]  # e.g. Ergo's post_expert_norm.weight
        if odd or weight is None or weight.dim() != 3:
            raise QuantError(f"{type(fused).__name__}: experts with {', '.join(odd) or 'other tensors'}; only "
                             "experts without a per-expert norm or other parameters are known (models/experts.py)")
        biases = (getattr(fused, f"{first}_bias"), fused.down_proj_bias) if layout["has_bias"] else (None, None)
        return cls.from_weights(fused, bool(layout["is_transposed"]), biases, first)

    @classmethod
    def from_weights(cls, fused: nn.Module, transposed: bool,
                     biases: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None),
                     first: str = "gate_up_proj") -> LinearExperts:
        """One ExpertMLP per slice of the fused input weight `first` / `down_proj` (and biases)."""
        gate, weight = ExpertGate(fused, gated=first == IN_PROJ[True]), getattr(fused, first)
        experts = cls(ExpertMLP(_linear(_slice(weight, e, transposed), _at(biases[0], e)),
                                _linear(_slice(fused.down_proj, e, transposed), _at(biases[1], e)), gate, first)
                      for e in range(weight.shape[0]))
        experts.transposed = transposed
        return experts

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


class ScoredInputMoE(nn.Module):
    """Llama 4's MoE block (`Llama4TextMoe`) with its experts unfused. Its router gives each token a sigmoid
    score for its top-k experts and 0 for the others, and an expert's *input* is the token times its score;
    transformers runs every expert on every token (an unchosen one on a row of zeros, whose output is 0: no
    biases, act(0) * 0 = 0). Here each expert runs on the tokens it scores above 0 only, so its Hessian and
    `fewest_expert_tokens` count the tokens routed to it; the outputs are summed into the shared expert's, as
    transformers does (within float rounding of its batched kernels, tests/test_moe.py)."""

    token_local = True  # each token's output reads its own routing and its own row only (eval/model_traits)

    def __init__(self, moe: nn.Module) -> None:
        super().__init__()
        self.hidden_dim, self.router, self.shared_expert = moe.hidden_dim, moe.router, moe.shared_expert
        self.experts = LinearExperts.from_weights(moe.experts, transposed=True)  # stored (in, out)

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = hidden_states.reshape(-1, self.hidden_dim)
        scores, router_logits = self.router(x)  # (tokens, experts)
        routed = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            rows = (scores[:, e] > 0).nonzero()[:, 0]
            if len(rows):
                routed.index_add_(0, rows, expert(x[rows] * scores[rows, e, None]).to(x.dtype))
        return self.shared_expert(x).add_(routed), router_logits


# MoE block classes whose experts are replaced together with the block's forward (by class name: nothing
# imported), and the module that does it
SCORED_INPUT_BLOCKS = {"Llama4TextMoe": ScoredInputMoE}


def _at(bias: torch.Tensor | None, e: int) -> torch.Tensor | None:
    return None if bias is None else _slice(bias, e)


def unfuse_experts(model: Any) -> int:
    """Replace every block's fused experts by `LinearExperts` (once: unfused ones are left); returns how many
    blocks changed. A no-op for families without experts. The experts' paths are those of the family's layouts
    (a hybrid's MoE blocks may be a variant's); a block without any is an error unless a layout has none."""
    family = family_of_config(model.config)
    paths = sorted({f.experts for f in family.all_layouts if f.experts})
    if not paths:
        return 0
    expert_free = any(not f.experts for f in family.all_layouts)  # dense blocks, a hybrid's other blocks
    changed = 0
    for layer in model.get_submodule(family.blocks):
        found = [(path, fused) for path in paths if (fused := submodule_or_none(layer, path)) is not None]
        if not found and not expert_free:
            raise QuantError(f"{type(layer).__name__}: no experts at '{paths[0]}' (family registry)")
        for path, fused in found:
            changed += _unfuse_at(layer, path, fused)
    return changed


def submodule_or_none(layer: nn.Module, path: str) -> nn.Module | None:
    """The module at `path` inside `layer`, or None (also where a module on the path is None: Granite 4.0-H's
    `block_sparse_moe` without experts)."""
    try:
        return layer.get_submodule(path)
    except AttributeError:
        return None


def _unfuse_at(layer: nn.Module, path: str, fused: nn.Module) -> int:
    """Replace the fused experts at `path` (Llama 4: the MoE block holding them); 0 if already unfused."""
    if isinstance(fused, LinearExperts):
        return 0
    parent_path, _, leaf = path.rpartition(".")
    parent = layer.get_submodule(parent_path) if parent_path else layer
    if type(parent).__name__ in SCORED_INPUT_BLOCKS:  # Llama 4: the block itself is replaced
        owner_path, _, name = parent_path.rpartition(".")
        owner = layer.get_submodule(owner_path) if owner_path else layer
        setattr(owner, name, SCORED_INPUT_BLOCKS[type(parent).__name__](parent))
    else:
        setattr(parent, leaf, LinearExperts.from_fused(fused))
    return 1


__all__ = ["KNOWN_LAYOUT", "ExpertGate", "ExpertMLP", "LinearExperts", "ScoredInputMoE", "split_fused",
           "submodule_or_none", "unfuse_experts"]
