"""Shared loss pieces against hand-computed values."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ffjax.algorithms import common


def test_batch_mean_and_per_sample():
    x = jnp.arange(24, dtype=jnp.float32).reshape(2, 3, 4)
    np.testing.assert_allclose(common.batch_mean(x), [5.5, 17.5])
    assert common.per_sample(jnp.array([1.0, 2.0]), x).shape == (2, 1, 1)


def test_clip_advantages():
    a = common.clip_advantages(jnp.array([-9.0, -5.0, 0.25, 5.0, 7.0]), 5.0)
    np.testing.assert_array_equal(a, [-5.0, -5.0, 0.25, 5.0, 5.0])
    assert a.dtype == jnp.float32


def test_forward_noise_and_velocity_mse():
    x0, noise = jnp.ones((2, 3)), jnp.full((2, 3), 3.0)
    xt = common.forward_noise(x0, noise, jnp.array([0.0, 0.25]))
    np.testing.assert_allclose(xt, [[1.0] * 3, [1.5] * 3])
    # rows: mean (1)^2 = 1 and mean (2)^2 = 4 -> 2.5
    v = jnp.array([[1.0, 1.0], [2.0, 2.0]])
    np.testing.assert_allclose(common.velocity_mse(v, jnp.zeros_like(v)), 2.5)


def test_ppo_clip_loss_hand_computed():
    # eps = 0.2. (A, r): (2, 1.5) -> max(-3, -2.4) = -2.4;  (-2, 1.5) -> max(3, 2.4) = 3;
    # (2, 0.5) -> max(-1, -1.6) = -1;  (-2, 0.5) -> max(1, 1.6) = 1.6;  (1, 1.1) -> -1.1.
    ratio = jnp.array([1.5, 1.5, 0.5, 0.5, 1.1])
    adv = jnp.array([2.0, -2.0, 2.0, -2.0, 1.0])
    np.testing.assert_allclose(
        common.ppo_clip_loss(ratio, adv, 0.2), [-2.4, 3.0, -1.0, 1.6, -1.1], rtol=1e-6
    )


def test_ppo_clip_gradient_is_zero_where_clipped():
    adv = jnp.array([2.0, -2.0, 2.0, -2.0, 1.0])
    g = jax.grad(lambda r: jnp.sum(common.ppo_clip_loss(r, adv, 0.2)))(
        jnp.array([1.5, 1.5, 0.5, 0.5, 1.1])
    )
    # Clipped side active for rows 0 and 3; the unclipped side (gradient -A) otherwise.
    np.testing.assert_allclose(g, [0.0, 2.0, -2.0, 0.0, -1.0])


def test_ratio_metrics():
    ratio = jnp.array([1.0, 1.5, 0.5, 1.05])
    log_ratio = jnp.log(ratio)
    m = common.ratio_metrics(ratio, log_ratio, 0.1)
    np.testing.assert_allclose(m["ratio_mean"], 1.0125)
    np.testing.assert_allclose(m["ratio_min"], 0.5)
    np.testing.assert_allclose(m["ratio_max"], 1.5)
    assert float(m["clipfrac"]) == 0.5
    np.testing.assert_allclose(m["approx_kl"], 0.5 * np.mean(np.log([1.0, 1.5, 0.5, 1.05]) ** 2))


def test_required_and_as_metrics():
    with pytest.raises(ValueError, match="snapshot is None"):
        common.required(None, "snapshot", "awm")
    assert common.required({"w": 1}, "ema", "awm") == {"w": 1}
    out = common.as_metrics({"a": 1, "b": np.array([2.0], np.float64)})
    assert all(v.shape == () and v.dtype == jnp.float32 for v in out.values())


def test_num_train_timesteps_zero_resolves_like_flow_factory():
    # X-GenGroup/Flow-Factory b30dc00 hparams/training_args.py: num_train_timesteps 0 ->
    # max(1, int(num_inference_steps * (timestep_range[1] - timestep_range[0]))).
    from ml_collections import ConfigDict

    cases = [  # (num_train_timesteps, sigma_range, N, expected)
        (0, (0.0, 0.9), 10, 9),
        (0, (0.0, 0.99), 20, 19),  # AWM's default range: int(0.9 N) gave 18
        (0, (0.0, 0.7), 10, 7),
        (0, (0.2, 0.7), 28, 13),  # 0.7 - 0.2 = 0.49999999999999994 in float64, as FF's
        (0, (0.0, 0.05), 10, 1),  # at least one
        (3, (0.0, 0.99), 20, 3),  # a set value is kept
    ]
    for n, rng, steps, want in cases:
        algorithm = ConfigDict({"num_train_timesteps": n, "sigma_range": rng})
        assert common.num_train_timesteps(algorithm, steps) == want, (n, rng, steps)
