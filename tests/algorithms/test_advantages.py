"""Advantages: hand-computed sum / gdpo cases, std modes, NaN handling, bad input."""

import numpy as np
import pytest

from ffjax.algorithms.advantages import compute_advantages

GROUPS = np.array([0, 0, 1, 1])


def test_sum_group_std_hand_computed():
    # Group 0: rewards 1, 3 -> mean 2, std 1 -> A = -1, +1. Group 1: 5, 5 -> std 0 -> A = 0.
    a = compute_advantages({"r": [1.0, 3.0, 5.0, 5.0]}, {"r": 1.0}, GROUPS, group_size=2, eps=1e-12)
    np.testing.assert_allclose(a.values, [-1, 1, 0, 0], atol=1e-9)
    assert a.valid.all() and a.num_dropped == 0 and a.values.dtype == np.float64


def test_sum_weights_combine_before_normalising():
    # total = 2 * r1 + 0.5 * r2 = [2+1, 6+0, 0+2, 4+2] = [3, 6, 2, 6]
    a = compute_advantages(
        {"r1": [1.0, 3.0, 0.0, 2.0], "r2": [2.0, 0.0, 4.0, 4.0]},
        {"r1": 2.0, "r2": 0.5},
        GROUPS,
        group_size=2,
        eps=0.0,
    )
    np.testing.assert_allclose(a.values, [-1, 1, -1, 1])


def test_global_std():
    # total [1, 3, 5, 9]; global std = std([1,3,5,9]) = sqrt(8.75); group means 2 and 7.
    a = compute_advantages(
        {"r": [1.0, 3.0, 5.0, 9.0]}, {"r": 1.0}, GROUPS, group_size=2, std="global", eps=0.0
    )
    s = np.sqrt(8.75)
    np.testing.assert_allclose(a.values, [-1 / s, 1 / s, -2 / s, 2 / s])


def test_gdpo_normalises_per_reward_then_batch():
    # r1 groups: [0, 2] -> [-1, 1]; [0, 4] -> [-1, 1]. r2: [1, 1] -> [0, 0]; [3, 1] -> [1, -1].
    # A' = 1 * A1 + 2 * A2 = [-1, 1, 1, -1]; batch mean 0, std 1 -> unchanged.
    a = compute_advantages(
        {"r1": [0.0, 2.0, 0.0, 4.0], "r2": [1.0, 1.0, 3.0, 1.0]},
        {"r1": 1.0, "r2": 2.0},
        GROUPS,
        group_size=2,
        method="gdpo",
        eps=1e-12,  # > 0: the r2 group [1, 1] has zero spread
    )
    np.testing.assert_allclose(a.values, [-1, 1, 1, -1], atol=1e-9)


def test_nan_rewards_dropped_and_counted():
    r = [1.0, 3.0, 2.0, np.nan, 4.0, 6.0]
    a = compute_advantages(
        {"r": r}, {"r": 1.0}, np.array([0, 0, 0, 1, 1, 1]), group_size=3, eps=0.0
    )
    assert a.num_dropped == 1 and not a.valid[3] and a.values[3] == 0.0
    std0 = np.std([1.0, 3.0, 2.0])
    np.testing.assert_allclose(a.values[:3], (np.array([1.0, 3.0, 2.0]) - 2.0) / std0)
    np.testing.assert_allclose(a.values[4:], [-1.0, 1.0])  # stats over the two valid samples
    with pytest.raises(ValueError, match="every sample has a NaN"):
        compute_advantages({"r": [np.nan] * 4}, {"r": 1.0}, GROUPS, group_size=2)


def test_clipping():
    a = compute_advantages(
        {"r": [0.0, 0.0, 0.0, 10.0]}, {"r": 1.0}, np.zeros(4, int), group_size=4, clip=1.0
    )
    assert a.values.max() == 1.0 and a.values.min() >= -1.0


def test_bad_input():
    with pytest.raises(ValueError, match=r"incomplete groups \(id: count, expected 2\): \{1: 1\}"):
        compute_advantages({"r": [1.0, 2.0, 3.0]}, {"r": 1.0}, np.array([0, 0, 1]), group_size=2)
    with pytest.raises(ValueError, match="group_size must be >= 2"):
        compute_advantages({"r": [1.0]}, {"r": 1.0}, np.array([0]), group_size=1)
    with pytest.raises(ValueError, match="unknown advantage method 'mean'"):
        compute_advantages(
            {"r": [1.0, 2.0]}, {"r": 1.0}, np.array([0, 0]), group_size=2, method="mean"
        )
    with pytest.raises(ValueError, match="differ"):
        compute_advantages({"r": [1.0, 2.0]}, {"s": 1.0}, np.array([0, 0]), group_size=2)
