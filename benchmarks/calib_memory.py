"""Peak resident memory of GPTQ (or QuIP) on a ~1.1B-parameter Llama, against the model's own bytes.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/calib_memory.py                 # every path, one after another
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/calib_memory.py --path inplace  # one path, one JSON line
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/calib_memory.py --path inplace --method quip   # QuIP W2

The model is TinyLlama's shape (hidden 2048, MLP 5632, 22 blocks, 32 heads, 4 KV heads, vocab 32000,
untied head: 1.10B parameters), randomly initialised from its config (nothing downloaded), in fp32 by
default (4.40 GB of weights). Calibration: 2 random windows x 64 tokens; GPTQ W4 g128 (`--method quip`:
QuIP W2, Hadamard) through the registered method (`get_method(...).apply`, i.e. `quant.apply.quantize_model`
and the block runner). The paths below say "GPTQ" for the method run.

Each path runs in its own fresh subprocess, never two at once. After the model is built, the allocator is
trimmed and the kernel's peak-RSS mark is reset (`/proc/self/clear_refs` <- 5); each phase's peak is then
the kernel's VmHWM at its end (a 5 ms VmRSS sampler thread is reported beside it as a check). Paths:

- main:    what `sweep.quantize` does on main: `copy.deepcopy(model)`, then GPTQ on the copy;
- inplace: `FloatBlocks` saves the blocks' float state to disk (one safetensors file per block), GPTQ
           runs on the model itself with `DevicePlacement("cpu")`, then `restore` gives the float model back;
- disk:    GPTQ on the model itself with `DiskPlacement`: blocks other than the calibrated one are on disk.
- lazy:    the model as a larger-than-memory user has it: the built model is saved as a safetensors
           checkpoint by a separate process first; this one opens it with `models.lazy.open_lazily`
           (block parameters never read), runs GPTQ with `DiskPlacement(source=..., keep=True)` (block i
           read from the checkpoint, its quantized form written to disk), then scores the quantized model
           with the GPTQ-protocol perplexity on the same random windows, `streamed` one block at a time.

The ratio is peak RSS (the whole process: interpreter, torch, model, calibration state) / model bytes.

Measured on the 2-core CPU box (fp32, 4.40 GB of weights). The `inplace` rows' GPTQ / QuIP seconds below were
measured before a fix (2026-12-06, not rerun): they included FloatBlocks' backup of every block to disk, which
now has its own seconds (`backup=...GB/Ns`); the memory figures are unaffected.
- 2026-11-29 (RSS after the build 4.88 GB): main 10.18 GB (2.31x), inplace 5.71 GB (1.30x; backup 4.88,
  restore 5.34), disk 4.88 GB (1.11x: the peak is the fully loaded model before its blocks go to disk;
  ~1.5 GB RSS while GPTQ runs).
- 2026-12-03, after the inverse-Hessian factor moved into the Hessian's own storage (`ldlq.
  inverse_hessian_factor`; GPTQ consumes the runner's popped statistic): RSS after the build 4.80 GB;
  inplace 5.26 GB (1.20x; backup 5.06, restore 5.23; GPTQ 319 s), disk 4.80 GB (1.09x, again the built
  model; GPTQ 371 s). Before that change the same inplace run peaked at 5.765 GB (1.31x): the down
  projection's solve held five 5632 x 5632 fp32 matrices (statistic, clone, L, L^-1 L^-T, U).
- 2026-12-03, `--path lazy` (checkpoint saved in 67.6 s by the child process): RSS after `open_lazily`
  0.40 GB; GPTQ peak 1.20 GB (0.27x; 382.6 s), streamed perplexity of the quantized model on the two
  calibration windows 0.97 GB (0.22x; 8.3 s). The model is never whole in memory: what remains is one
  block, the embeddings and head (0.26 GB each), the largest Hessian and its factor, and the process.
- 2026-12-04, `--path inplace`. The same code as 12-03 (a7d9f92) now peaked at 5.55 GB (1.26x; GPTQ 224 s).
  The peak crept up block by block: the heap's free holes stayed resident. Three variants of GPTQ's stacked
  solves gave 1.25x, 1.28x and 1.28x (GPTQ 205-222 s); runs differ by that much.
  - With `calibrate.release_freed_memory` (glibc `malloc_trim` after each group), GPTQ peaked at 5.30 GB
    (1.205x; GPTQ 225 s) and restore at 5.31 GB. A trial with trimming in place gave 5.31 GB (206 s).
  - `MALLOC_MMAP_THRESHOLD_=1048576` instead gave 5.19 GB (1.19x), at 372 s, with another job running
    beside it.
- 2026-12-04, `--path inplace --method quip` (QuIP W2, Hadamard), the two runs side by side, one thread each:
  - before (4bdfbb9): 9.36 GB (2.13x; QuIP 666 s), restore 8.58 GB. The peak grew ~0.2 GB per block: every
    quantized linear keeps its rotations in its grid, and each held its own copy of the 2048 x 2048 Hadamard
    factor (16.8 MB, nine per block); each solve also held ~5 copies of its (n, n) Hessian at once.
  - after (Hadamard factors shared per size, the Hessian consumed, rescaled, rotated and symmetrized in its
    own storage, same floats): **5.58 GB (1.27x; QuIP 614 s)**, restore 5.45 GB; flat after block ~6.
  - `--path lazy --method quip` after: QuIP peak 1.71 GB (0.39x; 513 s), streamed perplexity 1.02 GB (0.23x).
    GPTQ's lazy peak is 1.20 GB: QuIP's (n, n) and W-sized temporaries are a larger share of a bounded run.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_args import exit_with, new_or_folder, positive  # noqa: E402

PATHS = ("inplace", "main", "disk", "lazy")  # the bounded path first
# the calibrated methods it can run (--method), each with the settings it is measured at
SETTINGS = {"gptq": {"w_bits": 4, "group_size": 128}, "quip": {"w_bits": 2}}


def status_kb(key: str, pid: int | str = "self") -> int:
    """A field of /proc/<pid>/status in kB (KeyError if it has none, OSError once the process is gone)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


