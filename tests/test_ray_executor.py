"""The Ray executor (ptq_bench/executors.py) on a local Ray instance with 2 CPUs.

The smoke recipe run with `--executor ray` writes the rows of the shared local reference run (same cell
ids, identical metrics and every other field but timings), each line appended by the driver; a worker
killed after computing its row is retried and the rows stay complete, without duplicates; a task out of
retries is a recorded failure (exit 2, no row) that a re-run completes. The executor section changes no
recipe hash, is checked like every other section, and `validate` does not import Ray.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from smoke_ref import ROOT, Ref, reference, write_recipe

import ptq_bench.executors as executors
import ptq_bench.ray_cluster as ray_cluster
import ptq_bench.sweep as sweep
from ptq_bench.cli import main
from ptq_bench.results import RESULTS, load_rows

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]  # one local Ray instance at a time
TIMING = {"finished", "eval_seconds", "sha256"}  # row fields that differ between any two runs (the digest covers both)


@pytest.fixture(scope="module")
def ref(tmp_path_factory) -> Ref:
    return reference(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def crash_dir(tmp_path_factory, ref) -> Path:
    """A local Ray instance (2 CPUs) for this module; its workers see $PTQ_BENCH_RAY_CRASH_ONCE = the folder
    returned, and use the thread count of the local reference run (identical float results). Always a new
    instance (`address="local"`): with a cluster already up on the machine, `ray.init(num_cpus=2)` tried to join it."""
    import ray

    folder = tmp_path_factory.mktemp("crash")
    threads = {r["threads"] for r in ref.rows}  # what the local reference run used (other tests may
    assert len(threads) == 1, threads          # have changed this process's torch thread count)
    env = {executors.CRASH_ENV: str(folder), "OMP_NUM_THREADS": str(threads.pop()),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=100 << 20, runtime_env={"env_vars": env})
    yield folder
    ray.shutdown()


def workspace(ref: Ref, tmp: Path, models: bool, **changes) -> tuple[Path, Path]:
    """(recipe, output folder): the smoke recipe on a copy of the reference cache; without `models`, the
    trained models are left out, so the Ray workers train them again."""
    cache, out = tmp / "cache", tmp / "out"
    skip = ["*.lock"] + ([] if models else ["models"])
    shutil.copytree(ref.cache, cache, ignore=shutil.ignore_patterns(*skip))
    raw = {**ref.raw, "output_dir": str(out), "cache_dir": str(cache), **changes}
    return write_recipe(tmp / "recipe.yaml", raw), out


def comparable(row: dict) -> dict:
    quant = {k: v for k, v in row["quant"].items() if k != "seconds"}
    return {**{k: v for k, v in row.items() if k not in TIMING}, "quant": quant}


def assert_same_rows(out: Path, ref: Ref) -> None:
    rows = [r.to_dict() for r in load_rows(out, strict=True)]
    ids = [r["cell_id"] for r in rows]
    assert len(ids) == len(set(ids)), "a cell was stored twice"
    want = {r["cell_id"]: comparable(r) for r in ref.rows}
    assert {i: comparable(r) for i, r in zip(ids, rows)} == want


def scratch_dirs() -> set[Path]:
    """Folders in this machine's temp folder that hold a manifest: what a worker's scratch `out` looks like."""
    return {p for p in Path(tempfile.gettempdir()).iterdir() if (p / "manifest.json").is_file()}


def test_ray_run_writes_the_local_rows_through_the_driver(ref, crash_dir, tmp_path, monkeypatch):
    recipe, out = workspace(ref, tmp_path, models=False)
    before = scratch_dirs()
    appended: list[str] = []
    real = sweep.append_row  # Sweep.store's, which the driver's executors.store calls

    def record(run_dir, row):  # the driver's appends (worker processes do not see this patch)
        appended.append(row.sealed().to_json())  # as append_row stores it
        real(run_dir, row)

    monkeypatch.setattr(sweep, "append_row", record)
    assert main(["run", str(recipe), "--executor", "ray"]) == 0
    assert_same_rows(out, ref)
    lines = (out / RESULTS).read_text(encoding="utf-8").splitlines()
    assert lines == appended  # every line of the store was written by the driver, whole
    assert len([p for p in (tmp_path / "cache" / "models").iterdir() if p.is_dir()]) == 3  # trained by workers
    for name in ("fp16", "bitnet_b158", "bitnet_b1"):  # identical training: identical loss curves
        assert (out / "curves" / f"{name}.json").read_text() == (ref.out / "curves" / f"{name}.json").read_text()
    manifest, local = (json.loads((d / "manifest.json").read_text()) for d in (out, ref.out))
    assert manifest["recipe_hash"] == local["recipe_hash"]
    assert manifest["invocations"][-1]["cells_run"] == len(ref.rows) and "failed" not in manifest["invocations"][-1]
    executor = manifest["invocations"][-1]["executor"]
    assert executor["kind"] == "ray" and executor["workers"] and all("torch_threads=" in w for w in executor["workers"])
    # each model's device and dtype, recorded by the driver from its preparation (the actor's copy had them alone)
    # (the local folder's first invocation: later ones, re-runs by other tests, ran no model)
    assert manifest["invocations"][-1]["models"] == local["invocations"][0]["models"]

    assert manifest["eval"]["by_tokenizer"] == local["eval"]["by_tokenizer"]
    assert (out / "table.md").is_file()
    # the workers' scratch folders were in the shared cache and the driver removed them (Ray kills its
    # workers at shutdown, so their exit hooks never run: scratch in the temp folder stayed there)
    assert scratch_dirs() == before
    assert not list((tmp_path / "cache").glob(".ray-*")), list((tmp_path / "cache").glob(".ray-*"))


def test_ray_retries_a_killed_worker(ref, crash_dir, tmp_path):
    """...and a driver that was killed (SIGKILL: no clean-up) left its scratch and marker in the cache: the
    next run on this host removes them; another host's are left alone (their driver may be running)."""
    from ptq_bench.cache import host_tag

    recipe, out = workspace(ref, tmp_path, models=True)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = f"{host_tag()}-{gone.stdout.strip()}-0badc0de"
    stale = [tmp_path / "cache" / f"{executors.RAY_SCRATCH}{dead}", tmp_path / "cache" / f"{executors.RAY_DRIVER}{dead}"]
    other = tmp_path / "cache" / f"{executors.RAY_SCRATCH}elsewhere-1-0badc0de"
    for folder in (stale[0], other):
        (folder / "w").mkdir(parents=True)
    stale[1].write_text("host")
    (crash_dir / "crash").touch()
    try:
        assert main(["run", str(recipe), "--executor", "ray"]) == 0
        assert (crash_dir / "crashed").is_file()  # a worker did kill itself, after computing its row
    finally:
        for name in ("crash", "crashed"):
            (crash_dir / name).unlink(missing_ok=True)
    assert_same_rows(out, ref)
    assert not any(p.exists() for p in stale) and other.is_dir()


