"""Tables in the BitNet papers' own layouts, with the papers' numbers available side by side.

The layouts themselves (title, columns, plots) are data in `ptq_bench.report.layouts`; here are the
table functions they name, which pick the rows (which cells, in which order, under which paper label)
and fill the layout's columns, labelled by `TaskSpec.label`. The papers' numbers are from
../shared/reference/paper_tables.md (BitNet Table 3; BitNet b1.58 Tables 1/2).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ptq_bench.kinds import DISPLAY_NAMES, ptq_allowed
from ptq_bench.quant.configs import CATALOG, setting_label
from ptq_bench.report.fmt import Quoted, bits, frame, param_count
from ptq_bench.report.layouts import LAYOUTS
from ptq_bench.report.run import RunData, mean, ppl, task_metric, versions
from ptq_bench.report.spread import fewer_seeds, pool_measured, setting

if TYPE_CHECKING:
    import pandas as pd

    from ptq_bench.report.layouts import Layout


def _quoted(*texts: str) -> tuple[Quoted, ...]:
    """A paper's row, each number as the paper prints it (`fmt.Quoted`)."""
    return tuple(map(Quoted, texts))


# BitNet (arXiv 2310.11453) Table 3, 6.7B: (WBits, Method, ABits) -> (PPL, WG, WGe, HS, SC, Avg)
PAPER_TABLE3: dict[tuple[str, str, str], tuple[float, ...]] = {
    ("16", "FP16", "16"): _quoted("15.19", "66.7", "54.3", "42.9", "67.4", "57.8"),
    ("8", "Absmax", "8"): _quoted("21.43", "60.4", "52.0", "38.3", "62.7", "53.4"),
    ("8", "SmoothQuant", "8"): _quoted("15.67", "65.3", "53.1", "40.9", "67.6", "56.7"),
    ("4", "GPTQ", "16"): _quoted("16.05", "57.2", "51.2", "39.9", "63.4", "52.9"),
    ("4", "Absmax", "4"): _quoted("4.8e4", "55.8", "50.9", "25.0", "53.1", "46.2"),
    ("4", "SmoothQuant", "4"): _quoted("1.6e6", "53.7", "48.3", "24.8", "53.6", "45.1"),
    ("2", "GPTQ", "16"): _quoted("1032", "51.6", "50.1", "25.8", "53.4", "45.2"),
    ("2", "QuIP", "16"): _quoted("70.43", "56.1", "51.2", "30.3", "58.4", "49.0"),
    ("1", "Absmax", "8"): _quoted("3.5e23", "49.8", "50.0", "24.8", "53.6", "44.6"),
    ("1", "SmoothQuant", "8"): _quoted("3.3e21", "50.5", "49.5", "24.6", "53.1", "44.4"),
    ("1", "BitNet b1", "8"): _quoted("17.07", "66.3", "51.4", "38.9", "66.9", "55.9"),
}
# BitNet b1.58 (arXiv 2402.17764) Tables 1/2:
# (Model, Size) -> (Mem GB, Lat ms, PPL, ARCe, ARCc, HS, BQ, OQ, PQ, WGe, Avg)
PAPER_B158: dict[tuple[str, str], tuple[float, ...]] = {
    ("LLaMA", "700M"): _quoted("2.08", "1.18", "12.33", "54.7", "23.0", "37.0", "60.0", "20.2", "68.9", "54.8", "45.5"),
    ("BitNet b1.58", "700M"): _quoted("0.80", "0.96", "12.87", "51.8", "21.4", "35.1", "58.2", "20.0", "68.1", "55.2",
                                      "44.3"),
    ("LLaMA", "1.3B"): _quoted("3.34", "1.62", "11.25", "56.9", "23.5", "38.5", "59.1", "21.6", "70.0", "53.9", "46.2"),
    ("BitNet b1.58", "1.3B"): _quoted("1.14", "0.97", "11.29", "54.9", "24.2", "37.7", "56.7", "19.6", "68.8", "55.8",
                                      "45.4"),
    ("LLaMA", "3B"): _quoted("7.89", "5.07", "10.04", "62.1", "25.6", "43.3", "61.8", "24.6", "72.1", "58.2", "49.7"),
    ("BitNet b1.58", "3B"): _quoted("2.22", "1.87", "9.91", "61.4", "28.3", "42.9", "61.5", "26.6", "71.5", "59.3",
                                    "50.2"),
    ("BitNet b1.58", "3.9B"): _quoted("2.38", "2.11", "9.62", "64.2", "28.7", "44.2", "63.5", "24.2", "73.2", "60.5",
                                      "51.2"),
}
PAPER_RANDOM = _quoted("50.0", "50.0", "25.0", "50.0", "43.8")  # Table 3's Random row: WG, WGe, HS, SC, Avg (no PPL)
_PAPER_ORDER = {key: i for i, key in enumerate(PAPER_TABLE3)}  # the paper's row order within a bit width
TABLE3_SOURCE = ("- `paper …` columns: BitNet (arXiv 2310.11453) Table 3, a 6.7B model, zero-shot, "
                 "matched by WBits, Method and ABits; its PPL is on the validation set of its own training corpus, "
                 "not the `PPL` protocol of this table: compare the shape, not the numbers.")
