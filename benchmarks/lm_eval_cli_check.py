"""Independent check: ptq-bench's zero-shot accuracies equal stock lm-eval's command line tool.

    PTQ_BENCH_DATA=/work/shared/data OMP_NUM_THREADS=1 .venv/bin/python benchmarks/lm_eval_cli_check.py \\
        [--model DIR] [--tasks winogrande wsc273 hellaswag storycloze arc_easy piqa] [--limit 20] \\
        [--backend fast|hflm|both] [--batch-size 16] [--threads 1]
    ... benchmarks/lm_eval_cli_check.py --recipe-run runs/<name> [--row-model NAME] [--model DIR]

What is compared, on one Hugging Face checkpoint folder (LlamaForCausalLM + tokenizer; default: the
SmolLM2-135M folder converted from its GGUF, `.ptq_cache/sources/gguf-*`):

    ptq-bench: `ptq_bench.eval.harness.TaskSuite(tasks, data_dir, tokenizer, limit, backend)` on the model
               loaded in fp32 by `ptq_bench.source_load.load_source` (in-process; backend "fast" = FastLM,
               "hflm" = HFLM wrapped around the in-memory model); with --recipe-run instead: the stored
               metrics of that run's unquantized cell (results.jsonl, method "none"), tasks and limit
               taken from that row (its protocol and its `lm_eval/<task>/...` keys), batch size from the
               run's recipe;
    stock:     the `lm_eval` console script as a subprocess, `--model hf --model_args
               pretrained=DIR,dtype=float32 --device cpu --include_path <YAMLs from
               harness.write_task_configs> --tasks <lm-eval names> --limit L --log_samples`, offline
               (HF_DATASETS_OFFLINE=1, HF_HUB_OFFLINE=1); its results JSON and samples files are parsed.

Both sides use the same local data files through the same generated task YAMLs (lm-eval's installed
YAML `include:`d, dataset pointed at the file), so they build the same requests for the same documents.

Printed per task and metric: ptq-bench value, lm_eval CLI value, difference, n docs of each side; and
per task the largest |difference| of the per-request log-likelihoods (ptq-bench's responses vs the CLI's
samples, matched by (doc_id, request index); shown for information, no tolerance). Tolerance on the
metrics: none. acc / acc_norm are a count of correct documents over n; the check passes only when both
sides have the same n and the same count (values equal to 1e-9 after `round(value * n)`). Exit 1 on
any difference in a metric or in n, 0 when all agree, 2 when an input is bad or a side did not run. The wall time of each side is printed too
(ptq-bench: model load + request building + evaluation in this process; CLI: the whole subprocess).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_args import checkpoint, exit_with, file, folder, new_or_folder, positive  # noqa: E402

from ptq_bench.eval.harness import TASKS, metric_key, write_task_configs  # noqa: E402

DEFAULT_TASKS = ["winogrande", "wsc273", "hellaswag", "storycloze", "arc_easy", "piqa"]
OFFLINE = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@dataclass
class Side:
    """One side's figures: metric key -> value, task -> n docs, (task, doc_id, idx) -> loglikelihood."""

    name: str
    metrics: dict[str, float]
    n_docs: dict[str, int]
    logliks: dict[tuple[str, int, int], float] = field(default_factory=dict)
    n_total: dict[str, int] = field(default_factory=dict)  # task -> documents in its split (CLI side)
    wall_s: float = 0.0
    note: str = ""


# ----------------------------------------------------------------------------------------------
# inputs


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=checkpoint, help="HF checkpoint folder (default: the converted SmolLM2 under "
                                              ".ptq_cache/sources, or the --recipe-run model's source)")
    p.add_argument("--recipe-run", type=folder, help="a ptq-bench run folder: compare its stored 'none' row")
    p.add_argument("--row-model", help="with --recipe-run: the recipe model whose 'none' row to check")
    p.add_argument("--tasks", nargs="+", default=DEFAULT_TASKS, choices=sorted(TASKS), metavar="TASK")
    p.add_argument("--limit", type=positive, default=20, help="documents per task (lm-eval --limit)")
    p.add_argument("--backend", choices=("fast", "hflm", "both"), default="fast")
    p.add_argument("--batch-size", type=positive, default=16)
    p.add_argument("--threads", type=positive, default=1, help="torch threads on both sides (OMP_NUM_THREADS too)")
    p.add_argument("--data-dir", type=folder, default=None, help="default: $PTQ_BENCH_DATA")
    p.add_argument("--cache-dir", type=folder, default=None,
                   help="ptq-bench cache folder holding sources/ (default: the run recipe's cache_dir, else .ptq_cache)")
    p.add_argument("--lm-eval", type=file, default=str(Path(sys.executable).parent / "lm_eval"), help="the lm_eval script")
    p.add_argument("--keep", type=new_or_folder, help="keep the CLI's YAMLs and output in this folder")
    return p.parse_args(argv)


