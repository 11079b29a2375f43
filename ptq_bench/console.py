"""The one progress line format of a run (stdout, flushed: a killed run keeps what it said)."""

from __future__ import annotations


def log(msg: str) -> None:
    print(f"[ptq-bench] {msg}", flush=True)


def quiet_lm_eval() -> None:
    """Silence lm-eval below errors: handing HFLM an already-built model logs notices that are expected here."""
    import logging

    logging.getLogger("lm_eval").setLevel(logging.ERROR)
