"""One recipe on two devices: wall times and every metric's difference, row by row (issue: the GPU path, run).

    python benchmarks/gpu_vs_cpu.py recipes/smoke.yaml                      # runs it on cpu and on cuda
    python benchmarks/gpu_vs_cpu.py recipes/smoke.yaml --dtypes auto bfloat16   # cpu as is, cuda in bf16
    python benchmarks/gpu_vs_cpu.py recipes/smollm2_ptq.yaml --against results/smollm2_ptq   # cuda vs committed cpu rows
    python benchmarks/gpu_vs_cpu.py recipes/smoke.yaml --devices cpu cpu    # the script checking itself: all 0

Each run is the shipped recipe with only `device`, `dtype`, `output_dir` and `cache_dir` changed (fresh folders
under --out, so preparation — training or loading — is timed too), started as `ptq-bench run` in a
subprocess. On CUDA, training runs under bf16 autocast (models/train.py); PTQ and evaluation run in
the model's dtype. Prints each run's wall time, then per row (model, method label, calibration seed):
both runs' quantization + evaluation seconds, the largest relative difference of its perplexities and
the largest absolute difference of its mean KLD (nats) and accuracies (fractions), and a summary line.
Exit 1 when the two runs do not hold the same rows, or a row's perplexity / KLD / accuracy metrics differ in
name between them (printed: they are left out of the columns); 2 when an input is bad (checked before either
run: the recipe as `ptq-bench validate` checks it, a device this machine lacks) or a run failed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # its sibling modules, also when imported by path

from bench_args import checked, device, exit_with, file, folder, new_or_folder  # noqa: E402

from ptq_bench.recipe import DEVICES, DTYPES  # noqa: E402

# metric kind -> (name test, difference, column): perplexities relative, KLD (nats) and accuracies (fractions)
# absolute, since a near-zero KLD or dPPL has no meaningful relative difference (dPPL is left out)
KINDS = {
    "ppl": (lambda m: m.startswith("ppl_"), lambda a, b: abs(a - b) / max(abs(a), abs(b), 1e-12), "max rel Δ ppl"),
    "kld": (lambda m: m.startswith("kld/") and m.endswith("/mean"), lambda a, b: abs(a - b), "max |Δ| kld"),
    "acc": (lambda m: "/acc" in m and not m.endswith("_stderr"), lambda a, b: abs(a - b), "max |Δ| acc"),
}


def run_on(recipe: Path, device: str, dtype: str, out: Path, sources: Path | None = None) -> tuple[Path, float]:
    """The recipe on `device` in `dtype` into out/<device>-<dtype>-<n>: (results folder, wall seconds).
    `sources`: a folder of checkpoint folders converted from GGUF sources (a cache's `sources/`), linked
    in as the run's own, so loading skips the conversion (its time is then not in the wall time)."""
    raw = yaml.safe_load(recipe.read_text(encoding="utf-8"))
    n = sum(1 for _ in out.glob(f"{device}-{dtype}-*")) if out.is_dir() else 0
    work = out / f"{device}-{dtype}-{n}"
    raw.update(device=device, dtype=dtype, output_dir=str(work / "results"), cache_dir=str(work / "cache"))
    work.mkdir(parents=True)
    if sources is not None:
        (work / "cache").mkdir()
        (work / "cache" / "sources").symlink_to(sources.resolve(), target_is_directory=True)
    path = work / recipe.name
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "ptq_bench.cli", "run", str(path)])
    wall = time.perf_counter() - start
    if proc.returncode != 0:  # a side that did not run: exit 2, as bad input (1 would read as "differ")
        print(f"ptq-bench run on {device} failed (exit {proc.returncode}); see its output above", file=sys.stderr)
        sys.exit(2)
    return work / "results", wall


def keyed(folder: Path) -> dict[tuple, dict[str, Any]]:
    from ptq_bench.results import read_rows

    # the label alone does not name a cell: absmax W4A16 per channel and in groups of 128 share it
    return {(r["model"], r["label"], r.get("calib_seed"), json.dumps(r["config"], sort_keys=True)): r
            for r in read_rows(folder)}


def kind_of(metric: str) -> str | None:
    return next((k for k, (test, _, _) in KINDS.items() if test(metric)), None)


def seconds(row: dict[str, Any]) -> str:
    """'quantization + evaluation' seconds of a row."""
    return f"{(row.get('quant') or {}).get('seconds', 0):.1f}+{row.get('eval_seconds', 0):.1f}"


