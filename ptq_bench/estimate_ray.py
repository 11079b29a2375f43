"""`ptq-bench estimate` for a recipe run on Ray: the projected durations (each model's training or loading, each
cell's quantization and evaluation) replayed through the Ray pool's own dispatch (`ray_pool.next_work`) on 1,
2, 4, ... cell slots. Each slot is taken to be as fast as this machine was when timed (its torch thread count);
a cluster's slots run `executor.cpus_per_cell` threads, or a GPU each, on their own hardware.
"""

from __future__ import annotations

import heapq
from typing import Any, NamedTuple

from ptq_bench.console import hms
from ptq_bench.ray_pool import cells_by_model, held, next_work

NOT_COUNTED = ("each worker building the tasks and reading the tokenized texts, and an actor opening each model it "
               "moves to")


class _Cell(NamedTuple):
    """A cell as the replay sees it: its model and its projected seconds."""

    model: str
    seconds: float


def makespan(prepare_s: dict[str, float], cells: list[tuple[str, float]], slots: int) -> float:
    """Wall seconds of the pool's work on `slots` actors: the models (name -> seconds to train or load, in the
    order the run hands them out: `ray_pool.cells_by_model`'s) prepared side by side, and each model's cells
    ((model, seconds), in order) once it is ready; after every call that ends, each idle actor (in order) takes
    `next_work`, as `ray_pool.Dispatch.feed` hands it out."""
    holds: list[str | None] = [None] * slots  # the model each actor keeps open
    ready: set[str] = set()
    preps = list(prepare_s)
    left = {name: [] for name in prepare_s} | cells_by_model([_Cell(m, s) for m, s in cells])  # a model may have none
    running: list[tuple[float, int, str, Any]] = []  # (end, actor, what, item): a heap
    t = 0.0
    while True:
        busy = {actor for _, actor, _, _ in running}
        for actor in range(slots):
            if actor not in busy and (work := next_work(holds[actor], ready, left, preps)):
                what, item = work
                holds[actor] = held(what, item)
                heapq.heappush(running, (t + (prepare_s[item] if what == "model" else item.seconds), actor, what, item))
        if not running:
            return t
        t, _, what, item = heapq.heappop(running)
        if what == "model":
            ready.add(item)


def slot_counts(n_items: int) -> list[int]:
    """1, 2, 4, ... below the number of work items (models and cells), then that number (no pool is larger)."""
    counts = [1]
    while counts[-1] * 2 < n_items:
        counts.append(counts[-1] * 2)
    return counts + ([n_items] if n_items > counts[-1] else [])


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("s" if n > 1 else "")


def thread_hint(threads: int, cpus_per_cell: float) -> str:
    """On a CPU, a note when this process's torch threads are not the threads a Ray actor runs (Ray sets
    OMP_NUM_THREADS to its CPUs)."""
    slot = max(1, int(cpus_per_cell))
    return "" if slot == threads else (f" (a slot runs executor.cpus_per_cell = {_count(slot, 'thread')}: "
                                       f"OMP_NUM_THREADS={slot} ptq-bench estimate ... times at that count)")


def ray_line(prepare_s: dict[str, float], cells: list[tuple[str, float]], prep_s: float, threads: int,
             hint: str) -> str:
    """The projection's line: the wall time on 1, 2, 4, ... cell slots, up to the first count with the least wall
    time of them all, after the driver's preparation (`prep_s`: tokenizer, tokenized texts)."""
    counts = slot_counts(len(prepare_s) + len(cells))
    walls = [makespan(prepare_s, cells, n) for n in counts]
    shown = walls.index(min(walls)) + 1  # no larger count does better (the pool's policy is greedy, not monotone)
    parts = [f"{_count(n, 'slot')} {hms(prep_s + wall)}" for n, wall in zip(counts[:shown], walls)]
    return (f"executor ray, replayed through its dispatch (models prepared side by side, each model's cells once it "
            f"is ready; each cell slot as fast as this machine with its {_count(threads, 'torch thread')}{hint}): "
            + ", ".join(parts) + f" (no more slots gain); not counted: {NOT_COUNTED}")
