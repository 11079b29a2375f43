"""Steps a Ctrl-C or SIGTERM must not split (see `held`)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

HELD = (signal.SIGINT, signal.SIGTERM)  # the signals that stop a run (cli.main turns SIGTERM into Ctrl-C's)


@contextmanager
def held(deliver: bool = True) -> Iterator[None]:
    """A Ctrl-C or SIGTERM arriving inside the block takes effect when it ends, with the handler it would
    have met (without `deliver`, it is dropped: recording a stop already under way, a second Ctrl-C must
    not cut that record short). A stored row and its count are one step: a signal between the two made a
    run's last line and its manifest's `cells_run` one short of what it had stored. Outside the main
    thread (Python runs handlers only there) the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list[int] = []
    before = {s: signal.signal(s, lambda signum, _frame: got.append(signum)) for s in HELD}
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)
        if got and deliver:
            signal.raise_signal(got[0])
