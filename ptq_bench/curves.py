"""A run folder's training curves: curves/<model>.json per trained model, as the loss plots read them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ptq_bench.cache import problem, write_atomic
from ptq_bench.console import log
from ptq_bench.results import CURVES


def save_curve(out: Path, name: str, kind: str, info: dict) -> None:
    """The curve of a model's training info (`train_info.json`) into the run folder, whole (temp + rename)."""
    if "curve" not in info:
        return
    (out / CURVES).mkdir(exist_ok=True)
    payload = {"model": name, "kind": kind, "diverged": info.get("diverged", False),
               "schedule": info.get("schedule"), "trained_on": info.get("trained_on"), "curve": info["curve"]}
    write_atomic(out / CURVES / f"{name}.json", json.dumps(payload))


def mend_curves(out: Path, recipe: Any, cache: Path, keys: dict[str, str]) -> None:
    """A trained model's curves/<model>.json that is missing or unreadable (damaged by hand: runs write it
    whole) is written again from the model's intact cache folder; the tables would skip it otherwise."""
    from ptq_bench.prepare import model_folder
    from ptq_bench.report.run import read_curve

    for name, spec in recipe.models.items():
        if spec.source is not None:
            continue  # loaded, not trained: no curve
        path, cached = out / CURVES / f"{name}.json", model_folder(cache, spec.kind, keys[name])
        try:
            read_curve(path)
            continue
        except (ValueError, OSError):
            pass
        if problem(cached) is None:
            was = "unreadable" if path.exists() else "missing"
            save_curve(out, name, spec.kind, json.loads((cached / "train_info.json").read_text(encoding="utf-8")))
            log(f"{path} was {was}; written again from the model cache")
