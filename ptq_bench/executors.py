"""The Ray executor: model preparation and cells run on Ray; this process alone writes the run folder.

`ptq-bench run recipe.yaml --executor ray [--address ADDR]`, or the recipe's `executor:` section (joining
the cluster: ray_cluster.py). The driver (the `ptq-bench run` process) does what a local run does around the
cells, in `sweep.run`: `prepare` (data hashes, run-folder lock, manifest, tokenizer, which cells are left) and
`close_run`. It is the only writer of the store (results.jsonl, manifest.json, curves/). On Ray, a pool of
*actors*, one per cell slot of the cluster (its CPUs and GPUs over a cell's share, up to the work there is;
`ray_pool` keeps it so as nodes join or go), each a worker process holding its share until it is retired,
takes one call at a time from the driver:

- *prepare* a model with cells left: train it into the shared cache (or load a `source:`, converting a GGUF
  once); it returns (kind, training info), and the actor keeps the model open;
- *run* a cell of a prepared model, through `sweep.run_opened` on a worker-side `Sweep` whose `sink` keeps the
  Row instead of appending it and whose `out` is a private scratch folder (an actor is never told the run
  folder; the scratch lies in the shared cache under the run's token, and the driver removes it when the run
  ends); it returns the Row as a dict, with the evaluator's provenance.

An actor keeps one model loaded (the last it opened) and is handed a model still to prepare first (models
train side by side), then the cells of the model it holds, then another ready model's cells
(`ray_pool.next_work`): an actor opens a model when it moves to it, not for every cell.

The driver checks each returned row (a complete `Row` of the cell it asked for) and appends it as it
arrives, so resume, the lock and the manifest behave as locally. The pool follows the cluster (`ray_pool`):
a call lost with its worker (kill, OOM, lost node) is handed out again, to another actor, up to
`executor.max_retries` times; a call that raises, or runs out of retries, is logged and listed in the
manifest's invocation (`failed`), its row is absent, its actor is replaced, and the run exits non-zero once the
other cells are done. Nothing a worker computed reaches the store but through the driver, whole.

The cache folder must be one folder every worker sees at the same path (on a cluster: a shared filesystem with
file locks); a worker not seeing the driver's marker in it refuses. Ray is imported here only, in functions.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ptq_bench.cache import host_tag, remove_stale
from ptq_bench.console import log, quiet_lm_eval
from ptq_bench.curves import save_curve
from ptq_bench.errors import PtqBenchError
from ptq_bench.prepare import Context, get_tokenizer, model_record, pick_device
from ptq_bench.ray_cluster import connect, describe, head_gone
from ptq_bench.ray_pool import CHECK_S, Dispatch, cluster_gone, fail
from ptq_bench.recipe import Cell, ExecutorSpec, Recipe
from ptq_bench.results import Row, write_manifest
from ptq_bench.sweep import Opened, Sweep, _record_eval, cell_id, open_model, run_opened

RAY_DRIVER, RAY_SCRATCH = ".ray-driver-", ".ray-scratch-"  # + the run's token, in the shared cache
CRASH_ENV = "PTQ_BENCH_RAY_CRASH_ONCE"  # fault injection for tests: a folder (see _maybe_crash)


@dataclass(frozen=True)
class Job:
    """What a task needs to rebuild the driver's context on a worker. Picklable; holds no run folder."""

    recipe: Recipe
    data_dir: str  # absolute
    cache: str  # absolute: the shared cache folder
    cwd: str  # the driver's working folder: relative `source:` paths resolve from it when it exists
    data_hashes: dict[str, str]
    keys: dict[str, str]  # model name -> model cache key
    tok_key: str  # the recipe's tokenizer key ("" when every model is a `source:`)
    token: str  # this invocation (<host>-<pid>-<random>): names the driver's marker, scratch and worker-side state

    @property
    def marker(self) -> Path:
        return Path(self.cache) / f"{RAY_DRIVER}{self.token}"

    @property
    def scratch(self) -> Path:
        """Where workers keep their scratch `out` folders: in the shared cache, so the driver removes every
        worker's when the run ends (a Ray worker is killed at shutdown, so its own exit hooks never run)."""
        return Path(self.cache) / f"{RAY_SCRATCH}{self.token}"


@dataclass(frozen=True)
class Reported:
    """An Evaluator's provenance as a worker reported it (the driver builds no Evaluator of its own)."""

    prov: dict[str, Any]

    def provenance(self) -> dict[str, Any]:
        return self.prov


# ----------------------------------------------------------------------------------------------
# worker side

_WORKER: dict[str, Sweep] = {}  # per worker process: job token -> Sweep (tokenizer, evaluators, calibration)


