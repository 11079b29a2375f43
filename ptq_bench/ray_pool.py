"""The driver's pool of Ray actors for `--executor ray` (executors.py runs the calls and stores their rows).

`Dispatch` holds the actors (the model each keeps open), the calls in flight, the models to prepare and each
model's cells not yet handed out (given once the model is ready). The pool follows the cluster while the run
goes on (`resize`, after every call and every `CHECK_S` seconds): an actor more for each cell slot a node that
joins brings (an autoscaler's), while there is work for it; idle actors retired beyond the slots the cluster
has now (a lost node's), and once nothing is left to hand out. A call lost with its worker (killed, out of
memory, a lost node) is handed out again, to another actor, up to `executor.max_retries` times; a call that
raised is final. Ray neither restarts actors nor re-runs their calls itself: one count of retries, here.
Ray is imported here only, in functions.
"""

from __future__ import annotations

from collections import Counter
from contextlib import suppress
from typing import Any

from ptq_bench.console import log
from ptq_bench.errors import PtqBenchError
from ptq_bench.ray_cluster import cell_slots, head_gone
from ptq_bench.recipe import Cell, ExecutorSpec

CHECK_S = 10.0  # how often the driver, waiting for calls, looks at the cluster's size


class Dispatch:
    """The driver's Ray work (see the module's docstring)."""

    def __init__(self, sw: Any, job: Any, ex: ExecutorSpec, actor_class: type) -> None:
        import ray

        self.sw, self.job, self.ex = sw, job, ex
        self.actor = ray.remote(actor_class).options(num_cpus=ex.cpus_per_cell, num_gpus=ex.gpus_per_cell,
                                                     max_restarts=0, max_task_retries=0)
        self.left = cells_by_model(sw.todo)
        self.preps, self.ready = list(self.left), set()  # models to prepare; models prepared
        self.pending: dict[Any, tuple[str, Any, Any]] = {}  # ObjectRef -> ("model", name, actor) | ("cell", Cell, actor)
        self.holds: dict[Any, str | None] = {}  # actor -> the model it keeps open
        self.tries: Counter = Counter()  # work item -> times handed out again
        self.slots = 0  # the cluster's cell slots when last looked at
        self.resize()

    def busy(self) -> set[Any]:
        return {actor for _, _, actor in self.pending.values()}

    def resize(self) -> None:
        """As many actors as the cluster has cell slots now, and no more than the work in flight and waiting. Work
        goes first to idle actors; those left idle are retired beyond the slots (a lost node's share: a fresh actor
        may wait for it) or when nothing waits at all."""
        if head_gone():  # a query of a stopped cluster blocks for 60 s, then Ray's core worker ends this process
            raise cluster_gone(self.sw, "its head no longer answers")
        slots = cell_slots(self.ex)
        if self.slots and slots != self.slots:
            log(f"ray: the cluster has {slots} cell slot(s) now (was {self.slots})")
        self.slots = slots
        self.feed()
        busy, waiting = self.busy(), len(self.preps) + sum(map(len, self.left.values()))
        idle = [a for a in self.holds if a not in busy]  # with no work they can take now
        for actor in idle[:max(0, len(self.holds) - slots) if waiting else len(idle)]:
            self.end(actor)
        for _ in range(min(slots, len(busy) + waiting) - len(self.holds)):
            self.holds[self.actor.remote()] = None
        self.feed()

    def feed(self) -> None:
        """Every idle actor gets its next piece of work, if there is one."""
        busy = self.busy()
        for actor in [a for a in self.holds if a not in busy]:
            if work := self.next_for(actor):
                self.give(actor, *work)

    def next_for(self, actor: Any) -> tuple[str, Any] | None:
        return next_work(self.holds[actor], self.ready, self.left, self.preps)

    def give(self, actor: Any, what: str, item: Any) -> None:
        if what == "model":
            ref = actor.prepare.remote(self.job, item, self.left[item])
        else:
            ref = actor.run.remote(self.job, item)
        self.holds[actor] = held(what, item)
        self.pending[ref] = (what, item, actor)

    def done(self, what: str, item: Any, actor: Any, failed: str | None, lost: bool) -> None:
        """A call ended: a model ready; a lost one handed out again while it has retries left; else a failure (a
        model's takes its cells with it). A failed call's actor goes (a dead one takes no more calls; a raised one
        dropped its model anyway) and the pool is sized again; then idle actors get work."""
        key = (what, item if what == "model" else id(item))  # a Cell is handed out again as the same object
        if failed and lost and self.tries[key] < self.ex.max_retries:
            self.tries[key] += 1
            log(f"ray: {_name(what, item)} lost ({failed}); handed out again ({self.tries[key]} of "
                f"{self.ex.max_retries})")
            (self.preps if what == "model" else self.left[item.model]).insert(0, item)
        elif failed and what == "model":
            log(f"ray: model '{item}' failed: {failed} (its cells fail with it)")
            for cell in self.left[item]:
                fail(self.sw, cell, f"its model failed ({failed})")
            self.left[item] = []
        elif failed:
            fail(self.sw, item, failed)
        elif what == "model":
            self.ready.add(item)
        if failed:
            self.end(actor)
        self.resize()

    def end(self, actor: Any) -> None:
        import ray

        del self.holds[actor]
        with suppress(Exception):
            ray.kill(actor, no_restart=True)

    def stop(self) -> None:
        """Done or interrupted: every actor is killed (its memory freed; a running call stops, and the driver
        stores nothing of it: the cache's own writes are whole or absent)."""
        for actor in list(self.holds):
            self.end(actor)


def cells_by_model(cells: list[Any]) -> dict[str, list[Any]]:
    """Model -> its cells, in order; the models in the order of their first cell (the order they are prepared in)."""
    return {name: [c for c in cells if c.model == name] for name in dict.fromkeys(c.model for c in cells)}


def held(what: str, item: Any) -> str:
    """The model an actor keeps open after a call: the model it prepared, or its cell's model."""
    return item if what == "model" else item.model


def next_work(own: str | None, ready: set[str], left: dict[str, list[Any]], preps: list[str]) -> tuple[str, Any] | None:
    """An idle actor's next work, taken out of `preps` (models to prepare) or `left` (model -> its cells not handed
    out): a model to prepare (models train side by side, and a preparation is the long chain its cells wait on:
    started first, it ends sooner, while actors without one run the ready models' cells), else the next cell of
    the model it holds (`own`: no re-opening), else the next cell of another ready model. `estimate_ray` replays it
    with projected durations."""
    if preps:
        return "model", preps.pop(0)
    if own in ready and left[own]:
        return "cell", left[own].pop(0)
    other = next((name for name in sorted(ready) if left[name]), None)
    return None if other is None else ("cell", left[other].pop(0))


def _name(what: str, item: Any) -> str:
    return f"model '{item}'" if what == "model" else f"cell {item.model} {item.label}"


def fail(sw: Any, cell: Cell, reason: str) -> None:
    """A cell without its row: logged, and listed in the manifest's invocation (the run exits 2 naming it)."""
    text = f"{cell.model} {cell.label}: {reason}"
    log(f"ray: FAILED {text}")
    sw.failed.append(text)
    sw.manifest["invocations"][-1]["failed"] = list(sw.failed)


def cluster_gone(sw: Any, why: str) -> PtqBenchError:
    """The run's end when the cluster went away (`ray stop`, the head lost): one line, not a failure per cell."""
    return PtqBenchError(f"ray: the cluster went away ({why}); {sw.ran} cell(s) stored by this run; start it again "
                         "and re-run the same command to resume")
