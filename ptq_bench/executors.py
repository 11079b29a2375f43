"""The Ray executor: model preparation and cells run as Ray tasks; this process alone writes the run folder.

`ptq-bench run recipe.yaml --executor ray [--address ADDR]`, or the recipe's `executor:` section. The
driver (the `ptq-bench run` process) does what a local run does around the cells, in `sweep.run`:
`prepare` (data hashes, run-folder lock, manifest, tokenizer, which cells are left) and `close_run`. It
is the only writer of the store (results.jsonl, manifest.json, curves/). Ray tasks compute:

- a *model task* per model with cells left trains it into the shared cache (or loads a `source:`,
  converting a GGUF once) and returns (kind, training info);
- a *cell task* per cell takes its model task's result as an argument, so Ray starts it once that
  model is ready. It runs `sweep.run_model` for that one cell on a worker-side `Sweep` whose `sink`
  keeps the Row instead of appending it and whose `out` is a private scratch folder (a task is never
  told the run folder; the scratch lies in the shared cache under the run's token, and the driver
  removes it when the run ends), and returns the Row as a dict, with the evaluator's provenance.

The driver checks each returned row (a complete `Row` of the cell it asked for) and appends it as it
arrives, so resume, the lock and the manifest behave as locally. A task whose worker dies (kill, OOM,
lost node) is re-run by Ray up to `executor.max_retries` times; a task that raises, or runs out of
retries, is logged and listed in the manifest's invocation (`failed`), its row is absent, and the run
exits non-zero once the other cells are done. Nothing a task computed reaches the store but through the driver, whole.

The cache folder must be one folder every worker sees at the same path (on a cluster: a shared filesystem with
file locks); a worker not seeing the driver's marker in it refuses. Ray is imported here only, in functions.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import tempfile
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ptq_bench.cache import host_tag, remove_stale
from ptq_bench.cells import refuse_loaded
from ptq_bench.console import log, quiet_lm_eval
from ptq_bench.curves import save_curve
from ptq_bench.errors import PtqBenchError, first_line
from ptq_bench.prepare import Context, get_tokenizer, pick_device
from ptq_bench.recipe import Cell, ExecutorSpec, Recipe
from ptq_bench.results import Row, write_manifest
from ptq_bench.sweep import Sweep, _record_eval, base_model, cell_id, run_model

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


def prepare_model(job: Job, name: str, cells: list[Cell]) -> tuple[str, dict]:
    """Model task: model `name` trained into (or found in) the shared cache; (kind, training info). A PTQ
    cell the loaded model cannot take (`cells.refuse_loaded`) fails it, and with it every cell of the model."""
    base = base_model(worker_sweep(job), name)
    refuse_loaded(name, base.model.config, cells)
    return base.kind, base.info


def run_cell(job: Job, cell: Cell, model_ready: Any) -> dict[str, Any]:
    """Cell task (`model_ready`: its model task's result, so Ray starts it after that task): quantize and
    evaluate one cell through `sweep.run_model`; {"row": Row as a dict, "eval": {tok_key: provenance},
    "worker": host, device and torch threads (CPU float results depend on the thread count)}."""
    sw = worker_sweep(job)
    rows: list[Row] = []
    sw.todo, sw.sink = [cell], rows.append
    try:
        run_model(sw, cell.model)
    finally:
        sw.todo, sw.sink = [], None
    if len(rows) != 1:
        raise PtqBenchError(f"{cell.model} {cell.label}: run_model gave {len(rows)} rows, expected 1")
    _maybe_crash()
    import torch

    worker = f"{socket.gethostname()} {sw.ctx.device} torch_threads={torch.get_num_threads()}"  # results depend on it
    return {"row": rows[0].to_dict(), "eval": {k: ev.provenance() for k, ev in sw.evaluators.items()}, "worker": worker}


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
    """Run `sw.todo` as Ray tasks; append each returned row (this process is the store's only writer)."""
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
        log(f"ray: {len(sw.todo)} cells on {_describe(ray.cluster_resources())}, {ex.cpus_per_cell:g} CPU / "
            f"{ex.gpus_per_cell:g} GPU per task, cache {job.cache}")
        drive(sw, job, ex)
    finally:
        job.marker.unlink(missing_ok=True)
        shutil.rmtree(job.scratch, ignore_errors=True)
        if started:
            ray.shutdown()


@contextmanager
def session(ex: ExecutorSpec) -> Iterator[None]:
    """Around `sweep.run` in the CLI: on Ray, connect first, so a wrong address is refused before anything
    is written; shut down what this started. Nothing for the local executor."""
    started = connect(ex.address) if ex.kind == "ray" else False
    try:
        if ex.kind == "ray":
            refuse_infeasible(ex)
        yield
    finally:
        if started:
            import ray

            ray.shutdown()


def connect(address: str | None) -> bool:
    """Join the Ray cluster at `address` (None: as `ray.init()` finds one: $RAY_ADDRESS, a cluster started on
    this machine by `ray start`, else a new local instance); a Ray this process already initialized
    (tests, notebooks) is used as it is. True when this call initialized Ray."""
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")  # Ray's dedup dropped most cells' lines (read at its import)
    import ray

    if ray.is_initialized():
        return False
    refuse_unreachable(address or os.environ.get("RAY_ADDRESS"))
    token_auth_if_token()
    main_thread = threading.current_thread() is threading.main_thread()
    before = signal.getsignal(signal.SIGTERM) if main_thread else None
    try:
        ray.init(address=address, log_to_driver=True)
    except (ConnectionError, ValueError, RuntimeError, ray.exceptions.RayError) as exc:
        raise PtqBenchError(f"executor.address: cannot connect to Ray at {address or '$RAY_ADDRESS'} "
                            f"({type(exc).__name__}: {first_line(exc)[:200]})") from None
    finally:  # ray.init puts sys.exit(15) on SIGTERM, which left a SIGTERMed run's invocation open, unrecorded
        if main_thread and before is not None:
            signal.signal(signal.SIGTERM, before)  # the CLI's: stopped as Ctrl-C stops it, recorded
    return True


def token_auth_if_token() -> None:
    """Token auth when a token is at hand and $RAY_AUTH_MODE is unset, as `ray.init` does only for a cluster it
    finds itself: given an address it sent none to a `ray start` head (token auth by default), retrying 20 s."""
    with suppress(ImportError):  # Ray 2.60's private module: a Ray without it connects as it did before
        from ray._private.authentication import authentication_token_setup as auth

        auth.maybe_enable_token_auth_if_token_available(warn_if_disabled=False)  # a head without auth takes one


CONNECT_TIMEOUT_S = 10.0  # a Ray head that does not accept a TCP connection in this long is taken as absent


def endpoint(address: str) -> tuple[str, int] | None:
    """(host, port) that Ray would dial for `address` ("HOST:PORT" or "ray://HOST:PORT"); None for the
    addresses Ray resolves itself ("auto", "local") and for any it would refuse on its own."""
    host, sep, port = address.split("://", 1)[-1].rstrip("/").rpartition(":")
    return (host.strip("[]"), int(port)) if sep and host and port.isdigit() else None


# What a gRPC server (Ray's GCS, and the Ray Client server behind ray://) answers first: HTTP/2's
# connection preface and an empty SETTINGS frame from us, a SETTINGS frame (type 4) from it.
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])


