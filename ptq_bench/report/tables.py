"""The generic table of a run (one row per model x method x bits) and the notes under every table.

Columns: every perplexity protocol, the KL divergence to the base model (mean) and top-1 agreement of
quantized rows, then each task's headline accuracy (acc_norm where lm-eval defines it, else acc), then
their average, the quantizer's report, the calibration seed and the row's versions. One row per stored
row: rows that differ only by calibration seed are aggregated in report/spread.py.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from ptq_bench.quant.configs import setting_label
from ptq_bench.report.fmt import bits, frame, md_cell, md_line
from ptq_bench.report.paper import labels
from ptq_bench.report.run import (
    RunData,
    computed_on,
    first_protocol,
    mean,
    metrics,
    num_fewshot,
    percent,
    ppl_key,
    ppl_keys,
    ran_tasks,
    task_protocol,
    versions,
)

if TYPE_CHECKING:
    import pandas as pd

    from ptq_bench.report.layouts import Layout

ACC_SUFFIXES = ("/acc", "/acc_norm")  # the accuracy columns (in %, averaged in avg_acc)


def headline_metrics(ms: dict[str, Any]) -> dict[str, Any]:
    """{column: value}: perplexities by protocol, and one metric per task: acc_norm, else acc, else wikitext's
    word perplexity / bits per byte, else the task's first metric (a task scored by exact_match, say)."""
    cols = {k: v for k, v in ms.items() if k.startswith("ppl_")}
    cols.update({k: v for k, v in ms.items() if k.startswith("kld/") and k.endswith("/mean")})
    cols.update({k: v for k, v in ms.items() if k.startswith("top1_agree/")})
    tasks: dict[str, dict[str, Any]] = {}
    for key, value in ms.items():
        parts = key.split("/")
        if parts[0] == "lm_eval" and len(parts) == 4:
            tasks.setdefault(f"{parts[1]}/{parts[2]}", {})[parts[3]] = value
    for task, m in tasks.items():
        preferred = (n for n in ("acc_norm", "acc", "word_perplexity", "bits_per_byte") if n in m)
        name = next(preferred, next((n for n in m if not n.endswith("_stderr")), None))
        if name:  # lm-eval wikitext has no accuracy: word perplexity is its headline
            cols[f"{task}/{name}"] = m[name]
    return cols


def _sort_key(row: dict[str, Any]) -> tuple:
    w = row.get("w_bits")
    return (str(row.get("model")), -float(w) if w is not None else 0.0, str(row.get("method")))


def generic_table(run: RunData, layout: Layout | None = None) -> pd.DataFrame:
    return frame(generic_records(run)[1])


def generic_records(run: RunData) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(rows in table order, one table record per row)."""
    rows = sorted(run.rows, key=_sort_key)
    seeds = any(r.get("calib_seed") is not None for r in rows)
    heads = [headline_metrics(metrics(r)) for r in rows]
    metric_cols = list(dict.fromkeys(k for h in heads for k in h))
    records = []
    for row, head in zip(rows, heads):
        rec: dict[str, Any] = {"model": row.get("model"), "method": row.get("method"),
                               "W": bits(row.get("w_bits")), "A": bits(row.get("a_bits")),
                               "setting": setting_label(str(row.get("method")), row.get("config") or {})}
        for k in metric_cols:
            rec[k] = percent(head.get(k)) if k.endswith(ACC_SUFFIXES) else head.get(k)
        rec["avg_acc"] = mean([rec[k] for k in metric_cols if k.endswith(ACC_SUFFIXES)])  # "–" if a task is unmeasured
        quant = row.get("quant")
        if isinstance(quant, dict) and quant:
            rec["eff_bits"], rec["quant_s"] = quant.get("effective_bits"), quant.get("seconds")
        if seeds:
            rec["calib_seed"] = row.get("calib_seed")
        rec["diverged"] = "yes" if row.get("diverged", False) else ""
        records.append({**rec, **versions(row, rows)})
    return rows, records


def shown_tasks(run: RunData, layout: Layout) -> list[str]:
    """The tasks a layout's table shows: its columns, or every task some row measured."""
    if layout.columns:
        return list(dict.fromkeys(task for task, _ in layout.columns))
    keys = (k.split("/") for r in run.rows for k in metrics(r))
    return list(dict.fromkeys(p[1] for p in keys if p[0] == "lm_eval" and len(p) == 4))


