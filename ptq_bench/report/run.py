"""What a report reads from a run folder, read leniently, and the accessors report/ uses on a row.

A report renders every intact row: each damaged line of results.jsonl (skipped by the store's lenient
read) and a damaged manifest or curve file are named in the notes under the tables; a value a row does
not carry (a task it did not run, an empty quant report, ...) is shown as not measured.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ptq_bench.json_text import loads

# row fields that say which version of a method / of the evaluation produced the row -> column label
VERSION_FIELDS = {"method_version": "method v", "eval_version": "eval v"}
_SHOWN = 5  # damaged lines named one by one in a table's notes


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
    from ptq_bench.results import CURVES, MANIFEST, load_manifest, read_rows

    damaged: list[tuple[int, str]] = []  # lenient: damaged lines skipped (and named), superseded rows dropped
    run = RunData(Path(run_dir), read_rows(run_dir, damaged=damaged))
    run.damage += [f"- results.jsonl line {i} damaged ({problem}): skipped." for i, problem in damaged[:_SHOWN]]
    if len(damaged) > _SHOWN:
        run.damage.append(f"- … and {len(damaged) - _SHOWN} more damaged line(s) of results.jsonl: skipped.")
    run.manifest = load_manifest(run.run_dir)  # lenient: None when damaged
    if run.manifest is None and (run.run_dir / MANIFEST).is_file():
        run.damage.append(f"- {MANIFEST} damaged: rendered without its layout and provenance.")
    for f in sorted((run.run_dir / CURVES).glob("*.json")):
        if f.name.startswith("."):  # a `.tmp-<pid>-<model>.json` a killed write left: not a curve of the run
            continue
        try:
            curve = read_curve(f)
            run.curves[curve.get("model", f.stem)] = curve
        except (ValueError, OSError) as exc:
            run.damage.append(f"- curves/{f.name} unreadable ({type(exc).__name__}: {str(exc)[:80]}): skipped.")
    _drop_foreign_curves(run)
    return run


def _drop_foreign_curves(run: RunData) -> None:
    """Curves of models the manifest's recipe does not name (left by a run of another recipe that stopped
    before its first row, whose manifest the next recipe replaced) are not this run's: skipped, and said."""
    models = run.recipe.get("models")
    if not isinstance(models, dict):  # no manifest (or an old one): every curve is the run's
        return
    for name in [n for n in run.curves if n not in models]:
        del run.curves[name]
        run.damage.append(f"- curves/{str(name)[:40]}.json: model not in this run's recipe (left by an earlier "
                          "run of another recipe): skipped.")


def read_curve(path: Path) -> dict[str, Any]:
    """A curves/<model>.json, checked (`checked_curve`); ValueError or OSError when it cannot be read."""
    return checked_curve(loads(path.read_text(encoding="utf-8")))


def checked_curve(curve: Any) -> dict[str, Any]:
    """A curves/<model>.json as `sweep._save_curve` writes it; ValueError says what is not."""
    if not isinstance(curve, dict):
        raise ValueError("not a JSON object")
    if not isinstance(curve.get("model", ""), str) or not all(
            isinstance(curve.get(k) or {}, dict) for k in ("schedule", "trained_on")):
        raise ValueError("'model' is not a string or 'schedule' / 'trained_on' not an object")
    lr = (curve.get("schedule") or {}).get("lr")
    if lr is not None and (not isinstance(lr, (int, float)) or isinstance(lr, bool)):
        raise ValueError("'schedule.lr' is not a number")  # the stability table sorts and prints it
    if not isinstance(curve.get("diverged", False), bool):
        raise ValueError("'diverged' is not true or false")
    points = curve.get("curve", [])
    if not isinstance(points, list) or not all(
            isinstance(p, dict) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in p.values())
            for p in points):
        raise ValueError("'curve' is not a list of points with numbers")
    return curve


def metrics(row: dict[str, Any]) -> dict[str, Any]:
    m = row.get("metrics")
    return m if isinstance(m, dict) else {}


def num_fewshot(row: dict[str, Any]) -> int | None:
    return (row.get("protocol") or {}).get("num_fewshot")


def shot_name(n: int) -> str:
    return "zero-shot" if n == 0 else f"{n}-shot"


def shots(rows: list[dict[str, Any]]) -> str:
    """How the rows' accuracies were measured, for titles and axes: "zero-shot", "2-shot", or the mix. The
    papers' columns are zero-shot, so a few-shot run must not borrow that word."""
    counts = sorted({n for n in map(num_fewshot, rows) if n is not None}) or [0]
    names = [shot_name(n) for n in counts]
    return names[0] if len(names) == 1 else "mixed: " + ", ".join(names)


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


def ppl_keys(rows: list[dict[str, Any]]) -> list[str]:
    """The distinct WikiText-2 perplexity keys of `rows` (one unless the run mixes protocols), sorted."""
    return sorted({k for k in map(ppl_key, rows) if k})


def ran_tasks(row: dict[str, Any]) -> bool:
    """Did the row measure any lm-eval task?"""
    return any(k.startswith("lm_eval/") for k in metrics(row))


def first_protocol(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The first row's `protocol` (limit, shots, backend, perplexity settings); None for rows without one."""
    return next((r["protocol"] for r in rows if isinstance(r.get("protocol"), dict)), None)


def task_protocol(rows: list[dict[str, Any]], key: str, name: Callable[[Any], str]) -> str:
    """`protocol.<key>` of the rows that ran tasks, named by `name`: one value as itself, several each with
    its row count ("limit 10 (3 rows), every document (1 row)"), so no row is described by another's."""
    seen = Counter(name(r["protocol"].get(key) if isinstance(r.get("protocol"), dict) else None)
                   for r in rows if ran_tasks(r))
    if len(seen) <= 1:
        return next(iter(seen), "")
    return ", ".join(f"{v} ({n} row{'s' * (n > 1)})" for v, n in seen.items())


def computed_on(row: dict[str, Any]) -> tuple[str, str] | None:
    """(device, dtype) from the row's `protocol`; None for rows written before the protocol named them."""
    p = row.get("protocol") if isinstance(row.get("protocol"), dict) else {}
    return (str(p["device"]), str(p["dtype"])) if p.get("device") and p.get("dtype") else None


def ran_on(rows: list[dict[str, Any]]) -> str:
    """Where the rows were computed, for a figure's title: "" when every row that records it ran in
    float32 on the CPU (the default), else each pair, e.g. "computed on cpu in float32; cuda in bfloat16" —
    a figure that leaves its README behind still says it."""
    seen = {w for w in map(computed_on, rows) if w}
    return "" if seen <= {("cpu", "float32")} else "computed on " + "; ".join(" in ".join(w) for w in sorted(seen))


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
    """The version columns, present only when some row of the run carries a version (old rows carry none)."""
    return {label: row.get(key) for key, label in VERSION_FIELDS.items()
            if any(r.get(key) is not None for r in rows)}