def refuse_unreachable(address: str | None) -> None:
    """`ray.init` retries an address for minutes (without end, where something other than Ray answers:
    the dashboard's port 8265, a web server) before it gives up. One TCP connection, with a timeout, first;
    then the opening of an HTTP/2 exchange, which Ray's gRPC servers answer with a SETTINGS frame."""
    where = endpoint(address) if address else None
    if where is None:
        return
    try:
        with socket.create_connection(where, timeout=CONNECT_TIMEOUT_S) as conn:
            if _ray_tls():  # the head speaks TLS first: the TCP connection is all this checks
                return
            conn.sendall(_H2_PREFACE)
            reply = _read_upto(conn, 9)
            if reply and reply[3:4] != b"\x04":  # enough of the rest to say what answered
                reply += _read_upto(conn, 31)
    except OSError as exc:
        raise PtqBenchError(f"executor.address: nothing answers at {where[0]}:{where[1]} "
                            f"({type(exc).__name__}: {exc.strerror or exc}); start the head with `ray start --head` "
                            "or give its address") from None
    if len(reply) < 9 or reply[3] != 4:
        said = f"it replied {reply[:40]!r}" if reply else f"it sent nothing in {CONNECT_TIMEOUT_S:g} s"
        raise PtqBenchError(f"executor.address: {where[0]}:{where[1]} answers, but not as Ray's head ({said}); "
                            "give the port `ray start --head` printed (6379 unless set), not the dashboard's (8265)")


