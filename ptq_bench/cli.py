"""Command line: argument parsing only. Heavy imports happen inside the commands."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any


def _validate(args: argparse.Namespace) -> int:
    from ptq_bench.paths import check_data
    from ptq_bench.recipe import expand_cells, load_recipe, source_info

    recipe = load_recipe(args.recipe)
    data_dir = check_data(recipe)  # every data file the recipe needs exists
    cells = expand_cells(recipe)
    n_models, n_cells = len(recipe.models), len(cells)
    print(f"{args.recipe}: OK ({n_models} model{'s' * (n_models != 1)}, {n_cells} cell{'s' * (n_cells != 1)}, data {data_dir})")
    for name, spec in recipe.models.items():  # what a source is beyond its kind: what validate could not check
        note = source_info(recipe, name).note if spec.source is not None else ""  # (an uncached hub id), code
        if note:  # it will not run, a GGUF's own quantization
            print(f"  models.{name}.source: {note}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from ptq_bench.paths import check_data, check_paths
    from ptq_bench.recipe import load_recipe

    flags = {k: v for k, v in (("kind", args.executor), ("address", args.address)) if v is not None}
    recipe = load_recipe(args.recipe, executor=flags)  # the flags replace the recipe's executor keys
    if _download_hub_sources(recipe):  # then checked as validate checks a cached one, before anything is written
        recipe = load_recipe(args.recipe, executor=flags)
    if args.output_dir is not None:
        import dataclasses

        recipe = dataclasses.replace(recipe, output_dir=args.output_dir)
    check_paths(recipe, check_data(recipe))  # everything validate checks, plus the folders: before any write
    from ptq_bench.ray_cluster import session
    from ptq_bench.report import render
    from ptq_bench.sweep import run

    with session(recipe.executor):  # Ray: connected before anything is written
        out = run(recipe, Path(args.recipe).read_text(encoding="utf-8"))
    try:
        for path in render(out):
            print(f"wrote {path}")
    except KeyboardInterrupt:  # the run is complete and recorded: only its tables are not all written
        from ptq_bench.errors import Interrupted

        raise Interrupted(f"interrupted while writing the tables; every cell is stored in {out}: "
                          f"`ptq-bench report {out}` writes them") from None
    return 0


def _download_hub_sources(recipe: Any) -> bool:
    """Download each hub id not (whole) in the local hub cache into it; whether there was one. Read from the
    cache, its model key, checks and run folder record follow the snapshot's files and commit; loaded as it
    was downloaded, its key was the id alone (rows and cached references shared by every revision)."""
    from ptq_bench.recipe import source_info
    from ptq_bench.sources import download_hub

    infos = {n: source_info(recipe, n) for n, spec in recipe.models.items() if spec.source is not None}
    todo = [(n, i.source) for n, i in infos.items() if i.form == "hub" and i.path is None]
    for name, source in todo:
        download_hub(source, f"models.{name}.source")
    return bool(todo)


def _estimate(args: argparse.Namespace) -> int:
    from ptq_bench.console import log
    from ptq_bench.estimate import estimate
    from ptq_bench.paths import check_data
    from ptq_bench.prepare import pick_device
    from ptq_bench.recipe import load_recipe

    recipe = load_recipe(args.recipe, executor={} if args.executor is None else {"kind": args.executor})
    data_dir = check_data(recipe)  # the texts run encodes (tokenizer, perplexity, calibration) and task files
    device = pick_device(args.device or recipe.device)
    for line in estimate(recipe, device, steps=args.steps, warmup=args.warmup, hours=args.hours, progress=log,
                         data_dir=data_dir):
        print(line)
    return 0


def at_least(low: float, kind: type = int) -> Any:
    """An argparse type: a number of `kind` >= low (argparse prints the one-line error and exits 2)."""
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a{'n integer' if kind is int else ' number'}: {text!r}") from None
        if not value >= low or value == float("inf"):
            raise argparse.ArgumentTypeError(f"must be a finite number of at least {low}, got {text}")
        return value
    return parse


def _nonempty(text: str) -> str:
    """An argparse type: a path or address that is not empty (`--output-dir "$UNSET"` must not fall back to the
    recipe's, nor `--address ""` to $RAY_ADDRESS)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("empty; give a value, or leave the option out for the recipe's")
    return text


def _report(args: argparse.Namespace) -> int:
    from ptq_bench.report import render

    for path in render(args.run_dir):
        print(f"wrote {path}")
    return 0


def _ls(args: argparse.Namespace) -> int:
    import dataclasses

    from ptq_bench.data import PPL_FILES
    from ptq_bench.eval.harness import TASKS
    from ptq_bench.kinds import KINDS
    from ptq_bench.quant.configs import CATALOG

    print("methods:")
    width = max(map(len, CATALOG))  # columns as wide as the longest entry: any name added to a table fits
    for name, entry in sorted(CATALOG.items()):
        fields = ", ".join(f"{f.name}={f.default!r}" for f in dataclasses.fields(entry.config))
        print(f"  {name:<{width}} {'(calibrated) ' if entry.needs_calibration else ''}{fields}")
    print("tasks: label in tables, lm-eval metrics, data files, how the protocol differs from the paper's")
    width = max(map(len, TASKS))
    for name, t in sorted(TASKS.items()):
        files = ", ".join(f"{split}={f}" for split, f in t.data_files.items())
        print(f"  {name:<{width}} {t.label:<4} {'/'.join(t.metrics)}; {files}" + (f"; {t.notes}" if t.notes else ""))
    print("perplexity sets (GPTQ protocol):", ", ".join(f"{s} ({f})" for s, f in PPL_FILES.items()))
    from ptq_bench.report.layouts import LAYOUT_NAMES
    print("layouts:", ", ".join(LAYOUT_NAMES))
    print("model kinds (trained here, or detected from a 'source:' HF checkpoint dir / hub id):")
    widths = [max(len(s) for s in col) for col in zip(*((k.name, k.display) for k in KINDS.values()))]
    for kind in KINDS.values():
        how = "trained" if kind.schedule else "source only"
        ptq = "PTQ target" if kind.ptq_default else "PTQ allowed" if kind.ptq_allowed else "no PTQ"
        bits = "W{}A{}".format(*kind.native_bits)
        print(f"  {kind.name:<{widths[0]}} {kind.display:<{widths[1]}} {bits:<9} {how}, {ptq}")
    from ptq_bench.families import SUPPORTED_MODEL_TYPES, layouts

    print("model families (config.model_type of a 'source:' checkpoint):")
    width = max(map(len, SUPPORTED_MODEL_TYPES))
    for name in SUPPORTED_MODEL_TYPES:
        for fam in layouts(name):
            norms = "/".join(sorted({pair.kind for pair in fam.smooth})) or f"{fam.unsmoothable}: no SmoothQuant"
            notes = ["low-bit: no PTQ" if fam.low_bit else norms, *(f"needs {k}={v!r}" for k, v in fam.requires)]
            counts = [_linears_of(fam, "linears per block"), *(_linears_of(v, f"in {path} blocks")
                                                                for path, v in fam.variants)]
            print(f"  {name:<{width}} {'; '.join(counts)}, {', '.join(notes)}")
    return 0


def _linears_of(fam: Any, where: str) -> str:
    """`fam`'s quantized linears per block, as `ls` prints them ("7 linears per block + 2 per expert")."""
    from ptq_bench.families import EXPERT

    per_expert = sum(EXPERT in n.split(".") for n in fam.linears)
    return f"{len(fam.linears) - per_expert} {where}" + (f" + {per_expert} per expert" * bool(per_expert))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ptq-bench",
        description="Natively trained BitNet (1 / 1.58-bit) vs post-training-quantized FP16 models.",
    )
    from ptq_bench import __version__

    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="train or load models, quantize, evaluate and report a recipe")
    r.add_argument("recipe", help="recipe YAML file")
    r.add_argument("--output-dir", type=_nonempty, help="results folder (overrides the recipe's output_dir)")
    r.add_argument("--executor", help="where cells run (overrides executor.kind): local (this process) or ray "
                                      "(Ray actors, docs/cluster.md)")
    r.add_argument("--address", type=_nonempty, help="Ray cluster address, e.g. HEAD_IP:6379 (overrides executor.address)")
    r.set_defaults(fn=_run)
    v = sub.add_parser("validate", help="check a recipe without running it")
    v.add_argument("recipe", help="recipe YAML file")
    v.set_defaults(fn=_validate)
    e = sub.add_parser("estimate", help="time a few training steps and evaluations of each model here and project "
                                        "the recipe's training, perplexity, zero-shot and quantization time "
                                        "(writes nothing)")
    e.add_argument("recipe", help="recipe YAML file")
    e.add_argument("--steps", type=at_least(1), default=10, help="timed optimizer steps per model (default 10; "
                                                                "the median is projected)")
    e.add_argument("--warmup", type=at_least(0), default=3, help="untimed steps first (default 3)")
    e.add_argument("--hours", type=at_least(1e-3, float), help="also print the train.tokens that fit this many "
                                                             "hours of training")
    e.add_argument("--device", choices=["auto", "cpu", "cuda"], help="overrides the recipe's device")
    e.add_argument("--executor", help="project the run as this executor runs it (overrides executor.kind): local, or "
                                      "ray (also its wall time on 1, 2, 4, ... cell slots)")
    e.set_defaults(fn=_estimate)
    rep = sub.add_parser("report", help="re-render tables and plots from a results folder")
    rep.add_argument("run_dir", help="the results folder a run wrote (its output_dir, e.g. runs/smoke)")
    rep.set_defaults(fn=_report)
    ls = sub.add_parser("ls", help="list methods, tasks, perplexity sets, layouts, model kinds and families")
    ls.set_defaults(fn=_ls)
    return p


