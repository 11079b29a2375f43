"""Where the decoder blocks live while the calibration runner (`calibrate.run_blockwise`) works.

`DevicePlacement(device)` leaves the model on the CPU and brings one block at a time to the device;
`DiskPlacement(folder)` also keeps the other blocks' parameters in per-block safetensors files (and, with
a lazily opened checkpoint as its `source`, never needs the whole model in memory). The base `Placement`
keeps everything where it is. `use_placement` sets one around a method's `apply`; `streamed` evaluates a
model whose blocks live elsewhere, one block at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ptq_bench.errors import QuantError
from ptq_bench.families import family_of_config


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


class Placement:
    """Where the decoder blocks live while the runner works. This base keeps everything where it is
    (the whole model on its one device, the pre-offload behaviour); subclasses keep only the block being
    calibrated on the device. `fetch` readies block idx on the device, `release` sends it home, `start`
    releases every block before the run and `finish` leaves the model usable (on the CPU) after it."""

    device: torch.device | None = None  # None: the model's own device

    def device_for(self, model: nn.Module) -> torch.device:
        return self.device if self.device is not None else _device_of(model)

    def fetch(self, idx: int, layer: nn.Module) -> None:
        return None

    def release(self, idx: int, layer: nn.Module) -> None:
        return None

    def evict(self, idx: int, layer: nn.Module) -> None:
        """Send home a block fetched only to be read (`streamed`): here the same as `release`."""
        self.release(idx, layer)

    def start(self, layers: nn.ModuleList) -> None:
        for idx, layer in enumerate(layers):
            self.release(idx, layer)

    def finish(self, layers: nn.ModuleList) -> None:
        return None

    def move_rest(self, model: nn.Module, to_device: bool) -> None:
        """Everything outside the blocks (embeddings, final norm, rotary tables) to the device or home."""
        return None


class DevicePlacement(Placement):
    """Blocks (and the rest of the model) live on `home` (the CPU); block i is on `device` only while it
    is captured or calibrated. Peak device memory: the largest block, the non-block modules during the
    one capture pass, and the calibration activations."""

    def __init__(self, device: torch.device | str, home: torch.device | str = "cpu") -> None:
        self.device, self.home = torch.device(device), torch.device(home)

    def fetch(self, idx: int, layer: nn.Module) -> None:
        layer.to(self.device)

    def release(self, idx: int, layer: nn.Module) -> None:
        layer.to(self.home)

    def move_rest(self, model: nn.Module, to_device: bool) -> None:
        where = self.device if to_device else self.home
        blocks = family_of_config(model.config).blocks
        for name, module in model.named_modules():
            if name == blocks or name.startswith(blocks + "."):
                continue
            for p in module._parameters.values():
                if p is not None:
                    p.data = p.data.to(where)  # a tied weight is moved once, its twin then is a no-op
            for key, b in module._buffers.items():
                if b is not None:
                    module._buffers[key] = b.to(where)


class DiskPlacement(DevicePlacement):
    """Blocks' parameters live in one safetensors file per block under `folder`; a released block's
    parameters are `meta` tensors (no memory), a fetched block's are read back onto `device`. Buffers
    stay in the module.

    With `source` (a `models.lazy.CheckpointBlocks`, from `open_lazily`), a block not yet written is read
    from the checkpoint instead: the model is never materialized whole, so it may be larger than host
    memory. `finish` reads every block back onto the CPU, unless `keep` (then the blocks stay on disk and
    `streamed` evaluates the model one block at a time)."""

    def __init__(self, folder: str | Path, device: torch.device | str = "cpu", source: Any = None,
                 keep: bool = False) -> None:
        super().__init__(device)
        self.folder, self.source, self.keep = Path(folder), source, keep

    def _file(self, idx: int) -> Path:
        return self.folder / f"block_{idx}.safetensors"

    def release(self, idx: int, layer: nn.Module) -> None:
        from safetensors.torch import save_file

        params = dict(layer.named_parameters())
        if any(p.is_meta for p in params.values()):
            return  # already on disk
        self.folder.mkdir(parents=True, exist_ok=True)
        save_file({n: p.detach().contiguous() for n, p in params.items()}, str(self._file(idx)))
        to_meta(layer)

    def evict(self, idx: int, layer: nn.Module) -> None:
        """Drop an unchanged fetched block: its file (or the source checkpoint) still holds it."""
        if self._file(idx).is_file() or self.source is not None:
            to_meta(layer)
        else:
            self.release(idx, layer)

    def fetch(self, idx: int, layer: nn.Module, device: torch.device | None = None) -> None:
        from safetensors.torch import load_file

        if not any(p.is_meta for p in layer.parameters()):
            return  # already materialized
        where = device or self.device
        if self._file(idx).is_file():
            tensors = load_file(str(self._file(idx)), device=str(where))
        elif self.source is not None:
            tensors = self.source.block(idx, where)
        else:
            raise QuantError(f"block {idx} was never written to {self.folder} and there is no source checkpoint")
        for n, t in tensors.items():
            _set_param(layer, n, t)

    def finish(self, layers: nn.ModuleList) -> None:
        if self.keep:
            return
        for idx, layer in enumerate(layers):
            self.fetch(idx, layer, torch.device("cpu"))


@contextmanager
def streamed(model: nn.Module, placement: Placement) -> Iterator[nn.Module]:
    """The model with each decoder block fetched just before its forward and evicted just after: a model
    whose blocks are on disk evaluates holding one block at a time."""
    blocks = model.get_submodule(family_of_config(model.config).blocks)
    handles = []
    for idx, layer in enumerate(blocks):
        handles.append(layer.register_forward_pre_hook(_BlockHook(lambda m, i=idx: placement.fetch(i, m))))
        handles.append(layer.register_forward_hook(_BlockHook(lambda m, i=idx: placement.evict(i, m))))
    placement.move_rest(model, to_device=True)
    try:
        yield model
    finally:
        for h in handles:
            h.remove()
        placement.move_rest(model, to_device=False)


class _BlockHook:
    """A `streamed` hook: moves a block's parameters, changes no value. It declares itself token-local
    (`eval.model_traits`), so FastLM takes the same path as for the model in memory."""

    token_local = True

    def __init__(self, act: Any) -> None:
        self.act = act

    def __call__(self, module: nn.Module, *args: Any) -> None:
        self.act(module)


def to_meta(layer: nn.Module) -> None:
    """Every parameter of `layer` replaced by a `meta` tensor of its shape and dtype (its memory freed)."""
    for n, p in list(layer.named_parameters()):
        _set_param(layer, n, torch.empty_like(p, device="meta"))


def _set_param(layer: nn.Module, name: str, value: torch.Tensor) -> None:
    """Replace parameter `name` (dotted, inside `layer`) by `value` (a parameter's data cannot change device type)."""
    owner, _, leaf = name.rpartition(".")
    module = layer.get_submodule(owner) if owner else layer
    module._parameters[leaf] = nn.Parameter(value, requires_grad=False)


_PLACEMENT: ContextVar[Placement | None] = ContextVar("ptq_bench_placement", default=None)


def current_placement() -> Placement | None:
    """The placement set by the innermost `use_placement`, if any."""
    return _PLACEMENT.get()


def scratch_placement(parent: Path, device: torch.device | str, source: Any) -> DiskPlacement:
    """A `DiskPlacement` in a fresh folder under `parent` for a lazily opened checkpoint (`source`): blocks not
    written there are read from the checkpoint, written ones stay on disk (`streamed` evaluates them)."""
    import tempfile

    parent.mkdir(parents=True, exist_ok=True)
    return DiskPlacement(Path(tempfile.mkdtemp(prefix="blocks-", dir=parent)), device, source=source, keep=True)


@contextmanager
def use_placement(placement: Placement) -> Iterator[Placement]:
    """Every `run_blockwise` inside the `with` (so every calibrated method's `apply`) uses `placement`."""
    token = _PLACEMENT.set(placement)
    try:
        yield placement
    finally:
        _PLACEMENT.reset(token)
