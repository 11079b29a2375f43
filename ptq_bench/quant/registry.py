"""Method name -> (apply function, version); its config dataclass and calibration need are its `CATALOG` entry's.

A new method is three edits (README "Adding a method"): its frozen config in `quant/configs.py` (light:
validate reads it without torch; `__post_init__` calls `check_fields`) with a `CATALOG` entry, its matrix
setting in `tests/family_checks.py:METHOD_PARAMS`, and one module in this package with a solver and one
decorated function:

    def my_solver(cfg: MyConfig) -> Solver:         # (linear, statistic) -> (w_hat (out, in), grid, loss)
        ...

    @register("mine")                                 # its config class and calibration need: CATALOG["mine"]
    def quantize_mine(model, cfg: MyConfig, calib: torch.Tensor | None) -> QuantReport:
        return quantize_model(model, my_solver(cfg), cfg.a_bits, calib=calib, make_stat=hessian_stat)

`quant/apply.py:quantize_model` walks the family's linears (families.py), runs the block-by-block
calibration, stores each solution, attaches activation quantization and builds the QuantReport. The
apply function changes `model` in place (it always gets a fresh copy of the base model). `calib` is a
(n_samples, seqlen) LongTensor of token ids, or None when the method does not need calibration. Every
config has `w_bits` and `a_bits` fields. `version` is bumped whenever the method's numbers change.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ptq_bench.errors import RecipeError
from ptq_bench.quant.configs import CATALOG, make_config


@dataclass
class QuantReport:
    """What a quantization step reports about itself."""

    effective_bits: float  # stored bits per quantized weight, scales and zeros included
    seconds: float  # wall time of the quantization step (calibration forward passes included)
    n_linears: int = 0  # how many linear layers were quantized
    details: dict[str, Any] = field(default_factory=dict)  # method-specific numbers (e.g. mean layer error)


@dataclass(frozen=True)
class Method:
    """A registered solver; its config class and calibration need are its `CATALOG` entry's (one place)."""

    name: str
    apply: Callable[..., QuantReport]
    version: int = 1  # part of every cell id and row: bumped whenever the method's numbers change

    @property
    def config_cls(self) -> type:
        return CATALOG[self.name].config

    @property
    def needs_calibration(self) -> bool:
        return CATALOG[self.name].needs_calibration

    def make_config(self, params: dict[str, Any], where: str = "") -> Any:
        """Build the frozen config through the typed loader: unknown key, wrong type, out of bounds = RecipeError."""
        return make_config(self.name, params, where)


METHODS: dict[str, Method] = {}


def register(name: str, version: int = 1) -> Callable:
    """Function decorator: `@register("gptq")` makes the decorated function method `name`'s apply function.
    The method's config class and calibration need are read from its `CATALOG` entry (quant/configs.py),
    which must exist.

    `version`: bump it (`version=2`, ...) in the same commit as any change that can change the
    method's numbers (solver, grid, rounding, defaults). It is part of every cell id and stored in
    each row, so a re-run recomputes the cells the old version made instead of keeping stale rows.
    """
    if name not in CATALOG:
        raise ValueError(f"method '{name}' has no CATALOG entry: add its config and calibration need to "
                         "CATALOG in ptq_bench/quant/configs.py")

    def wrap(fn: Callable[..., QuantReport]) -> Callable[..., QuantReport]:
        if name in METHODS:
            raise ValueError(f"method '{name}' registered twice")
        METHODS[name] = Method(name, fn, version)
        return fn

    return wrap


def get_method(name: str) -> Method:
    from ptq_bench.quant import load_all

    load_all()
    if name not in METHODS:
        raise RecipeError(f"unknown method '{name}' (known: {', '.join(sorted(METHODS))})")
    return METHODS[name]