_STOPPED_BY = [signal.SIGINT]  # the signal that raised the KeyboardInterrupt being handled


def _stop(signum: int, _frame: Any) -> None:
    """SIGTERM (what `timeout`, Slurm and docker send) stops a run as Ctrl-C does: recorded, then a message."""
    _STOPPED_BY[0] = signal.Signals(signum)
    raise KeyboardInterrupt


def _os_error(exc: OSError) -> str:
    """One line for a failed read or write: the reason and the path (a run records it in its invocation; the rows
    it stored are intact and a re-run resumes)."""
    where = "".join(f" ({p})" for p in (exc.filename, exc.filename2) if p is not None)
    text = exc.strerror or (str(exc).splitlines() or [""])[0][:200]  # pyarrow's OSErrors have no strerror
    return f"{text or type(exc).__name__}{where}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ptq_bench.errors import PtqBenchError

    _STOPPED_BY[0] = signal.SIGINT
    main_thread = threading.current_thread() is threading.main_thread()
    before = signal.signal(signal.SIGTERM, _stop) if main_thread else None
    try:
        return args.fn(args)
    except PtqBenchError as exc:
        print(f"ptq-bench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # a run says what it stored; elsewhere nothing half-written is left
        print(f"ptq-bench: {str(exc) or 'interrupted'}", file=sys.stderr)  # a bare Ctrl-C has no text
        return 128 + _STOPPED_BY[0]
    except BrokenPipeError:  # `ptq-bench ls | head`: the reader left; stop as a SIGPIPE'd tool does, quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit's flush must not raise again
        return 128 + 13
    except OSError as exc:  # a full disk, a folder that went read-only: what and where, not a traceback
        print(f"ptq-bench: error: {_os_error(exc)}", file=sys.stderr)
        return 1
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, before)


if __name__ == "__main__":
    sys.exit(main())
