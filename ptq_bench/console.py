"""The one progress line format of a run (stdout, flushed: a killed run keeps what it said)."""

from __future__ import annotations


def log(msg: str) -> None:
    print(f"[ptq-bench] {msg}", flush=True)
