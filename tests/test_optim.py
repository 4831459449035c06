"""make_optimizer / learning_rate_fn: schedule values, clipping + AdamW against a float64
formula, gradient accumulation equal to one step on the mean gradient."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ffjax import configs, optim


def _train(**overrides):
    t = configs.base_config().train
    t.update(overrides)
    return t


@pytest.mark.parametrize(
    "schedule,expected",
    [
        # lr 1e-3, warm-up 4 steps, T = 12 optimizer steps
        ("constant", {0: 0.0, 1: 2.5e-4, 3: 7.5e-4, 4: 1e-3, 11: 1e-3, 50: 1e-3}),
        ("linear", {0: 0.0, 2: 5e-4, 4: 1e-3, 6: 7.5e-4, 10: 2.5e-4, 12: 0.0, 20: 0.0}),
        (
            "cosine",
            {
                0: 0.0,
                2: 5e-4,
                4: 1e-3,
                6: 1e-3 * (1 + math.cos(math.pi * 2 / 8)) / 2,
                8: 5e-4,
                12: 0.0,
                20: 0.0,
            },
        ),
    ],
)
def test_schedule_values(schedule, expected):
    fn = optim.learning_rate_fn(
        _train(learning_rate=1e-3, warmup_steps=4, lr_schedule=schedule), 12
    )
    for step, lr in expected.items():
        np.testing.assert_allclose(float(fn(step)), lr, rtol=1e-6, atol=1e-12, err_msg=str(step))


def test_no_warmup_starts_at_peak():
    fn = optim.learning_rate_fn(_train(learning_rate=3e-4, lr_schedule="linear"), 10)
    np.testing.assert_allclose([float(fn(s)) for s in (0, 5, 10)], [3e-4, 1.5e-4, 0.0], atol=1e-12)


def test_decaying_schedule_needs_steps_after_warmup():
    with pytest.raises(ValueError, match="total_steps"):
        optim.learning_rate_fn(_train(warmup_steps=10, lr_schedule="cosine"), 10)


def _params():
    return {"w": jnp.asarray([[0.5, -1.0], [2.0, 0.25]]), "b": jnp.asarray([0.1, -0.3])}


def test_first_step_is_clipped_adamw():
    """float64 reference: g <- g * min(1, c / |g|); m = (1-b1) g, v = (1-b2) g^2;
    bias-corrected m_hat = g, v_hat = g^2; p' = p - lr (g / (|g| + eps) + wd p)."""
    lr, wd, eps, c = 0.1, 0.01, 0.5, 1.0  # large eps makes the step depend on |g|
    t = _train(learning_rate=lr, weight_decay=wd, adam_eps=eps, max_grad_norm=c)
    params = _params()
    grads = {"w": jnp.asarray([[3.0, -4.0], [12.0, 0.0]]), "b": jnp.asarray([1.0, 2.0])}
    tx = optim.make_optimizer(t, total_steps=10)
    updates, _ = tx.update(grads, tx.init(params), params)
    new = optax.apply_updates(params, updates)

    norm = math.sqrt(sum(float(np.sum(np.square(g))) for g in jax.tree.leaves(grads)))
    assert norm > c
    np.testing.assert_allclose(float(optax.tree.norm(grads)), norm, rtol=1e-6)
    for k in params:
        g = np.asarray(grads[k], np.float64) * c / norm
        p = np.asarray(params[k], np.float64)
        ref = p - lr * (g / (np.abs(g) + eps) + wd * p)
        np.testing.assert_allclose(new[k], ref, rtol=1e-5, err_msg=k)


def test_clipping_off_when_zero():
    params = _params()
    grads = jax.tree.map(lambda p: 100.0 * jnp.ones_like(p), params)
    kw = dict(learning_rate=0.1, weight_decay=0.0, adam_eps=1.0)
    off = optim.make_optimizer(_train(max_grad_norm=0.0, **kw), 10)
    on = optim.make_optimizer(_train(max_grad_norm=1.0, **kw), 10)
    u_off, _ = off.update(grads, off.init(params), params)
    u_on, _ = on.update(grads, on.init(params), params)
    # eps = 1: |update| = lr * g / (g + 1), so an unclipped g = 100 moves almost lr.
    np.testing.assert_allclose(u_off["b"], -0.1 * 100 / 101, rtol=1e-4)
    assert float(jnp.abs(u_on["b"]).max()) < 0.1 * 0.5 / 1.5 + 1e-7


def test_accumulation_equals_one_step_on_the_mean_gradient():
    k = 3
    t = dict(learning_rate=0.05, warmup_steps=2, lr_schedule="linear", max_grad_norm=1.0)
    accum = optim.make_optimizer(_train(grad_accum_steps=k, **t), total_steps=6)
    single = optim.make_optimizer(_train(**t), total_steps=6)
    params_a = params_s = _params()
    state_a, state_s = accum.init(params_a), single.init(params_s)
    rng = np.random.default_rng(0)
    update_a = jax.jit(accum.update)
    for _ in range(3):  # three optimizer steps: warm-up (lr 0, lr / 2) then decay
        micro = [
            jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params_a)
            for _ in range(k)
        ]
        for i, g in enumerate(micro):
            u, state_a = update_a(g, state_a, params_a)
            if i < k - 1:
                assert all(not np.any(x) for x in jax.tree.leaves(u))  # nothing applied yet
            params_a = optax.apply_updates(params_a, u)
        mean = jax.tree.map(lambda *gs: sum(gs) / k, *micro)
        u, state_s = single.update(mean, state_s, params_s)
        params_s = optax.apply_updates(params_s, u)
        for key in params_s:
            np.testing.assert_allclose(params_a[key], params_s[key], rtol=1e-5, atol=1e-7)
    assert not np.allclose(params_s["w"], _params()["w"])  # the steps did move the weights
