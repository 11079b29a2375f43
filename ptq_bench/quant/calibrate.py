"""Which linears a method touches, and the one block-by-block calibration runner.

Architecture knowledge comes from `ptq_bench.families` only, keyed by `model.config.model_type`: where
the decoder blocks are, the block's linears (in sequential groups) and its norm -> linears pairs. A block
whose linears differ from what the registry names is an error, so a count of quantized linears is always
the registry's count. Embeddings, the final norm and the LM head stay untouched.

The runner captures, in one forward pass (only block 0 computes), the call every block gets (attention
mask, position embeddings, position ids, ... : Gemma 2/3, Mistral and Qwen2 give sliding-window layers
another mask than global layers, Gemma 3 gives them other rotary embeddings), and replays block i with
block i's own call. Only block 0's hidden states are stored; each next block's inputs are the previous
block's outputs. A linear's inputs feed its statistic (`quant.statistics`); linears that read one tensor
(q/k/v, gate/up) share one.

Bounded memory: a `Placement` (`quant.placement`; passed, or set around a method's `apply` with
`use_placement`) keeps only the block being captured or calibrated on the device. Results are
bit-identical either way (tests/test_calib_memory.py).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from ptq_bench.errors import QuantError, UnreachedLinear
from ptq_bench.families import EXPERT, Family, family_of_config
from ptq_bench.models.experts import LinearExperts, submodule_or_none
from ptq_bench.quant.linears import is_conv1d, is_linear
from ptq_bench.quant.placement import Placement, current_placement
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


def block_family(layer: nn.Module, family: Family) -> Family:
    """The layout of one block: a hybrid's blocks holding a variant's module (a linear-attention or
    convolution mixer) have that variant's; a mixture of experts' blocks without experts (dense first
    layers, Qwen's mlp_only_layers) have the `dense` one."""
    family = next((v for path, v in family.variants if submodule_or_none(layer, path) is not None), family)
    if family.dense is None or submodule_or_none(layer, family.experts) is not None:
        return family
    return family.dense


def block_names(layer: nn.Module, family: Family, names: tuple[str, ...]) -> tuple[str, ...]:
    """Registry names as the block's own: an expert's name (`families.EXPERT`) once per expert of the block,
    whose experts must be unfused (`models.experts.unfuse_experts`, which `quantize_model` runs)."""
    if not family.experts:
        return names
    experts = submodule_or_none(layer, family.experts)
    if not isinstance(experts, LinearExperts):
        found = type(experts).__name__ if experts is not None else "nothing"
        raise QuantError(f"{type(layer).__name__}.{family.experts}: {found}, not unfused experts "
                         "(models.experts.unfuse_experts)")
    parts = [name.split(".") for name in names]
    return tuple(".".join(str(e) if p == EXPERT else p for p in split) for split in parts
                 for e in range(len(experts) if EXPERT in split else 1))


def is_expert(family: Family, name: str) -> bool:
    """Whether a block's linear `name` is one of its experts' (under the family's `experts` path)."""
    return any(f.experts and name.startswith(f"{f.experts}.") for f in family.all_layouts)  # a hybrid's MoE blocks too


def _kept_float(name: str, family: Family) -> bool:
    return any(name == f or name.startswith(f + ".") for f in family.floats)


def block_linears(layer: nn.Module, family: Family) -> dict[str, nn.Module]:
    """The block's linears the family names, in sequential order; any mismatch with the block is an error
    (modules the family keeps in float, e.g. routers, are not the block's linears)."""
    family = block_family(layer, family)
    out: dict[str, nn.Module] = {}
    for name in block_names(layer, family, family.linears):
        try:
            module = layer.get_submodule(name)
        except AttributeError:
            raise QuantError(f"{type(layer).__name__}: no linear '{name}' (family registry)") from None
        if not is_linear(module) or is_conv1d(module) != family.conv1d:
            want = "Conv1D" if family.conv1d else "nn.Linear"
            raise QuantError(f"{type(layer).__name__}.{name}: expected {want}, found {type(module).__name__}")
        out[name] = module
    extra = sorted(n for n, m in layer.named_modules() if is_linear(m) and n not in out and not _kept_float(n, family))
    if extra:
        raise QuantError(f"{type(layer).__name__}: linears the family registry does not name: {', '.join(extra)}")
    return out


def float_modules(model: nn.Module) -> dict[str, int]:
    """The block modules the family keeps in float (routers, Gated DeltaNet's b / a, Mamba-1's x_proj and
    dt_proj, ...), by their name inside a block -> how many blocks hold one: no method quantizes their
    weights or their inputs, and a row says so (`quantize_model`'s report)."""
    family, out = model_family(model), {}
    for layer in decoder_layers(model):
        for name in block_family(layer, family).floats:
            if submodule_or_none(layer, name) is not None:
                out[name] = out.get(name, 0) + 1
    return out


def quantizable_linears(model: nn.Module) -> dict[str, nn.Module]:
    """Every block linear by full name, `<family.blocks>.<block index>.<linear>` (`transformer.h.0.attn.c_attn`)."""
    family = model_family(model)
    out: dict[str, nn.Module] = {}
    for i, layer in enumerate(decoder_layers(model)):
        for name, m in block_linears(layer, family).items():
            out[f"{family.blocks}.{i}.{name}"] = m
    return out


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

    hidden: list[torch.Tensor]  # (batch, seqlen, hidden) each (after `Family.stream_axes` leading axes)
    calls: list[list[Call]] = field(default_factory=list)  # [block][batch]


@torch.no_grad()
def capture_inputs(model: nn.Module, calib: torch.Tensor, batch_size: int = 8,
                   placement: Placement | None = None, lean: bool = True) -> BlockInputs:
    """Run the model on `calib` (n, seqlen) token ids once, recording each block's call arguments.

    Pre-hooks on every block record its keyword (and extra positional) arguments as the model's own
    forward builds them; block 0's also records the hidden states. The last block's hook stops the pass.
    With `lean`, only block 0 computes: blocks 1 .. n-2 hand their input on unchanged (`_passing_on`),
    since a block's call (masks, position embeddings, ...) is built by the model before its loop and none
    of their outputs is kept. With a `placement`, each block that runs is fetched to the device just before
    and released just after (the others stay home), and the rest of the model (embeddings, rotary tables,
    ...) sits on the device for the pass only.
    """
    layers = decoder_layers(model)
    place = placement or Placement()
    got = BlockInputs([], [[] for _ in layers])
    computing = range(1 if lean else len(layers) - 1)  # the blocks that run (the last one never does)

    def recorder(idx: int) -> Callable:
        def record(module: nn.Module, args: tuple, kwargs: dict) -> None:
            kwargs = dict(kwargs)
            hidden = args[0] if args else kwargs.pop("hidden_states")
            if idx == 0:
                got.hidden.append(hidden.detach())
            got.calls[idx].append(Call(tuple(args[1:]), kwargs))
            if idx == len(layers) - 1:
                raise _Caught
            if idx in computing:
                place.fetch(idx, module)
        return record

    handles = [layer.register_forward_pre_hook(recorder(i), with_kwargs=True) for i, layer in enumerate(layers)]
    handles += [layers[i].register_forward_hook(lambda m, a, o, i=i: place.release(i, m)) for i in computing]
    place.move_rest(model, to_device=True)
    try:
        with _passing_on(layers) if lean else contextlib.nullcontext():
            for batch in calib.split(batch_size):
                try:
                    model(batch.to(place.device_for(model)), use_cache=False)
                except _Caught:
                    _check_whole(model, got.hidden[-1], batch)
                    continue
                raise QuantError(f"{type(model).__name__}: the forward pass never reached its last decoder block")
    finally:
        for h in handles:
            h.remove()
        place.move_rest(model, to_device=False)
    return got


def _check_whole(model: nn.Module, hidden: torch.Tensor, batch: torch.Tensor) -> None:
    """Block 0 saw every token of the batch: a forward that splits rows into chunks (xLSTM's longer than
    max_inference_chunksize) reaches the last block with the first chunk, so calibrating would use it alone.
    (batch, tokens) are the hidden states' first axes after the family's `stream_axes` (Gemma 3n's AltUp streams)."""
    axes = model_family(model).stream_axes
    if hidden.shape[axes:axes + 2] != batch.shape:
        raise QuantError(f"{type(model).__name__}: block 0 received hidden states of shape {tuple(hidden.shape)} "
                         f"for a calibration batch of {tuple(batch.shape)} tokens; the block runner calibrates "
                         "only on whole rows")


@contextmanager
def _passing_on(layers: nn.ModuleList) -> Iterator[None]:
    """Blocks 1 .. n-2 return their input hidden states, in the form block 0's output takes (a tensor, or
    a tuple or list whose first item is the hidden states), instead of computing."""
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
        outs.append(out[0] if isinstance(out, (tuple, list)) else out)  # GPT-1's blocks return a list
    return outs


StatFactory = Callable[[str, nn.Module], Any]  # (name in block, linear) -> object with .add(x), or None
GroupCallback = Callable[[int, nn.Module, dict[str, nn.Module], dict[str, Any]], None]
# (block index, block, the group's linears by name, statistics by name)


class _Fed(Exception):
    """Raised by the pre-hook of the last linear with a statistic: the rest of the block is not needed."""


def _stop(module: nn.Module, args: tuple) -> None:
    raise _Fed


def _collect(layer: nn.Module, hidden: list[torch.Tensor], calls: list[Call], linears: dict[str, nn.Module],
             make_stat: StatFactory, lean: bool = True, outputs: bool = True,
             idx: int | None = None) -> tuple[dict[str, Any], list[torch.Tensor] | None]:
    """Run the block on every batch with statistic hooks on `linears`; (statistics by name, block outputs
    or None). With `lean`, linears that read one input tensor get one statistic object (`SharedInputs`),
    and when the outputs are not wanted each batch stops at the input of the group's last linear with a
    statistic (the family lists a block's linears in the order they run). A linear whose statistic got
    no input is an error either way; `idx` (the block's index) names where."""
    stats = {n: make_stat(n, m) for n, m in linears.items()}
    stats = {n: s for n, s in stats.items() if s is not None}
    stop = lean and not outputs
    if stop and not stats:
        return stats, None
    shared = SharedInputs(stats, lean)
    hooks = [linears[n].register_forward_pre_hook(shared.hook(n)) for n in stats]
    hooks += [linears[list(stats)[-1]].register_forward_pre_hook(_stop)] if stop else []  # after its statistic's
    outs = None
    try:
        if stop:
            for h, call in zip(hidden, calls, strict=True):
                with contextlib.suppress(_Fed):
                    layer(h, *call.args, **call.kwargs)
        else:
            outs = run_layer(layer, hidden, calls)
    finally:
        for h in hooks:
            h.remove()
    if unfed := [n for n in stats if n not in shared.leader and getattr(stats[n], "required", True)]:
        where = type(layer).__name__ if idx is None else f"block {idx} ({type(layer).__name__})"
        hint = "; more calibration tokens (calibration.n_samples) reach more experts" if any(
            "expert" in n for n in unfed) else ""
        raise UnreachedLinear(f"{where}: no calibration input reached {', '.join(unfed)}; "
                              f"an empty statistic would quantize blind{hint}")
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
    lean: bool = True,
) -> int:
    """Feed calibration data through the decoder block by block; returns the number of blocks.

    For each block and each group of its linears (the family's sequential groups if `true_sequential`,
    else one group of all): hook the inputs of the group's linears to accumulate `make_stat(name, linear)`
    (None = no statistic), run the block, hand the group to `on_group`. Then the next block's inputs are
    this block's outputs: re-computed with the quantized weights if `sequential` (the GPTQ reference), or
    the float outputs of the first pass otherwise (SmoothQuant collects on the float model).
    `placement` (else the one set by `use_placement`, else none: the model stays where it is) keeps only
    the block being calibrated on the device; the activations are one (batch, seqlen, hidden) tensor per
    batch in the model's dtype, replaced block by block. `lean` skips work whose result is not used: the
    capture computes block 0 only (`capture_inputs`), linears that read one input share one statistic
    (`SharedInputs`), a block run only for statistics stops at its group's last input (`_collect`);
    False does the reference's work (the same values; tests and `benchmarks/calib_runner.py` compare).
    """
    family = model_family(model)
    layers = decoder_layers(model)
    place = placement or current_placement() or Placement()
    place.start(layers)
    try:
        inputs = capture_inputs(model, calib, batch_size, place, lean)
        for idx, layer in enumerate(layers):
            place.fetch(idx, layer)
            linears, calls, own = block_linears(layer, family), inputs.calls[idx], block_family(layer, family)
            plan = own.groups if true_sequential else (own.linears,)
            float_out = None
            for names in plan:
                group = {n: linears[n] for n in block_names(layer, own, names)}
                wanted = not lean or (not sequential and float_out is None)  # the float outputs, once
                stats, outs = _collect(layer, inputs.hidden, calls, group, make_stat, lean, wanted, idx)
                float_out = outs if float_out is None else float_out
                on_group(idx, layer, group, stats)
                del stats, outs  # the group's statistics (fp32 Hessians) before the next group's
                release_freed_memory()
            inputs.hidden = run_layer(layer, inputs.hidden, calls) if sequential else float_out
            del float_out
            place.release(idx, layer)
    finally:
        place.finish(layers)
    return len(layers)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


def release_freed_memory() -> None:
    """Give the C heap's free pages back to the OS (glibc `malloc_trim`; a no-op elsewhere). The solves free
    large tensors between groups, and the holes they leave otherwise stay resident and grow block by block:
    on a 1.1B Llama's GPTQ, peak RSS 1.25-1.28x the model's bytes without it, 1.21x with it, in the same time
    (benchmarks/calib_memory.py, 2026-12-04)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def walk_blocks(model: nn.Module, on_group: GroupCallback, placement: Placement | None = None) -> int:
    """Hand every block's linears to `on_group` as one group, without calibration (round-to-nearest
    methods), one block fetched at a time (`placement` as in `run_blockwise`); returns the number of blocks."""
    family, layers = model_family(model), decoder_layers(model)
    place = placement or current_placement() or Placement()
    place.start(layers)
    try:
        for idx, layer in enumerate(layers):
            place.fetch(idx, layer)
            on_group(idx, layer, block_linears(layer, family), {})
            place.release(idx, layer)
    finally:
        place.finish(layers)
    return len(layers)