def fail(message: str) -> None:
    """Bad input or a side that did not run: its message and exit 2, never 1 (1 means the two sides differ)."""
    print(message, file=sys.stderr)
    raise SystemExit(2)


def default_model_dir(cache_dir: Path) -> Path:
    """The one converted checkpoint folder (config.json + model.safetensors + tokenizer) under <cache>/sources."""
    sources = cache_dir / "sources"
    found = sorted(p.parent for p in sources.glob("*/config.json") if (p.parent / "model.safetensors").is_file())
    if len(found) != 1:
        fail(f"expected one checkpoint folder under {sources}, found {[str(f) for f in found]}: pass --model")
    return found[0]


def source_dir(recipe: dict[str, Any], model: str, cache_dir: Path | None) -> Path | None:
    """The checkpoint folder a run loaded `model` from: its HF folder, or the GGUF's converted cache folder."""
    from ptq_bench.sources import inspect_source

    source = (recipe.get("models") or {}).get(model, {}).get("source")
    if source is None:
        return None
    info = inspect_source(source)
    if info.form in ("gguf", "packaged"):
        cache = cache_dir or Path(recipe.get("cache_dir") or ".ptq_cache")
        return cache / "sources" / f"gguf-{info.content_hash[:16]}"
    return Path(info.path) if info.path else None


def none_row(rows: list[dict[str, Any]], model: str | None) -> dict[str, Any]:
    cands = [r for r in rows if r["method"] == "none" and (model is None or r["model"] == model)]
    if len(cands) != 1:
        names = sorted({r["model"] for r in rows if r["method"] == "none"})
        fail(f"need exactly one current 'none' row, found {len(cands)} (models with one: {names}): --row-model")
    return cands[0]


def row_tasks(row: dict[str, Any], recipe: dict[str, Any]) -> list[str]:
    """Tasks with a stored metric, in the recipe's eval.tasks order."""
    stored = {k.split("/")[1] for k in row["metrics"] if k.startswith("lm_eval/")}
    order = list((recipe.get("eval") or {}).get("tasks") or []) + sorted(stored)
    return [t for t in dict.fromkeys(order) if t in stored]


def check_data(manifest: dict[str, Any], data_dir: Path, tasks: list[str]) -> list[str]:
    """Task files whose sha256 differs from the one the run's manifest recorded."""
    recorded = manifest.get("data_sha256") or {}
    bad = []
    for rel in (rel for t in tasks for rel in TASKS[t].data_files.values()):
        digest = hashlib.sha256((data_dir / rel).read_bytes()).hexdigest()
        if rel in recorded and recorded[rel] != digest:
            bad.append(rel)
    return bad


# ----------------------------------------------------------------------------------------------
# the two sides


def ptq_bench_side(model_dir: Path, tasks: list[str], limit: int, data_dir: Path, backend: str,
                   batch_size: int) -> Side:
    import torch

    from ptq_bench.eval.harness import TaskSuite
    from ptq_bench.source_load import load_source
    from ptq_bench.sources import inspect_source

    start = time.perf_counter()
    model, tok, _ = load_source(inspect_source(str(model_dir)), "cpu")
    model = model.float()
    suite = TaskSuite(tasks, data_dir, tok, limit=limit, backend=backend, batch_size=batch_size)
    with torch.no_grad():
        metrics = suite.evaluate(model, progress=False)
    logliks = {}
    for name, task in suite._tasks.items():  # the requests lm-eval built, in order of last_responses
        for inst, resp in zip(task.instances, suite.last_responses[name], strict=True):
            logliks[(name, inst.doc_id, inst.idx)] = float(resp[0])
    n_docs = suite.provenance()["n_docs"]
    return Side(f"ptq-bench {suite.last_path}", metrics, n_docs, logliks, wall_s=time.perf_counter() - start,
                note=f"evaluate {suite.last_seconds:.1f} s")