B158_SOURCE = ("- The paper's numbers: BitNet b1.58 (arXiv 2402.17764) Tables 1/2, models of 700M to 3.9B trained on "
               "100B RedPajama tokens at sequence length 2048 (its public reproduction evaluates at context 2048), "
               "zero-shot lm-evaluation-harness with no document limit reported; not the `PPL` windows nor the "
               "document limit of this table's columns: compare the shape, not the numbers.")
B158_MEMORY = ("- `Mem (MB)`: bytes of the stored weights (every high-precision tensor at 16 bits, BitNet weights "
               "packed 4 per byte), not measured memory; the paper's `Mem (GB)` and `Lat (ms)` "
               "are GPU memory and latency at inference, which this table does not measure.")
STABILITY_COLUMNS = ("- `peak LR`: the schedule's peak learning rate; `final loss`: training cross-entropy (nats per token) "
                     "of the last logged step's batch, one batch (not an average, not held-out); `diverged`: the "
                     "training loss became non-finite at that step and training stopped there, or (the last step) "
                     "its update left non-finite weights behind a finite loss.")
METHOD_NAMES = {name: entry.display for name, entry in CATALOG.items()}  # display names, from the method catalog


def labels(layout: Layout) -> list[str]:
    """The layout's accuracy column headers: each task's TaskSpec.label."""
    from ptq_bench.eval.harness import TASKS

    return [TASKS[task].label for task, _ in layout.columns]


def _accuracies(row: dict[str, Any], layout: Layout) -> dict[str, Any]:
    """{label: accuracy in %} over the layout's columns, then their average (None if any is unmeasured)."""
    accs = {label: task_metric(row, task, metric) for label, (task, metric) in zip(labels(layout), layout.columns)}
    return {**accs, "Avg": mean(list(accs.values()))}


def _table3_method(row: dict[str, Any]) -> str:
    if row.get("method") == "none":
        return DISPLAY_NAMES.get(row.get("model_kind"), str(row.get("model")))
    return METHOD_NAMES.get(row.get("method"), str(row.get("method")))


def _diverged(row: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, str]:
    """The `diverged` column (as the generic table's), present when some shown row's model diverged in training:
    its numbers are those of the weights at the divergence step, not of a trained model."""
    return {"diverged": "yes" if row.get("diverged") else ""} if any(r.get("diverged") for r in rows) else {}


def table3(run: RunData, layout: Layout, with_paper: bool = True) -> pd.DataFrame:
    """Rows: FP16, each PTQ setting of a model PTQ may target (kinds.Kind.ptq_allowed), each natively trained
    BitNet; columns as Table 3. A setting run over several calibration seeds is one row: mean ± std over the
    seeds that measured each column (a recipe may run the tasks on one seed only), `seeds` the number of seeds."""
    rows = [r for r in run.rows if r.get("method") == "none" or ptq_allowed(r.get("model_kind"))]
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(setting(row), []).append(row)
    several = any(len(g) > 1 for g in groups.values())
    named = (len({r.get("model") for r in rows}) > len({r.get("model_kind") for r in rows})  # two models of a kind
             or len({r.get("model") for r in rows if r.get("method") != "none"}) > 1  # PTQ rows of two models
             or any(_loaded(run, r.get("model")) for r in rows))  # a `source:` model is not the paper's Transformer
    records, partial = [], []
    for group in groups.values():
        row = group[0]
        measured = [{"PPL": ppl(r), **_accuracies(r, layout)} for r in group]
        rec: dict[str, Any] = {**({"Model": row.get("model")} if named else {}),
                               "WBits": bits(row.get("w_bits")), "Method": _table3_method(row),
                               "ABits": bits(row.get("a_bits")),
                               "Setting": setting_label(str(row.get("method")), row.get("config") or {}),
                               "PTQ": "no" if row.get("method") == "none" else "yes",
                               **{c: pool_measured([m[c] for m in measured]) for c in measured[0]},
                               **({"seeds": len(group)} if several else {}), **_diverged(row, rows),
                               **versions(row, rows)}
        if with_paper:
            paper = PAPER_TABLE3.get((rec["WBits"], rec["Method"], rec["ABits"]))
            for i, col in enumerate(["PPL", *labels(layout), "Avg"]):
                rec[f"paper {col}"] = paper[i] if paper else None
        partial += _fewer_seeds(rec, measured)
        w = row.get("w_bits")
        order = _PAPER_ORDER.get((rec["WBits"], rec["Method"], rec["ABits"]), len(_PAPER_ORDER))
        records.append((-float(w) if w is not None else 0.0, row.get("method") == "none", order, rec))
    records.sort(key=lambda t: t[:3])  # bits descending, PTQ before native, then the paper's order (stable within)
    recs = [rec for *_, rec in records]
    df = frame([*([_random_row(recs[0], layout)] if with_paper and recs else []), *recs])
    df.attrs["notes"] = [*([TABLE3_SOURCE] if with_paper else []), *(_seed_notes(partial) if several else [])]
    return df


