"""A multimodal wrapper's towers: transformers' *ForConditionalGeneration keeps its text decoder under
`model.language_model` and, beside it, vision / audio towers and their projectors, which a text-only forward
never runs. What a row says of the model (parameters, weight bytes) and what FastLM reads of it (the
`token_local` claims of its modules) are the text decoder's and the LM head's; a text-only model has no towers."""

from __future__ import annotations

from torch import nn


def tower_modules(model: nn.Module) -> list[nn.Module]:
    """The wrapper's parts beside its text decoder (the children of `model.model` other than `language_model`);
    [] for a model without one."""
    inner = getattr(model, "model", None)
    text = getattr(inner, "language_model", None)
    if not isinstance(inner, nn.Module) or not isinstance(text, nn.Module):
        return []
    return [m for m in inner.children() if m is not text]


def tower_tensor_ids(model: nn.Module) -> set[int]:
    """ids of the towers' parameters and buffers (a tensor the text decoder also holds is not one)."""
    towers = tower_modules(model)
    if not towers:
        return set()
    text = {id(t) for t in model.model.language_model.state_dict(keep_vars=True).values()}
    return {id(t) for m in towers for t in m.state_dict(keep_vars=True).values()} - text


def tower_module_ids(model: nn.Module) -> set[int]:
    """ids of every module inside the towers."""
    return {id(sub) for m in tower_modules(model) for sub in m.modules()}