def _ray_tls() -> bool:
    """Whether Ray is set to speak TLS (`RAY_USE_TLS`, read as Ray reads it)."""
    return os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true")


def _read_upto(conn: socket.socket, n: int) -> bytes:
    """Up to `n` bytes, fewer if the peer closes or stays silent past the socket's timeout."""
    got = b""
    try:
        while len(got) < n and (chunk := conn.recv(n - len(got))):
            got += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return got


def refuse_infeasible(ex: ExecutorSpec) -> None:
    """A task no node of the cluster can hold would wait forever (Ray only logs that it cannot place it):
    refused before anything is written. An autoscaling cluster must have such a node up first."""
    import ray

    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    if not any(r.get("CPU", 0) >= ex.cpus_per_cell and r.get("GPU", 0) >= ex.gpus_per_cell for r in nodes):
        most = max(nodes, key=lambda r: (r.get("GPU", 0), r.get("CPU", 0)), default={})
        raise PtqBenchError(f"executor.cpus_per_cell/gpus_per_cell: no node of the Ray cluster has {ex.cpus_per_cell:g} "
                            f"CPU and {ex.gpus_per_cell:g} GPU for a task (the largest: {most.get('CPU', 0):g} CPU, "
                            f"{most.get('GPU', 0):g} GPU); lower them")


def make_job(sw: Sweep) -> Job:
    ctx = sw.ctx
    return Job(ctx.recipe, str(ctx.data_dir.resolve()), str(ctx.cache.resolve()), os.getcwd(), dict(ctx.data_hashes),
               dict(sw.keys), sw.tok_key, f"{host_tag()}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _remote(fn: Any, ex: ExecutorSpec) -> Any:
    import ray

    return ray.remote(fn).options(num_cpus=ex.cpus_per_cell, num_gpus=ex.gpus_per_cell, max_retries=ex.max_retries)


def drive(sw: Sweep, job: Job, ex: ExecutorSpec) -> None:
    """Submit one model task per model with cells left and its cell tasks; collect results as they end."""
    import ray

    model_task, cell_task = _remote(prepare_model, ex), _remote(run_cell, ex)
    pending: dict[Any, tuple[str, Any]] = {}  # ObjectRef -> ("model", name) | ("cell", Cell)
    for name in dict.fromkeys(c.model for c in sw.todo):
        mine = [c for c in sw.todo if c.model == name]
        pending[ready := model_task.remote(job, name, mine)] = ("model", name)
        for cell in mine:
            pending[cell_task.remote(job, cell, ready)] = ("cell", cell)
    try:
        while pending:
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            what, item = pending.pop(ref)
            collect(sw, what, item, ref)
    finally:
        for ref in pending:  # interrupted: stop what is still queued or running (KeyboardInterrupt in a
            with suppress(Exception):  # running task; force=True crashed this process in Ray's core worker)
                ray.cancel(ref, force=False)  # never mask the interruption itself


def collect(sw: Sweep, what: str, item: Any, ref: Any) -> None:
    """One finished task: a model's curve, a cell's row appended, or a failure recorded."""
    import ray

    try:
        out = ray.get(ref)
    except ray.exceptions.LocalRayletDiedError as exc:  # `ray stop`: one line, not one failure per cell left
        raise PtqBenchError(f"ray: the cluster went away ({_reason(exc)}); {sw.ran} cell(s) stored by this run; "
                            "start it again and re-run the same command to resume") from None
    except ray.exceptions.RayError as exc:
        if what == "model":
            log(f"ray: model '{item}' failed: {_reason(exc)} (its cells fail with it)")
        else:
            fail(sw, item, _reason(exc))
        return
    if what == "model":  # (kind, training info)
        return save_curve(sw.out, item, *out)
    store(sw, item, out)


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


def fail(sw: Sweep, cell: Cell, reason: str) -> None:
    text = f"{cell.model} {cell.label}: {reason}"
    log(f"ray: FAILED {text}")
    sw.failed.append(text)
    sw.manifest["invocations"][-1]["failed"] = list(sw.failed)


def _reason(exc: Exception) -> str:
    """One line: the task's own exception when it raised one, else what Ray says (a dead worker, ...)."""
    cause = getattr(exc, "cause", None)
    err = cause if isinstance(cause, BaseException) else exc
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:300] if text else ''}"


def _describe(res: dict[str, float]) -> str:
    return f"{res.get('CPU', 0):g} CPUs, {res.get('GPU', 0):g} GPUs"