def _random_row(template: dict[str, Any], layout: Layout) -> dict[str, Any]:
    """The paper's first row, chance accuracy ("Random"): the paper's numbers only, every column of ours `–`."""
    rec: dict[str, Any] = {**dict.fromkeys(template), "Method": "Random", "Setting": ""}
    for col, value in zip([*labels(layout), "Avg"], PAPER_RANDOM):
        rec[f"paper {col}"] = value
    return rec


def _fewer_seeds(rec: dict[str, Any], measured: list[dict[str, Any]]) -> list[str]:
    """'GPTQ W4A16 g128: WG, WGe, HS, SC, Avg from 1 of 3 seeds' (`spread.fewer_seeds`) for a pooled row."""
    setting_ = f" {rec['Setting']}" if rec.get("Setting") else ""
    return fewer_seeds(f"{rec['Method']} W{rec['WBits']}A{rec['ABits']}{setting_}", measured)


def _seed_notes(partial: list[str]) -> list[str]:
    """What `seeds` and `±` mean in a table that pools calibration seeds, and which cells pool fewer seeds."""
    lines = ["- `seeds`: calibration seeds pooled into the row; a cell over several of them is mean ± sample std."]
    if partial:
        lines.append(f"- Measured on fewer seeds than the row's `seeds`: {'; '.join(partial)}.")
    return lines


def _loaded(run: RunData, model: Any) -> bool:
    """Did the run's recipe load `model` from a `source:` (rather than train it)?"""
    models = run.recipe.get("models")
    spec = models.get(model) if isinstance(models, dict) else None
    return isinstance(spec, dict) and spec.get("source") is not None


def b158_table(run: RunData, layout: Layout) -> pd.DataFrame:
    """Rows: each unquantized model (LLaMA = fp16, BitNet b1.58), by size; memory = stored weight bytes."""
    rows = [r for r in run.rows if r.get("method") == "none"]
    records = []
    for row in rows:
        kind = row.get("model_kind")
        size = row.get("n_params")
        wbytes = row.get("weight_bytes")
        name = DISPLAY_NAMES.get(kind, str(row.get("model")))
        if kind == "fp16":  # trained here: the paper's LLaMA; a `source:` model may be any family: its own name
            name = str(row.get("model")) if _loaded(run, row.get("model")) else "LLaMA"
        rec: dict[str, Any] = {"Model": name,
                               "Size": param_count(size) if size else row.get("model"),
                               "Mem (MB)": wbytes / 1e6 if wbytes is not None else None, "PPL": ppl(row),
                               **_accuracies(row, layout), **_diverged(row, rows), **versions(row, rows)}
        records.append((size or 0, rec["Model"], rec))
    records.sort(key=lambda t: t[:2])
    df = frame([rec for *_, rec in records])
    df.attrs["notes"] = [B158_SOURCE, B158_MEMORY]
    return df


def stability_table(run: RunData, layout: Layout) -> pd.DataFrame:
    """One row per trained model: kind, peak LR, final training loss, divergence, perplexity."""
    rows = [r for r in run.rows if r.get("method") == "none" and r.get("model") in run.curves]
    records = []
    for row in rows:
        c = run.curves[row["model"]]
        last = c["curve"][-1] if c.get("curve") else {}
        rec = {"Model": DISPLAY_NAMES.get(row.get("model_kind"), str(row.get("model_kind"))),
               "peak LR": (c.get("schedule") or {}).get("lr"), "final loss": last.get("loss"),
               "diverged": f"yes (step {last.get('step')})" if c.get("diverged") else "no",
               "PPL": ppl(row), **versions(row, rows)}
        records.append(rec)
    records.sort(key=lambda r: (r["Model"], r["peak LR"] if r["peak LR"] is not None else 0.0))
    df = frame(records)
    df.attrs["notes"] = [STABILITY_COLUMNS]
    return df


def paper_b158() -> pd.DataFrame:
    cols = ["Mem (GB)", "Lat (ms)", "PPL", *labels(LAYOUTS["bitnet_b158"]), "Avg"]
    return frame([{"Model": m, "Size": sz, **dict(zip(cols, v))} for (m, sz), v in PAPER_B158.items()])