def worker_sweep(job: Job) -> Sweep:
    """This worker's Sweep for `job`, built on its first task: the tokenizer from the shared cache, a
    scratch `out` (evaluator and curve side files land there, never in the run folder), no bar."""
    if job.token in _WORKER:
        return _WORKER[job.token]
    import torch
    from tqdm.auto import tqdm

    quiet_lm_eval()  # as sweep.run does
    if not job.marker.is_file():
        raise PtqBenchError(f"cache_dir {job.cache} on {socket.gethostname()} is not the driver's cache folder "
                            "(its marker is missing): on a cluster it must be a shared folder at the same path")
    if os.path.isdir(job.cwd):
        os.chdir(job.cwd)
    ctx = Context(job.recipe, Path(job.data_dir), Path(job.cache), pick_device(job.recipe.device), job.data_hashes)
    tokenizer = None
    if job.tok_key:
        tokenizer, key = get_tokenizer(ctx)
        if key != job.tok_key:
            raise PtqBenchError(f"worker tokenizer key {key} is not the driver's {job.tok_key} (another data folder?)")
    torch.manual_seed(job.recipe.seed)  # as sweep.prepare does
    scratch = Path(tempfile.mkdtemp(prefix=f"{socket.gethostname()}-", dir=job.scratch))
    sw = Sweep(ctx, scratch, {}, job.keys, [], tokenizer, job.tok_key, bar=tqdm(disable=True))
    _WORKER[job.token] = sw
    return sw


_OPEN: dict[tuple[str, str], Opened] = {}  # in an actor's process: (job token, model) -> the one model it keeps


class CellActor:
    """A Ray actor: one worker process of the run's pool (one per cell slot). It prepares models and runs cells,
    one call at a time, and keeps the last model it opened loaded: the model it trained or loaded, or the one its
    last cell ran on (each cell quantizes a copy; with `in_place` or `offload` the model itself, restored after
    it). The driver hands it its calls in the order `ray_pool.next_work` gives, and kills the pool when the
    run ends."""

    def prepare(self, job: Job, name: str, cells: list[Cell]) -> tuple[str, dict, dict]:
        return prepare_model(job, name, cells)

    def run(self, job: Job, cell: Cell) -> dict[str, Any]:
        return run_cell(job, cell)


def prepare_model(job: Job, name: str, cells: list[Cell]) -> tuple[str, dict, dict]:
    """Model `name` trained into (or found in) the shared cache and kept open; (kind, training info, the manifest's
    record of it). A PTQ cell the loaded model cannot take (`cells.refuse_loaded`) fails it, and with it every
    cell of the model."""
    opened = opened_model(sw := worker_sweep(job), job.token, name, cells)
    return opened.base.kind, opened.base.info, model_record(sw.ctx.device, opened.base.model, opened.base.info)


def run_cell(job: Job, cell: Cell) -> dict[str, Any]:
    """Quantize and evaluate one cell (`sweep.run_opened`) on the model this process keeps open; {"row": Row as
    a dict, "eval": {tok_key: provenance}, "worker": host, device and torch threads (CPU float results depend on
    the thread count)}. A cell that raises drops the model (it may be left half quantized): the next loads it."""
    sw = worker_sweep(job)
    rows: list[Row] = []
    sw.todo, sw.sink = [cell], rows.append
    try:
        run_opened(sw, opened_model(sw, job.token, cell.model, [cell]), [cell])
    except BaseException:
        drop_open()
        raise
    finally:
        sw.todo, sw.sink = [], None
    if len(rows) != 1:
        raise PtqBenchError(f"{cell.model} {cell.label}: run_opened gave {len(rows)} rows, expected 1")
    _maybe_crash()
    import torch

    worker = f"{socket.gethostname()} {sw.ctx.device} torch_threads={torch.get_num_threads()}"  # results depend on it
    return {"row": rows[0].to_dict(), "eval": {k: ev.provenance() for k, ev in sw.evaluators.items()}, "worker": worker}


def opened_model(sw: Sweep, token: str, name: str, cells: list[Cell]) -> Opened:
    """Model `name` as this process keeps it open (one model at a time), opened when new (`sweep.open_model`,
    checked against `cells`); the one before is closed first, so a failed opening leaves none open."""
    if (token, name) not in _OPEN:
        drop_open()
        _OPEN[(token, name)] = open_model(sw, name, cells)
    return _OPEN[(token, name)]


def drop_open() -> None:
    """Close the model this process keeps open, and a `source:` model's own evaluator with it (its tokenizer,
    lm-eval requests and KLD references), as a local run drops it after the model's cells: an actor kept the
    evaluator of every source model it had opened (RSS +39 MB per tiny model, the more the larger its tasks)."""
    for token, name in list(_OPEN):
        if (sw := _WORKER.get(token)) is not None:
            sw.evaluators.pop(sw.keys[name], None)  # a trained model's is the tokenizer's: kept for the next model
    _OPEN.clear()


def _maybe_crash() -> None:
    """Fault injection (tests): when $PTQ_BENCH_RAY_CRASH_ONCE names a folder holding a file `crash`, the
    first cell task to claim it (an atomic rename to `crashed`) kills its own worker with SIGKILL after
    computing its row and before returning it, as an OOM kill or a lost node would."""
    if not (folder := os.environ.get(CRASH_ENV)):
        return
    try:
        os.rename(os.path.join(folder, "crash"), os.path.join(folder, "crashed"))
    except OSError:
        return
    os.kill(os.getpid(), signal.SIGKILL)