def stored_side(run_dir: Path, row: dict[str, Any], tasks: list[str], n_total: dict[str, int]) -> Side:
    """The stored row; its n per task is min(limit, documents in the split) (rows do not store n)."""
    metrics = {k: float(v) for k, v in row["metrics"].items() if k.startswith("lm_eval/") and k.split("/")[1] in tasks}
    limit = (row.get("protocol") or {}).get("limit")
    n_docs = {t: n_total[t] if limit is None else min(limit, n_total[t]) for t in tasks}
    protocol = row.get("protocol") or {}
    return Side(f"stored {run_dir.name}", metrics, n_docs,
                note=f"row {row['cell_id']}, backend {protocol.get('backend')}, threads {row.get('threads')}")


def cli_command(args: argparse.Namespace, model_dir: Path, tasks: list[str], limit: int | None,
                num_fewshot: int, yaml_dir: Path, out_dir: Path) -> list[str]:
    cmd = [str(args.lm_eval), "run", "--model", "hf", "--model_args", f"pretrained={model_dir},dtype=float32",
           "--tasks", ",".join(TASKS[t].lm_eval_task for t in tasks), "--include_path", str(yaml_dir),
           "--num_fewshot", str(num_fewshot), "--batch_size", str(args.batch_size), "--device", "cpu",
           "--output_path", str(out_dir), "--log_samples"]
    return cmd + (["--limit", str(limit)] if limit is not None else [])


