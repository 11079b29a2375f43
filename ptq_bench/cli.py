"""Command line: argument parsing only. Heavy imports happen inside the commands."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _validate(args: argparse.Namespace) -> int:
    from ptq_bench.data import resolve_data_dir
    from ptq_bench.recipe import expand_cells, load_recipe
    from ptq_bench.sweep import data_hashes

    recipe = load_recipe(args.recipe)
    data_dir = resolve_data_dir(recipe.data_dir)
    data_hashes(data_dir, recipe)  # every data file the recipe needs exists
    cells = expand_cells(recipe)
    print(f"{args.recipe}: OK ({len(recipe.models)} models, {len(cells)} cells, data {data_dir})")
    return 0


def _run(args: argparse.Namespace) -> int:
    from ptq_bench.data import resolve_data_dir
    from ptq_bench.recipe import load_recipe
    from ptq_bench.report import render
    from ptq_bench.sweep import data_hashes, run

    recipe = load_recipe(args.recipe)
    if args.output_dir:
        import dataclasses

        recipe = dataclasses.replace(recipe, output_dir=args.output_dir)
    data_hashes(resolve_data_dir(recipe.data_dir), recipe)  # fail before writing anything
    out = run(recipe, Path(args.recipe).read_text(encoding="utf-8"))
    for path in render(out):
        print(f"wrote {path}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from ptq_bench.report import render

    for path in render(args.run_dir):
        print(f"wrote {path}")
    return 0


def _ls(args: argparse.Namespace) -> int:
    import dataclasses

    from ptq_bench.data import PPL_FILES
    from ptq_bench.eval.harness import TASKS
    from ptq_bench.quant import METHODS, load_all

    load_all()
    print("methods:")
    for name, m in sorted(METHODS.items()):
        fields = ", ".join(f"{f.name}={f.default!r}" for f in dataclasses.fields(m.config_cls))
        print(f"  {name:<12} {'(calibrated) ' if m.needs_calibration else ''}{fields}")
    print("tasks:")
    for name in sorted(TASKS):
        print(f"  {name}")
    print("perplexity sets (GPTQ protocol):", ", ".join(PPL_FILES))
    from ptq_bench.report.layouts import LAYOUT_NAMES
    print("layouts:", ", ".join(LAYOUT_NAMES))
    print("models: fp16, bitnet_b158, bitnet_b1 (trained), or any HF checkpoint dir / hub id via 'source'")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ptq-bench",
        description="Natively trained BitNet (1 / 1.58-bit) vs post-training-quantized FP16 models.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="train or load models, quantize, evaluate and report a recipe")
    r.add_argument("recipe", help="recipe YAML file")
    r.add_argument("--output-dir", help="results folder (overrides the recipe's output_dir)")
    r.set_defaults(fn=_run)
    v = sub.add_parser("validate", help="check a recipe without running it")
    v.add_argument("recipe")
    v.set_defaults(fn=_validate)
    rep = sub.add_parser("report", help="re-render tables and plots from a results folder")
    rep.add_argument("run_dir")
    rep.set_defaults(fn=_report)
    ls = sub.add_parser("ls", help="list methods, tasks, perplexity sets and model kinds")
    ls.set_defaults(fn=_ls)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ptq_bench.errors import PtqBenchError

    try:
        return args.fn(args)
    except PtqBenchError as exc:
        print(f"ptq-bench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ptq-bench: interrupted (finished cells are kept; re-run to resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
