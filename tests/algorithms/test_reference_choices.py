"""Where the references disagree, the config names which one to follow: float64
references for the advantage epsilon, Flow-Factory's GDPO std and the asymmetric
clip pairs (the KL forms are in test_grpo.py::test_kl_matches_numpy)."""

import jax.numpy as jnp
import numpy as np
import pytest

from ffjax import configs
from ffjax.algorithms import common
from ffjax.algorithms.advantages import compute_advantages

GROUPS = np.array([0, 0, 0, 1, 1, 1])


def _ff_gdpo(rewards, weights, groups):
    """Flow-Factory a0b2bc5 src/flow_factory/advantage/advantage_processor.py
    `compute_gdpo`, typed in: each reward by its group's mean and max(std, 1e-6), times
    its weight, summed, then (x - mean) / max(std, 1e-6) over the whole batch."""
    combined = np.zeros(len(groups))
    for name, r in rewards.items():
        r = np.asarray(r, np.float64)
        adv = np.zeros_like(r)
        for g in np.unique(groups):
            m = groups == g
            adv[m] = (r[m] - r[m].mean()) / max(np.std(r[m]), 1e-6)
        combined += adv * weights[name]
    return (combined - combined.mean()) / max(np.std(combined), 1e-6)


def _ff_sum(r, groups, global_std):
    """Flow-Factory a0b2bc5 `compute_weighted_sum`: group mean, group or batch
    max(std, 1e-6)."""
    r = np.asarray(r, np.float64)
    out = np.zeros_like(r)
    for g in np.unique(groups):
        m = groups == g
        std = np.std(r) if global_std else np.std(r[m])
        out[m] = (r[m] - r[m].mean()) / max(std, 1e-6)
    return out


@pytest.mark.parametrize("std", ["group", "global"])
def test_gdpo_flow_factory_uses_group_std_per_reward_whatever_advantage_std(std):
    rewards = {"a": [1.0, 2.0, 4.0, 0.5, 0.5, 3.0], "b": [10.0, 30.0, 20.0, 1.0, 2.0, 2.5]}
    weights = {"a": 1.0, "b": 0.5}
    got = compute_advantages(
        rewards, weights, GROUPS, group_size=3, method="gdpo", std=std,
        eps="flow_factory", gdpo_std="flow_factory",
    )  # fmt: skip
    np.testing.assert_allclose(got.values, _ff_gdpo(rewards, weights, GROUPS), rtol=1e-12)
    other = compute_advantages(
        rewards, weights, GROUPS, group_size=3, method="gdpo", std=std,
        eps="flow_factory", gdpo_std="advantage_std",
    )  # fmt: skip
    # With group std the two semantics agree; with global std they differ.
    assert np.allclose(other.values, got.values) == (std == "group")


@pytest.mark.parametrize("global_std", [False, True])
def test_sum_flow_factory_eps_is_max_std_1e6(global_std):
    r = [1.0, 1.0, 1.0, 0.0, 2.0, 7.0]  # group 0 has zero spread: 0 / 1e-6 = 0
    got = compute_advantages(
        {"r": r}, {"r": 1.0}, GROUPS, group_size=3,
        std="global" if global_std else "group", eps="flow_factory",
    )  # fmt: skip
    np.testing.assert_allclose(got.values, _ff_sum(r, GROUPS, global_std), rtol=1e-12)


def test_flow_grpo_eps_is_std_plus_1e4():
    """yifan123/flow_grpo flow_grpo/stat_tracking.py: (r - mean) / (std + 1e-4)."""
    r = np.array([1.0, 2.0, 4.0, 0.5, 0.5, 3.0])
    got = compute_advantages({"r": r}, {"r": 1.0}, GROUPS, group_size=3, eps="flow_grpo")
    want = np.concatenate(
        [(r[i : i + 3] - r[i : i + 3].mean()) / (np.std(r[i : i + 3]) + 1e-4) for i in (0, 3)]
    )
    np.testing.assert_allclose(got.values, want, rtol=1e-12)
    # The two epsilons differ measurably on a small spread.
    tiny = r * 1e-4
    a = compute_advantages({"r": tiny}, {"r": 1.0}, GROUPS, group_size=3, eps="flow_grpo")
    b = compute_advantages({"r": tiny}, {"r": 1.0}, GROUPS, group_size=3, eps="flow_factory")
    assert not np.allclose(a.values, b.values, rtol=1e-3)


