"""The per-linear glue, written once: walk the family's linears, solve each, store, report.

A method is a config, a solver and a call to `quantize_model`:

    def solve(linear, stat) -> (w_hat (out, in), grid, loss):   # stat: the linear's statistic or None
        ...
    return quantize_model(model, solve, a_bits=cfg.a_bits, calib=calib, make_stat=hessian_stat)

`quantize_model` refuses already low-bit models (see `quant.linears`), runs the block-by-block
calibration when the method collects statistics (or walks the blocks directly when it does not), stores
each solution (`set_weight`, Conv1D transposed), attaches activation quantization, and assembles the
QuantReport. A model in which no linear was quantized is an error, never a row.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from ptq_bench.errors import QuantError
from ptq_bench.families import Family
from ptq_bench.models.experts import unfuse_experts
from ptq_bench.quant.calibrate import (
    GroupCallback,
    StatFactory,
    block_linears,
    decoder_layers,
    float_modules,
    is_expert,
    model_family,
    run_blockwise,
    walk_blocks,
)
from ptq_bench.quant.linears import (
    GRID_ATTR,
    attach_act_quant,
    detach_act_quant,
    refuse_low_bit,
    refuse_non_finite,
    set_weight,
    weight_matrix,
)
from ptq_bench.quant.primitives import Grid, effective_bits, fake_quant_weight
from ptq_bench.quant.registry import QuantReport
from ptq_bench.quant.statistics import Hessian, stat_inputs, take_stat

# (linear, its statistic or None) -> (w_hat (out, in) or None = leave the weight, grid or None, loss or None)
Solver = Callable[[nn.Module, Any], tuple[Tensor | None, Grid | None, float | None]]


def rtn_solver(w_bits: float, granularity: str, group_size: int) -> Solver:
    """Round-to-nearest of one linear's (out, in) weight on the naive grid; 16 bits = left as is."""

    def solve(linear: nn.Module, stat: object) -> tuple:
        if w_bits >= 16:
            return None, None, None
        w_hat, grid = fake_quant_weight(weight_matrix(linear), w_bits, granularity, group_size)
        return w_hat, grid, None

    return solve


def hessian_stat(name: str, linear: nn.Module) -> Hessian:
    """GPTQ-style statistic for every linear: H = (2/n) sum x x^T of its inputs."""
    return Hessian(stat_inputs(linear), linear.weight.device)


def sharing(group: dict[str, nn.Module], stats: dict[str, Any], largest: int) -> list[list[str]]:
    """The group's linears in runs to solve together: those that share one statistic object (q/k/v read one
    input, as do gate/up), in order of first appearance, cut into parts whose stacked weight is no larger
    than `largest` (the block's largest single weight, in elements), so stacking never raises a solve's peak
    memory: q/k/v stack, gate and up (each as large as down) do not. A linear with no statistic stands alone."""
    runs: dict[int, list[str]] = {}
    for i, name in enumerate(group):
        stat = stats.get(name)
        runs.setdefault(id(stat) if stat is not None else -1 - i, []).append(name)
    parts: list[list[str]] = []
    for run in runs.values():  # each run cut, in order, into parts no larger than `largest`
        part, size = [], 0
        for name in run:
            n = weight_matrix(group[name]).numel()
            if part and size + n > largest:
                parts.append(part)
                part, size = [], 0
            part.append(name)
            size += n
        parts.append(part)
    return parts


def solve_runs(layer: nn.Module, family: Family, group: dict[str, nn.Module], stats: dict[str, Any],
               stack: bool) -> list[list[str]]:
    """The group's linears as runs solved together: `sharing`'s, bounded by the block's largest linear, when
    the method stacks; else one linear at a time."""
    if not stack:
        return [[n] for n in group]
    return sharing(group, stats, max(weight_matrix(m).numel() for m in block_linears(layer, family).values()))


class Stacked(nn.Module):
    """What a solver reads of a linear (`weight_matrix`), for several linears' rows stacked. Its weight is a
    scratch copy made for the solve: a solver may overwrite it instead of copying it again."""

    def __init__(self, weight: Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)


