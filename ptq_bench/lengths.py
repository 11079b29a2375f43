"""Each model's windows fit it: training, calibration and evaluation lengths against its context, and
calibration rows against the rows its forward runs whole (`Family.whole_rows`). Part of `check_recipe`."""

from __future__ import annotations

from ptq_bench.cells import targets
from ptq_bench.errors import RecipeError
from ptq_bench.quant.configs import CATALOG
from ptq_bench.recipe import Recipe, model_arch, source_info
from ptq_bench.sources import SourceInfo


def _context(recipe: Recipe, name: str, info: SourceInfo | None) -> tuple[int | None, str]:
    """(context length of model `name`, where that number comes from); `info`: its source's, if any."""
    if info is None:
        return model_arch(recipe, name).max_seq_len, f"models.{name} arch.max_seq_len"
    return info.context_length, f"models.{name}.source config"


def check_lengths(recipe: Recipe) -> None:
    """Training, calibration and evaluation windows fit each model's context."""
    calibrated = {n for q in recipe.quantize if CATALOG[q.method].needs_calibration
                  for n in targets(recipe, q, "quantize")}
    for name, spec in recipe.models.items():
        info = source_info(recipe, name) if spec.source is not None else None  # read once: it parses config.json
        if name in calibrated:
            _check_whole_rows(recipe, name, info)
        ctx, origin = _context(recipe, name, info)
        if ctx is None:
            continue
        lengths = [("eval.perplexity.seq_len", recipe.eval.perplexity.seq_len)]
        lengths += [("train.seq_len", recipe.train.seq_len)] if spec.source is None else []
        lengths += [("calibration.seq_len", recipe.calibration.seq_len)] if name in calibrated else []
        for key, value in lengths:
            if value > ctx:
                raise RecipeError(f"{key}: {value} is longer than the context of model '{name}' ({ctx}, {origin})")


def _check_whole_rows(recipe: Recipe, name: str, info: SourceInfo | None) -> None:
    """Calibration rows the model's forward runs unsplit: the block runner records each block's first call."""
    rows = info.whole_rows if info is not None else None
    if rows is not None and recipe.calibration.seq_len > rows[1]:
        raise RecipeError(f"calibration.seq_len: {recipe.calibration.seq_len} is longer than the rows model '{name}' "
                          f"runs whole ({rows[0]} {rows[1]}): it splits longer ones into chunks, and the block "
                          "runner would calibrate on the first chunk only")
