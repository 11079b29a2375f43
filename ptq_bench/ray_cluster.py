"""Joining a Ray cluster for `ptq-bench run --executor ray` (executors.py runs the sweep on it): `session`
around the run, `connect` (a wrong or silent address refused at once, in one line; token auth when a token is at
hand), a task no node can hold refused before anything is written, and how many cells the cluster runs at once.
Ray is imported here only, in functions."""

from __future__ import annotations

import os
import signal
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from ptq_bench.errors import PtqBenchError, first_line
from ptq_bench.recipe import ExecutorSpec


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


HEAD_CHECK_S = 5.0  # a head that accepts no TCP connection in this long is taken as gone


def head_gone() -> bool:
    """Whether the cluster's head (its GCS) no longer accepts a connection. An actor's call on a cluster that
    was stopped (`ray stop --force`, the head lost) fails as ActorUnavailableError or ActorDiedError, not as
    LocalRayletDiedError: it was logged as a failed cell, and 60 s later Ray's core worker ended the driver
    itself (exit 1, no message, its invocation left open). Asked after a call failed, and before the pool asks the
    cluster its size (which blocks on a stopped head the same way)."""
    import ray

    if not ray.is_initialized():  # get_runtime_context() would start a local instance
        return False
    try:
        where = endpoint(ray.get_runtime_context().gcs_address or "")
    except Exception:  # noqa: BLE001 - a connection that does not tell its head's address: not known gone
        return False
    if where is None:
        return False
    try:
        socket.create_connection(where, timeout=HEAD_CHECK_S).close()
    except OSError:
        return True
    return False


def describe(res: dict[str, float]) -> str:
    return f"{res.get('CPU', 0):g} CPUs, {res.get('GPU', 0):g} GPUs"


def cell_slots(ex: ExecutorSpec) -> int:
    """How many cells the cluster runs at once now: its CPUs (and GPUs) over a cell's share; at least 1."""
    import ray

    res = ray.cluster_resources()
    fits = [res.get("CPU", 0) / ex.cpus_per_cell] + ([res.get("GPU", 0) / ex.gpus_per_cell] if ex.gpus_per_cell else [])
    return max(1, int(min(fits) + 1e-9))
