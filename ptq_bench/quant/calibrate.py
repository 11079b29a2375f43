"""Which linears a method touches, and the one block-by-block calibration runner.

Architecture knowledge comes from `ptq_bench.families` only, keyed by `model.config.model_type`: where
the decoder blocks are, the block's linears (in sequential groups) and its norm -> linears pairs. A block
whose linears differ from what the registry names is an error, so a count of quantized linears is always
the registry's count. Embeddings, the final norm and the LM head stay untouched.

The runner captures, in one forward pass (only block 0 computes), the call every block gets (attention mask, position
embeddings, position ids, ... : Gemma 2/3, Mistral and Qwen2 give sliding-window layers another mask
than global layers, Gemma 3 gives them other rotary embeddings), and replays block i with block i's own
call. Only block 0's hidden states are stored; each next block's inputs are the previous block's outputs.

A linear's inputs feed its statistic (`quant.statistics`); linears that read one tensor (q/k/v, gate/up) share one.

Bounded memory: a `Placement` (passed, or set around a method's `apply` with `use_placement`) keeps only
the block being captured or calibrated on the device: `DevicePlacement(device)` leaves the model on the
CPU, `DiskPlacement(folder)` keeps the other blocks' parameters in per-block safetensors files. Without
one the model stays where it is. Results are bit-identical either way (tests/test_calib_memory.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ptq_bench.errors import QuantError
from ptq_bench.families import Family, family_of_config
from ptq_bench.quant.linears import is_conv1d, is_linear
from ptq_bench.quant.statistics import SharedInputs


def model_family(model: nn.Module) -> Family:
    """The registered family of a transformers model (RecipeError naming an unsupported one)."""
    config = getattr(model, "config", None)
    if config is None:
        raise QuantError(f"{type(model).__name__}: no transformers config, so no known model family")
    return family_of_config(config)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks, at the path the model's family names (`model.layers`, `transformer.h`, ...)."""
    path = model_family(model).blocks
    try:
        layers = model.get_submodule(path)
    except AttributeError:
        layers = None
    if not isinstance(layers, nn.ModuleList):
        raise QuantError(f"{type(model).__name__}: expected decoder blocks at {path} (family registry)")
    return layers


def block_linears(layer: nn.Module, family: Family) -> dict[str, nn.Module]:
    """The block's linears the family names, in sequential order; any mismatch with the block is an error."""
    out: dict[str, nn.Module] = {}
    for name in family.linears:
        try:
            module = layer.get_submodule(name)
        except AttributeError:
            raise QuantError(f"{type(layer).__name__}: no linear '{name}' (family registry)") from None
        if not is_linear(module) or is_conv1d(module) != family.conv1d:
            want = "Conv1D" if family.conv1d else "nn.Linear"
            raise QuantError(f"{type(layer).__name__}.{name}: expected {want}, found {type(module).__name__}")
        out[name] = module
    extra = sorted(n for n, m in layer.named_modules() if is_linear(m) and n not in out)
    if extra:
        raise QuantError(f"{type(layer).__name__}: linears the family registry does not name: {', '.join(extra)}")
    return out


def quantizable_linears(model: nn.Module) -> dict[str, nn.Module]:
    """Every block linear by full name, `<family.blocks>.<block index>.<linear>` (`transformer.h.0.attn.c_attn`)."""
    family = model_family(model)
    out: dict[str, nn.Module] = {}
    for i, layer in enumerate(decoder_layers(model)):
        for name, m in block_linears(layer, family).items():
            out[f"{family.blocks}.{i}.{name}"] = m
    return out


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


