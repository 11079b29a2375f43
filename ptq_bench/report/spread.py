"""The spread over calibration seeds: rows that differ only by `calib_seed` become one row of the
`table_seeds` view (mean ± sample std over the seeds, and n); every per-seed row stays in table.md / .csv.

Rows are the same setting when model, model key, method and full config match (the row's `slot` without
its seed), so two configs that share W/A (per channel and g128) are never pooled, and when their versions and
protocol (device and dtype included) match, so a cell never averages two protocols.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from ptq_bench.report.fmt import Spread, frame
from ptq_bench.report.run import RunData

if TYPE_CHECKING:
    import pandas as pd

    from ptq_bench.report.layouts import Layout

# table columns that are one setting's identity or bookkeeping, not a measured value to pool
_KEPT = ("model", "method", "W", "A", "setting", "diverged", "method v", "eval v")


def setting(row: dict[str, Any]) -> tuple:
    """A row's setting without its calibration seed, under one protocol: seeds computed by other method or
    eval versions, or on another device / dtype (a run resumed after an upgrade, or on a GPU) are not pooled."""
    protocol = row.get("protocol") if isinstance(row.get("protocol"), dict) else {}
    measured = {k: v for k, v in protocol.items() if k != "path"}  # FastLM's path: None on seeds that ran no task
    return (row.get("model"), row.get("model_key"), row.get("method"), json.dumps(row.get("config"), sort_keys=True),
            row.get("method_version"), row.get("eval_version"), json.dumps(measured, sort_keys=True, default=str))


def has_spread(run: RunData) -> bool:
    """Some setting was run with more than one calibration seed."""
    seeds: dict[tuple, set] = {}
    for r in run.rows:
        seeds.setdefault(setting(r), set()).add(r.get("calib_seed"))
    return any(len(s) > 1 for s in seeds.values())


def pool(values: list[Any]) -> Any:
    """One cell from the seeds' values: a Spread of numbers, the value when all agree, else None."""
    nums = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if len(values) > 1 and len(nums) == len(values):
        return Spread.of(nums)
    return values[0] if len(set(map(str, values))) == 1 else None


def pool_measured(values: list[Any]) -> Any:
    """The seeds' values of one column, over the seeds that measured it (an entry may run tasks on one seed)."""
    have = [v for v in values if v is not None]
    return pool(have) if have else None


def fewer_seeds(name: str, measured: list[dict[str, Any]]) -> list[str]:
    """'<name>: <columns> from 1 of 3 seeds' for the columns of a pooled row that fewer of its seeds measured
    than the row pools (a recipe may run the tasks on one seed only)."""
    counts = {c: sum(m.get(c) is not None for m in measured) for c in measured[0]}
    short = [c for c, n in counts.items() if 0 < n < len(measured)]
    by_n = {counts[c]: [x for x in short if counts[x] == counts[c]] for c in short}
    return [f"{name}: {', '.join(cols)} from {n} of {len(measured)} seeds" for n, cols in by_n.items()]


def spread_table(run: RunData, layout: Layout | None = None) -> pd.DataFrame:
    """One row per setting: measured columns as mean ± std over its calibration seeds, `n` the seed count."""
    from ptq_bench.report.tables import generic_records

    rows, records = generic_records(run)
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row, rec in zip(rows, records):
        groups.setdefault(setting(row), []).append(rec)
    out, partial = [], []
    for recs in groups.values():
        cols = [c for c in recs[0] if c != "calib_seed"]
        agg = {c: (recs[0][c] if c in _KEPT else pool_measured([r.get(c) for r in recs])) for c in cols}
        agg["n"] = len(recs)
        agg["calib_seeds"] = " ".join(str(r.get("calib_seed")) for r in recs) if len(recs) > 1 else None
        out.append(agg)
        name = f"{agg['model']} {agg['method']} W{agg['W']}A{agg['A']}" + (f" {agg['setting']}" if agg["setting"] else "")
        partial += fewer_seeds(name, [{c: r.get(c) for c in cols if c not in _KEPT} for r in recs])
    df = frame(out)
    df.attrs["notes"] = [f"- Measured on fewer seeds than the row's `n`: {'; '.join(partial)}."] if partial else []
    return df
