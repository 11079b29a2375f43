"""Run a recipe: train or load each model once, quantize a fresh copy per cell, evaluate, append.

Hot paths are done once: the tokenizer and token streams per recipe, each model once (cached by its
config hash), evaluation requests once per tokenizer, calibration windows once per tokenizer. Cached
artefacts carry checksums (cache.py) and are rebuilt when damaged. Finished cells are skipped on a
re-run; a killed run loses at most the cell in flight. The steps, in order: `prepare` (data, cells,
lock, manifest, tokenizer), `run_model` per model, and per cell `quantize`, evaluate, `make_row`.
"""

from __future__ import annotations

import contextlib
import copy
import math
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ptq_bench.cache import scratch_folder
from ptq_bench.cells import refuse_loaded
from ptq_bench.console import bar_disable, log, quiet_lm_eval
from ptq_bench.curves import mend_curves, save_curve
from ptq_bench.data import (
    CALIBRATION_FILE,
    TRAIN_FILES,
    calibration_documents,
    data_file,
    file_digest,
    resolve_data_dir,
    train_documents,
)
from ptq_bench.errors import Interrupted, PtqBenchError, first_line
from ptq_bench.eval.evaluator import EVAL_VERSION, Evaluator
from ptq_bench.interrupts import held
from ptq_bench.kinds import NATIVE_BITS  # nominal (weight, activation) bits of unquantized models
from ptq_bench.lock import run_lock
from ptq_bench.meaning import folder_recipe
from ptq_bench.prepare import (
    Context,
    _hash,
    get_model,
    get_source_model,
    get_tokenizer,
    model_key,
    model_record,
    pick_device,
)
from ptq_bench.quant.configs import setting_label
from ptq_bench.recipe import Cell, Recipe, calib_seed, expand_cells, required_data_files, to_dict
from ptq_bench.results import Row, append_row, close_run, open_run, write_manifest
from ptq_bench.source_record import check_sources
from ptq_bench.tokens import cached_array, calibration_windows, encode_stream

# ----------------------------------------------------------------------------------------------
# keys and provenance


def cell_id(cell: Cell, m_key: str, dtype: str) -> str:
    """The stored identity of a cell: what it computes (in the recipe's `dtype`) and the versions of the code."""
    seed = {} if cell.calib_seed is None else {"calib_seed": cell.calib_seed}  # None: the id cells always had
    cast = {} if dtype == "auto" else {"dtype": dtype}  # auto: the id cells had before the recipe's dtype
    return _hash({"model": cell.model, "model_key": m_key, "method": cell.method, "config": cell.config_dict(),
                  "method_version": method_version(cell.method), "eval_version": EVAL_VERSION, **seed, **cast})


def method_version(method: str) -> int | None:
    from ptq_bench.quant import get_method

    return None if method == "none" else get_method(method).version


def data_hashes(data_dir: Path, recipe: Recipe) -> dict[str, str]:
    """sha256 of every data file the recipe reads (`paths.check_data` checked them before the run began)."""
    # file_digest: each file is read once; the token arrays are named by the same digests (`tokens.cached_array`)
    return {f: file_digest(data_file(data_dir, f)) for f in required_data_files(recipe)}


# ----------------------------------------------------------------------------------------------
# the sweep


@dataclass
class Sweep:
    """What one invocation carries through its steps."""

    ctx: Context
    out: Path
    manifest: dict[str, Any]
    keys: dict[str, str]  # model name -> model cache key
    todo: list[Cell]
    tokenizer: Any
    tok_key: str
    evaluators: dict[str, Evaluator] = field(default_factory=dict)  # tokenizer key -> Evaluator
    calib: dict[tuple, Any] = field(default_factory=dict)  # (tokenizer key, seed) -> (n_samples, seq_len) LongTensor
    ran: int = 0  # cells this invocation stored
    already: int = 0  # cells of the recipe stored before it
    bar: Any = None
    sink: Any = None  # where run_model puts a finished Row (None: append to the store; a Ray worker returns it)
    failed: list[str] = field(default_factory=list)  # cells whose Ray call failed: "<model> <label>: <error>"

    def store(self, row: Row) -> None:
        """Append a finished row (or hand it to `sink`) and count it, as one step: a signal between the two
        made the run's last line and its manifest's cells_run one short of what it had stored."""
        with held():
            append_row(self.out, row) if self.sink is None else self.sink(row)
            self.ran += 1
        self.bar.update(1)

    def _encode_train(self) -> np.ndarray:
        docs = train_documents(self.ctx.data_dir)
        log(f"tokenizing the training corpus ({sum(len(d) for d in docs) / 1e6:.1f}M characters; cached for later runs)")
        return encode_stream(self.tokenizer, docs)

    def stream(self) -> np.ndarray:
        """The training token stream of the recipe's tokenizer (int32)."""
        return cached_array(self.ctx.cache / "tokens" / self.tok_key / "train.npy",
                            self._encode_train,
                            [data_file(self.ctx.data_dir, f) for f in TRAIN_FILES])