# ----------------------------------------------------------------------------- placement


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
        blocks = model_family(model).blocks
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
    stay in the module. `finish` reads every block back onto the CPU.

    Missing for models larger than host memory: loading a checkpoint straight into this state (blocks
    never all materialized; today the model is loaded first and `start` writes its blocks out) and
    evaluating offloaded."""

    def __init__(self, folder: str | Path, device: torch.device | str = "cpu") -> None:
        super().__init__(device)
        self.folder = Path(folder)

    def _file(self, idx: int) -> Path:
        return self.folder / f"block_{idx}.safetensors"

    def release(self, idx: int, layer: nn.Module) -> None:
        from safetensors.torch import save_file

        params = dict(layer.named_parameters())
        if any(p.is_meta for p in params.values()):
            return  # already on disk
        self.folder.mkdir(parents=True, exist_ok=True)
        save_file({n: p.detach().contiguous() for n, p in params.items()}, str(self._file(idx)))
        for n, p in params.items():
            _set_param(layer, n, torch.empty_like(p, device="meta"))

    def fetch(self, idx: int, layer: nn.Module, device: torch.device | None = None) -> None:
        from safetensors.torch import load_file

        if not any(p.is_meta for p in layer.parameters()):
            return  # already materialized
        for n, t in load_file(str(self._file(idx)), device=str(device or self.device)).items():
            _set_param(layer, n, t)

    def finish(self, layers: nn.ModuleList) -> None:
        for idx, layer in enumerate(layers):
            self.fetch(idx, layer, torch.device("cpu"))


def _set_param(layer: nn.Module, name: str, value: torch.Tensor) -> None:
    """Replace parameter `name` (dotted, inside `layer`) by `value` (a parameter's data cannot change device type)."""
    owner, _, leaf = name.rpartition(".")
    module = layer.get_submodule(owner) if owner else layer
    module._parameters[leaf] = nn.Parameter(value, requires_grad=False)


_PLACEMENT: ContextVar[Placement | None] = ContextVar("ptq_bench_placement", default=None)


@contextmanager
def use_placement(placement: Placement) -> Iterator[Placement]:
    """Every `run_blockwise` inside the `with` (so every calibrated method's `apply`) uses `placement`."""
    token = _PLACEMENT.set(placement)
    try:
        yield placement
    finally:
        _PLACEMENT.reset(token)


# ----------------------------------------------------------------------------- the runner


class _Caught(Exception):
    """Raised by the last block's pre-hook: every block's call is recorded, the rest is not needed."""


@dataclass
class Call:
    """One block call minus its hidden states: positional extras (GPT-2 passes the mask positionally)."""

    args: tuple
    kwargs: dict[str, Any]


@dataclass
class BlockInputs:
    """Block 0's hidden states per calibration batch, and every block's own call per batch."""

    hidden: list[torch.Tensor]  # (batch, seqlen, hidden) each
    calls: list[list[Call]] = field(default_factory=list)  # [block][batch]


@torch.no_grad()
def capture_inputs(model: nn.Module, calib: torch.Tensor, batch_size: int = 8,
                   placement: Placement | None = None) -> BlockInputs:
    """Run the model on `calib` (n, seqlen) token ids once, recording each block's call arguments.

    Pre-hooks on every block record its keyword (and extra positional) arguments as the model's own
    forward builds them; block 0's also records the hidden states. The last block's hook stops the pass.
    Only block 0 computes: blocks 1 .. n-2 hand their input on unchanged during the pass (`_passing_on`),
    since a block's call (masks, position embeddings, ...) is built by the model before its loop and none
    of their outputs is kept. With a `placement`, block 0 is fetched to the device just before it runs and
    released just after (the others stay home), and the rest of the model (embeddings, rotary tables, ...)
    sits on the device for the pass only.
    """
    layers = decoder_layers(model)
    place = placement or Placement()
    got = BlockInputs([], [[] for _ in layers])

    def recorder(idx: int) -> Callable:
        def record(module: nn.Module, args: tuple, kwargs: dict) -> None:
            kwargs = dict(kwargs)
            hidden = args[0] if args else kwargs.pop("hidden_states")
            if idx == 0:
                got.hidden.append(hidden.detach())
            got.calls[idx].append(Call(tuple(args[1:]), kwargs))
            if idx == len(layers) - 1:
                raise _Caught
            if idx == 0:
                place.fetch(idx, module)
        return record

    handles = [layer.register_forward_pre_hook(recorder(i), with_kwargs=True) for i, layer in enumerate(layers)]
    handles.append(layers[0].register_forward_hook(lambda m, a, o: place.release(0, m)))
    place.move_rest(model, to_device=True)
    try:
        with _passing_on(layers):
            for batch in calib.split(batch_size):
                try:
                    model(batch.to(place.device_for(model)), use_cache=False)
                except _Caught:
                    continue
                raise QuantError(f"{type(model).__name__}: the forward pass never reached its last decoder block")
    finally:
        for h in handles:
            h.remove()
        place.move_rest(model, to_device=False)
    return got


@contextmanager
def _passing_on(layers: nn.ModuleList) -> Iterator[None]:
    """Blocks 1 .. n-2 return their input hidden states, in the form block 0's output takes (a tensor, or
    a tuple whose first item is the hidden states), instead of computing."""
    tail: list[tuple | None] = [None]  # block 0's output after its hidden states (None: a bare tensor)

    def learn(module: nn.Module, args: tuple, out: Any) -> None:
        tail[0] = None if isinstance(out, torch.Tensor) else tuple(out[1:])

    def pass_on(*args: Any, **kwargs: Any) -> Any:
        hidden = args[0] if args else kwargs["hidden_states"]
        return hidden if tail[0] is None else (hidden, *tail[0])

    stubs = list(layers)[1:-1]
    own = [layer.__dict__.get("forward") for layer in stubs]  # an instance-level forward (a wrapper's) is kept
    handle = layers[0].register_forward_hook(learn)
    for layer in stubs:
        layer.forward = pass_on
    try:
        yield
    finally:
        handle.remove()
        for layer, forward in zip(stubs, own, strict=True):
            if forward is None:
                del layer.forward
            else:
                layer.forward = forward


@torch.no_grad()
def run_layer(layer: nn.Module, hidden: list[torch.Tensor], calls: list[Call]) -> list[torch.Tensor]:
    """The block's outputs for every stored batch, each called with its own arguments."""
    outs = []
    for h, call in zip(hidden, calls, strict=True):
        out = layer(h, *call.args, **call.kwargs)
        outs.append(out[0] if isinstance(out, tuple) else out)
    return outs


StatFactory = Callable[[str, nn.Module], Any]  # (name in block, linear) -> object with .add(x), or None
GroupCallback = Callable[[int, nn.Module, dict[str, nn.Module], dict[str, Any]], None]
# (block index, block, the group's linears by name, statistics by name)


def _collect(layer: nn.Module, hidden: list[torch.Tensor], calls: list[Call], linears: dict[str, nn.Module],
             make_stat: StatFactory, share: bool = True) -> tuple[dict[str, Any], list[torch.Tensor]]:
    """Run the block once with statistic hooks on `linears`; (statistics by name, block outputs).
    With `share`, linears that read one input tensor get one statistic object (`SharedInputs`)."""
    stats = {n: make_stat(n, m) for n, m in linears.items()}
    stats = {n: s for n, s in stats.items() if s is not None}
    shared = SharedInputs(stats, share)
    hooks = [linears[n].register_forward_hook(shared.hook(n)) for n in stats]
    try:
        outs = run_layer(layer, hidden, calls)
    finally:
        for h in hooks:
            h.remove()
    return stats, outs


@torch.no_grad()
def run_blockwise(
    model: nn.Module,
    calib: torch.Tensor,
    make_stat: StatFactory,
    on_group: GroupCallback,
    true_sequential: bool = False,
    sequential: bool = True,
    batch_size: int = 8,
    placement: Placement | None = None,
    share_stats: bool = True,
) -> int:
    """Feed calibration data through the decoder block by block; returns the number of blocks.

    For each block and each group of its linears (the family's sequential groups if `true_sequential`,
    else one group of all): hook the inputs of the group's linears to accumulate `make_stat(name, linear)`
    (None = no statistic), run the block, hand the group to `on_group`. Then the next block's inputs are
    this block's outputs: re-computed with the quantized weights if `sequential` (the GPTQ reference), or
    the float outputs of the first pass otherwise (SmoothQuant collects on the float model).
    `placement` (else the one set by `use_placement`, else none: the model stays where it is) keeps only
    the block being calibrated on the device; the activations are one (batch, seqlen, hidden) tensor per
    batch in the model's dtype, replaced block by block. Linears that read one input share one statistic
    (`SharedInputs`); `share_stats` False gives each its own, as the reference accumulates (same values).
    """
    family = model_family(model)
    layers = decoder_layers(model)
    place = placement or _PLACEMENT.get() or Placement()
    place.start(layers)
    try:
        inputs = capture_inputs(model, calib, batch_size, place)
        plan = family.groups if true_sequential else (family.linears,)
        for idx, layer in enumerate(layers):
            place.fetch(idx, layer)
            linears, calls = block_linears(layer, family), inputs.calls[idx]
            float_out = None
            for names in plan:
                group = {n: linears[n] for n in names}
                stats, outs = _collect(layer, inputs.hidden, calls, group, make_stat, share_stats)
                float_out = outs if float_out is None else float_out
                on_group(idx, layer, group, stats)
                del stats, outs  # the group's statistics (fp32 Hessians) before the next group's
            inputs.hidden = run_layer(layer, inputs.hidden, calls) if sequential else float_out
            del float_out
            place.release(idx, layer)
    finally:
        place.finish(layers)
    return len(layers)
