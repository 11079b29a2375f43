"""The cells of a recipe: one per model unquantized, plus one per quantize entry x model x bits setting x
calibration seed (`expand_cells`), each with the lm-eval tasks it runs."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ptq_bench.config import short
from ptq_bench.errors import RecipeError
from ptq_bench.kinds import KINDS
from ptq_bench.quant.configs import CATALOG, make_config

if TYPE_CHECKING:
    from ptq_bench.recipe import QuantSpec, Recipe

MAX_SETTINGS = 64  # cells one w_bits / a_bits list (or one seeds list) may expand to


@dataclass(frozen=True)
class Cell:
    """One (model, method + settings) point of the sweep."""

    model: str
    method: str  # "none" for the unquantized model
    config: Any = None  # the method's frozen config (None for "none")
    calib_seed: int | None = None  # calibration seed when not the recipe's seed (None: recipe.seed or uncalibrated)
    tasks: tuple[str, ...] | None = None  # lm-eval tasks of this cell (None: every task of eval.tasks)

    @property
    def w_bits(self) -> float:
        return getattr(self.config, "w_bits", 16) if self.config is not None else 16

    @property
    def a_bits(self) -> float:
        return getattr(self.config, "a_bits", 16) if self.config is not None else 16

    @property
    def label(self) -> str:
        if self.config is None:
            return "none"
        return f"{self.method} W{_fmt_bits(self.w_bits)}A{_fmt_bits(self.a_bits)}"

    def config_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self.config) if self.config is not None else {}


def _fmt_bits(b: float) -> str:
    return str(int(b)) if float(b).is_integer() else str(b)



def _sweep_params(params: dict[str, Any], where: str) -> list[dict[str, Any]]:
    """Expand list-valued w_bits / a_bits into one params dict per cell (see QuantSpec); a_granularity applies
    to the cells that quantize activations."""
    w, a = params.get("w_bits"), params.get("a_bits")
    wl, al = isinstance(w, list), isinstance(a, list)
    if wl and al and len(w) != len(a):
        raise RecipeError(f"{where}: w_bits and a_bits lists must have the same length to be zipped")
    n = len(w) if wl else len(a) if al else 1
    if not 1 <= n <= MAX_SETTINGS:
        raise RecipeError(f"{where}: a bits list must have 1 to {MAX_SETTINGS} items, got {n}")
    # a_granularity reaches only the cells that quantize activations (a list of only 16s keeps it, and is refused)
    drop_on_16 = al and any(b != 16 for b in a)
    out = []
    for i in range(n):
        p = dict(params)
        if wl:
            p["w_bits"] = w[i]
        if al:
            p["a_bits"] = a[i]
        if drop_on_16 and a[i] == 16:
            p.pop("a_granularity", None)
        out.append(p)
    return out


def targets(recipe: Recipe, q: QuantSpec, where: str) -> list[str]:
    """The models a quantize entry applies to; each must exist, be of a kind PTQ may touch, and have a
    block layout the method can work on (`ptq_refusal`)."""
    from ptq_bench.recipe import model_kind  # (recipe imports this module)

    if q.models is None:
        names = [n for n in recipe.models if KINDS[model_kind(recipe, n)].ptq_default]
    else:
        names = list(q.models)
    for name in names:
        if name not in recipe.models:
            raise RecipeError(f"{where}.models: unknown model {short(name)} (known: {', '.join(recipe.models)})")
        kind = KINDS[model_kind(recipe, name)]
        if not kind.ptq_allowed:
            raise RecipeError(f"{where}.models: '{name}' is a {kind.display} model ({kind.name}); post-training "
                              "quantization of a natively low-bit model is refused")
        problem = ptq_refusal(recipe, name, q.method)
        if problem:
            hint = f" (list the models it applies to in {where}.models)" if q.models is None else ""
            raise RecipeError(f"{where}: {q.method} cannot quantize model '{name}': {problem}{hint}")
    return names


def ptq_refusal(recipe: Recipe, name: str, method: str) -> str:
    """Why `method` cannot quantize model `name` ('' if it can), known from its config alone: a layout its
    family entry does not describe, or a smoothing method on a family with no norm -> linears pair.
    Checked at validate, so a run never writes a base row and then stops at its first PTQ cell."""
    from ptq_bench.recipe import source_info
    from ptq_bench.sources import TOOLKIT_MODEL_TYPE

    info = source_info(recipe, name) if recipe.models[name].source is not None else None
    if info is None:
        return _refusal(TOOLKIT_MODEL_TYPE, "", method)
    return _refusal(info.model_type, info.layout_problem, method)  # model_type None: a hub id not cached


def refuse_loaded(name: str, config: Any, cells: list[Cell]) -> None:
    """`ptq_refusal` from a loaded model's config, for what `validate` could not read (a hub id that was
    not in the local cache): raised before the model's first cell, so no base row precedes the refusal."""
    from ptq_bench.families import layout_problem

    problem = layout_problem(config)
    for cell in cells:
        why = "" if cell.method == "none" else _refusal(config.model_type, problem, cell.method)
        if why:
            raise RecipeError(f"models.{name}: {cell.method} cannot quantize it: {why}")


