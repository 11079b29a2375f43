"""What a recipe computes, whatever its wording, so that a run folder takes another wording of its recipe.

`Recipe.digest`, a run folder's identity (every row carries it), hashes the recipe as written: a written-out
method default (`group_size: 128`), `8.0` for `8`, quantize entries in another order or split otherwise
give another hash, though every cell is the same. `meaning` hashes what the recipe computes: its digest
fields with each model as built (resolved architecture and LR schedule, or its `source:`) and the quantize
entries (and calibration seeds) as the set of cells they expand to (model, method, the config with its
defaults filled in, calibration seed, tasks), every number as a float. Anything else that differs
(protocol, data, train, dtype, seed, a `source:` path) still differs.

`folder_recipe` is how `run` uses it: when the folder's manifest stores another wording of the same meaning,
the run goes on as that stored recipe (so its hash, the one the folder's rows carry, stays the folder's;
the manifest's `recipe` keeps hashing to it, for the next comparison) with this recipe's NOT_IN_DIGEST fields
(names, folders, layout, executor); the invocation records the hash of this wording. Otherwise the recipe
is returned as is and `results.open_run` refuses a folder of another recipe, as before. A folder of this same
recipe that an older ptq-bench wrote under the hash of its own recipe schema (`refuse_older`) is refused as that.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import MISSING
from pathlib import Path
from typing import Any

from ptq_bench.cells import Cell, calib_seed, expand_cells
from ptq_bench.config import fields_hash, from_dict, to_dict
from ptq_bench.errors import PtqBenchError, RecipeError
from ptq_bench.recipe import DIGEST_UNLESS_DEFAULT, NOT_IN_DIGEST, Recipe, digest_fields, model_arch
from ptq_bench.results import as_floats, load_manifest, scan_rows


def meaning(recipe: Recipe) -> str:
    """A hash of what `recipe` computes (see the module docstring): equal for two wordings of the same cells."""
    fields = digest_fields(recipe)
    fields["models"] = {name: _model(recipe, name) for name in recipe.models}
    fields["quantize"] = sorted(json.dumps(as_floats(_cell(recipe, c)), sort_keys=True) for c in expand_cells(recipe))
    fields["calibration"].pop("seeds")  # in the cells' calibration seeds
    return fields_hash(as_floats(fields))


def _model(recipe: Recipe, name: str) -> dict[str, Any]:
    """Model `name` as built: its `source:`, or its kind, resolved architecture and LR schedule."""
    from ptq_bench.prepare import model_schedule

    spec = recipe.models[name]
    if spec.source is not None:
        return {"source": spec.source}
    return {"kind": spec.kind, "arch": to_dict(model_arch(recipe, name)),
            "schedule": to_dict(model_schedule(recipe, name))}


def _cell(recipe: Recipe, cell: Cell) -> dict[str, Any]:
    tasks = recipe.eval.tasks if cell.tasks is None else list(cell.tasks)
    return {"model": cell.model, "method": cell.method, "config": cell.config_dict(),
            "calib_seed": calib_seed(recipe, cell), "tasks": tasks}


def folder_recipe(recipe: Recipe) -> tuple[Recipe, dict[str, str]]:
    """(the recipe a run of `recipe` goes on as, what its invocation records: {"reworded_recipe_hash": the
    hash of `recipe`'s wording} when that is another wording of the folder's recipe, else {}); see the module
    docstring. Called under the folder's `run_lock`."""
    stored = stored_recipe(recipe.out_dir)
    if stored is None:
        refuse_older(recipe)
    if stored is None or stored.digest() == recipe.digest():
        return recipe, {}
    try:
        same = meaning(stored) == meaning(recipe)
    except (RecipeError, ValueError, TypeError, KeyError):  # the stored recipe no longer expands (a method gone)
        same = False
    if not same:
        return recipe, {}
    as_stored = dataclasses.replace(stored, **{k: getattr(recipe, k) for k in NOT_IN_DIGEST})
    return as_stored, {"reworded_recipe_hash": recipe.digest()}


def stored_recipe(run_dir: Path) -> Recipe | None:
    """The recipe a folder's manifest stores, when it reads back as the recipe its `recipe_hash` names (a
    manifest of an older ptq-bench whose recipe lacks or has other fields does not: None, as does none)."""
    try:
        manifest = load_manifest(run_dir, strict=True)
        if manifest is None or not isinstance(manifest.get("recipe"), dict):
            return None
        recipe = from_dict(Recipe, manifest["recipe"])
    except (PtqBenchError, ValueError, TypeError):
        return None
    return recipe if recipe.digest() == manifest["recipe_hash"] else None


# the hash rules of earlier ptq-bench versions, as (fields left out, fields left out at their default): the
# full recipe before 2441256, then each NOT_IN_DIGEST list, then this version's (`dtype` at "auto" left out too
# since dbc4285). A manifest's stored recipe hashed by one of them to its `recipe_hash` was written by that
# version, not edited since
_EARLIER = ("name", "output_dir", "cache_dir", "description", "device", "layout")
EARLIER_NOT_IN_DIGEST = ((), _EARLIER, (*_EARLIER, "data_dir"), (*_EARLIER, "data_dir", "executor"),
                         (*_EARLIER, "data_dir", "executor", "in_place"))
HASH_RULES = (*((left_out, {}) for left_out in EARLIER_NOT_IN_DIGEST), (NOT_IN_DIGEST, DIGEST_UNLESS_DEFAULT))


def _hashed_then(stored: dict[str, Any], recipe_hash: str) -> bool:
    """Whether an earlier ptq-bench's recipe hash of the stored recipe (as its manifest keeps it) is `recipe_hash`."""
    return any(fields_hash({k: v for k, v in stored.items() if k not in left_out and unless.get(k, MISSING) != v})
               == recipe_hash for left_out, unless in HASH_RULES)


def refuse_older(recipe: Recipe) -> None:
    """A folder of this same recipe that an older ptq-bench wrote, under the hash it computed then (recipe fields
    added since count in this version's hash, each at its default), is refused as what it is, not as "another
    recipe's" with advice to remove it: its rows cannot be resumed, `report` still renders them."""
    try:
        manifest = load_manifest(recipe.out_dir, strict=True)
        stored = (manifest or {}).get("recipe")
        if manifest is None or manifest["recipe_hash"] == recipe.digest() or not isinstance(stored, dict) \
                or not _hashed_then(stored, manifest["recipe_hash"]):  # none, this recipe's, or edited since
            return
        then = from_dict(Recipe, stored)  # the fields added since at their defaults
        same = then.digest() == recipe.digest() or meaning(then) == meaning(recipe)
    except (PtqBenchError, RecipeError, ValueError, TypeError, KeyError):
        return
    if not same or not any(row is not None for _, row, _ in scan_rows(recipe.out_dir)):
        return
    first = (manifest.get("invocations") or [{}])[0]
    raise PtqBenchError(f"{recipe.out_dir} holds this recipe's results from an older ptq-bench (git "
                        f"{str(first.get('git'))[:12]}), under the recipe hash it computed then ({manifest['recipe_hash']}; "
                        f"this version's is {recipe.digest()}): it cannot be resumed; set a different output_dir "
                        f"(`ptq-bench report {recipe.out_dir}` still renders the folder)")