def compare(a: dict[tuple, dict], b: dict[tuple, dict], names: tuple[str, str]) -> int:
    from ptq_bench.quant.configs import setting_name

    if set(a) != set(b):
        print(f"rows differ: only on {names[0]}: {sorted(set(a) - set(b))}; only on {names[1]}: {sorted(set(b) - set(a))}")
        return 1
    print(f"{'model':<14}{'label':<34}{'seed':>5}{'q+eval s ' + names[0]:>24}{'q+eval s ' + names[1]:>24}"
          + "".join(f"{col:>16}" for _, _, col in KINDS.values()))
    worst: dict[str, float | None] = dict.fromkeys(KINDS)
    one_sided: list[str] = []
    for key in sorted(a, key=str):
        ra, rb = a[key], b[key]
        per = differences(ra["metrics"], rb["metrics"])
        one_sided += [f"{key[0]} {key[1]}: {m}" for m in sorted(set(ra["metrics"]) ^ set(rb["metrics"])) if kind_of(m)]
        worst = {k: _max(worst[k], per[k]) for k in KINDS}
        label = setting_name(key[1], ra["method"], ra.get("config") or {})
        print(f"{key[0]:<14}{label:<34}{str(key[2]):>5}{seconds(ra):>24}{seconds(rb):>24}"
              + "".join(f"{_fmt(per[k]):>16}" for k in KINDS))
    print("largest difference: " + ", ".join(f"{KINDS[k][2].removeprefix('max ')} {_fmt(v)}" for k, v in worst.items()))
    if one_sided:  # not compared above: a "–" there would read as "neither run measured it"
        print(f"metrics of one run only ({len(one_sided)}): " + "; ".join(one_sided[:10]))
    return 1 if one_sided else 0


def differences(ma: dict[str, float], mb: dict[str, float]) -> dict[str, float | None]:
    """The largest difference per kind of metric over the metrics both rows have; None (printed "–") for a
    kind neither measured, which is not a difference of 0."""
    per: dict[str, float | None] = dict.fromkeys(KINDS)
    for m, va in ma.items():
        k = kind_of(m)
        if k and m in mb:
            per[k] = _max(per[k], KINDS[k][1](va, mb[m]))
    return per


def _max(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)


def _fmt(v: float | None) -> str:
    return "–" if v is None else f"{v:.2e}"


def recipe_device(text: str) -> str:
    """A recipe's `device:` (auto, cpu, cuda) that this machine has."""
    if text not in DEVICES:
        raise argparse.ArgumentTypeError(f"unknown device {text!r} (a recipe's device: {', '.join(DEVICES)})")
    return text if text == "auto" else device(text)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipe", type=file)
    p.add_argument("--devices", nargs=2, default=["cpu", "cuda"], metavar=("FIRST", "SECOND"))
    p.add_argument("--dtypes", nargs=2, default=["auto", "auto"], choices=DTYPES, metavar=("FIRST", "SECOND"),
                   help="the recipe's dtype on each device (auto: each model's own)")
    p.add_argument("--against", type=folder, help="a results folder of the recipe (its rows stand for the first device)")
    p.add_argument("--out", type=new_or_folder, default=Path("runs/gpu_vs_cpu"))
    p.add_argument("--sources", type=folder, help="GGUF sources already converted (a cache's sources/ folder, as "
                   "eval_speed.py --cache leaves it): linked into each run's cache")
    args = p.parse_args()
    for dev in args.devices[bool(args.against):]:  # the defaults too: cuda on a machine without CUDA
        checked(p, recipe_device, dev, "--devices")
    from ptq_bench.paths import check_data
    from ptq_bench.recipe import load_recipe

    check_data(load_recipe(args.recipe))  # `ptq-bench validate`'s checks, before either run
    out = args.out / args.recipe.stem
    first, second = (f"{d}/{t}" for d, t in zip(args.devices, args.dtypes))
    if args.against:
        a, wall_a = keyed(args.against), None
    else:
        results, wall_a = run_on(args.recipe, args.devices[0], args.dtypes[0], out, args.sources)
        a = keyed(results)
    results, wall_b = run_on(args.recipe, args.devices[1], args.dtypes[1], out, args.sources)
    b = keyed(results)
    print(f"wall: {first} " + (f"{wall_a:.1f} s" if wall_a is not None else f"(rows of {args.against})")
          + f", {second} {wall_b:.1f} s")
    return compare(a, b, (first, second))


if __name__ == "__main__":
    exit_with(main)