def run(recipe: Recipe, recipe_text: str) -> Path:
    """Run every cell of `recipe` not already in its results folder; return the folder."""
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    quiet_lm_eval()
    with run_lock(recipe.out_dir):
        sw = prepare(recipe, recipe_text, t0)
        # no bar when stderr is not a terminal: the log lines of each cell say it all
        sw.bar = tqdm(total=len(sw.todo), desc="cells", unit="cell", dynamic_ncols=True, disable=bar_disable(True))
        try:
            if recipe.executor.kind == "ray":  # Ray actors compute; this process alone writes the folder
                from ptq_bench.executors import run_ray
                run_ray(sw)
            else:
                for name in recipe.models:  # a `source:` model's evaluator (its own tokenizer, requests and KLD
                    run_model(sw, name)  # references) is keyed by its model key: it goes with the model
                    sw.evaluators.pop(sw.keys[name], None)  # (its provenance is in the manifest already)
            sw.bar.close()
            mend_curves(sw.out, recipe, sw.ctx.cache, sw.keys)  # a signal until the invocation is closed is
            _record_eval(sw)  # handled as one in the cells' loop: its end and cells_run are recorded
            close_run(sw.out, sw.manifest, time.perf_counter() - t0, sw.ran)
        except KeyboardInterrupt:
            _record_eval(sw)
            raise stopped(sw.out, sw.manifest, t0, sw.ran, sw.already + sw.ran, sw.already + len(sw.todo)) from None
        except Exception as exc:  # an error ends the invocation too: recorded as such, not as a kill
            with held(deliver=False):
                close_run(sw.out, sw.manifest, time.perf_counter() - t0, sw.ran, error=_one_line(exc))
            raise
        finally:
            sw.bar.close()  # before the interrupt's message: a bar redrawn after it hid it
    log(f"done in {time.perf_counter() - t0:.0f}s")
    if sw.failed:  # their rows are missing: the run is incomplete (the manifest's invocation lists them)
        raise PtqBenchError(f"{len(sw.failed)} cell(s) failed, first: {sw.failed[0]}; re-run to retry them")
    return sw.out


def _one_line(exc: Exception) -> str:
    """An error as the manifest records it: its message (type name first unless a PtqBenchError), one line."""
    text = first_line(exc)[:200]
    return text if isinstance(exc, PtqBenchError) else f"{type(exc).__name__}: {text}"


def stopped(out: Path, manifest: dict[str, Any], t0: float, ran: int, stored: int, total: int) -> Interrupted:
    """Close the invocation a signal stopped (`close_run`); the error saying what is stored, how to go on."""
    with held(deliver=False):  # Ctrl-C pressed twice: the second must not leave the invocation open
        close_run(out, manifest, time.perf_counter() - t0, ran, interrupted=True)
    return Interrupted(f"interrupted: {stored} of {total} cells are stored in {out} ({ran} by this run); "
                       "run the same command again to resume")