def protocol_notes(rows: list[dict[str, Any]]) -> list[str]:
    p = first_protocol(rows)
    if p is None:
        return []
    ppl = p.get("ppl") or {}
    win = "all windows" if ppl.get("max_windows") is None else f"first {ppl['max_windows']} windows"
    lines = [] if ppl.get("seq_len") is None else [
        f"- `ppl_gptq/<set>/seq{ppl['seq_len']}…`: GPTQ-protocol perplexity (test text joined, non-overlapping "
        f"{ppl['seq_len']}-token windows, {win}).",
    ]
    if any(map(ran_tasks, rows)):  # a run of perplexity only has no such line
        docs = task_protocol(rows, "limit", lambda n: "every document" if n is None else f"limit {n} documents per task")
        lines.append(f"- `<task>/<n>shot/acc|acc_norm`: lm-eval task definitions and metrics, {p.get('num_fewshot')}-shot, "
                     f"{docs}, backend {task_protocol(rows, 'backend', lambda b: f'`{b}`')}{_batch(rows)}; "
                     "accuracies in %.")
    return [
        *lines,
        "- `W`/`A`: weight/activation bits (FP16 = 16/16; BitNet b1.58 = 1.58/8 and b1 = 1/8 natively).",
        "- `eff_bits`: stored bits per quantized weight, scales and zeros included; `quant_s`: quantization seconds.",
        "- `kld/<set>/…/mean`: mean per-token KL(base ‖ quantized) in nats on the perplexity windows; "
        "`top1_agree/…`: % of tokens whose argmax matches the base model's (quantized rows only).",
        "- `–`: not measured; `NaN`, `+inf`, `-inf`: what the measurement returned.",
    ]


def _batch(rows: list[dict[str, Any]]) -> str:
    """", batch size 16": an activation-quantized model's zero-shot numbers move with it (NOTES, "Protocol
    finding"); nothing for rows written before they recorded it."""
    named = task_protocol(rows, "batch_size", lambda b: "batch size unrecorded" if b is None else f"batch size {b}")
    return "" if named in ("", "batch size unrecorded") else f", {named}"


def task_notes(tasks: list[str]) -> list[str]:
    """One line per shown task whose protocol differs from the paper's in a way a reader must know."""
    from ptq_bench.eval.harness import TASKS

    specs = [(t, TASKS[t]) for t in tasks if t in TASKS and TASKS[t].notes]
    return [f"- `{s.label}` ({t}): {s.notes}." for t, s in specs]


def untrained_notes(rows: list[dict[str, Any]]) -> list[str]:
    """One line per trained model: its perplexity at initialization, the reference that training worked
    (float32 whatever the recipe's dtype: said so under rows of another)."""
    out = []
    for row in rows:
        init = row.get("untrained_metrics")
        if row.get("method") == "none" and isinstance(init, dict) and init:
            vals = ", ".join(f"`{k}` {md_cell(v)}" for k, v in init.items())
            dtype = (row.get("protocol") or {}).get("dtype")  # the init is scored in float32 (prepare._train_into)
            cast = "" if dtype in (None, "float32") else f"; scored in float32, not the rows' {dtype}"
            out.append(f"- `{row.get('model')}` before training (same init seed{cast}): {vals}.")
    return out


def seed_note(recipe: dict[str, Any]) -> list[str]:
    """The recipe's seed: the rows' numbers depend on it, and rows name only a calibration seed of their own."""
    seed = recipe.get("seed")
    if not isinstance(seed, int) or isinstance(seed, bool):
        return []
    return [f"- Seed {seed} (the recipe's `seed`): initialization and data order of the models trained here, and "
            "the calibration windows unless a row's `calib_seed` names another."]


