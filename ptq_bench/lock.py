"""The run folder's lock: one `run` writes a folder at a time.

<run>/.lock is held (flock) by that run; <run>/.lock.owner says who holds it (pid, host, start).
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ptq_bench.errors import PtqBenchError
from ptq_bench.json_text import loads

LOCK = ".lock"
LOCK_OWNER = ".lock.owner"  # JSON {pid, host, started} of the run holding LOCK


def _owner(run_dir: Path) -> dict | None:
    """`.lock.owner` read, None when missing or damaged."""
    try:
        owner = loads((Path(run_dir) / LOCK_OWNER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) else None


def lock_holder(run_dir: Path, owner: dict | None = None) -> str:
    owner = _owner(run_dir) if owner is None else owner
    try:
        return f"pid {owner['pid']} on host {owner['host']}, started {owner['started']}"
    except (KeyError, TypeError):
        return "holder unknown"


def live_holder(run_dir: Path) -> str | None:
    """The holder named by `.lock.owner` when it is a ptq-bench process still alive on this host: a run
    whose `.lock` was deleted under it (a second run would take a new lock file and write beside it).
    A stale owner file (its run was killed) names a dead pid, or one reused by another program."""
    owner = _owner(run_dir)
    try:
        pid, host = int(owner["pid"]), owner["host"]
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if host != socket.gethostname() or pid == os.getpid() or b"ptq" not in cmdline.replace(b"-", b"_"):
        return None
    return lock_holder(run_dir, owner)


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold the run folder's exclusive lock; a second holder is a PtqBenchError naming the first.

    An flock: the kernel drops it when the holder dies, even by kill -9 (a stale .lock.owner is harmless)."""
    from filelock import FileLock, Timeout

    from ptq_bench.paths import refuse_links

    run_dir = Path(run_dir)
    refuse_links(run_dir)  # before the lock and its owner file are written
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(run_dir / LOCK), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise PtqBenchError(f"{run_dir} is in use by another ptq-bench run ({lock_holder(run_dir)}); "
                            "wait for it to finish or set a different output_dir") from None
    live = live_holder(run_dir)
    if live is not None:
        lock.release()
        raise PtqBenchError(f"{run_dir} is in use by another ptq-bench run ({live}), whose {LOCK} was deleted: "
                            f"ptq-bench never removes it; wait for that run or set a different output_dir")
    owner = run_dir / LOCK_OWNER
    try:
        owner.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                     "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}), encoding="utf-8")
        yield
    finally:
        owner.unlink(missing_ok=True)
        lock.release()