def solve_stacked(solve: Solver, linears: list[nn.Module], stat: Any) -> list[tuple]:
    """Linears that read one input (`sharing` picks them), solved as one matrix with their rows stacked: one
    column walk, one factorisation and no Hessian copy, where a GPU's per-column kernel launches bound the
    loop. GPTQ treats rows independently given H, so each linear's weight and grid are bit for bit its own
    solve's (tests/test_quant_gptq.py); the stacked loss is reported once, on the first linear."""
    mats = [weight_matrix(linear) for linear in linears]
    sizes = [m.shape[0] for m in mats]
    stacked = Stacked(torch.cat(mats))
    w_hat, grid, loss = solve(stacked, stat)
    del stacked  # the scratch weight goes before the parts are copied out
    if w_hat is None:
        return [(None, None, None)] * len(linears)
    grids = grid.split_rows(sizes) if grid is not None else [None] * len(sizes)
    parts = [w.clone() for w in w_hat.split(sizes)]  # own storage each: safetensors refuses shared memory
    return [(w, g, loss if i == 0 else None) for i, (w, g) in enumerate(zip(parts, grids))]


@torch.no_grad()
def quantize_model(
    model: nn.Module,
    solve: Solver,
    a_bits: int,
    a_granularity: str = "token",
    calib: Tensor | None = None,
    make_stat: StatFactory | None = None,
    before_group: GroupCallback | None = None,
    true_sequential: bool = False,
    sequential: bool = True,
    details: dict[str, Any] | None = None,
    stack_shared: bool = False,
) -> QuantReport:
    """Quantize every linear of every decoder block with `solve`; see the module docstring.

    `make_stat` None: no calibration (blocks are walked directly). `before_group(idx, block, linears,
    stats)` runs before a group's linears are solved (SmoothQuant folds its scales there).
    `stack_shared`: linears sharing one statistic are solved as one matrix (`solve_stacked`), for a solver
    whose rows are independent given the statistic and that reads only the weight.
    """
    t0 = time.perf_counter()
    family = model_family(model)
    refuse_low_bit(model)
    unfuse_experts(model)  # a mixture of experts: one linear pair per expert (no-op when done at loading)
    grids: dict[str, tuple[nn.Module, Grid | None]] = {}
    losses: list[float] = []
    expert_tokens: list[int] = []  # calibration tokens each expert's Hessian saw (mixtures of experts)

    def on_group(idx: int, layer: nn.Module, group: dict[str, nn.Module], stats: dict[str, Any]) -> None:
        for name, linear in group.items():  # before SmoothQuant's fold or any solve writes to the group
            refuse_non_finite(linear, f"{family.blocks}.{idx}.{name}")
        if before_group is not None:
            before_group(idx, layer, group, stats)
        expert_tokens.extend(stats[n].n for n in group if is_expert(family, n) and isinstance(stats.get(n), Hessian))
        for names in solve_runs(layer, family, group, stats, stack_shared):
            stat = take_stat(stats, *names)  # popped (a shared one copied): freed once solved
            if len(names) > 1:
                solved = solve_stacked(solve, [group[n] for n in names], stat)
            else:
                solved = [solve(group[names[0]], stat)]
            for name, (w_hat, grid, loss) in zip(names, solved):
                linear = group[name]
                if w_hat is not None:
                    set_weight(linear, w_hat, grid)
                attach_act_quant(linear, a_bits, a_granularity)
                grids[f"{family.blocks}.{idx}.{name}"] = (linear, grid)
                losses.extend([] if loss is None else [loss])

    if make_stat is None:
        walk_blocks(model, on_group)
    else:
        if calib is None:
            raise QuantError("this method needs calibration data, none was given")
        run_blockwise(model, calib, make_stat, on_group, true_sequential, sequential)
    if not grids:
        raise QuantError(f"{type(model).__name__}: no linear was quantized")
    floats = float_modules(model)
    return _report(grids, time.perf_counter() - t0, losses, expert_tokens,
                   {**(details or {}), **({"kept_float": floats} if floats else {})})


def _report(grids: dict[str, tuple[nn.Module, Grid | None]], seconds: float, losses: list[float],
            expert_tokens: list[int], details: dict[str, Any]) -> QuantReport:
    """The QuantReport of `quantize_model`: bits over every quantized weight, the solvers' summed loss, and
    for a mixture of experts the fewest calibration tokens any expert's Hessian saw."""
    extra = {"loss_sum": sum(losses)} if losses else {}
    extra |= {"fewest_expert_tokens": min(expert_tokens)} if expert_tokens else {}
    return QuantReport(
        effective_bits=effective_bits([g for _, g in grids.values()], [m.weight.numel() for m, _ in grids.values()]),
        seconds=seconds,
        n_linears=len(grids),
        details={**extra, **details},
    )