def prepare(recipe: Recipe, recipe_text: str, t0: float) -> Sweep:
    """Data, cells, the opened run folder (manifest; stored rows checked), the tokenizer, what is left."""
    import torch

    recipe, note = folder_recipe(recipe)  # another wording of the folder's recipe goes on as that recipe
    data_dir = resolve_data_dir(recipe.data_dir)
    cells = expand_cells(recipe)
    hashes = data_hashes(data_dir, recipe)
    device = pick_device(recipe.device) if recipe.executor.kind == "local" else recipe.device  # Ray: each task picks
    ctx, out = Context(recipe, data_dir, recipe.cache_path, device, hashes), recipe.out_dir
    base = {"recipe_name": recipe.name, "recipe": to_dict(recipe), "recipe_text": recipe_text, "seed": recipe.seed,
            "data_dir": str(data_dir), "data_sha256": hashes}
    manifest, rows = open_run(out, recipe.digest(), base, lambda m, r: check_sources(recipe, m, r), note)
    torch.manual_seed(recipe.seed)
    done = {row.cell_id for row in rows}
    try:
        tokenizer, tok_key = get_tokenizer(ctx) if recipe.trains_tokenizer else (None, "")
        keys = {name: model_key(ctx, name, tok_key) for name in recipe.models}  # a source's key reads its files
        todo = [c for c in cells if cell_id(c, keys[c.model], recipe.dtype) not in done]
    except KeyboardInterrupt:  # the invocation is open: close it as the cells' loop does
        raise stopped(out, manifest, t0, 0, len(done), len(cells)) from None
    already = len(cells) - len(todo)
    log(f"{len(cells)} cells, {already} already done, {len(todo)} to run -> {out}")
    return Sweep(ctx, out, manifest, keys, todo, tokenizer, tok_key, already=already)


def evaluator(sw: Sweep, tokenizer: Any, tok_key: str) -> Evaluator:
    """The Evaluator of one tokenizer, built on first use (its task versions go into the manifest)."""
    if tok_key not in sw.evaluators:
        r = sw.ctx.recipe
        sw.evaluators[tok_key] = Evaluator(r.eval, sw.ctx.data_dir, sw.ctx.cache, tokenizer, tok_key)
        _record_eval(sw)
        write_manifest(sw.out, sw.manifest)
    return sw.evaluators[tok_key]


def _record_eval(sw: Sweep) -> None:
    """Task versions per tokenizer into the manifest; an invocation that built none keeps the earlier ones."""
    known = (sw.manifest.get("eval") or {}).get("by_tokenizer") or {}
    sw.manifest["eval"] = {"eval_version": EVAL_VERSION,
                           "by_tokenizer": {**known, **{k: ev.provenance() for k, ev in sw.evaluators.items()}}}


def run_model(sw: Sweep, name: str) -> None:
    """Every remaining cell of model `name`: load or train it once, then quantize, evaluate, append."""
    mine = [c for c in sw.todo if c.model == name]
    if mine:
        run_opened(sw, open_model(sw, name, mine), mine)


class Opened(NamedTuple):
    """A model loaded (or trained) for its cells, its base set for KLD, and its size (for the rows)."""

    base: Base
    size: dict[str, int]


def open_model(sw: Sweep, name: str, mine: list[Cell]) -> Opened:
    """Model `name` loaded or trained, checked against its cells `mine`, its curve saved, its base set."""
    from ptq_bench.models.build import parameter_count, weight_bytes

    base = base_model(sw, name)
    for inv in sw.manifest.get("invocations", [])[-1:]:  # a Ray actor's has none: its preparation returns it
        inv.setdefault("models", {})[name] = model_record(sw.ctx.device, base.model, base.info)
    refuse_loaded(name, base.model.config, mine)  # what validate could not read (an uncached hub id)
    save_curve(sw.out, name, base.kind, base.info)
    size = {"n_params": parameter_count(base.model), "weight_bytes": weight_bytes(base.model)}
    base.evaluate.set_base(base.model, sw.keys[name], sw.ctx.device)
    return Opened(base, size)


def run_opened(sw: Sweep, opened: Opened, mine: list[Cell]) -> None:
    """Cells `mine` of an opened model: its KLD references first (built once: an Evaluator keeps them while
    its base stays set), then each cell; with `in_place` or `offload` the float model is restored after each."""
    base, size = opened
    with float_backup(sw, base, mine) as backup:
        ref_s = 0.0  # charged to the base row, whose perplexity the references hold (0.0 s: it had none)
        if sw.ctx.recipe.eval.kld and any(c.method != "none" for c in mine):
            t_ref = time.perf_counter()
            with backup.evaluating(base.model) if backup else contextlib.nullcontext():
                base.evaluate.references()  # once per set, before any cell; the base row's ppl is read from them
            ref_s = time.perf_counter() - t_ref
        for cell in mine:
            run_cell(sw, cell, base, size, backup, ref_s if cell.method == "none" else 0.0)


