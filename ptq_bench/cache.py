"""Cached artefacts (tokenizers, token arrays, trained models), each with a checksum written last.

A file artefact `x.npy` has a sidecar `x.npy.sha256`; a folder artefact holds `checksums.json`
({relative path: sha256} of every other file in it). The checksum is written after the artefact is
complete, so an artefact without a matching checksum is incomplete or damaged (a truncated file,
garbled bytes, an edited tokenizer.json): `ensure` detects that on load and rebuilds it, saying so.
Artefacts the toolkit cannot rebuild (a user's `source:` checkpoint) are checked by `first_difference`
against digests recorded earlier.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from ptq_bench.data import file_sha256
from ptq_bench.json_text import loads

CHECKSUMS = "checksums.json"
SIDECAR = ".sha256"
MISSING = "missing"


def sidecar(path: Path) -> Path:
    return path.with_name(path.name + SIDECAR)


def folder_digests(folder: Path, digest: Callable[[Path], str] = file_sha256) -> dict[str, str]:
    """{relative posix path: sha256} of every file under `folder` but its checksums.json (`digest`: how a
    file is hashed; `data.file_digest` reuses what this process has already read)."""
    return {p.relative_to(folder).as_posix(): digest(p)
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != CHECKSUMS}


def first_difference(want: dict[str, str], have: dict[str, str]) -> str | None:
    """The first file (sorted) missing, unlisted or with another sha256; None when they agree."""
    for rel in sorted(set(want) | set(have)):
        if rel not in have:
            return f"{rel} is missing"
        if rel not in want:
            return f"{rel} is not in its checksum list"
        if want[rel] != have[rel]:
            return f"{rel} does not match its checksum"
    return None


def problem(path: Path) -> str | None:
    """Why `path` is not a complete artefact: MISSING, or a short reason; None when it is complete."""
    if path.is_dir():
        listed = path / CHECKSUMS
        if not listed.is_file():
            return f"has no {CHECKSUMS} (written last: the artefact is incomplete)"
        try:
            want = loads(listed.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            want = None
        if not isinstance(want, dict):
            return f"has a damaged {CHECKSUMS}"
        return first_difference(want, folder_digests(path))
    if path.is_file():
        side = sidecar(path)
        if not side.is_file():
            return f"has no {side.name} (written last: the artefact is incomplete)"
        if side.read_bytes().strip() != file_sha256(path).encode():  # any bytes, UTF-8 or not
            return f"does not match {side.name}"
        return None
    return MISSING


def _remove(path: Path) -> None:
    if path.is_symlink():  # a cache entry that is a link is replaced, never followed: its target is not the cache's
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def temp_sibling(path: Path) -> Path:
    """A temp file beside `path`, ending like it, of this process alone: two writers of one file (two
    `report`s of a folder) must not write, rename or remove each other's temp."""
    return path.with_name(f".tmp-{os.getpid()}-{path.name}")


def write_atomic(path: Path, text: str) -> None:
    """`text` into `path` through a sibling temp file and a rename: a reader (or a run killed mid-write)
    sees the old file or the new one, never a part."""
    tmp = temp_sibling(path)
    with removed_on_failure(tmp), naming(path):  # the rename too: a failed one left the temp file for good
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)


@contextlib.contextmanager
def naming(path: Path) -> Iterator[None]:
    """An OSError of a write through a file object (a full disk, `ulimit -f`) carries no path: give it `path`, so
    the CLI's one line says which file failed."""
    try:
        yield
    except OSError as exc:
        if exc.filename is not None or exc.errno is None:
            raise
        raise type(exc)(exc.errno, exc.strerror, str(path)) from exc


@contextlib.contextmanager
def removed_on_failure(tmp: Path) -> Iterator[None]:
    """Remove the half-written temp file or folder `tmp` when the block does not finish (an error, a Ctrl-C)."""
    try:
        yield
    except BaseException:
        _remove(tmp)
        raise


@contextlib.contextmanager
def shared_lock(path: Path, what: str) -> Iterator[None]:
    """Hold `path`'s lock (`<path>.lock`), which runs sharing a cache take to build it once; while another
    run holds it (building or checking it), say so before waiting: a silent run looked hung."""
    from filelock import FileLock, Timeout

    from ptq_bench.console import log

    lock = FileLock(str(path) + ".lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log(f"cache: {what} {path} is being built or checked by another run; waiting for it")
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def ensure(path: Path, build: Callable[[Path], None], what: str) -> Path:
    """`path`, verified; built first when missing, rebuilt (with a log line) when damaged.

    `build(tmp)` writes the artefact (a file or a folder) at `tmp`, a sibling of `path` whose name ends
    like it (`.npy` stays `.npy`); its checksum is written after it, then it is renamed into place. A
    per-artefact lock makes concurrent runs sharing a cache build it once.
    """
    from ptq_bench.console import log

    path.parent.mkdir(parents=True, exist_ok=True)
    with shared_lock(path, what):
        why = problem(path)
        if why is None:
            return path
        if why != MISSING:
            log(f"cache: {what} {path} {why}; rebuilding it")
        tmp = path.with_name(".tmp-" + path.name)
        _remove(tmp)
        with removed_on_failure(tmp):  # no half-built artefact left (one of another key stayed for good)
            build(tmp)
            if tmp.is_dir():
                write_atomic(tmp / CHECKSUMS, json.dumps(folder_digests(tmp), indent=1, sort_keys=True))
        _remove(sidecar(path))
        _remove(path)
        os.replace(tmp, path)
        if path.is_file():
            write_atomic(sidecar(path), file_sha256(path) + "\n")
    return path


def host_tag() -> str:
    """This host's name as it appears in the names of per-process folders (no "-": it separates the pid)."""
    import socket

    return socket.gethostname().replace("-", "_")


def remove_stale(parent: Path, prefix: str) -> None:
    """Remove `<parent>/<prefix><host>-<pid>-…` entries that a process of this host left behind when it was
    killed before its clean-up (its pid is gone). Entries of other hosts (a cache shared over a cluster) are
    left alone: their processes cannot be seen from here."""
    host = host_tag()
    for old in parent.glob(f"{prefix}{host}-*"):
        pid = old.name[len(prefix) + len(host) + 1:].split("-")[0]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


def scratch_folder(parent: Path, prefix: str) -> Path:
    """A new private folder `<parent>/<prefix><host>-<pid>-<random>` for one run's bulky temporary files
    (float blocks, offloaded cells' blocks: up to the model's size each), after `remove_stale`."""
    import tempfile

    parent.mkdir(parents=True, exist_ok=True)
    remove_stale(parent, prefix)
    return Path(tempfile.mkdtemp(prefix=f"{prefix}{host_tag()}-{os.getpid()}-", dir=parent))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True