class Peak:
    """The peak RSS of one phase: the kernel's VmHWM after a reset, and a sampler thread's maximum."""

    def __init__(self) -> None:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        self.sampled, self.stop = status_kb("VmRSS"), threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        last = time.monotonic()
        while not self.stop.wait(0.005):
            self.sampled = max(self.sampled, status_kb("VmRSS"))
            if time.monotonic() - last > 30:  # progress on stderr: a run cut short still shows its peak so far
                last = time.monotonic()
                print(f"  peak so far {status_kb('VmHWM') / 1e6 * 1.024:.3f} GB", file=sys.stderr, flush=True)

    def done(self) -> dict[str, float]:
        self.stop.set()
        self.thread.join()
        return {"hwm_gb": status_kb("VmHWM") / 1e6 * 1.024, "sampled_gb": self.sampled / 1e6 * 1.024}


def method_and_config(name: str) -> tuple:
    """The registered method `name` and its config at the measured settings (SETTINGS)."""
    from ptq_bench.quant import get_method

    method = get_method(name)
    return method, method.config_cls(**SETTINGS[name])


def build_llama(dtype: str, layers: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=2048, intermediate_size=5632, num_hidden_layers=layers, num_attention_heads=32,
                      num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048,
                      tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(getattr(torch, dtype)).eval()
    return model


def build_moe(dtype: str, layers: int):
    """A Mixtral of ~0.93B parameters (hidden 1024, 8 experts of MLP 2816, top 2, 16 heads, 8 KV heads, vocab
    32000, untied head; 12 blocks: 3.73 GB in fp32), randomly initialised: an offloaded mixture of experts."""
    import torch
    from transformers import MixtralConfig, MixtralForCausalLM

    cfg = MixtralConfig(hidden_size=1024, intermediate_size=2816, num_hidden_layers=layers, num_attention_heads=16,
                        num_key_value_heads=8, num_local_experts=8, num_experts_per_tok=2, vocab_size=32000,
                        max_position_embeddings=2048, tie_word_embeddings=False)
    torch.manual_seed(0)
    return MixtralForCausalLM(cfg).to(getattr(torch, dtype)).eval()


def model_bytes(model) -> int:
    seen = {t.data_ptr(): t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()]}
    return sum(seen.values())


def save_checkpoint(folder: Path, dtype: str, layers: int) -> None:
    """Build the model and save it as a safetensors checkpoint (run in its own process)."""
    build_llama(dtype, layers).save_pretrained(folder)


def run_lazy(dtype: str, layers: int, windows: int, seqlen: int, tmp: Path, name: str = "gptq") -> dict:
    import torch

    from ptq_bench.eval.perplexity import gptq_perplexity
    from ptq_bench.models.lazy import open_lazily
    from ptq_bench.quant.placement import DiskPlacement, streamed, use_placement

    ckpt = tmp / "checkpoint"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, __file__, "--save", str(ckpt), "--dtype", dtype, "--layers", str(layers)],
                   check=True, env=os.environ.copy())
    out: dict = {"path": "lazy", "method": name, "dtype": dtype, "save_s": round(time.perf_counter() - t0, 1)}
    peak = Peak()
    model, blocks = open_lazily(ckpt)
    out |= {"n_params": sum(p.numel() for p in model.parameters()),
            "model_gb": sum(p.numel() * p.element_size() for p in model.parameters()) / 1e9,
            "rss_after_build_gb": peak.done()["hwm_gb"]}
    calib = torch.randint(0, model.config.vocab_size, (windows, seqlen), generator=torch.Generator().manual_seed(0))
    method, cfg = method_and_config(name)
    place = DiskPlacement(tmp / "blocks", source=blocks, keep=True)
    phases: dict[str, dict] = {}
    t0, peak = time.perf_counter(), Peak()
    with use_placement(place):
        method.apply(model, cfg, calib)
    phases[name] = {**peak.done(), "seconds": round(time.perf_counter() - t0, 1)}
    t0, peak = time.perf_counter(), Peak()
    with torch.no_grad(), streamed(model, place):
        out["ppl"] = gptq_perplexity(model, calib.flatten(), seqlen, progress=False)["ppl"]
    phases["ppl"] = {**peak.done(), "seconds": round(time.perf_counter() - t0, 1)}
    out["phases"] = phases
    out["ratio"] = max(p["hwm_gb"] for p in phases.values()) / out["model_gb"]
    return out