def provenance(manifest: dict[str, Any]) -> str:
    inv = manifest.get("invocations") or [{}]
    hw = inv[-1].get("hardware", {})
    kernels = f", {hw['cpu_capability']} kernels" if hw.get("cpu_capability") else ""
    device = hw.get("gpu") or f"CPU, {hw.get('cpu_count')} cores{kernels}"
    where = f"{device} ({hw.get('platform', '?')})"
    ex = inv[-1].get("executor")
    workers = ex.get("workers") if isinstance(ex, dict) and ex.get("kind") == "ray" else None
    if workers:  # the cells ran on the workers, not on the driver's host (none: no cell ran on Ray)
        where = f"Ray workers ({', '.join(map(str, workers))}); driver on {where}"
    wall = sum(i.get("wall_s", 0) for i in inv)
    return (f"- Ran on {where}; wall time {wall / 60:.1f} min over {len(inv)} "
            f"invocation(s){_ends(inv)}; recipe hash {manifest.get('recipe_hash')}, git {inv[-1].get('git')}.")


def _ends(inv: list[dict[str, Any]]) -> str:
    """How many invocations a signal stopped, how many an error ended, and how many left no end (killed outright, or still running:
    their time is not in the wall time)."""
    stopped, open_ = sum(bool(i.get("interrupted")) for i in inv), sum("wall_s" not in i for i in inv)
    failed = sum(bool(i.get("error")) for i in inv)
    parts = [*([f"{stopped} interrupted"] if stopped else []), *([f"{failed} ended in an error"] if failed else []),
             *([f"{open_} with no recorded end (killed, or still running)"] if open_ else [])]
    return f" ({'; '.join(parts)})" if parts else ""


def eval_note(manifest: dict[str, Any], tasks: list[str]) -> list[str]:
    """The evaluation protocol version, lm-eval's version and the shown tasks' versions, from the manifest."""
    ev = manifest.get("eval")
    if not isinstance(ev, dict):
        return []
    suites = [p["tasks"] for p in (ev.get("by_tokenizer") or {}).values()
              if isinstance(p, dict) and isinstance(p.get("tasks"), dict)]
    versions = {t: v for suite in suites for t, v in (suite.get("task_versions") or {}).items()}
    lm_eval = next((suite.get("lm_eval_version") for suite in suites), None)
    shown = ", ".join(f"{t} {versions[t]}" for t in tasks if t in versions)
    return [f"- Evaluation protocol v{ev.get('eval_version')}" + (f"; lm-eval {lm_eval}" if lm_eval else "")
            + (f"; task versions: {shown}" if shown else "") + "."]


def eval_mix_note(rows: list[dict[str, Any]]) -> list[str]:
    """Rows of different evaluation protocol versions (an older folder that a newer ptq-bench's run did not finish
    recomputing) say so: the manifest's protocol line names only the latest version."""
    seen = Counter("unrecorded" if v is None else f"v{v}" for v in (r.get("eval_version") for r in rows))
    if len(seen) < 2:
        return []
    return ["- Rows were evaluated under different protocol versions (`eval v`): "
            + ", ".join(f"{v} ({n} rows)" for v, n in sorted(seen.items())) + "; numbers of different versions "
            "are not comparable (rerun the recipe to recompute the older ones)."]


MIXED = "mixed (below)"  # a PPL column whose rows were measured under different protocols (ppl_note)


def column_key_map(run: RunData, layout: Layout, df: pd.DataFrame) -> dict[str, str]:
    """What a paper layout's short column headers measure, as stored metric keys (empty for the generic
    table, whose headers are the keys): {"PPL": "ppl_gptq/wikitext2/seq128", "ARCe": "arc_easy/0shot/acc_norm"}."""
    ppls = ppl_keys(run.rows)
    shots = {num_fewshot(r) for r in run.rows if ran_tasks(r)}
    n = f"{shots.pop()}shot" if len(shots) == 1 else "<n>shot"
    lim = limit_suffix(run.rows)
    named = {"PPL": ppls[0] if len(ppls) == 1 else MIXED if ppls else None,
             **{label: f"{task}/{n}/{metric}{lim}" for label, (task, metric) in zip(labels(layout), layout.columns)}}
    return {col: key for col, key in named.items() if key and col in df.columns}


