"""The model `ptq-bench estimate` times, held as `run` holds it: in memory on the device, cast to the
recipe's `dtype`, or, with `offload: true`, opened with its decoder blocks on disk and read one block at a
time while it is evaluated or quantized (`quant.placement`). Offloaded blocks that a probe quantizes are
written under a scratch folder that `estimate` removes; a GGUF source is read from the cache's converted
folder when `run` made one, else converted into that scratch folder. Nothing goes into the cache."""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ptq_bench.recipe import Recipe, model_arch, source_info


@dataclass
class Probe:
    """A model under timing and how its blocks are reached (`blocks` None: in memory)."""

    model: Any
    vocab: int
    tokenizer: Any  # its own tokenizer, or None for a model trained here (the recipe's is shared)
    device: str
    scratch: Path
    blocks: Any = None  # with offload: the checkpoint's `models.lazy.CheckpointBlocks`

    def _placement(self) -> Any:
        """A fresh disk placement: blocks read from the checkpoint, written (when quantized) to a new folder."""
        from ptq_bench.quant.placement import scratch_placement

        return scratch_placement(self.scratch, self.device, self.blocks)

    def evaluating(self) -> Any:
        """Around a forward of the probe's model: its blocks streamed when offloaded."""
        from ptq_bench.quant.placement import streamed

        return contextlib.nullcontext() if self.blocks is None else streamed(self.model, self._placement())

    def quantizing(self) -> Any:
        """Around a method's `apply` (a fresh placement each time: no probe reads another's blocks)."""
        from ptq_bench.quant.placement import use_placement

        return contextlib.nullcontext() if self.blocks is None else use_placement(self._placement())


def open_model(recipe: Recipe, name: str, device: str, scratch: Path, vocab: int | None = None) -> Probe:
    """Model `name` as `run` would hold it (before any training: `cast` after the training step is timed):
    built at its shape when trained here (`vocab`: the fitted tokenizer's size, which may stop short of
    tokenizer.vocab_size, as `run` builds it; default the recipe's), else loaded (offload: opened) with its tokenizer."""
    spec = recipe.models[name]
    if spec.source is None:
        from ptq_bench.models.build import build_model

        vocab = vocab or recipe.tokenizer.vocab_size
        model = build_model(spec.kind, model_arch(recipe, name), vocab, seed=recipe.seed).to(device)
        return Probe(model, vocab, None, device, scratch)
    from ptq_bench.prepare import open_checkpoint  # as `run` holds it; an unloadable checkpoint: one line

    info = source_info(recipe, name)
    cache = _conversions(recipe, info, scratch) if recipe.offload else None  # in memory: a GGUF read directly
    model, tok, _kind, blocks = open_checkpoint(recipe, name, info, device, cache)
    return Probe(model, _vocab(model), tok, device, scratch, blocks)  # validate refused a source without a tokenizer


def _vocab(model: Any) -> int:
    """The ids a probe may draw: the text decoder's vocabulary (a multimodal wrapper's config has no top-level one)."""
    return model.config.get_text_config().vocab_size


def cast(recipe: Recipe, probe: Probe) -> None:
    """The recipe's `dtype`, as `sweep.base_model` casts every model after loading or training it (never
    an offloaded one: `recipe.check_dtype`)."""
    if recipe.dtype != "auto":
        import torch

        from ptq_bench.models.build import cast_model

        cast_model(probe.model, getattr(torch, recipe.dtype))


def _conversions(recipe: Recipe, info: Any, scratch: Path) -> Path:
    """Where a GGUF source's converted folder is read from: the cache's, when a run made it, else scratch."""
    from ptq_bench.source_load import has_conversion

    cache = recipe.cache_path / "sources"
    return cache if has_conversion(info, cache) else scratch


def first_blocks(model: Any, k: int) -> Any:
    """A copy of `model` with only its first `k` decoder blocks (`ptq-bench estimate` times methods on
    a few blocks); the other blocks are never copied, and the tensors outside the blocks (embeddings,
    final norm, LM head), which no method changes, are shared (`outside_blocks`)."""
    import torch.nn as nn

    from ptq_bench.quant.calibrate import decoder_layers, model_family

    parent_path, _, leaf = model_family(model).blocks.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    layers = decoder_layers(model)
    setattr(parent, leaf, nn.ModuleList(list(layers)[:k]))
    try:
        return copy.deepcopy(model, outside_blocks(model))
    finally:
        setattr(parent, leaf, layers)


def outside_blocks(model: Any) -> dict[int, Any]:
    """A `copy.deepcopy` memo that shares every parameter and buffer outside the decoder blocks: a copy made
    with it costs the blocks' bytes only (a 1.1B Llama's embeddings and LM head are 0.52 GB in fp32)."""
    from ptq_bench.quant.calibrate import model_family

    prefix = model_family(model).blocks + "."
    tensors = [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]
    return {id(t): t for name, t in tensors if not name.startswith(prefix)}