def test_ray_failure_is_recorded_then_resumed(ref, crash_dir, tmp_path, capsys):
    recipe, out = workspace(ref, tmp_path, models=True, executor={"kind": "ray", "max_retries": 0})
    (crash_dir / "crash").touch()
    try:
        assert main(["run", str(recipe)]) == 2
    finally:
        for name in ("crash", "crashed"):
            (crash_dir / name).unlink(missing_ok=True)
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("ptq-bench: error: 1 cell(s) failed") and "re-run" in err, err
    assert len(load_rows(out, strict=True)) == len(ref.rows) - 1  # no row for the lost cell, nothing partial
    (failed,) = json.loads((out / "manifest.json").read_text())["invocations"][-1]["failed"]
    assert "Error" in failed, failed
    assert main(["run", str(recipe)]) == 0  # resume: only the missing cell runs
    assert_same_rows(out, ref)
    runs = json.loads((out / "manifest.json").read_text())["invocations"]
    assert [i["cells_run"] for i in runs] == [len(ref.rows) - 1, 1]


def test_a_cell_lost_with_its_node_is_handed_out_again(ref, tmp_path):
    """A node lost mid-run (a cluster of a head and two worker nodes in a child process, the node of the actor
    handed the first cell removed): Ray gave up on the call (ActorUnavailableError once its own retries were spent,
    and the restarted actor had no CPU to land on), so the cell was a recorded failure. The pool now hands a lost
    call out again to another actor, and the run stores every row of a local run. (With the head's CPU as a cell
    slot, the head's actor could take every cell while the worker node's actor was still starting: nothing lost.)"""
    recipe, out = workspace(ref, tmp_path, models=True)
    threads = {r["threads"] for r in ref.rows}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "ray_node_child.py"), str(recipe), str(threads.pop())],
                          capture_output=True, text=True, env=env, timeout=300)
    said = done.stdout + done.stderr
    assert done.returncode == 0, said[-3000:]
    assert "CHILD: removing the worker node as" in said and "handed out again (1 of 2)" in said, said[-3000:]
    assert "FAILED" not in said
    assert_same_rows(out, ref)


