"""A checkpoint folder opened without materializing its decoder blocks, for models larger than host memory.

`open_lazily(folder)` builds the model from the folder's config with every parameter on `meta` (buffers,
e.g. rotary tables, are built as usual), then reads from the checkpoint's safetensors files everything
outside the decoder blocks (embeddings, final norm, head) and every persistent buffer. Block parameters
stay `meta`; the returned `CheckpointBlocks` reads block i's on demand (memory-mapped, tensor by tensor).
`quant.placement.DiskPlacement(folder, source=blocks)` fetches blocks from it, so calibration and a
streamed evaluation (`quant.placement.streamed`) hold one block at a time.

Tensor names: the checkpoint's names go through transformers' own renamings for the model
(`conversion_mapping.get_model_conversion_mapping`, e.g. GPT-NeoX's `embed_out.` -> `lm_head.`); a model
that needs another conversion (merged or split tensors), a checkpoint without safetensors, or one whose
names still differ from the model's is an error naming the difference. The dtype is the one
`from_pretrained` gives (the config's `dtype`; float32 when absent). Tests compare with `from_pretrained`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ptq_bench.errors import QuantError
from ptq_bench.families import family_of_config
from ptq_bench.sources import SAFETENSORS_FILE, SAFETENSORS_INDEX


@contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Every parameter registered inside the `with` is replaced by a `meta` one (no memory); buffers are not."""
    original = nn.Module.register_parameter

    def register(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        original(module, name, param)
        if param is not None and not param.is_meta:
            module._parameters[name] = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    nn.Module.register_parameter = register  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = original  # type: ignore[method-assign]


def _weight_map(folder: Path) -> dict[str, Path]:
    """Checkpoint tensor name -> its safetensors file (a single file, or the sharded index)."""
    from safetensors import safe_open

    index = folder / SAFETENSORS_INDEX
    if index.is_file():
        return {k: folder / f for k, f in json.loads(index.read_text())["weight_map"].items()}
    single = folder / SAFETENSORS_FILE
    if not single.is_file():
        raise QuantError(f"{folder}: no {SAFETENSORS_FILE} or {SAFETENSORS_INDEX}; offloaded loading "
                         "reads safetensors checkpoints only")
    with safe_open(str(single), "pt") as f:
        return dict.fromkeys(f.keys(), single)


def _renamings(model: nn.Module) -> list[tuple[str, str]]:
    """transformers' (checkpoint pattern, model name) renamings for this model; other conversions are errors."""
    from transformers.conversion_mapping import WeightRenaming, get_model_conversion_mapping

    out = []
    for t in get_model_conversion_mapping(model):
        if not isinstance(t, WeightRenaming):
            raise QuantError(f"{type(model).__name__}: its checkpoint needs a {type(t).__name__} conversion on "
                             "loading, which offloaded loading does not do; load it in memory")
        targets = t.target_patterns * len(t.source_patterns) if len(t.target_patterns) == 1 else t.target_patterns
        out += list(zip(t.source_patterns, targets, strict=True))  # several sources may share one target
    return out


class CheckpointBlocks:
    """Reads tensors of a safetensors checkpoint by the model's names, converted to the model's dtype."""

    def __init__(self, folder: Path, files: dict[str, tuple[Path, str]], blocks: str, dtype: torch.dtype) -> None:
        self.folder, self.files, self.blocks, self.dtype = folder, files, blocks, dtype  # files: name -> (file, key)

    def read(self, names: list[str], device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        from safetensors import safe_open

        out: dict[str, torch.Tensor] = {}
        by_file: dict[Path, list[str]] = {}
        for n in names:
            by_file.setdefault(self.files[n][0], []).append(n)
        for file, group in by_file.items():
            with safe_open(str(file), "pt", device=str(device)) as f:
                for n in group:
                    t = f.get_tensor(self.files[n][1])
                    out[n] = t.to(self.dtype) if t.is_floating_point() else t
        return out

    def block(self, idx: int, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """Block idx's tensors, named inside the block (`self_attn.q_proj.weight`)."""
        prefix = f"{self.blocks}.{idx}."
        got = self.read([n for n in self.files if n.startswith(prefix)], device)
        return {n[len(prefix):]: t for n, t in got.items()}


def open_lazily(folder: str | Path) -> tuple[Any, CheckpointBlocks]:
    """(model with `meta` block parameters and everything else read, the reader of its blocks)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = Path(folder)
    config = AutoConfig.from_pretrained(folder)
    family = family_of_config(config)
    if family.experts:  # `validate` refuses `offload: true` for these first
        raise QuantError(f"model family '{config.model_type}': a mixture of experts is not opened lazily (its "
                         "experts are unfused on loading, models/experts.py); load it in memory")
    weight_map = _weight_map(folder)
    dtype = getattr(config, "dtype", None) or _stored_dtype(weight_map)
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    with _parameters_on_meta(), torch.random.fork_rng(devices=[]):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
    files = _model_names(model, weight_map)
    blocks = CheckpointBlocks(folder, files, family.blocks, dtype)
    _fill_outside_blocks(model, blocks)
    return model, blocks


SAFETENSORS_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64}


def _stored_dtype(weight_map: dict[str, Path]) -> torch.dtype:
    """The dtype `from_pretrained` gives a checkpoint whose config names none: its first float tensor's."""
    from safetensors import safe_open

    for key, file in sorted(weight_map.items(), key=lambda kv: (str(kv[1]), kv[0])):
        with safe_open(str(file), "pt") as f:
            stored = SAFETENSORS_DTYPES.get(f.get_slice(key).get_dtype())
        if stored is not None:
            return stored
    return torch.float32


def _model_names(model: nn.Module, weight_map: dict[str, Path]) -> dict[str, tuple[Path, str]]:
    """Model tensor name -> (file, checkpoint name); the names must cover the model's tensors, tied ones aside."""
    renames = _renamings(model)
    files = {}
    for key, file in weight_map.items():
        name = key
        for pattern, target in renames:
            name = re.sub(pattern, target, name)
        files[name] = (file, key)
    tied = _tied_names(model)
    wanted = {n for n in model.state_dict() if n not in tied or not any(t in files for t in tied[n])}
    if missing := sorted(wanted - set(files)):
        raise QuantError(f"checkpoint lacks {len(missing)} of the model's tensors (first: {missing[0]}); "
                         "load it in memory")
    if extra := sorted(set(files) - set(model.state_dict())):
        raise QuantError(f"checkpoint has {len(extra)} tensors the model does not (first: {extra[0]}); "
                         "load it in memory")
    return files


def _tied_names(model: nn.Module) -> dict[str, list[str]]:
    """Parameter name -> the other names of the same parameter object (tied embeddings and head)."""
    by_id: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        by_id.setdefault(id(p), []).append(name)
    return {n: [o for o in names if o != n] for names in by_id.values() if len(names) > 1 for n in names}


def _fill_outside_blocks(model: nn.Module, blocks: CheckpointBlocks) -> None:
    """Every parameter outside the blocks and every persistent buffer, read (tied names share one Parameter)."""
    prefix = blocks.blocks + "."
    tied = _tied_names(model)
    params = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    wanted = [n for n in blocks.files if n not in params or not n.startswith(prefix)]  # buffers anywhere
    for name, t in blocks.read(wanted).items():
        if name in params:
            p = nn.Parameter(t, requires_grad=False)
            for n in [name, *tied.get(name, [])]:
                module, leaf = _owner(model, n)
                module._parameters[leaf] = p
        else:
            module, leaf = _owner(model, name)
            module._buffers[leaf] = t
    if left := [n for n, p in model.named_parameters() if p.is_meta and not n.startswith(prefix)]:
        raise QuantError(f"offloaded loading left {left[0]} unread")


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    """(the module holding tensor `name`, its attribute name)."""
    owner, _, leaf = name.rpartition(".")
    return model.get_submodule(owner), leaf
