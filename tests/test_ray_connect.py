"""`ray_cluster.connect` around `ray.init` (faked here: no Ray instance is started).

`ray.init` puts its own SIGTERM handler in place (`sys.exit(15)`): a SIGTERMed Ray run (timeout, Slurm,
docker) then exited 15 without closing its invocation (no `finished`, `interrupted` or `cells_run`) and
printed nothing. The CLI's handler, which stops a run as Ctrl-C does, must survive the connection.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import ray
import ray._private.utils as ray_utils

import ptq_bench.executors as executors
import ptq_bench.ray_cluster as ray_cluster


def _fake_init(**_kw) -> None:
    """What `ray.init` does to the signal handlers of the process that calls it."""
    ray_utils.set_sigterm_handler(lambda signum, _frame: sys.exit(signum))


def test_connect_keeps_the_callers_sigterm_handler(monkeypatch):
    def ours(_signum, _frame):
        raise KeyboardInterrupt

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", _fake_init)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    before = signal.signal(signal.SIGTERM, ours)
    try:
        assert ray_cluster.connect(None) is True
        assert signal.getsignal(signal.SIGTERM) is ours
    finally:
        signal.signal(signal.SIGTERM, before)


def test_an_address_with_a_token_at_hand_connects_with_it():
    """`ray start --head` turns token authentication on; `ray.init(address=...)` does not, with $RAY_AUTH_MODE
    unset, and `--address HEAD:6379` retried "InvalidAuthToken" for 20 s, then "cannot connect", although the
    head's token was in ~/.ray/auth_token (the cluster how-to's step). In a child process: token mode, once on,
    stays in the process's Ray state, and a later local `ray.init` (test_ray_executor's) failed to start its GCS."""
    code = textwrap.dedent("""
        import os, ray
        import ptq_bench.ray_cluster as ray_cluster
        seen = []
        ray.is_initialized = lambda: False
        ray.init = lambda **_kw: seen.append(os.environ.get("RAY_AUTH_MODE"))
        ray_cluster.refuse_unreachable = lambda address: None
        ray_cluster.connect("10.0.0.1:6379")
        print(seen)
    """)
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"} | {"RAY_AUTH_TOKEN": "0123456789abcdef" * 4}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "['token']"


def test_a_rows_worker_is_in_the_manifest_before_the_row(monkeypatch, tmp_path):
    """The driver wrote the manifest (on a new evaluator provenance) before adding the row's worker to
    `executor.workers`, and not at all for a new worker: a SIGKILLed driver left rows whose workers the
    manifest did not name (a SIGTERMed smoke run's first row: `"workers": []`)."""
    import copy

    on_disk: list[dict] = []
    monkeypatch.setattr(executors.Row, "from_dict", lambda d: SimpleNamespace(cell_id="id", model="m", label="l"))
    monkeypatch.setattr(executors, "cell_id", lambda *a: "id")
    monkeypatch.setattr(executors, "_record_eval", lambda sw: None)
    monkeypatch.setattr(executors, "write_manifest", lambda out, m: on_disk.append(copy.deepcopy(m)))
    manifest = {"invocations": [{"executor": {"workers": []}}]}
    sw = SimpleNamespace(out=tmp_path, keys={"m": "k"}, ctx=SimpleNamespace(recipe=SimpleNamespace(dtype="auto")),
                         evaluators={}, manifest=manifest, failed=[])
    sw.store = lambda row: sw.failed.append(on_disk[-1]["invocations"][-1]["executor"]["workers"] if on_disk else [])
    cell = SimpleNamespace(model="m", label="l")
    for worker in ("a cpu torch_threads=1", "b cpu torch_threads=1"):
        executors.store(sw, cell, {"row": {}, "eval": {"tok": {"v": 1}}, "worker": worker})
    assert sw.failed == [["a cpu torch_threads=1"], ["a cpu torch_threads=1", "b cpu torch_threads=1"]]


def test_a_cluster_gone_mid_run_is_one_error_not_a_failure_per_cell(monkeypatch):
    """`ray stop` while a driver ran: every task left raised LocalRayletDiedError, each logged as a FAILED cell
    and listed in the manifest (24 lines for 24 cells), then "24 cell(s) failed". Now the first ends the run."""

    import pytest

    from ptq_bench.errors import PtqBenchError

    def gone(_ref):
        raise ray.exceptions.LocalRayletDiedError()

    monkeypatch.setattr(ray, "get", gone)
    sw = SimpleNamespace(failed=[], ran=3, manifest={"invocations": [{}]})
    with pytest.raises(PtqBenchError, match="the cluster went away .*3 cell.* re-run the same command"):
        executors.collect(sw, "cell", SimpleNamespace(model="m", label="absmax W4A16"), object())
    assert sw.failed == [] and sw.manifest == {"invocations": [{}]}


def test_an_actor_call_on_a_stopped_cluster_is_one_error_too(monkeypatch):
    """The pool's calls on a cluster stopped mid-run (the head's raylet and GCS killed, as `ray stop --force` or a
    lost head) raised ActorUnavailableError, not LocalRayletDiedError: logged as a FAILED cell, then Ray's core
    worker ended the driver 60 s later (exit 1, no message, the invocation left open). Now a head that accepts
    no connection ends the run in one line; while it answers, the call is a lost one, which the pool hands out again (or fails, out of retries)."""
    import socket

    from ptq_bench.errors import PtqBenchError

    def unavailable(_ref):
        raise ray.exceptions.ActorUnavailableError("RpcError: failed to connect to all addresses", None)

    monkeypatch.setattr(ray, "get", unavailable)
    cell = SimpleNamespace(model="m", label="absmax W4A16")
    with socket.create_server(("127.0.0.1", 0)) as head:  # a head that answers
        gcs = SimpleNamespace(gcs_address=f"127.0.0.1:{head.getsockname()[1]}")
        monkeypatch.setattr(ray, "get_runtime_context", lambda: gcs)
        monkeypatch.setattr(ray, "is_initialized", lambda: True)  # a driver's Ray is up (this worker's may not be)
        sw = SimpleNamespace(failed=[], ran=3, manifest={"invocations": [{}]})
        reason, lost = executors.collect(sw, "cell", cell, object())
        assert "ActorUnavailableError" in reason and lost and sw.failed == []  # the pool hands it out again, or fails it
    with pytest.raises(PtqBenchError, match="the cluster went away .*ActorUnavailableError.*3 cell"):  # now closed
        executors.collect(SimpleNamespace(failed=[], ran=3, manifest={"invocations": [{}]}), "cell", cell, object())


def test_connect_turns_off_rays_log_dedup_before_importing_ray(tmp_path):
    """Ray's log deduplication (on by default) folds lines alike but for their numbers: a 42-cell sweep's
    driver showed 6 of the workers' 42 per-cell lines, the rest buffered and lost when it ended. Ray reads
    RAY_DEDUP_LOGS once, at its import, so connect sets it (unless the caller did) before importing Ray."""
    code = textwrap.dedent("""
        import contextlib, sys
        import ptq_bench.ray_cluster as ex
        assert 'ray' not in sys.modules
        with contextlib.suppress(Exception):
            ex.connect('127.0.0.1:1')  # nothing listens there: refused before ray.init
        from ray._private import ray_constants
        print('DEDUP', ray_constants.RAY_DEDUP_LOGS)
    """)
    env = {k: v for k, v in os.environ.items() if k != "RAY_DEDUP_LOGS"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert "DEDUP False" in out.stdout, out.stdout + out.stderr


def test_asking_whether_the_head_is_gone_starts_no_ray(tmp_path):
    """`ray.get_runtime_context()` starts a local Ray instance when none is up: a pytest worker's stand-in drive
    started one, and the Ray tests' own `ray.init` then failed ("called ray.init twice"). In a child process."""
    code = "import ray; from ptq_bench.ray_cluster import head_gone; print(head_gone(), ray.is_initialized())"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["False", "False"], done.stdout + done.stderr[-2000:]
