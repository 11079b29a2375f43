"""A checkpoint folder opened without materializing its decoder blocks, for models larger than host memory.

`open_lazily(folder)` builds the model from the folder's config with every parameter on `meta` (buffers,
e.g. rotary tables, are built as usual), then reads from the checkpoint's safetensors files everything
outside the decoder blocks (embeddings, final norm, head) and every persistent buffer. Block parameters
stay `meta`; the returned `CheckpointBlocks` reads block i's on demand (memory-mapped, tensor by tensor).
`quant.placement.DiskPlacement(folder, source=blocks)` fetches blocks from it, so calibration and a
streamed evaluation (`quant.placement.streamed`) hold one block at a time.

Tensor names: the checkpoint's names go through transformers' own loading transforms for the model
(`conversion_mapping.get_model_conversion_mapping`, matched by `core_model_loading.rename_source_key` as
`from_pretrained` matches them): renamings (e.g. GPT-NeoX's `embed_out.` -> `lm_head.`) and converters,
which build one model tensor from several checkpoint tensors (a mixture of experts stored one tensor per
expert, merged into transformers' fused 3-D experts). A converted tensor is built when its block is read,
by a copy of transformers' converter. A checkpoint without safetensors, or one whose names still differ
from the model's, is an error naming the difference. The dtype is the one `from_pretrained` gives (the
config's `dtype`; float32 when absent).

Mixtures of experts: the model's fused experts are unfused (`models.experts.unfuse_experts`, on `meta`),
and a block's fused expert tensors, once read and converted, are split into the per-expert linears'
(`experts.split_fused`): one block's experts are in memory at a time. Tests compare with `from_pretrained`.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ptq_bench.errors import QuantError, first_line
from ptq_bench.families import family_of_config
from ptq_bench.models.build import kept_in_float32
from ptq_bench.models.experts import LinearExperts, split_fused, unfuse_experts
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
    """Checkpoint tensor name -> its safetensors file: the single file where there is one, else the sharded
    index, in `from_pretrained`'s order (a folder re-saved unsharded keeps the old index beside the file)."""
    from safetensors import safe_open

    index, single = folder / SAFETENSORS_INDEX, folder / SAFETENSORS_FILE
    if not single.is_file() and index.is_file():
        return {k: folder / f for k, f in json.loads(index.read_text())["weight_map"].items()}
    if not single.is_file():
        raise QuantError(f"{folder}: no {SAFETENSORS_FILE} or {SAFETENSORS_INDEX}; offloaded loading "
                         "reads safetensors checkpoints only")
    with safe_open(str(single), "pt") as f:
        return dict.fromkeys(f.keys(), single)


def _transforms(model: nn.Module) -> tuple[list[Any], list[Any]]:
    """transformers' (renamings, converters) for loading this model's checkpoints, as `from_pretrained` uses."""
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightConverter, WeightRenaming

    transforms = get_model_conversion_mapping(model)
    return ([t for t in transforms if isinstance(t, WeightRenaming)],
            [t for t in transforms if isinstance(t, WeightConverter)])


@dataclass
class Converted:
    """A model tensor transformers builds from several checkpoint tensors (e.g. a block's experts, one tensor
    each in the checkpoint): its converter (copied for each read), the model name of its first target, and its
    sources in loading order."""

    converter: Any
    first: str
    sources: list[tuple[str, str, Path]] = field(default_factory=list)  # (checkpoint key, pattern, file)

    @property
    def targets(self) -> list[str]:
        """Every model tensor the converter gives (one, or several for a one-to-many conversion)."""
        patterns = self.converter.target_patterns
        return [self.first.replace(patterns[0], t) for t in patterns]


