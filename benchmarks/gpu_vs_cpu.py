"""One recipe on two devices: wall times and every metric's difference, row by row (issue: the GPU path, run).

    python benchmarks/gpu_vs_cpu.py recipes/smoke.yaml                      # runs it on cpu and on cuda
    python benchmarks/gpu_vs_cpu.py recipes/smollm2_ptq.yaml --against results/smollm2_ptq   # cuda vs committed cpu rows
    python benchmarks/gpu_vs_cpu.py recipes/smoke.yaml --devices cpu cpu    # the script checking itself: all 0

Each run is the shipped recipe with only `device`, `output_dir` and `cache_dir` changed (fresh folders
under --out, so preparation — training or loading — is timed too), started as `ptq-bench run` in a
subprocess. On CUDA, training runs under bf16 autocast (models/train.py); PTQ and evaluation run in
the model's dtype. Prints each run's wall time, then per row (model, method label, calibration seed):
both eval times and the largest relative difference of its perplexities, KLD and accuracies, and a
summary line per metric kind. Exit 1 when the two runs do not hold the same rows.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

KINDS = {"ppl": ("ppl", "perplexity"), "kld": ("kld",), "acc": ("/acc",)}  # metric kind -> name fragments


def run_on(recipe: Path, device: str, out: Path) -> tuple[Path, float]:
    """The recipe on `device` into out/<device>-<n>: (results folder, wall seconds)."""
    raw = yaml.safe_load(recipe.read_text(encoding="utf-8"))
    n = sum(1 for _ in out.glob(f"{device}-*")) if out.is_dir() else 0
    work = out / f"{device}-{n}"
    raw.update(device=device, output_dir=str(work / "results"), cache_dir=str(work / "cache"))
    work.mkdir(parents=True)
    path = work / recipe.name
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "ptq_bench.cli", "run", str(path)])
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"ptq-bench run on {device} failed (exit {proc.returncode}); see its output above")
    return work / "results", wall


def keyed(folder: Path) -> dict[tuple, dict[str, Any]]:
    from ptq_bench.results import read_rows

    return {(r["model"], r["label"], r.get("calib_seed")): r for r in read_rows(folder)}


def kind_of(metric: str) -> str | None:
    if metric.endswith("_stderr"):
        return None
    return next((k for k, frags in KINDS.items() if any(f in metric for f in frags)), None)


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), abs(b), 1e-12)


def compare(a: dict[tuple, dict], b: dict[tuple, dict], names: tuple[str, str]) -> int:
    if set(a) != set(b):
        print(f"rows differ: only on {names[0]}: {sorted(set(a) - set(b))}; only on {names[1]}: {sorted(set(b) - set(a))}")
        return 1
    print(f"{'model':<14}{'label':<34}{'seed':>5}{'eval s ' + names[0]:>14}{'eval s ' + names[1]:>14}"
          + "".join(f"{'max rel Δ ' + k:>16}" for k in KINDS))
    worst: dict[str, float] = dict.fromkeys(KINDS, 0.0)
    for key in sorted(a, key=str):
        ra, rb = a[key], b[key]
        per: dict[str, float] = dict.fromkeys(KINDS, 0.0)
        for m, va in ra["metrics"].items():
            k = kind_of(m)
            if k and m in rb["metrics"]:
                per[k] = max(per[k], rel(va, rb["metrics"][m]))
        for k in KINDS:
            worst[k] = max(worst[k], per[k])
        print(f"{key[0]:<14}{key[1]:<34}{str(key[2]):>5}{ra.get('eval_seconds', 0):>14.1f}{rb.get('eval_seconds', 0):>14.1f}"
              + "".join(f"{per[k]:>16.2e}" for k in KINDS))
    print("largest relative difference: " + ", ".join(f"{k} {v:.2e}" for k, v in worst.items()))
    return 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipe", type=Path)
    p.add_argument("--devices", nargs=2, default=["cpu", "cuda"], metavar=("FIRST", "SECOND"))
    p.add_argument("--against", type=Path, help="a results folder of the recipe (its rows stand for the first device)")
    p.add_argument("--out", type=Path, default=Path("runs/gpu_vs_cpu"))
    args = p.parse_args()
    out = args.out / args.recipe.stem
    first, second = args.devices
    if args.against:
        a, wall_a = keyed(args.against), None
    else:
        folder, wall_a = run_on(args.recipe, first, out)
        a = keyed(folder)
    folder, wall_b = run_on(args.recipe, second, out)
    b = keyed(folder)
    print(f"wall: {first} " + (f"{wall_a:.1f} s" if wall_a is not None else f"(rows of {args.against})")
          + f", {second} {wall_b:.1f} s")
    sys.exit(compare(a, b, (first, second)))


if __name__ == "__main__":
    main()