def _refusal(model_type: str | None, layout_problem: str, method: str) -> str:
    from ptq_bench.families import smoothing_refusal

    if layout_problem or model_type is None:
        return layout_problem
    return smoothing_refusal(model_type) if CATALOG[method].needs_smoothing else ""


def calib_seeds(recipe: Recipe, q: QuantSpec, where: str) -> list[int | None]:
    """An entry's calibration seeds as Cell.calib_seed: None stands for recipe.seed (the cell id it always had)."""
    if not CATALOG[q.method].needs_calibration:
        if q.seeds is not None:
            raise RecipeError(f"{where}.seeds: {q.method} reads no calibration data; remove seeds")
        return [None]
    seeds = q.seeds if q.seeds is not None else recipe.calibration.seeds or [recipe.seed]
    return [None if s == recipe.seed else s for s in seeds]


def cell_tasks(recipe: Recipe, q: QuantSpec, where: str) -> tuple[str, ...] | None:
    """An entry's lm-eval tasks (None: all of eval.tasks); a task outside eval.tasks is an error."""
    if q.tasks is None:
        return None
    extra = [t for t in q.tasks if t not in recipe.eval.tasks]
    if extra:
        raise RecipeError(f"{where}.tasks: {', '.join(extra)} not in eval.tasks ({', '.join(recipe.eval.tasks)})")
    return tuple(t for t in recipe.eval.tasks if t in q.tasks)  # in eval.tasks' order


def calib_seed(recipe: Recipe, cell: Cell) -> int | None:
    """The seed of a calibrated cell's windows (the recipe's unless the cell names one); None: uncalibrated."""
    if cell.method == "none" or not CATALOG[cell.method].needs_calibration:
        return None
    return recipe.seed if cell.calib_seed is None else cell.calib_seed


def expand_cells(recipe: Recipe) -> list[Cell]:
    """Baseline cells (one per model) then every quantize entry x model x bits setting x calibration seed."""
    cells = [Cell(name, "none") for name in recipe.models]  # the first listing of a setting names its tasks
    for i, q in enumerate(recipe.quantize):
        where = f"quantize[{i}]"
        names, seeds, tasks = targets(recipe, q, where), calib_seeds(recipe, q, where), cell_tasks(recipe, q, where)
        for params in _sweep_params(q.params, where):
            cfg = make_config(q.method, params, where)
            cells.extend(Cell(name, q.method, cfg, s, tasks) for name in names for s in seeds)
    seen: set[tuple] = set()
    unique = []
    for c in cells:  # the same setting listed twice runs once (configs compare by value: w_bits 8 == 8.0)
        key = (c.model, c.method, c.config, c.calib_seed)
        if key not in seen:
            seen.add(key)
            unique.append(c)
    return unique
