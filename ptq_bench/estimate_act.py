"""Activation-quantized cells, for `estimate`. Their forwards carry the quantizers' hooks (dynamic absmax per
token or per tensor), and per-tensor scales also change how they are evaluated (one perplexity window per
forward, `eval.perplexity.window_batch`; HFLM's own batching for zero-shot, `eval/fast_lm.py`), so each
activation setting a model's cells have is timed apart. The hooks are placed as the methods place them
(`quant.apply.quantize_model`, with a solver that leaves every weight as it is: a weight's value does not change
a forward's cost) on the probe model, and removed after. An offloaded model is not timed so (its blocks are
streamed from disk): its activation-quantized cells are projected at its base rate, and the report says so."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from ptq_bench.recipe import Recipe, expand_cells

ActKey = tuple[int, str]  # (a_bits, a_granularity)


@dataclass
class Rates:
    """A model's evaluation rates with one activation setting (or none)."""

    ppl_batch_s: float  # seconds of one perplexity forward of `rows` windows
    rows: int
    zero_shot_call_s: float = 0.0  # the fixed cost of one evaluate call
    zero_shot_s: dict[str, float] = field(default_factory=dict)  # task -> projected seconds at the recipe's limit


def act_key(cell: Any) -> ActKey | None:
    """The activation setting of a cell (None: activations not quantized)."""
    if cell.a_bits >= 16:
        return None
    return int(cell.a_bits), cell.config_dict().get("a_granularity", "token")


def act_settings(recipe: Recipe, name: str) -> list[ActKey]:
    """Model `name`'s activation settings, in cell order, each once."""
    keys = [act_key(c) for c in expand_cells(recipe) if c.model == name]
    return list(dict.fromkeys(k for k in keys if k is not None))


@contextmanager
def act_hooks(model: Any, key: ActKey) -> Iterator[None]:
    """The model with the activation quantizers a method with this setting attaches, weights unchanged."""
    from ptq_bench.quant.apply import quantize_model
    from ptq_bench.quant.linears import detach_act_quant

    try:
        quantize_model(model, lambda linear, stat: (None, None, None), a_bits=key[0], a_granularity=key[1])
        yield
    finally:
        detach_act_quant(model)


def cell_rates(m: Any, cell: Any, rows: int) -> Rates:
    """The rates a cell is projected at (`m`: its model's `estimate.Measured`): its activation setting's when
    timed, else the model's base rates (`rows` windows per perplexity forward)."""
    key = act_key(cell)
    return m.act[key] if key in m.act else base_rates(m, rows)


def base_rates(m: Any, rows: int) -> Rates:
    """Model `m`'s (`estimate.Measured`) rates without quantized activations (`rows` windows per perplexity
    forward)."""
    return Rates(m.ppl_batch_s, rows, m.zero_shot_call_s, m.zero_shot_s)


def untimed_lines(recipe: Recipe, found: list[Any]) -> list[str]:
    """A line per offloaded model whose activation-quantized cells were projected at its base rate."""
    return [f"{m.name}: offloaded, so its activation-quantized cells are projected at its base rate; they run "
            "slower (per-tensor scales: one perplexity window per forward and HFLM's batching)"
            for m in found if act_settings(recipe, m.name) and not m.act]


def act_name(key: ActKey) -> str:
    return f"A{key[0]}" + ("" if key[1] == "token" else f" per {key[1]}")
