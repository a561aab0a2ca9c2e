from __future__ import annotations

import numpy as np

from benchmarks.stsb import average_ranks, spearman


def test_ties_share_their_mean_rank():
    assert average_ranks(np.array([3.0, 1.0, 3.0, 2.0])).tolist() == [2.5, 0.0, 2.5, 1.0]


def test_spearman_of_monotone_and_reversed_orders():
    x = np.array([0.1, 0.5, 0.2, 0.9])
    assert spearman(x, x**3) == 1.0
    assert spearman(x, -x) == -1.0
