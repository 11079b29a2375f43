"""The one progress line format of a run (stdout, flushed: a killed run keeps what it said)."""

from __future__ import annotations

import sys


def log(msg: str) -> None:
    """One line on stdout, written with its newline in one call: a Ctrl-C between print's two writes left the
    line open, and the interruption's message was glued to it."""
    sys.stdout.write(f"[ptq-bench] {msg}\n")
    sys.stdout.flush()


def bar_disable(wanted: bool) -> bool | None:
    """tqdm's `disable` for a progress bar: True when not wanted; when wanted, None: on a terminal only, so a
    log (stderr not a tty) gets no redrawn bar."""
    return None if wanted else True


def quiet_lm_eval() -> None:
    """Silence lm-eval below errors: handing HFLM an already-built model logs notices that are expected here."""
    import logging

    logging.getLogger("lm_eval").setLevel(logging.ERROR)


def hms(seconds: float) -> str:
    s = int(round(seconds))
    if s < 60:
        return f"{seconds:.1f} s"
    h, rest = divmod(s, 3600)
    return f"{h} h {rest // 60:02d} min" if h else f"{rest // 60} min {rest % 60:02d} s"