def test_bad_advantage_choices_are_errors():
    with pytest.raises(ValueError, match="advantage eps"):
        compute_advantages({"r": [1.0, 2.0]}, {"r": 1.0}, np.array([0, 0]), group_size=2, eps="x")
    with pytest.raises(ValueError, match="gdpo_std"):
        compute_advantages(
            {"r": [1.0, 2.0]}, {"r": 1.0}, np.array([0, 0]), group_size=2, gdpo_std="x"
        )


def test_asymmetric_ratio_clip_matches_numpy():
    """Flow-Factory b30dc00 src/flow_factory/trainers/rl/grpo.py: clamp(r, 1 + lo, 1 + hi),
    adv clamped to (adv_lo, adv_hi); float64 reference."""
    r = np.array([0.5, 0.9998, 1.0, 1.0001, 1.0003, 2.0])
    a = np.array([-6.0, 1.0, -1.0, 2.0, 3.0, 7.0])
    lo, hi = -1e-4, 2e-4
    a_clip = np.clip(a, -2.0, 5.0)
    want = np.maximum(-a_clip * r, -a_clip * np.clip(r, 1 + lo, 1 + hi))
    adv = common.clip_advantages(jnp.asarray(a), (-2.0, 5.0))
    got = common.ppo_clip_loss(jnp.asarray(r, jnp.float32), adv, (lo, hi))
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6)
    m = common.ratio_metrics(jnp.asarray(r, jnp.float32), jnp.log(jnp.asarray(r)), (lo, hi))
    assert float(m["clipfrac"]) == pytest.approx(4 / 6)  # 0.5, 0.9998, 1.0003, 2.0 outside


def test_symmetric_pair_equals_scalar_clip():
    r = jnp.asarray([0.5, 0.9999, 1.00005, 1.5], jnp.float32)
    a = jnp.asarray([1.0, -1.0, 2.0, -2.0], jnp.float32)
    np.testing.assert_array_equal(
        common.ppo_clip_loss(r, a, 1e-4), common.ppo_clip_loss(r, a, (-1e-4, 1e-4))
    )


@pytest.mark.parametrize(
    "pair,ratio,match",
    [
        ((1e-4, -1e-4), True, "lo must be < hi"),
        ((-1.5, 1e-4), True, "-1 < lo <= 0 <= hi"),
        ((1e-5, 1e-4), True, "-1 < lo <= 0 <= hi"),
        ((1.0,), False, "a pair"),
        ((2.0, 1.0), False, "lo must be < hi"),
    ],
)
def test_bad_clip_pairs_are_errors(pair, ratio, match):
    with pytest.raises(ValueError, match=match):
        common.bounds("algorithm.clip_bounds", 1e-4, pair, ratio=ratio)


def test_config_validation_names_a_bad_pair():
    c = configs.base_config()
    c.model.path = c.data.path = "/x"
    configs.set_algorithm(c, "grpo")
    c.algorithm.clip_bounds = (2e-4, 1e-4)
    with pytest.raises(configs.ConfigError, match=r"config\.algorithm\.clip_bounds"):
        configs.validate(c)
    c.algorithm.clip_bounds = (-1e-4, 2e-4)
    c.algorithm.adv_clip_bounds = (-5.0, 3.0)
    configs.validate(c)
    c.train.advantage_eps = "both"
    with pytest.raises(configs.ConfigError, match="train.advantage_eps"):
        configs.validate(c)
