"""Synthetic result rows and run folders for the report tests, valid under the store's `Row` schema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def row(model: str, kind: str, method: str, w: float, a: float, ppl: float | None, accs: list[tuple[str, str, float]],
        n_params: int = 1_000_000, wbytes: int = 2_000_000, **extra: Any) -> dict[str, Any]:
    """A schema-0 row (no hashes or versions unless `extra` sets them); accs = [(task, metric, fraction)]."""
    metrics = {} if ppl is None else {"ppl_gptq/wikitext2/seq128": ppl}
    metrics.update({f"lm_eval/{task}/0shot/{metric}": v for task, metric, v in accs})
    config = {} if method == "none" else {"w_bits": w, "a_bits": a}  # one store slot per (method, bits)
    return {"cell_id": f"{model}-{method}-{w}-{a}", "recipe": "synthetic", "model": model, "model_kind": kind,
            "model_key": f"key-{model}", "method": method, "label": f"{method} W{w}A{a}", "w_bits": w, "a_bits": a,
            "config": config, "metrics": metrics, "quant": {}, "eval_seconds": 0.0,
            "protocol": {"num_fewshot": 0, "limit": 10, "backend": "fast", "ppl": {"seq_len": 128, "max_windows": None}},
            "diverged": False, "untrained_metrics": None, "finished": "", "n_params": n_params, "weight_bytes": wbytes,
            **extra}


def run_dir(parent: Path, rows: list[Any], layout: str | None = None, manifest: str | None = None,
            curves: list[dict[str, Any]] = ()) -> Path:
    """<parent>/run with results.jsonl (one JSON value per line), manifest.json and curves/."""
    d = parent / "run"
    (d / "curves").mkdir(parents=True)
    (d / "results.jsonl").write_text("".join(json.dumps(r, allow_nan=True) + "\n" for r in rows), encoding="utf-8")
    default = {"recipe": {"layout": layout}, "recipe_hash": "h",
               "invocations": [{"hardware": {"cpu_count": 2}, "wall_s": 60.0}]}
    (d / "manifest.json").write_text(manifest if manifest is not None else json.dumps(default), encoding="utf-8")
    for c in curves:
        (d / "curves" / f"{c['model']}.json").write_text(json.dumps(c, allow_nan=True), encoding="utf-8")
    return d


def md_cells(line: str) -> list[str]:
    """The stripped cells of one markdown table row ("| a | b |" -> ["a", "b"])."""
    return [c.strip() for c in line.strip("|").split("|")]