def run_cell(sw: Sweep, cell: Cell, base: Base, size: dict[str, int], backup: Any, before_s: float = 0.0) -> None:
    """Quantize (a copy, or the base model itself when `backup` can restore it), evaluate, append one row.
    `before_s`: evaluation of this cell done before it (the base row's perplexity, in the KLD references)."""
    model, evaluate = base.model, base.evaluate
    seed = calib_seed(sw.ctx.recipe, cell)
    sw.bar.set_description(f"{cell.model} {cell_name(cell.method, cell.label, cell.config_dict(), seed)}")
    with backup.quantizing() if backup else contextlib.nullcontext():
        target, quant = quantize(sw, cell, model, base.tokenizer, base.tok_key, in_place=backup is not None)
    t_eval = time.perf_counter()
    with backup.evaluating(target) if backup else contextlib.nullcontext():
        metrics = evaluate(target, quantized=cell.method != "none", tasks=cell.tasks)
    row = make_row(sw, cell, base, size, metrics, quant, time.perf_counter() - t_eval + before_s)
    ran_tasks = evaluate.suite is not None and cell.tasks != ()
    row.protocol["path"] = evaluate.suite.last_path if ran_tasks else None  # FastLM path taken, if any
    sw.store(row)
    _print_cell(row)
    del target
    if backup is not None and cell.method != "none":
        backup.restore(model)  # the float model back, bit for bit, for the next cell


class Base(NamedTuple):
    """A model's unquantized form and what its cells share."""

    model: Any  # on the device (with `offload`: decoder blocks on disk, the rest on the CPU)
    tokenizer: Any
    tok_key: str
    evaluate: Evaluator
    kind: str
    info: dict  # training info (curve, divergence, untrained metrics) or the source's description
    blocks: Any = None  # with `offload`: the source checkpoint's block reader (models.lazy.CheckpointBlocks)


def base_model(sw: Sweep, name: str) -> Base:
    """The model `name`, loaded or trained once, with its tokenizer and evaluator."""
    if sw.ctx.recipe.models[name].source is not None:
        model, m_tok, kind, info, blocks = get_source_model(sw.ctx, name)
        evaluate = evaluator(sw, m_tok, m_tok_key := sw.keys[name])  # dropped by `run` after the model's cells
    else:
        m_tok, m_tok_key = sw.tokenizer, sw.tok_key
        evaluate = evaluator(sw, m_tok, m_tok_key)
        model, kind, info = get_model(sw.ctx, name, sw.tok_key, sw.tokenizer, sw.stream, evaluate.perplexity)
        blocks = None
    if sw.ctx.recipe.dtype != "auto":  # the recipe's dtype (check_dtype: never with offloaded blocks)
        import torch

        from ptq_bench.models.build import cast_model

        cast_model(model, getattr(torch, sw.ctx.recipe.dtype))
    return Base(model, m_tok, m_tok_key, evaluate, kind, info, blocks)


@contextlib.contextmanager
def float_backup(sw: Sweep, base: Base, cells: list[Cell]) -> Iterator[Any]:
    """With `in_place`: the model's float blocks saved (FloatBlocks, a private folder under the cache,
    removed afterwards); with `offload` (blocks on disk): OffloadedBlocks, whose cells write their blocks
    under such a folder and are evaluated streaming; else None."""
    if base.blocks is None and (not sw.ctx.recipe.in_place or all(c.method == "none" for c in cells)):
        yield None
        return
    from ptq_bench.quant.apply import FloatBlocks, OffloadedBlocks

    folder = scratch_folder(sw.ctx.cache / "in_place", "float-")  # a killed run's folder goes on the next run
    try:
        yield (FloatBlocks(base.model, folder) if base.blocks is None
               else OffloadedBlocks(base.model, folder, base.blocks, sw.ctx.device))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def quantize(sw: Sweep, cell: Cell, model: Any, tokenizer: Any, tok_key: str,
             in_place: bool = False) -> tuple[Any, dict[str, Any]]:
    """(model to evaluate, quantization report): the base model itself for "none", else a quantized copy
    (`in_place`: the base model itself, which the caller restores)."""
    from ptq_bench.quant import get_method

    if cell.method == "none":
        return model, {}
    method = get_method(cell.method)
    target = model if in_place else copy.deepcopy(model)
    seed = calib_seed(sw.ctx.recipe, cell)
    calib = calibration(sw, tokenizer, tok_key, seed).to(sw.ctx.device) if seed is not None else None
    report = method.apply(target, cell.config, calib)
    return target, {"effective_bits": report.effective_bits, "seconds": round(report.seconds, 3),
                    "n_linears": report.n_linears, "details": report.details}


