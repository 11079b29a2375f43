"""A min–max bar over calibration seeds that measured the same value."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from ptq_bench.report.plots import Marks  # noqa: E402


def test_seeds_with_equal_values_draw_a_zero_bar():
    # 10 x 232.1 sums to a mean 2.8e-14 below 232.1: a bar from the mean to the minimum was negative, and
    # matplotlib refused it ("'yerr' must not contain negative values"), so `report` stopped with a traceback
    fig, ax = plt.subplots()
    marks = Marks()
    marks.spread_line(ax, [4.0] * 10 + [2.0] * 3, [232.1] * 10 + [0.7] * 3)
    assert marks.bars
    plt.close(fig)