def table_notes(df: pd.DataFrame) -> list[str]:
    """The notes a table function attached to its table (`df.attrs["notes"]`): what a column that is not a
    stored metric shows, where the paper's numbers come from and under which protocol."""
    return list(df.attrs.get("notes", []))


def limit_suffix(rows: list[dict[str, Any]]) -> str:
    """`/limit<L>` when the rows' accuracies are over the first L documents of each task (as `first<K>win`
    names a perplexity subset), `/limit<mixed>` when rows differ; "" for every document."""
    limits = {(r.get("protocol") or {}).get("limit") for r in rows if ran_tasks(r)}
    if limits <= {None}:
        return ""
    return f"/limit{limits.pop()}" if len(limits) == 1 else "/limit<mixed>"


def column_keys(run: RunData, layout: Layout, df: pd.DataFrame) -> str:
    """`column_key_map` as the md's first note: `PPL` = `ppl_gptq/wikitext2/seq128`; `ARCe` = ..."""
    return "; ".join(f"`{col}` = {key if key == MIXED else f'`{key}`'}"
                     for col, key in column_key_map(run, layout, df).items())


def csv_keys(run: RunData, layout: Layout, df: pd.DataFrame) -> dict[str, str]:
    """`column_key_map` for a .csv, which carries no notes: its headers name what each number is
    (`PPL [ppl_gptq/wikitext2/seq128]`); the generic table's task columns get their limit
    (`winogrande/0shot/acc [winogrande/0shot/acc/limit200]`)."""
    from ptq_bench.eval.harness import TASKS

    lim = limit_suffix(run.rows)
    tasks = {c: c + lim for c in df.columns if lim and c.count("/") == 2 and c.split("/")[0] in TASKS}
    return {**tasks, **{col: "mixed protocols, see the .md" if key == MIXED else key
                        for col, key in column_key_map(run, layout, df).items()}}


def ppl_note(rows: list[dict[str, Any]]) -> list[str]:
    """A `PPL` column whose rows were measured under different protocols says so."""
    keys = Counter(k for k in map(ppl_key, rows) if k)
    if len(keys) < 2:
        return []
    mixed = ", ".join(f"`{k}` ({n} rows)" for k, n in keys.items())
    return [f"- `PPL` is each row's first stored `ppl_gptq/wikitext2/…`; the run's rows mix protocols: {mixed}."]


def device_note(rows: list[dict[str, Any]]) -> list[str]:
    """Where and in what dtype the rows were computed (`protocol.device` / `.dtype`); a run mixing them says so.

    Rows written before the protocol named them (schema < 2) count as "unrecorded"; a run of only those
    gets no line rather than a guess."""
    def where(row: dict[str, Any]) -> str:
        on = computed_on(row)
        return f"`{on[0]}` in `{on[1]}`" if on else "unrecorded"

    seen = Counter(map(where, rows))
    if not seen or set(seen) == {"unrecorded"}:
        return []
    if len(seen) == 1:
        return [f"- Computed on {next(iter(seen))} (each row's `protocol`)."]
    return ["- Rows were computed on different devices or dtypes: "
            + ", ".join(f"{w} ({n} rows)" for w, n in seen.items()) + "."]


def notes(run: RunData, layout: Layout, df: pd.DataFrame) -> list[str]:
    """Every table's footnotes: protocol, task protocol notes, untrained references, provenance, damage."""
    keys = column_keys(run, layout, df)
    lines = [*([f"- Columns: {keys}."] if keys else []), *table_notes(df), *protocol_notes(run.rows),
             *device_note(run.rows),
             *task_notes(shown_tasks(run, layout)), *seed_note(run.recipe), *untrained_notes(run.rows)]
    if "PPL" in df.columns:
        lines += ppl_note(run.rows)
    lines += eval_mix_note(run.rows)
    if run.manifest:
        lines += eval_note(run.manifest, shown_tasks(run, layout))
    if run.manifest and run.manifest.get("invocations"):
        lines.append(provenance(run.manifest))
    return [md_line(line) for line in lines + run.damage]  # a row's or manifest's text: no line break, no HTML