# ----------------------------------------------------------------------------------------------
# driver side


def run_ray(sw: Sweep) -> None:
    """Run `sw.todo` on Ray actors; append each returned row (this process is the store's only writer)."""
    import ray

    ex = sw.ctx.recipe.executor
    started = connect(ex.address)
    job = make_job(sw)
    job.marker.parent.mkdir(parents=True, exist_ok=True)
    for prefix in (RAY_SCRATCH, RAY_DRIVER):  # what a driver of this host left when it was killed
        remove_stale(job.marker.parent, prefix)
    job.scratch.mkdir()  # the workers' scratch: made and removed here, by the run that owns it
    job.marker.write_text(socket.gethostname(), encoding="utf-8")
    sw.manifest["invocations"][-1]["executor"] = {"kind": "ray", "address": ex.address, "cpus_per_cell": ex.cpus_per_cell,
                                                  "gpus_per_cell": ex.gpus_per_cell, "workers": []}
    try:
        log(f"ray: {len(sw.todo)} cells on {describe(ray.cluster_resources())}, {ex.cpus_per_cell:g} CPU / "
            f"{ex.gpus_per_cell:g} GPU per task, cache {job.cache}")
        drive(sw, job, ex)
    finally:
        job.marker.unlink(missing_ok=True)
        shutil.rmtree(job.scratch, ignore_errors=True)
        if started:
            ray.shutdown()


def make_job(sw: Sweep) -> Job:
    ctx = sw.ctx
    return Job(ctx.recipe, str(ctx.data_dir.resolve()), str(ctx.cache.resolve()), os.getcwd(), dict(ctx.data_hashes),
               dict(sw.keys), sw.tok_key, f"{host_tag()}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def drive(sw: Sweep, job: Job, ex: ExecutorSpec) -> None:
    """A pool of actors that follows the cluster's cell slots (`ray_pool.Dispatch`): each prepares a model or
    runs a cell at a time, as `ray_pool.next_work` hands them out; results are collected as they end."""
    import ray

    d = Dispatch(sw, job, ex, CellActor)
    try:
        while d.pending:
            ready, _ = ray.wait(list(d.pending), num_returns=1, timeout=CHECK_S)
            if not ready:  # nothing ended: a node may have joined or gone
                d.resize()
                continue
            what, item, actor = d.pending.pop(ready[0])
            d.done(what, item, actor, *collect(sw, what, item, ready[0]))
    finally:
        d.stop()


def collect(sw: Sweep, what: str, item: Any, ref: Any) -> tuple[str | None, bool]:
    """One finished call: a model's curve saved, or a cell's row appended (a row that is not the cell's is a
    recorded failure): (None, False); else (why it failed, whether it was lost with its worker rather than
    raised by it)."""
    import ray

    try:
        out = ray.get(ref)
    except ray.exceptions.RayError as exc:
        if isinstance(exc, ray.exceptions.LocalRayletDiedError) or head_gone():  # `ray stop`: one line, not a
            raise cluster_gone(sw, _reason(exc)) from None  # failure per cell left
        return _reason(exc), not isinstance(exc, ray.exceptions.RayTaskError)
    if what == "model":  # (kind, training info, record)
        save_curve(sw.out, item, *out[:2])
        sw.manifest["invocations"][-1].setdefault("models", {})[item] = out[2]
        write_manifest(sw.out, sw.manifest)
    else:
        store(sw, item, out)
    return None, False


def store(sw: Sweep, cell: Cell, out: Any) -> None:
    """Append a cell task's row after checking it is a complete Row of that cell; else a failure."""
    try:
        row = Row.from_dict(out["row"])
    except (TypeError, KeyError, ValueError) as exc:
        return fail(sw, cell, f"the task returned no valid row ({exc})")
    if row.cell_id != cell_id(cell, sw.keys[cell.model], sw.ctx.recipe.dtype):
        return fail(sw, cell, f"the task returned the row of another cell ({row.model} {row.label})")
    reported = {k: Reported(v) for k, v in out["eval"].items()}  # the latest, as a local run keeps the last
    workers = sw.manifest["invocations"][-1]["executor"]["workers"]
    if new := out.get("worker") not in workers:  # on disk before its row
        workers.append(out.get("worker"))
    if changed := any(sw.evaluators.get(k) != v for k, v in reported.items()):
        sw.evaluators.update(reported)  # type: ignore[arg-type]
        _record_eval(sw)
    if new or changed:
        write_manifest(sw.out, sw.manifest)
    sw.store(row)  # this process's sw has no sink: the row is appended


def _reason(exc: Exception) -> str:
    """One line: the task's own exception when it raised one, else what Ray says (a dead worker, ...)."""
    cause = getattr(exc, "cause", None)
    err = cause if isinstance(cause, BaseException) else exc
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:300] if text else ''}"