def test_an_actor_opens_its_model_once_and_again_after_a_failed_cell(ref, tmp_path, monkeypatch):
    """An actor's calls, in this process: the model it prepared stays open for its cells (each Ray cell task
    loaded it again: SmolLM2's 6 cells took 26 s on Ray against 16 s locally), its rows are the local run's, and a
    cell that raises drops the model (it may be half quantized), so the next cell loads it again."""
    from ptq_bench.lock import run_lock
    from ptq_bench.recipe import load_recipe

    recipe = load_recipe(workspace(ref, tmp_path, models=True)[0])
    with run_lock(recipe.out_dir):
        sw = sweep.prepare(recipe, "", 0.0)
    job = executors.make_job(sw)
    job.scratch.mkdir(parents=True)
    job.marker.write_text("host")
    opened: list[str] = []
    real_open, real_run = executors.open_model, executors.run_opened
    monkeypatch.setattr(executors, "open_model", lambda sw_, name, mine: opened.append(name) or real_open(sw_, name, mine))
    cells = [c for c in sw.todo if c.model == "fp16"][:3]
    try:
        assert executors.prepare_model(job, "fp16", cells)[0] == "fp16"  # (kind, info); the model stays open
        outs = [executors.run_cell(job, cell) for cell in cells[:2]]
        assert opened == ["fp16"]
        monkeypatch.setattr(executors, "run_opened", lambda *_a: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            executors.run_cell(job, cells[2])
        monkeypatch.setattr(executors, "run_opened", real_run)
        outs.append(executors.run_cell(job, cells[2]))
        assert opened == ["fp16", "fp16"]
    finally:
        executors._OPEN.clear()
        executors._WORKER.clear()
    want = {r["cell_id"]: comparable(r) for r in ref.rows}
    assert [comparable(o["row"]) for o in outs] == [want[o["row"]["cell_id"]] for o in outs]


def test_an_actor_keeps_the_evaluator_of_the_source_model_it_holds_only(tmp_path, data_dir):
    """A `source:` model has an Evaluator of its own (its tokenizer, lm-eval requests and KLD references), which a
    local run drops after the model's cells; an actor kept the evaluator of every source model it had opened (its
    RSS grew 39 MB per tiny model, with 4 HellaSwag documents)."""
    from tiny_families import save_tiny
    from transformers import AutoTokenizer

    from ptq_bench.data import train_documents
    from ptq_bench.lock import run_lock
    from ptq_bench.recipe import load_recipe
    from ptq_bench.tokenizer import save_tokenizer, train_tokenizer

    save_tokenizer(train_tokenizer(train_documents(data_dir), 384, 300_000), tok := tmp_path / "tok")
    models = {}
    for seed in (0, 1):
        src = save_tiny("mistral", tmp_path / f"m{seed}", vocab_size=len(AutoTokenizer.from_pretrained(str(tok))), seed=seed)
        for f in tok.iterdir():
            shutil.copy(f, src / f.name)
        models[f"m{seed}"] = {"source": str(src)}
    raw = {"name": "src", "output_dir": str(tmp_path / "out"), "cache_dir": str(tmp_path / "cache"), "models": models,
           "quantize": [], "eval": {"perplexity": {"sets": ["wikitext2"], "seq_len": 32, "max_windows": 2},
                                    "tasks": ["hellaswag"], "limit": 2, "batch_size": 8}}
    recipe = load_recipe(write_recipe(tmp_path / "r.yaml", raw))
    with run_lock(recipe.out_dir):
        sw = sweep.prepare(recipe, "", 0.0)
    job = executors.make_job(sw)
    job.scratch.mkdir(parents=True)
    job.marker.write_text("host")
    cell = {c.model: c for c in sw.todo}
    try:
        held = []
        for name in ("m0", "m1"):
            executors.prepare_model(job, name, [cell[name]])
            held.append(set(executors._WORKER[job.token].evaluators))
        executors.run_cell(job, cell["m0"])  # m1 closed, m0 opened again
        held.append(set(executors._WORKER[job.token].evaluators))
    finally:
        executors._OPEN.clear()
        executors._WORKER.clear()
    assert held == [{sw.keys["m0"]}, {sw.keys["m1"]}, {sw.keys["m0"]}]


def test_the_driver_stores_only_a_complete_row_of_the_cell_it_asked_for(ref, tmp_path):
    """A call's returned row is checked before it is appended: the row of another cell (a worker's mix-up) or
    an incomplete one is a recorded failure, with nothing stored, and the cell's own row is stored (no Ray)."""
    from ptq_bench.lock import run_lock
    from ptq_bench.recipe import load_recipe

    recipe = load_recipe(workspace(ref, tmp_path, models=True)[0])
    with run_lock(recipe.out_dir):
        sw = sweep.prepare(recipe, "", 0.0)
    sw.manifest["invocations"][-1]["executor"] = {"workers": []}
    sw.bar = SimpleNamespace(update=lambda _n: None)
    rows = {r["cell_id"]: r for r in ref.rows}
    a, b = sw.todo[:2]
    mine, other = (rows[sweep.cell_id(c, sw.keys[c.model], recipe.dtype)] for c in (a, b))
    executors.store(sw, a, {"row": other, "eval": {}, "worker": "w"})
    executors.store(sw, a, {"row": {k: v for k, v in mine.items() if k != "metrics"}, "eval": {}, "worker": "w"})
    assert not (recipe.out_dir / RESULTS).exists() and sw.ran == 0
    assert "the row of another cell" in sw.failed[0] and "no valid row (missing key 'metrics')" in sw.failed[1]
    executors.store(sw, a, {"row": mine, "eval": {}, "worker": "w"})
    assert [r.cell_id for r in load_rows(recipe.out_dir, strict=True)] == [mine["cell_id"]] and sw.ran == 1


# ----------------------------------------------------------------------------------------------
# the recipe section and the command line (no Ray instance)


def _recipe(tmp_path: Path, **changes) -> Path:
    raw = yaml.safe_load((ROOT / "recipes" / "smoke.yaml").read_text(encoding="utf-8"))
    raw.update(output_dir=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"), **changes)
    return write_recipe(tmp_path / f"r{len(list(tmp_path.glob('r*.yaml')))}.yaml", raw)


def test_executor_section_is_typed_and_not_in_the_hash(tmp_path, capsys):
    from ptq_bench.recipe import load_recipe

    plain = load_recipe(_recipe(tmp_path))
    ray_r = load_recipe(_recipe(tmp_path, executor={"kind": "ray", "address": "10.0.0.1:6379", "cpus_per_cell": 0.5,
                                                    "gpus_per_cell": 1, "max_retries": 5}))
    assert plain.executor.kind == "local" and ray_r.executor.gpus_per_cell == 1.0
    assert plain.digest() == ray_r.digest()  # where cells run changes no result
    bad = [({"kind": "spark"}, "executor.kind"), ({"cpus_per_cell": 0}, "executor.cpus_per_cell"),
           ({"gpus_per_cell": -1}, "executor.gpus_per_cell"), ({"max_retries": 1.5}, "executor.max_retries"),
           ({"workers": 3}, "executor.workers")]
    for section, key in bad:
        assert main(["validate", str(_recipe(tmp_path, executor=section))]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and key in err, err
    assert main(["validate", str(_recipe(tmp_path, device="cuda", executor={"kind": "ray"}))]) == 2
    assert "executor.gpus_per_cell" in capsys.readouterr().err


def test_run_flags_are_checked_before_anything_is_written(tmp_path, capsys):
    path = _recipe(tmp_path)
    for command, argv, key in (("run", ["--executor", "spark"], "executor.kind"),
                               ("run", ["--address", "h:6379"], "--address"),
                               ("estimate", ["--executor", "spark"], "executor.kind")):
        assert main([command, str(path), *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and key in err, err
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


def test_validate_does_not_import_ray(tmp_path):
    probe = ("import sys; from ptq_bench.cli import main; rc = main(['validate', sys.argv[1]]); "
             "print('RAY', 'ray' in sys.modules); sys.exit(rc)")
    path = _recipe(tmp_path, executor={"kind": "ray"})
    out = subprocess.run([sys.executable, "-c", probe, str(path)], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "RAY False" in out.stdout


def test_a_worker_without_the_drivers_cache_refuses(tmp_path):
    from ptq_bench.errors import PtqBenchError
    from ptq_bench.recipe import load_recipe

    job = executors.Job(load_recipe(_recipe(tmp_path)), str(tmp_path), str(tmp_path / "elsewhere"), str(tmp_path),
                        {}, {}, "", "t0")
    with pytest.raises(PtqBenchError, match="not the driver's cache folder"):
        executors.worker_sweep(job)


def test_a_task_no_node_can_hold_is_refused_before_anything_is_written(crash_dir, tmp_path, capsys):
    """64 CPUs per cell on a 2-CPU instance: the run waited forever (Ray only logs that it cannot place it)."""
    path = _recipe(tmp_path, executor={"kind": "ray", "cpus_per_cell": 64})
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "no node of the Ray cluster has 64 CPU and 0 GPU for a task (the largest: 2 CPU, 0 GPU)" in err, err
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


def test_endpoint_reads_the_addresses_ray_dials():
    assert ray_cluster.endpoint("10.0.0.1:6379") == ("10.0.0.1", 6379)
    assert ray_cluster.endpoint("ray://head.example:10001") == ("head.example", 10001)
    assert ray_cluster.endpoint("[::1]:6379") == ("::1", 6379)
    assert ray_cluster.endpoint("auto") is None and ray_cluster.endpoint("local") is None
    assert ray_cluster.endpoint("head:port") is None  # left to Ray, which refuses it at once


def test_an_address_where_nothing_listens_is_refused_at_once(tmp_path):
    """`ray.init` retried such an address for minutes; now one TCP connection with a timeout decides."""
    import socket

    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = _recipe(tmp_path)
    out = subprocess.run([sys.executable, "-m", "ptq_bench.cli", "run", str(path), "--executor", "ray",
                          "--address", f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=90,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    err = out.stderr.strip().splitlines()
    assert out.returncode == 2 and f"executor.address: nothing answers at 127.0.0.1:{port}" in err[-1], out.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


class _Listener:
    """A TCP server on a free local port that answers every connection with `reply` (None: stays silent)."""

    def __init__(self, reply: bytes | None) -> None:
        import socket
        import threading

        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port, self.reply, self.held = self.sock.getsockname()[1], reply, []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)
            if self.reply is not None:
                conn.recv(64)
                conn.sendall(self.reply)

    def __enter__(self) -> _Listener:
        return self

    def __exit__(self, *exc) -> None:
        for c in self.held:
            c.close()
        self.sock.close()


def test_an_address_where_something_else_answers_is_refused_at_once(tmp_path):
    """A web server (the dashboard's port 8265 given for the head's): `ray.init` retried it without end
    (still retrying after 120 s here); the HTTP/2 opening Ray's gRPC servers answer tells them apart."""
    with _Listener(b"HTTP/1.1 400 Bad Request\r\n\r\n") as web:
        path = _recipe(tmp_path)
        out = subprocess.run([sys.executable, "-m", "ptq_bench.cli", "run", str(path), "--executor", "ray",
                              "--address", f"127.0.0.1:{web.port}"], capture_output=True, text=True, timeout=90,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
    err = out.stderr.strip().splitlines()
    assert out.returncode == 2 and f"127.0.0.1:{web.port} answers, but not as Ray's head (it replied b'HTTP/1.1 400" \
        in err[-1], out.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


def test_a_silent_listener_is_refused_and_a_ray_head_is_not(crash_dir, monkeypatch):
    import ray

    from ptq_bench.errors import PtqBenchError

    monkeypatch.setattr(ray_cluster, "CONNECT_TIMEOUT_S", 0.5)
    with _Listener(None) as silent, pytest.raises(PtqBenchError, match="it sent nothing in 0.5 s"):
        ray_cluster.refuse_unreachable(f"127.0.0.1:{silent.port}")
    ray_cluster.refuse_unreachable(ray.get_runtime_context().gcs_address)  # this module's local Ray head
    monkeypatch.setenv("RAY_USE_TLS", "1")  # a TLS head would not answer the plain HTTP/2 opening
    with _Listener(None) as silent:
        ray_cluster.refuse_unreachable(f"127.0.0.1:{silent.port}")