def cli_side(args: argparse.Namespace, model_dir: Path, tasks: list[str], limit: int | None, num_fewshot: int,
             data_dir: Path, work: Path) -> Side:
    yaml_dir, out_dir = work / "tasks", work / "out"
    write_task_configs(tasks, data_dir, yaml_dir)
    cmd = cli_command(args, model_dir, tasks, limit, num_fewshot, yaml_dir, out_dir)
    env = {**os.environ, **OFFLINE, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    print("$ " + " ".join(cmd), flush=True)
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        fail(f"lm_eval failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    (work / "lm_eval.log").write_text(proc.stdout + proc.stderr)
    return parse_cli_output(out_dir, tasks, num_fewshot, wall)


def parse_cli_output(out_dir: Path, tasks: list[str], num_fewshot: int, wall: float) -> Side:
    results_files = sorted(out_dir.rglob("results_*.json"))
    if len(results_files) != 1:
        fail(f"expected one results_*.json under {out_dir}, found {results_files}")
    out = json.loads(results_files[0].read_text())
    metrics, n_docs, n_total, logliks = {}, {}, {}, {}
    for name in tasks:
        lm_name = TASKS[name].lm_eval_task
        row = out["results"][lm_name]
        for metric in TASKS[name].metrics:
            metrics[metric_key(name, num_fewshot, metric)] = float(row[f"{metric},none"])
        n_docs[name] = int(out["n-samples"][lm_name]["effective"])
        n_total[name] = int(out["n-samples"][lm_name]["original"])
        for sample_file in results_files[0].parent.glob(f"samples_{lm_name}_*.jsonl"):
            for line in sample_file.read_text().splitlines():
                sample = json.loads(line)
                for idx, resp in enumerate(sample["resps"]):
                    logliks[(name, int(sample["doc_id"]), idx)] = float(resp[0][0])
    versions = {TASKS[n].lm_eval_task: out.get("versions", {}).get(TASKS[n].lm_eval_task) for n in tasks}
    return Side("lm_eval CLI", metrics, n_docs, logliks, n_total, wall,
                f"lm-eval {out.get('lm_eval_version')}, its total_evaluation_time_seconds "
                f"{float(out.get('total_evaluation_time_seconds', 'nan')):.1f}, task versions {versions}")


# ----------------------------------------------------------------------------------------------
# comparison


def same_count(a: float, b: float, n_a: int | None, n_b: int | None) -> bool:
    """Same n and the same number of correct documents (each value a count / n to 1e-9)."""
    if n_a is None or n_b is None or n_a != n_b or n_a <= 0:
        return False
    k_a, k_b = round(a * n_a), round(b * n_b)
    return k_a == k_b and abs(a - k_a / n_a) < 1e-9 and abs(b - k_b / n_b) < 1e-9


def max_loglik_diff(ours: Side, cli: Side, task: str) -> str:
    keys = [k for k in ours.logliks if k[0] == task]
    if not keys:
        return "-"
    missing = [k for k in keys if k not in cli.logliks]
    if missing or len(keys) != sum(1 for k in cli.logliks if k[0] == task):
        return f"requests differ ({len(keys)} vs {sum(1 for k in cli.logliks if k[0] == task)})"
    return f"{max(abs(ours.logliks[k] - cli.logliks[k]) for k in keys):.2e} ({len(keys)} req)"


def compare(ours: Side, cli: Side, tasks: list[str], num_fewshot: int) -> bool:
    print(f"\n{ours.name}  vs  {cli.name}")
    print(f"{'task':<12} {'metric':<9} {'ptq-bench':>10} {'lm_eval':>10} {'diff':>10} {'n ours':>7} {'n cli':>6}"
          f"  {'max |dLL|':<18} ok")
    ok_all = True
    for task in tasks:
        dll = max_loglik_diff(ours, cli, task)
        for metric in TASKS[task].metrics:
            key = metric_key(task, num_fewshot, metric)
            a, b = ours.metrics.get(key), cli.metrics.get(key)
            n_a, n_b = ours.n_docs.get(task), cli.n_docs.get(task)
            ok = a is not None and b is not None and same_count(a, b, n_a, n_b)
            ok_all &= ok
            diff = f"{a - b:+.4f}" if a is not None and b is not None else "missing"
            fa, fb = (f"{v:.4f}" if v is not None else "-" for v in (a, b))
            print(f"{task:<12} {metric:<9} {fa:>10} {fb:>10} {diff:>10} {n_a!s:>7} {n_b!s:>6}  {dll:<18} "
                  f"{'yes' if ok else 'NO'}")
            dll = ""
    return ok_all


# ----------------------------------------------------------------------------------------------


def set_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


def run_recipe(args: argparse.Namespace, data_dir: Path, work: Path) -> bool:
    from ptq_bench.results import load_manifest, read_rows

    manifest = load_manifest(args.recipe_run) or {}
    recipe = manifest.get("recipe") or {}
    row = none_row(read_rows(args.recipe_run), args.row_model)
    tasks = row_tasks(row, recipe)
    protocol = row.get("protocol") or {}
    limit, num_fewshot = protocol.get("limit"), int(protocol.get("num_fewshot", 0))
    args.batch_size = int((recipe.get("eval") or {}).get("batch_size", args.batch_size))
    model_dir = args.model or source_dir(recipe, row["model"], args.cache_dir)
    if model_dir is None or not (Path(model_dir) / "config.json").is_file():
        fail(f"no checkpoint folder for model '{row['model']}' ({model_dir}): pass --model DIR")
    bad = check_data(manifest, data_dir, tasks)
    if bad:
        print(f"WARNING: data files differ from the run's manifest: {bad}")
    print(f"run {args.recipe_run}: model {row['model']} ({model_dir}), tasks {tasks}, limit {limit}, "
          f"{num_fewshot}-shot, CLI batch size {args.batch_size}")
    cli = cli_side(args, Path(model_dir), tasks, limit, num_fewshot, data_dir, work)
    stored = stored_side(args.recipe_run, row, tasks, cli.n_total)
    ok = compare(stored, cli, tasks, num_fewshot)
    print(f"\n{stored.note}\nlm_eval CLI: {cli.wall_s:.1f} s wall ({cli.note})")
    return ok


def run_model(args: argparse.Namespace, data_dir: Path, work: Path) -> bool:
    model_dir = args.model or default_model_dir(args.cache_dir or Path(".ptq_cache"))
    tasks = list(dict.fromkeys(args.tasks))
    print(f"model {model_dir}, tasks {tasks}, limit {args.limit}, batch size {args.batch_size}, "
          f"threads {args.threads}")
    cli = cli_side(args, model_dir, tasks, args.limit, 0, data_dir, work)
    backends = ("fast", "hflm") if args.backend == "both" else (args.backend,)
    sides = [ptq_bench_side(model_dir, tasks, args.limit, data_dir, b, args.batch_size) for b in backends]
    ok = all([compare(side, cli, tasks, 0) for side in sides])
    print()
    for side in [*sides, cli]:
        print(f"{side.name}: {side.wall_s:.1f} s wall ({side.note})")
    return ok


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.update(OFFLINE)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    set_threads(args.threads)
    from ptq_bench.data import resolve_data_dir

    data_dir = resolve_data_dir(args.data_dir)
    with tempfile.TemporaryDirectory(prefix="lm_eval_cli_check_") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        ok = run_recipe(args, data_dir, work) if args.recipe_run else run_model(args, data_dir, work)
    print("\nRESULT: " + ("all metrics equal (same n, same count of correct documents)" if ok
                          else "DIFFERENCE between ptq-bench and the lm_eval CLI"))
    return 0 if ok else 1


if __name__ == "__main__":
    exit_with(main)