def calibration(sw: Sweep, tokenizer: Any, tok_key: str, seed: int) -> Any:
    """(n_samples, seq_len) LongTensor of calibration windows for one tokenizer and seed, built once."""
    import torch

    if (tok_key, seed) not in sw.calib:
        c = sw.ctx.recipe.calibration
        stream = cached_array(sw.ctx.cache / "tokens" / tok_key / "calib_c4.npy",
                              lambda: encode_stream(tokenizer, calibration_documents(sw.ctx.data_dir)),
                              [data_file(sw.ctx.data_dir, CALIBRATION_FILE)])
        sw.calib[(tok_key, seed)] = torch.from_numpy(calibration_windows(stream, c.n_samples, c.seq_len, seed))
    return sw.calib[(tok_key, seed)]


def make_row(sw: Sweep, cell: Cell, base: Base, size: dict[str, int], metrics: dict[str, float],
             quant: dict[str, Any], eval_s: float) -> Row:
    import torch

    from ptq_bench.models.build import dtype_name

    kind, info, r = base.kind, base.info, sw.ctx.recipe
    w_bits, a_bits = (cell.w_bits, cell.a_bits) if cell.method != "none" else NATIVE_BITS.get(kind, (16, 16))
    return Row(
        cell_id=cell_id(cell, sw.keys[cell.model], r.dtype), recipe=r.name, recipe_hash=r.digest(), model=cell.model,
        model_kind=kind, model_key=sw.keys[cell.model], method=cell.method, method_version=method_version(cell.method),
        eval_version=EVAL_VERSION, label=cell.label, w_bits=w_bits, a_bits=a_bits, config=cell.config_dict(),
        metrics=metrics, quant=quant, eval_seconds=round(eval_s, 2),
        protocol={"ppl": to_dict(r.eval.perplexity), "limit": r.eval.limit, "num_fewshot": r.eval.num_fewshot,
                  "backend": r.eval.backend, "batch_size": r.eval.batch_size, "device": sw.ctx.device,
                  "dtype": dtype_name(base.model)},
        diverged=bool(info.get("diverged", False)),
        untrained_metrics=info.get("untrained_metrics") if cell.method == "none" else None,
        finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"), calib_seed=calib_seed(r, cell),
        threads=torch.get_num_threads(), **size,
    )


def _print_cell(row: Row) -> None:
    parts = []
    for k, v in row.metrics.items():
        bits_of = k.split("/")  # e.g. kld/wikitext2/seq128/first64win/mean -> kld/wikitext2/mean
        head, name, leaf = bits_of[0], bits_of[1] if len(bits_of) > 1 else "", bits_of[-1]
        short = {"lm_eval": f"{name}/{leaf}", "ppl_gptq": name, "kld": f"kld/{name}/{leaf}"}.get(head, f"{head}/{name}")
        parts.append(f"{short}={v:.4g}" if isinstance(v, float) and math.isfinite(v) else f"{short}={v}")
    log(f"{row.model:<12} {cell_name(row.method, row.label, row.config, row.calib_seed):<28} " + " ".join(parts))


def cell_name(method: str, label: str, config: dict[str, Any], calib_seed: int | None) -> str:
    """A cell as the log and the progress bar name it: label, setting, calibration seed (never two alike)."""
    seed = f"seed {calib_seed}" if calib_seed is not None else ""
    return " ".join(x for x in (label, setting_label(method, config), seed) if x)
