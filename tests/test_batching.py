"""FastLM's batch cutting (eval/batching.py): within the limits, and the least padded work of all cuttings."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ptq_bench.eval.batching import cut_sorted


def _cost(lengths: list[int], starts: list[int], overhead: int) -> int:
    ends = [*starts[1:], len(lengths)]
    return sum((b - a) * max(1, lengths[a]) + overhead for a, b in zip(starts, ends))


def _brute_force(lengths: list[int], max_tokens: int, max_rows: int, overhead: int) -> int:
    """The least cost over every cutting that respects the limits: all 2^(n-1) sets of cut points."""
    n, best = len(lengths), None
    for k in range(n):
        for cuts in itertools.combinations(range(1, n), k):
            starts = [0, *cuts]
            spans = list(zip(starts, [*cuts, n]))
            if all(b - a == 1 or (b - a <= max_rows and (b - a) * max(1, lengths[a]) <= max_tokens) for a, b in spans):
                cost = _cost(lengths, starts, overhead)
                best = cost if best is None else min(best, cost)
    return best


lengths_st = st.lists(st.integers(1, 60), min_size=1, max_size=12).map(lambda xs: sorted(xs, reverse=True))


@settings(max_examples=200, deadline=None)
@given(lengths=lengths_st, max_tokens=st.integers(1, 200), max_rows=st.integers(1, 6), overhead=st.integers(0, 50))
def test_cut_sorted_is_optimal_and_within_limits(lengths: list[int], max_tokens: int, max_rows: int,
                                                 overhead: int) -> None:
    starts = cut_sorted(lengths, max_tokens, max_rows, overhead)
    assert starts[0] == 0 and starts == sorted(set(starts))
    for a, b in zip(starts, [*starts[1:], len(lengths)]):
        assert b - a == 1 or ((b - a) <= max_rows and (b - a) * lengths[a] <= max_tokens)
    assert _cost(lengths, starts, overhead) == _brute_force(lengths, max_tokens, max_rows, overhead)


def test_cut_sorted_separates_lengths_when_padding_costs_more_than_a_forward() -> None:
    # one 100-token row and ten 10-token rows: padding them to 100 (900 wasted positions) costs more
    # than a second forward; the old "fill up to max_tokens" rule put all eleven in one forward
    assert cut_sorted([100] + [10] * 10, max_tokens=2000, max_rows=64, overhead=32) == [0, 1]
    assert cut_sorted([100] + [10] * 10, max_tokens=2000, max_rows=64, overhead=10_000) == [0]


def test_cut_sorted_refuses_unsorted_lengths() -> None:
    with pytest.raises(ValueError, match="sorted longest first"):
        cut_sorted([3, 5], 100, 4, 0)


def test_batching_is_chosen_by_device_type():
    """The CPU keeps its measured figures; any other device gets the GPU's (fewer, fuller forwards)."""
    from ptq_bench.eval.batching import BATCHING, batching_for

    assert batching_for("cpu") is BATCHING["cpu"] and BATCHING["cpu"].max_tokens == 512
    assert batching_for("cuda") is batching_for("mps") is BATCHING["gpu"]
    assert BATCHING["gpu"].max_tokens is None and BATCHING["gpu"].overhead > BATCHING["cpu"].overhead
