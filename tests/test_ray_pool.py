"""The driver's actor pool (ptq_bench/ray_pool.py) without a Ray instance: stand-in actors, a cluster whose
cell slots the test sets. A lost call is handed out again up to `max_retries` times and then fails, a raised
one fails at once, a failed model takes its cells with it; the pool grows when nodes join (while there is
work), retires idle actors when nodes go or the work runs out, and never retires a busy one."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import ray

import ptq_bench.executors as executors
import ptq_bench.ray_pool as ray_pool


class _Actor:
    """A stand-in actor (hashable, as Ray's handles are): its `prepare.remote` / `run.remote` make a ref."""

    def __init__(self, made: list) -> None:
        self.prepare = self.run = self
        self.made = made

    def remote(self, *_args) -> object:
        self.made.append(ref := object())
        return ref


class _Class:
    """What `ray.remote(CellActor).options(...)` gives: `.remote()` makes an actor (actors and refs recorded in
    `made`, in the order they are made)."""

    def __init__(self, made: list) -> None:
        self.made = made

    def options(self, **kw):
        assert kw["max_restarts"] == 0 and kw["max_task_retries"] == 0  # retries are the pool's, counted once
        return self

    def remote(self) -> _Actor:
        self.made.append(actor := _Actor(self.made))
        return actor


@pytest.fixture
def cluster(monkeypatch):
    """The stand-in cluster: `slots` is its cell-slot count; `made` the actors and refs made; `killed` the actors
    ended, and `kill_kw` how `ray.kill` was called."""
    state = SimpleNamespace(slots=2, killed=[], kill_kw=[], made=[], gone=False)
    monkeypatch.setattr(ray, "remote", lambda _cls: _Class(state.made))
    monkeypatch.setattr(ray, "kill", lambda actor, **kw: state.killed.append(actor) or state.kill_kw.append(kw))
    monkeypatch.setattr(ray_pool, "cell_slots", lambda _ex: _slots(state))
    monkeypatch.setattr(ray_pool, "head_gone", lambda: state.gone)
    return state


def _slots(state: SimpleNamespace) -> int:
    assert not state.gone, "asked a stopped cluster its size: Ray blocks for 60 s, then ends the driver"
    return state.slots


def _dispatch(models: dict[str, int], retries: int = 2) -> ray_pool.Dispatch:
    todo = [SimpleNamespace(model=m, label=f"c{i}") for m, n in models.items() for i in range(n)]
    sw = SimpleNamespace(todo=todo, failed=[], manifest={"invocations": [{}]}, ran=0)
    ex = SimpleNamespace(cpus_per_cell=1, gpus_per_cell=0, max_retries=retries)
    return ray_pool.Dispatch(sw, None, ex, object)


def _end(d: ray_pool.Dispatch, what: str, failed: str | None = None, lost: bool = False):
    """The first call in flight of kind `what` ends (as the driver's loop ends it); its item."""
    ref = next(r for r, (w, _, _) in d.pending.items() if w == what)
    what, item, actor = d.pending.pop(ref)
    d.done(what, item, actor, failed, lost)
    return item


def test_a_lost_call_is_handed_out_again_up_to_max_retries_then_fails(cluster):
    d = _dispatch({"m": 1}, retries=2)
    _end(d, "model")
    for attempt in range(3):
        cell = _end(d, "cell", "ActorDiedError: killed", lost=True)
        assert cell.label == "c0"
        assert d.sw.failed == ([] if attempt < 2 else ["m c0: ActorDiedError: killed"])
    assert not d.pending and d.sw.manifest["invocations"][-1]["failed"] == d.sw.failed
    assert len(cluster.killed) == 3 + 1  # each lost call's actor, then the idle one (no work left)


def test_a_raised_call_fails_at_once_and_a_failed_model_takes_its_cells(cluster):
    d = _dispatch({"a": 1, "b": 2})
    _end(d, "model")
    _end(d, "cell", "RayTaskError(ValueError): bad", lost=False)
    assert d.sw.failed == ["a c0: RayTaskError(ValueError): bad"]
    _end(d, "model", "ActorDiedError: gone", lost=True)  # b's preparation, lost: handed out again
    assert [w for w, _, _ in d.pending.values()] == ["model"]
    _end(d, "model", "RayTaskError(OSError): no disk", lost=False)
    assert d.sw.failed[1:] == ["b c0: its model failed (RayTaskError(OSError): no disk)",
                               "b c1: its model failed (RayTaskError(OSError): no disk)"]
    assert not d.pending and not d.holds  # nothing left to do: every actor retired


def test_an_actor_prepares_the_next_model_before_its_own_models_cells(cluster):
    """2 slots, models a (2 cells), b, c: a's actor, once a is ready, prepares c (the long chain its cells wait on)
    rather than run a's cells; b's actor, once b is ready, runs b's cell, then a's."""
    d = _dispatch({"a": 2, "b": 1, "c": 1})
    assert sorted(item for _, item, _ in d.pending.values()) == ["a", "b"]
    assert _end(d, "model") == "a"
    assert sorted(item for w, item, _ in d.pending.values() if w == "model") == ["b", "c"]
    assert _end(d, "model") == "b"
    assert [c.model for w, c, _ in d.pending.values() if w == "cell"] == ["b"]
    assert _end(d, "cell").model == "b"
    assert [c.model for w, c, _ in d.pending.values() if w == "cell"] == ["a"]


def test_the_pool_grows_with_the_cluster_while_there_is_work(cluster, capsys):
    cluster.slots = 1
    d = _dispatch({"m": 6})
    assert len(d.holds) == 1
    _end(d, "model")
    cluster.slots = 4  # two nodes joined
    d.resize()
    assert len(d.holds) == 4 and len(d.pending) == 4  # each on a cell of the ready model
    assert "the cluster has 4 cell slot(s) now (was 1)" in capsys.readouterr().out
    cluster.slots = 40
    d.resize()
    assert len(d.holds) == 6  # no more actors than work in flight and waiting


def test_idle_actors_are_retired_when_nodes_go_and_busy_ones_are_kept(cluster):
    cluster.slots = 3
    d = _dispatch({"a": 1, "b": 1, "c": 1})
    assert len(d.holds) == 3 and len(d.pending) == 3  # three preparations
    cluster.slots = 1  # a node lost (its actors' calls fail later, as lost)
    d.resize()
    assert len(d.holds) == 3 and not cluster.killed  # all busy: none retired
    _end(d, "model")  # a ready: its actor takes a's cell (work first)...
    _end(d, "model")  # ...and b's takes b's
    assert len(d.holds) == len(d.pending) == 3 and not cluster.killed
    _end(d, "cell")  # idle now, with only c's cell waiting (c not ready): beyond the one slot, retired
    assert len(d.holds) == len(d.pending) == 2 and len(cluster.killed) == 1
    _end(d, "cell")
    assert len(d.holds) == len(d.pending) == 1 and len(cluster.killed) == 2
    _end(d, "model")  # c ready: its actor takes c's cell
    assert len(d.holds) == len(d.pending) == 1
    _end(d, "cell")  # nothing waits: the last idle actor goes
    assert not d.holds and not d.pending and len(cluster.killed) == 3


def test_a_fresh_actor_joins_for_a_lost_call_while_the_cluster_has_the_slot(cluster):
    """A lost call's actor goes and a fresh one takes the call again; with the cluster a slot short (the lost
    node's), the idle actor that holds the other slot goes first, so the fresh one can be placed."""
    d = _dispatch({"m": 3})
    _end(d, "model")
    assert len(d.holds) == len(d.pending) == 2  # two cells in flight, one waiting
    ref, (_, cell, actor) = next(iter(d.pending.items()))
    cluster.slots = 1
    d.pending.pop(ref)
    d.done("cell", cell, actor, "ActorDiedError: node lost", True)
    assert actor in cluster.killed and len(d.holds) == len(d.pending) == 1  # the other: no slot for a fresh one
    _end(d, "cell")  # the other ends: its actor takes a cell again (work first), no retirement needed
    assert len(d.holds) == len(d.pending) == 1 and {c.label for _, c, _ in d.pending.values()} <= {"c0", "c1", "c2"}
    _end(d, "cell")
    _end(d, "cell")
    assert not d.pending and not d.holds and not d.sw.failed


def test_actors_waiting_for_a_model_are_kept_while_the_cluster_has_slots_to_spare(cluster):
    cluster.slots = 6
    d = _dispatch({"a": 3})
    assert len(d.holds) == 4 and len(d.pending) == 1  # the preparation, and an actor for each cell to come
    d.resize()
    assert len(d.holds) == 4 and not cluster.killed
    _end(d, "model")
    assert len(d.pending) == 3 and len(cluster.killed) == 1  # the cells run; the preparing one has none left


def test_a_cluster_gone_ends_the_run_in_one_line_before_its_size_is_asked(cluster):
    """The head's GCS and raylet killed mid-run (SIGKILL, 2026-12-06): `ray.cluster_resources()` blocked for 60 s,
    then Ray's core worker ended the driver (exit 1, no message, the invocation left open)."""
    from ptq_bench.errors import PtqBenchError

    d = _dispatch({"m": 2})
    d.sw.ran = 3
    _end(d, "model")
    cluster.gone = True
    with pytest.raises(PtqBenchError, match=r"the cluster went away \(its head no longer answers\); 3 cell"):
        d.resize()


def _stopped_drive(monkeypatch, cluster, ready_first: bool) -> None:
    """drive() over two cells of one model on a pool of 2 actors, stopped by Ctrl-C in `ray.wait`: while the model
    is prepared, or once it is ready (its cells then run on both actors). Fills cluster.made and .killed."""
    cluster.made.clear()
    cluster.killed.clear()
    waits = iter([True] if ready_first else [])

    def wait(refs, **_kw):
        if next(waits, False):
            return [refs[0]], []
        raise KeyboardInterrupt

    monkeypatch.setattr(ray, "wait", wait)
    monkeypatch.setattr(ray, "cancel", lambda ref, **kw: pytest.fail("a cancel: force=True crashed the driver"))
    monkeypatch.setattr(executors, "collect", lambda *_a: (None, False))
    ex = SimpleNamespace(cpus_per_cell=1, gpus_per_cell=0, max_retries=0)
    sw = SimpleNamespace(todo=[SimpleNamespace(model="a"), SimpleNamespace(model="a")])
    with pytest.raises(KeyboardInterrupt):
        executors.drive(sw, None, ex)


def test_a_stopped_drive_kills_its_actors_and_forces_no_cancel(monkeypatch, cluster):
    """A forced `ray.cancel` of tasks in flight when the driver was stopped crashed it inside Ray's core
    worker (`task_manager.cc: Check failed: Tried to complete task that was not pending`, exit 1, after the
    invocation was closed but before the interruption's message): 2 of 2 SIGTERMed smoke runs against a
    `ray start` head, none of 2 without force. The actors (each keeping a model loaded) are killed instead,
    without restart, so their work stops and their memory goes; the driver stores nothing of it."""
    _stopped_drive(monkeypatch, cluster, ready_first=False)
    made, killed = list(cluster.made), list(cluster.killed)
    assert len(made) == 3 and killed == made[:2]  # 2 actors, the model's preparation on one
    _stopped_drive(monkeypatch, cluster, ready_first=True)
    made, killed = list(cluster.made), list(cluster.killed)
    assert len(made) == 5 and killed == made[:2]  # and then a cell on each
    assert all(kw == {"no_restart": True} for kw in cluster.kill_kw)