def run_path(path: str, dtype: str, layers: int, windows: int, seqlen: int, name: str = "gptq") -> dict:
    import torch

    if path == "lazy":
        with tempfile.TemporaryDirectory(prefix="calib_memory_") as tmp:
            return run_lazy(dtype, layers, windows, seqlen, Path(tmp), name)

    from ptq_bench.quant.apply import FloatBlocks
    from ptq_bench.quant.placement import DevicePlacement, DiskPlacement, use_placement

    t0 = time.perf_counter()
    model = build_llama(dtype, layers)
    out: dict = {"path": path, "method": name, "dtype": dtype, "n_params": sum(p.numel() for p in model.parameters()),
                 "model_gb": model_bytes(model) / 1e9, "build_s": round(time.perf_counter() - t0, 1)}
    calib = torch.randint(0, model.config.vocab_size, (windows, seqlen), generator=torch.Generator().manual_seed(0))
    method, cfg = method_and_config(name)
    phases: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="calib_memory_") as tmp:
        out["rss_after_build_gb"] = Peak().done()["hwm_gb"]
        t0 = time.perf_counter()
        peak = Peak()
        if path == "main":
            target = copy.deepcopy(model)
            method.apply(target, cfg, calib)
        elif path == "inplace":
            backup = FloatBlocks(model, Path(tmp) / "float")
            phases["backup"] = {**peak.done(), "seconds": round(time.perf_counter() - t0, 1)}
            t0, peak = time.perf_counter(), Peak()  # the method's seconds are its own, as on the other paths
            with use_placement(DevicePlacement("cpu")):
                method.apply(model, cfg, calib)
        else:
            with use_placement(DiskPlacement(Path(tmp) / "blocks")):
                method.apply(model, cfg, calib)
        phases[name] = {**peak.done(), "seconds": round(time.perf_counter() - t0, 1)}
        if path == "inplace":
            peak = Peak()
            backup.restore(model)
            phases["restore"] = peak.done()
    out["phases"] = phases
    out["ratio"] = max(p["hwm_gb"] for p in phases.values()) / out["model_gb"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--path", choices=(*PATHS, "all"), default="all")
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    ap.add_argument("--layers", type=positive, default=22)
    ap.add_argument("--windows", type=positive, default=2)
    ap.add_argument("--seqlen", type=positive, default=64)
    ap.add_argument("--method", choices=tuple(SETTINGS), default="gptq",
                    help="the calibrated method: " + ", ".join(f"{k} {v}" for k, v in SETTINGS.items()))
    ap.add_argument("--save", type=new_or_folder, help="only build the model and save it as a checkpoint here (lazy path)")
    args = ap.parse_args()
    if args.save is not None:
        save_checkpoint(args.save, args.dtype, args.layers)
        return
    if args.path != "all":
        print(json.dumps(run_path(args.path, args.dtype, args.layers, args.windows, args.seqlen, args.method)),
              flush=True)
        return
    rows = []
    for path in PATHS:  # one fresh process per path, one after another
        cmd = [sys.executable, __file__, "--path", path, "--dtype", args.dtype, "--layers", str(args.layers),
               "--windows", str(args.windows), "--seqlen", str(args.seqlen), "--method", args.method]
        done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=os.environ.copy(), check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    print(f"\n{'path':<8} {'params':>8} {'model GB':>9} {'RSS built':>10} {'peak GB':>8} {'ratio':>6}  phases")
    for r in rows:
        ph = " ".join(f"{k}={v['hwm_gb']:.2f}GB" + (f"/{v['seconds']}s" if "seconds" in v else "")
                      for k, v in r["phases"].items())
        peak = max(v["hwm_gb"] for v in r["phases"].values())
        print(f"{r['path']:<8} {r['n_params'] / 1e9:>7.2f}B {r['model_gb']:>9.2f} {r['rss_after_build_gb']:>10.2f} "
              f"{peak:>8.2f} {r['ratio']:>6.2f}  {ph}")


if __name__ == "__main__":
    exit_with(main)
