"""What FastLM must know about a model before it regroups its rows (eval/fast_lm.py, "Numerics"):
whether every token is computed from its own and earlier tokens only (`token_local_model`), whether
something declares that it mixes tokens (`mixes_tokens`), and whether its KV cache is one FastLM can
fill exactly (`shareable_cache`, `positions_from_cache`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

# modules that round (quantized layers) although they come from torch / transformers
_ROUNDING_MODULES = ("torch.ao.", "transformers.integrations.", "transformers.quantizers.")


def _token_local(obj: Any) -> bool | None:
    """An object's own `token_local` claim (True: it rounds every token from that token's vector alone,
    e.g. per-token activation fake quantization, BitNet's BitLinear); None when it makes none."""
    value = getattr(obj, "token_local", None)
    return value if isinstance(value, bool) else None


def _claims(model: torch.nn.Module) -> Iterator[bool | None]:
    """The `token_local` claim of every hook and every module class; a stock torch / transformers float
    module that makes none counts as token-local (True). A multimodal wrapper's towers, which a text-only
    forward never runs (timm's modules in Gemma 3n's vision tower), claim nothing (`models.towers`)."""
    from ptq_bench.models.towers import tower_module_ids

    towers = tower_module_ids(model)
    for m in (m for m in model.modules() if id(m) not in towers):
        for hook in (*m._forward_hooks.values(), *m._forward_pre_hooks.values()):
            yield _token_local(hook)
        where = type(m).__module__
        stock = where.startswith(("torch.", "transformers.")) and not where.startswith(_ROUNDING_MODULES)
        claim = _token_local(type(m))
        yield True if claim is None and stock else claim


def token_local_model(model: torch.nn.Module) -> bool:
    """True when everything that is not a stock float module declares itself token-local (`token_local`
    True on the module class or the hook): then each token's value depends only on its own and earlier
    positions' tokens, as in a float model, and a cached prefix is the same computation — up to float
    summation order, which HFLM itself changes with its batch size (module docstring, "Numerics")."""
    if getattr(getattr(model, "config", None), "quantization_config", None) is not None:
        return False
    return all(claim is True for claim in _claims(model))


def mixes_tokens(model: torch.nn.Module) -> bool:
    """True when a module or hook declares `token_local = False` (e.g. per-tensor activation scales: one
    token's rounding depends on its batch mates): no path but HFLM's own batching may score it."""
    return any(claim is False for claim in _claims(model))


# model types whose transformers code refuses `DynamicCache` (whatever layers their config gives it)
OWN_CACHE = {"minimax": "it takes only its own cache class (MiniMaxCache)",
             "xlstm": "it takes only its own cache class (xLSTMCache)"}
# model types whose cache is of aligned kinds but whose transformers code does not continue from it as one
# forward would, or takes no DynamicCache (tests/test_fastlm_families.py shows each): the plain path is theirs
NOT_ALIGNED = {
    "jamba": "its Mamba-1 layers continue from a cached state ~1e-3 away from one forward over the whole row",
    # transformers' Mamba-1 scan over several tokens starts from a zero state, whatever the cache holds
    "mamba": "its Mamba-1 scan over several tokens ignores the cached state (a continuation ~3e-2 off)",
    "falcon_mamba": "its Mamba-1 scan over several tokens ignores the cached state (a continuation ~0.6 off)",
    # its recurrent and convolution states live on its modules, not in the cache FastLM would fork
    "recurrent_gemma": "a multi-token continuation restarts its convolution from zeros (~7e-2 off)",
    **OWN_CACHE,
}


def _cache_layers(model: torch.nn.Module) -> list:
    """The layers of the cache the model builds itself (`DynamicCache(config=model.config)`); [] where there
    is none FastLM may build (no config, a config transformers cannot build one from, `OWN_CACHE`)."""
    from transformers import DynamicCache

    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) in OWN_CACHE:
        return []  # e.g. a MiniMax without lightning layers: attention layers only, yet no DynamicCache
    try:
        return DynamicCache(config=config).layers  # no config: []
    except (AttributeError, KeyError, TypeError, ValueError):
        return []


def shareable_cache(model: torch.nn.Module) -> bool:
    """True when the model's own cache is made of layers whose bookkeeping `FastLM._prefix_cache` knows:
    full (`DynamicLayer`) and sliding-window (`DynamicSlidingWindowLayer`). Anything else (chunked attention,
    KV sharing, recurrent states, no config) -> another path."""
    from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

    layers = _cache_layers(model)
    return bool(layers) and all(type(layer) in (DynamicLayer, DynamicSlidingWindowLayer) for layer in layers)


def aligned_cache(model: torch.nn.Module) -> bool:
    """True when the model's own cache holds recurrent or convolution states (a hybrid's Mamba, Gated
    DeltaNet, short-convolution layers: `LinearAttentionCacheLayerMixin`) beside layers `FastLM` knows: one
    state per row, taken at the end of its prefix, so prefixes may share a forward only when they have the same
    length (no padding before a real token) and a row's cache is its document's, forked (`reorder_cache`)."""
    from transformers.cache_utils import (
        DummyLayer,
        DynamicLayer,
        DynamicSlidingWindowLayer,
        LinearAttentionAndFullAttentionLayer,
        LinearAttentionAndSlidingWindowAttentionLayer,
        LinearAttentionCacheLayerMixin,
        LinearAttentionLayer,
    )

    known = (DynamicLayer, DynamicSlidingWindowLayer, LinearAttentionLayer, LinearAttentionAndFullAttentionLayer,
             LinearAttentionAndSlidingWindowAttentionLayer, DummyLayer)  # Dummy: a block without a cache (an MLP)
    if getattr(getattr(model, "config", None), "model_type", None) in NOT_ALIGNED:
        return False
    layers = _cache_layers(model)
    return all(type(layer) in known for layer in layers) and \
        any(isinstance(layer, LinearAttentionCacheLayerMixin) for layer in layers)


def positions_from_cache(model: torch.nn.Module, max_length: int) -> bool:
    """True when a layer takes a token's position from its cache's length rather than from position_ids,
    at positions below `max_length`: Llama 4's NoPE layers scale q by log1p(floor((p + 1) / floor_scale)), p
    counted from the cache's length, so FastLM's prefix caches (padded to the longest prefix of a window)
    would move it. Below floor_scale - 1 the scale is exactly 1 and nothing depends on the cache."""
    config = getattr(model, "config", None)
    return bool(getattr(config, "attn_temperature_tuning", False)) and \
        getattr(config, "floor_scale", max_length + 1) <= max_length
