"""`estimate_ray`: the Ray projection replays the pool's own dispatch (`ray_pool.next_work`) over projected
durations. Figures worked by hand from the policy: an actor prepares the next model while one is left, then runs
its own model's cells, then takes another ready model's cells; no cell starts before its model is ready."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ptq_bench import estimate_ray
from ptq_bench.estimate_ray import makespan, slot_counts


def test_cells_wait_for_their_model_and_actors_keep_their_own_model():
    """A trains 10 s (cells 5, 5, 5), B 20 s (one cell of 1 s), on 2 slots: actor 0 prepares A and runs its
    cells at 10, 15 and 20 (ends 25); actor 1 prepares B and runs its cell at 20 (ends 21)."""
    prepare = {"A": 10.0, "B": 20.0}
    cells = [("A", 5.0), ("A", 5.0), ("A", 5.0), ("B", 1.0)]
    assert makespan(prepare, cells, 2) == 25.0
    assert makespan(prepare, cells, 1) == 46.0  # one after another
    # 3 slots: the third actor has no model to prepare at 0 and takes A's second and third cells once A is
    # ready: A's cells at 10 (actor 0) and 10 (actor 2), its last at 15; B's at 20
    assert makespan(prepare, cells, 3) == 21.0


def test_an_idle_actor_takes_another_ready_models_cells():
    """One model, four cells of 3 s after 2 s of loading: on 4 slots the three actors that prepared nothing take
    a cell each as soon as the model is ready (the shared cache); all four end at 5 s."""
    assert makespan({"M": 2.0}, [("M", 3.0)] * 4, 4) == 5.0
    assert makespan({"M": 2.0}, [("M", 3.0)] * 4, 2) == 8.0


def test_the_projection_follows_the_pools_policy(monkeypatch):
    """The replay asks `ray_pool.next_work` itself. Models A (3 s, one cell of 3 s), B (6 s), C (7 s) on 2 slots:
    actor 0 prepares A, then C (every preparation first) from 3 s; A's cell runs on actor 1 from 6 s: 10 s. The
    pool's earlier policy (an actor ran its own model's cells before it prepared another) gave 13 s (3 + 3 + 7)."""
    from ptq_bench import ray_pool

    def own_cells_first(own, ready, left, preps):
        if own in ready and left[own]:
            return "cell", left[own].pop(0)
        return ray_pool.next_work(own, ready, left, preps)

    prepare, cells = {"A": 3.0, "B": 6.0, "C": 7.0}, [("A", 3.0)]
    assert makespan(prepare, cells, 2) == 10.0
    monkeypatch.setattr(estimate_ray, "next_work", own_cells_first)
    assert makespan(prepare, cells, 2) == 13.0


@pytest.mark.parametrize("n, counts", [(1, [1]), (2, [1, 2]), (7, [1, 2, 4, 7]), (8, [1, 2, 4, 8])])
def test_slot_counts(n, counts):
    assert slot_counts(n) == counts


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from("ABCD"), st.integers(0, 50), min_size=1),
       st.lists(st.tuples(st.integers(0, 3), st.integers(0, 30)), max_size=12), st.integers(1, 8))
def test_the_wall_time_is_bounded_as_any_schedule_is(prep, raw, slots):
    """At most the work one after another, at least the work spread evenly, at least every model's preparation
    plus its longest cell; one slot is exactly the sum."""
    names = list(prep)
    prepare = {k: float(v) for k, v in prep.items()}
    cells = [(names[i % len(names)], float(s)) for i, s in raw]
    work = sum(prepare.values()) + sum(s for _, s in cells)
    wall = makespan(prepare, cells, slots)
    assert makespan(prepare, cells, 1) == work
    assert work / slots - 1e-9 <= wall <= work
    for name, p in prepare.items():
        assert wall >= p + max((s for m, s in cells if m == name), default=0.0)