class FloatBlocks:
    """The decoder blocks' float state (parameters and persistent buffers) saved to one safetensors file per
    block under `folder`, so a method can quantize the model itself, without a second copy in memory, and
    `restore` can give the float model back bit for bit (dtypes included) for the next cell.

    Saving streams one block at a time; restoring reads one block at a time (memory-mapped, then copied
    into ordinary memory so the model never depends on the files) and removes what quantization attached
    to the linears (grids, activation fake-quant hooks).
    """

    def __init__(self, model: nn.Module, folder: str | Path) -> None:
        from safetensors.torch import save_file

        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        for idx, layer in enumerate(decoder_layers(model)):
            state = {k: v.detach().contiguous() for k, v in layer.state_dict().items()}
            save_file(state, str(self.folder / f"block_{idx}.safetensors"))
        self.signature = model_signature(model)

    def quantizing(self) -> Any:
        """The context a cell's quantization runs in (here: none)."""
        return contextlib.nullcontext()

    def evaluating(self, model: nn.Module) -> Any:
        """The context a cell's evaluation runs in (here: none)."""
        return contextlib.nullcontext()

    def _reset(self, idx: int, layer: nn.Module) -> None:
        from safetensors.torch import load_file

        device = next(layer.parameters()).device  # assign=True keeps the loaded tensors' device: load there
        state = load_file(str(self.folder / f"block_{idx}.safetensors"), device=str(device))
        if device.type == "cpu":  # CPU tensors still read the file's mapping; a device copy is already its own
            state = {k: v.clone() for k, v in state.items()}
        layer.load_state_dict(state, assign=True)

    @torch.no_grad()
    def restore(self, model: nn.Module) -> None:
        for idx, layer in enumerate(decoder_layers(model)):
            self._reset(idx, layer)
            for m in layer.modules():
                if hasattr(m, GRID_ATTR):
                    delattr(m, GRID_ATTR)
            detach_act_quant(layer)
        if model_signature(model) != self.signature:
            raise QuantError("in-place quantization changed the model beyond what FloatBlocks restores (module "
                             "classes, hooks or tensors outside the decoder blocks); use a copy (in_place: false)")


class OffloadedBlocks(FloatBlocks):
    """`FloatBlocks` for a model opened with `models.lazy.open_lazily` (recipe `offload: true`): the float
    blocks are the source checkpoint's, nothing is saved. `quantizing()` sets a `DiskPlacement` that reads
    each block from the checkpoint and writes its quantized form under a fresh folder of `folder`;
    `evaluating(model)` streams the blocks of the latest quantization (or the checkpoint's); `restore`
    drops the quantized blocks (back to `meta`) and their folder."""

    def __init__(self, model: nn.Module, folder: str | Path, source: Any, device: Any = "cpu") -> None:
        self.folder, self.source, self.device = Path(folder), source, device
        self.signature = model_signature(model)
        self.placement = self._fresh()

    def _fresh(self) -> Any:
        from ptq_bench.quant.placement import scratch_placement

        return scratch_placement(self.folder, self.device, self.source)

    def quantizing(self) -> Any:
        from ptq_bench.quant.placement import use_placement

        return use_placement(self.placement)

    def evaluating(self, model: nn.Module) -> Any:
        from ptq_bench.quant.placement import streamed

        return streamed(model, self.placement)

    def _reset(self, idx: int, layer: nn.Module) -> None:
        from ptq_bench.quant.placement import to_meta

        to_meta(layer)

    def restore(self, model: nn.Module) -> None:
        import shutil

        super().restore(model)
        shutil.rmtree(self.placement.folder, ignore_errors=True)
        self.placement = self._fresh()


def model_signature(model: nn.Module) -> str:
    """A digest of what `FloatBlocks.restore` does not restore: every module's name, class and hooks, and
    the bytes of every tensor outside the decoder blocks (embeddings, final norm, LM head)."""
    import hashlib

    h = hashlib.sha256()
    for name, m in model.named_modules():
        hooks = [type(x).__qualname__ for x in (*m._forward_pre_hooks.values(), *m._forward_hooks.values())]
        h.update(f"{name}:{type(m).__module__}.{type(m).__qualname__}:{hooks};".encode())
    layers = decoder_layers(model)
    prefix = next(n for n, m in model.named_modules() if m is layers) + "."
    for name, t in model.state_dict().items():
        if not name.startswith(prefix):
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
