"""What a report reads from a run folder, read leniently, and the accessors report/ uses on a row.

A report renders every intact row: a row that is not a JSON object is skipped and counted, a damaged
manifest or curve file is named in a note, and a row that lacks an optional field (metrics, quant,
protocol, ...) still renders, its missing values shown as not measured.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ptq_bench.errors import PtqBenchError

# row fields that say which version of a method / of the evaluation produced the row -> column label
VERSION_FIELDS = {"method_version": "method v", "eval_version": "eval v"}


@dataclass
class RunData:
    run_dir: Path
    rows: list[dict[str, Any]]
    manifest: dict[str, Any] | None = None
    curves: dict[str, dict[str, Any]] = field(default_factory=dict)  # model name -> curves/<model>.json
    damage: list[str] = field(default_factory=list)  # one note per damaged input that was skipped

    @property
    def recipe(self) -> dict[str, Any]:
        recipe = (self.manifest or {}).get("recipe")
        return recipe if isinstance(recipe, dict) else {}

    @property
    def recipe_name(self) -> str:
        named = [r["recipe"] for r in self.rows if isinstance(r.get("recipe"), str)]
        return named[0] if named else self.run_dir.name


def load_run(run_dir: Path) -> RunData:
    from ptq_bench.results import load_manifest, read_rows

    run = RunData(Path(run_dir), [])
    raw = read_rows(run.run_dir)
    run.rows = [r for r in raw if isinstance(r, dict)]
    if len(run.rows) < len(raw):
        run.damage.append(f"- {len(raw) - len(run.rows)} line(s) of results.jsonl are not JSON objects: skipped.")
    try:
        manifest = load_manifest(run.run_dir)
    except (PtqBenchError, ValueError, OSError) as exc:
        manifest = None
        run.damage.append(f"- manifest.json unreadable ({type(exc).__name__}): no layout or provenance.")
    if manifest is not None and not isinstance(manifest, dict):
        manifest = None
        run.damage.append("- manifest.json is not a JSON object: no layout or provenance.")
    run.manifest = manifest
    for f in sorted((run.run_dir / "curves").glob("*.json")):
        try:
            curve = json.loads(f.read_text(encoding="utf-8"))
            run.curves[curve.get("model", f.stem)] = curve
        except (ValueError, OSError, AttributeError) as exc:
            run.damage.append(f"- curves/{f.name} unreadable ({type(exc).__name__}): skipped.")
    return run


def metrics(row: dict[str, Any]) -> dict[str, Any]:
    m = row.get("metrics")
    return m if isinstance(m, dict) else {}


def num_fewshot(row: dict[str, Any]) -> int | None:
    return (row.get("protocol") or {}).get("num_fewshot")


def percent(v: Any) -> float | None:
    """An lm-eval accuracy (a fraction) in %, as every table shows it; None stays None."""
    return None if v is None else float(v) * 100


def task_metric(row: dict[str, Any], task: str, metric: str) -> float | None:
    """lm-eval accuracy of `task` in %; None when the row did not measure it."""
    n = num_fewshot(row)
    ms = metrics(row)
    keys = ([f"lm_eval/{task}/{n}shot/{metric}"] if n is not None else
            [k for k in ms if k.startswith(f"lm_eval/{task}/") and k.endswith(f"shot/{metric}")])
    v = ms.get(keys[0]) if keys else None
    return percent(v)


def ppl_key(row: dict[str, Any], text: str = "wikitext2") -> str | None:
    """The metric key of the row's GPTQ-protocol perplexity on `text` (the first protocol stored)."""
    return next((k for k in metrics(row) if k.startswith(f"ppl_gptq/{text}/")), None)


def ppl(row: dict[str, Any], text: str = "wikitext2") -> float | None:
    """The row's GPTQ-protocol perplexity on `text`; None if not measured."""
    key = ppl_key(row, text)
    return metrics(row)[key] if key else None


def mean(values: list[float | None]) -> float | None:
    """Average of measured values; None if any is unmeasured (an average over fewer tasks would mislead)."""
    if not values or any(v is None for v in values):
        return None
    return sum(values) / len(values)  # type: ignore[arg-type]


def versions(row: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The version columns, present only when some row of the run carries a version field."""
    return {label: row.get(key) for key, label in VERSION_FIELDS.items() if any(key in r for r in rows)}