class CheckpointBlocks:
    """Reads tensors of a safetensors checkpoint by the model's names, converted to the model's dtype.

    `files`: model name -> (file, checkpoint key) for tensors stored as they are; `converted`: the first
    target name -> `Converted` for tensors transformers builds; `experts[i]`: block i's unfused experts
    (path inside the block -> stored transposed), whose fused tensors `block(i)` splits per expert."""

    def __init__(self, folder: Path, files: dict[str, tuple[Path, str]], blocks: str, dtype: torch.dtype,
                 converted: dict[str, Converted] | None = None, config: Any = None,
                 kept: frozenset[str] = frozenset(), model: Any = None) -> None:
        self.folder, self.files, self.blocks, self.dtype = folder, files, blocks, dtype
        self.converted, self.config = converted or {}, config
        self.model = model  # the (meta) model: a Split conversion sizes its pieces by the target parameters' shapes
        self.kept = kept  # names from_pretrained keeps in float32 whatever the dtype (`build.kept_in_float32`)
        self.experts: list[dict[str, bool]] = []  # set by open_lazily once the model's experts are unfused

    def names(self) -> list[str]:
        """Every model tensor (fused experts as transformers names them) this checkpoint gives."""
        return [*self.files, *(t for c in self.converted.values() for t in c.targets)]

    def read(self, names: list[str], device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        wanted = set(names)
        direct = {n: self.files[n] for n in names if n in self.files}
        out = _read_tensors(direct, device)
        for conv in self.converted.values():
            if wanted & set(conv.targets):
                out.update(self._convert(conv, device))
        return {n: t.to(torch.float32 if n in self.kept else self.dtype) if t.is_floating_point() else t
                for n, t in out.items() if n in wanted}

    def _convert(self, conv: Converted, device: torch.device | str) -> dict[str, torch.Tensor]:
        """transformers' conversion of `conv`'s source tensors (a copy of its converter, as loading makes)."""
        converter = copy.deepcopy(conv.converter)
        read = _read_tensors({key: (file, key) for key, _, file in conv.sources}, device)
        for key, pattern, _ in conv.sources:
            converter.add_tensor(conv.first, key, pattern, read.pop(key))
        made = converter.convert(conv.first, model=self.model, config=self.config)
        return {n: t[0] if isinstance(t, list) else t for n, t in made.items()}

    def block(self, idx: int, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """Block idx's tensors, named inside the block (`self_attn.q_proj.weight`; an expert's linears as
        `LinearExperts` names them)."""
        prefix = f"{self.blocks}.{idx}."
        got = self.read([n for n in self.names() if n.startswith(prefix)], device)
        tensors = {n[len(prefix):]: t for n, t in got.items()}
        return split_fused(tensors, self.experts[idx]) if idx < len(self.experts) else tensors


def _read_tensors(where: dict[str, tuple[Path, str]], device: torch.device | str) -> dict[str, torch.Tensor]:
    """name -> tensor for each name's (safetensors file, key), one open per file."""
    from safetensors import safe_open

    out: dict[str, torch.Tensor] = {}
    by_file: dict[Path, list[str]] = {}
    for n, (file, _) in where.items():
        by_file.setdefault(file, []).append(n)
    for file, group in by_file.items():
        with safe_open(str(file), "pt", device=str(device)) as f:
            for n in group:
                out[n] = f.get_tensor(where[n][1])
    return out


def open_lazily(folder: str | Path) -> tuple[Any, CheckpointBlocks]:
    """(model with `meta` block parameters and everything else read, the reader of its blocks)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = Path(folder)
    config = AutoConfig.from_pretrained(folder)
    family = family_of_config(config)
    weight_map = _weight_map(folder)
    dtype = getattr(config, "dtype", None) or _stored_dtype(weight_map)
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    with _parameters_on_meta(), torch.random.fork_rng(devices=[]):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
    files, converted = _model_names(model, weight_map)
    blocks = CheckpointBlocks(folder, files, family.blocks, dtype, converted, config=config,
                              kept=frozenset(kept_in_float32(model, dtype)), model=model)
    _fill_outside_blocks(model, blocks)  # before unfusing: fused experts are the blocks' parameters still
    unfuse_experts(model)  # on `meta`: CheckpointBlocks splits each block's fused experts as it reads them
    blocks.experts = [{n: m.transposed for n, m in layer.named_modules() if isinstance(m, LinearExperts)}
                      for layer in model.get_submodule(family.blocks)]
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


def _model_names(model: nn.Module, weight_map: dict[str, Path]) -> tuple[dict[str, tuple[Path, str]],
                                                                            dict[str, Converted]]:
    """(model name -> (file, checkpoint name) for tensors stored as they are, converted tensors), matched as
    `from_pretrained` matches them; the names must cover the model's tensors, tied ones aside."""
    from transformers.core_model_loading import dot_natural_key, rename_source_key

    renamings, converters = _transforms(model)
    by_pattern = {p: c for c in converters for p in c.source_patterns}
    meta = model.state_dict()
    files: dict[str, tuple[Path, str]] = {}
    converted: dict[str, Converted] = {}
    for key in sorted(weight_map, key=dot_natural_key):  # the order loading stacks experts in
        name, pattern = rename_source_key(key, renamings, converters, model.base_model_prefix, meta)
        if name not in meta and key in meta:
            name, pattern = key, None
        if pattern is None:
            files[name] = (weight_map[key], key)
            continue
        converted.setdefault(name, Converted(by_pattern[pattern], name)).sources.append((key, pattern, weight_map[key]))
    ignored = _ignored_on_loading(model, {*files, *(t for c in converted.values() for t in c.targets)} - set(meta))
    files = {n: f for n, f in files.items() if n not in ignored}
    converted = {n: c for n, c in converted.items() if not set(c.targets) <= ignored}
    given = {*files, *(t for c in converted.values() for t in c.targets)}
    tied = _tied_names(model)
    wanted = {n for n in meta if n not in tied or not any(t in given for t in tied[n])}
    if missing := sorted(wanted - given):
        raise QuantError(f"checkpoint lacks {len(missing)} of the model's tensors (first: {missing[0]}), which "
                         "transformers would fill with random values: re-save the checkpoint")
    if extra := sorted(given - set(meta)):
        raise QuantError(f"checkpoint has {len(extra)} tensors the model does not (first: {extra[0]}); "
                         "load it in memory")
    headers = _check_stored(meta, files, converted)
    _check_converted(model, meta, converted, headers)
    return files, converted


def _check_converted(model: nn.Module, meta: dict[str, torch.Tensor], converted: dict[str, Converted],
                     headers: dict[str, tuple[list[int], str]]) -> None:
    """transformers' conversions run on `meta` tensors of the stored shapes: experts of another shape than the
    others (which `from_pretrained` refuses) are an error now, not a traceback when their block is read."""
    for conv in converted.values():
        converter = copy.deepcopy(conv.converter)
        for key, pattern, _ in conv.sources:
            shape, dtype = headers[key][0], SAFETENSORS_DTYPES.get(headers[key][1], torch.float32)
            converter.add_tensor(conv.first, key, pattern, torch.empty(shape, dtype=dtype, device="meta"))
        try:
            made = converter.convert(conv.first, model=model, config=model.config)
        except RuntimeError as e:
            raise QuantError(f"checkpoint tensors of {conv.first} cannot be converted as transformers converts "
                             f"them: {first_line(e, type(e).__name__)}") from None
        for name, t in made.items():
            t = t[0] if isinstance(t, list) else t
            if name in meta and tuple(t.shape) != tuple(meta[name].shape):
                raise QuantError(f"checkpoint tensors of {name} give shape {list(t.shape)}, the model's is "
                                 f"{list(meta[name].shape)} (config.json): re-save the checkpoint")


def _check_stored(meta: dict[str, torch.Tensor], files: dict[str, tuple[Path, str]],
                  converted: dict[str, Converted]) -> dict[str, tuple[list[int], str]]:
    """Every tensor is in the file the index names, and one stored as it is has the model's shape and a float
    dtype where the model's is float, as `from_pretrained` checks before it loads anything; a block read later
    would otherwise fail mid-run, or broadcast (a norm of shape [1]) into rows no loaded model gives.
    Returns checkpoint key -> (stored shape, safetensors dtype)."""
    from safetensors import safe_open

    headers: dict[str, tuple[list[int], str]] = {}
    by_file: dict[Path, list[tuple[str | None, str]]] = {}
    for name, (file, key) in files.items():
        by_file.setdefault(file, []).append((name, key))
    for conv in converted.values():
        for key, _, file in conv.sources:
            by_file.setdefault(file, []).append((None, key))
    for file, group in by_file.items():
        if not file.is_file():
            raise QuantError(f"{SAFETENSORS_INDEX} names {file.name}, which is missing: re-save or re-download the checkpoint")
        with safe_open(str(file), "pt") as f:
            keys = set(f.keys())
            for name, key in group:
                if key not in keys:
                    raise QuantError(f"{SAFETENSORS_INDEX} places {key} in {file.name}, which lacks it: re-save the checkpoint")
                stored = f.get_slice(key)
                headers[key] = (stored.get_shape(), stored.get_dtype())
                if name is None:
                    continue
                want = meta[name]
                if tuple(stored.get_shape()) != tuple(want.shape):
                    raise QuantError(f"checkpoint tensor {key} has shape {list(stored.get_shape())}, the model's "
                                     f"{name} {list(want.shape)} (config.json): re-save the checkpoint")
                if want.is_floating_point() and not stored.get_dtype().startswith(("F", "BF")):
                    raise QuantError(f"checkpoint tensor {key} is stored as {stored.get_dtype()}, the model's "
                                     f"{name} is {want.dtype}: re-save the checkpoint")
    return headers


def _ignored_on_loading(model: nn.Module, unexpected: set[str]) -> set[str]:
    """The checkpoint tensors the model does not have that `from_pretrained` drops without a word (its
    `_keys_to_ignore_on_load_unexpected`: Qwen3-Next's multi-token-prediction `mtp.*`, a multimodal
    checkpoint's vision tower for its text decoder), by transformers' own rule."""
    from types import SimpleNamespace

    info = SimpleNamespace(missing_keys=set(), unexpected_keys=set(unexpected))
    model._adjust_missing_and_unexpected_keys(info)
    return unexpected - info.unexpected_keys


def _tied_names(model: nn.Module) -> dict[str, list[str]]:
    """Parameter name -> the other names of the same parameter object (tied embeddings and head)."""
    by_id: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        by_id.setdefault(id(p), []).append(name)
    return {n: [o for o in names if o != n] for names in by_id.values() if len(names) > 1 for n in names}


def _fill_outside_blocks(model: nn.Module, blocks: CheckpointBlocks) -> None:
    """Every parameter outside the blocks and every persistent buffer, read (tied names share one Parameter,
    unless the checkpoint stores them with different values: `from_pretrained` then unties them)."""
    prefix = blocks.blocks + "."
    tied = _tied_names(model)
    params = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    wanted = [n for n in blocks.names() if n not in params or not n.startswith(prefix)]  # buffers anywhere
    got = blocks.read(wanted)
    for name, t in got.items():
        if name in params:
            p = nn.Parameter(t, requires_grad=False)
            for n in [name, *(o for o in tied.get(name, []) if o not in got or torch.equal(got[o], t))]:
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
