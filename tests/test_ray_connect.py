"""`executors.connect` around `ray.init` (faked here: no Ray instance is started).

`ray.init` puts its own SIGTERM handler in place (`sys.exit(15)`): a SIGTERMed Ray run (timeout, Slurm,
docker) then exited 15 without closing its invocation (no `finished`, `interrupted` or `cells_run`) and
printed nothing. The CLI's handler, which stops a run as Ctrl-C does, must survive the connection.
"""

from __future__ import annotations

import signal
import sys

import ray
import ray._private.utils as ray_utils

import ptq_bench.executors as executors


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
        assert executors.connect(None) is True
        assert signal.getsignal(signal.SIGTERM) is ours
    finally:
        signal.signal(signal.SIGTERM, before)

