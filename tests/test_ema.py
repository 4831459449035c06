"""EMA decay schedules against hand-computed values, the update formula, disabling, and
knot validation."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ffjax import configs, ema


def _cfg(**overrides):
    c = configs.base_config().ema
    c.update(overrides)
    return c


# (config overrides, {epoch: expected decay}), worked out by hand from the formulas.
CASES = {
    "constant": (dict(decay=0.95), {0: 0.95, 7: 0.95, 1000: 0.95}),
    "power": (
        # 1 - (1 + t / 2) ** -0.5, floored at start_decay 0.2, capped at decay 0.9
        dict(decay=0.9, start_decay=0.2, power=0.5, inv_gamma=2.0),
        {0: 0.2, 2: 1 - 2**-0.5, 6: 0.5, 48: 0.8, 198: 0.9, 10_000: 0.9},
    ),
    "power_warmup": (
        # Flow-Factory's power: min(0.9, (1 + t) / (10 + t))
        dict(decay=0.9, warmup_epochs=10),
        {0: 0.1, 1: 2 / 11, 10: 11 / 20, 80: 0.9, 81: 0.9, 79: 80 / 89},
    ),
    "linear": (
        dict(decay=0.9, start_decay=0.5, ramp_epochs=8),
        {0: 0.5, 2: 0.6, 4: 0.7, 8: 0.9, 20: 0.9},
    ),
    "piecewise_linear": (
        # DiffusionNFT decay_type=2: flat 75, slope 0.0075, held at 0.999
        dict(boundaries=(75, 75 + 0.999 / 0.0075), decays=(0.0, 0.999)),
        {0: 0.0, 75: 0.0, 76: 0.0075, 100: 25 * 0.0075, 208: 0.9975, 209: 0.999, 500: 0.999},
    ),
    "cosine": (
        dict(decay=0.99, start_decay=0.9, ramp_epochs=10),
        {0: 0.9, 5: 0.945, 10: 0.99, 30: 0.99, 2: 0.9 + 0.09 * (1 - math.cos(math.pi / 5)) / 2},
    ),
    "warmup_cosine": (
        dict(decay=0.99, start_decay=0.8, warmup_epochs=4, ramp_epochs=10),
        {0: 0.0, 1: 0.2, 3: 0.6, 4: 0.8, 9: 0.895, 14: 0.99, 40: 0.99},
    ),
}


def test_cases_cover_every_schedule():
    assert set(CASES) == set(ema.SCHEDULES)


@pytest.mark.parametrize("schedule", list(CASES))
def test_schedule_values(schedule):
    overrides, expected = CASES[schedule]
    cfg = _cfg(schedule=schedule, **overrides)
    for epoch, value in expected.items():
        assert ema.ema_decay(cfg, epoch) == pytest.approx(value, abs=1e-12), epoch


def test_update_interval_follows_flow_factory():
    """X-GenGroup/Flow-Factory b30dc00 ema/ema.py EMAModuleWrapper.step(params, epoch):
    skipped unless (epoch + 1) % ema_update_interval == 0, then the decay at that epoch."""
    cfg = _cfg(schedule="power_warmup", decay=0.9, warmup_epochs=10, update_interval=4)
    assert [t for t in range(16) if ema.due(cfg, t)] == [3, 7, 11, 15]
    assert ema.ema_decay(cfg, 3) == pytest.approx(4 / 13, abs=1e-15)
    every = _cfg(update_interval=1)
    assert all(ema.due(every, t) for t in range(5))
    assert not any(ema.due(_cfg(decay=0.0, update_interval=1), t) for t in range(5))
    with pytest.raises(ema.EMAConfigError, match="update_interval"):
        ema.validate(_cfg(update_interval=0))


def test_piecewise_matches_diffusionnft_return_decay():
    """DiffusionNFT: 0 before `flat`, then min((t - flat) * uprate, uphold)."""
    for flat, uprate, uphold in [(0, 0.001, 0.5), (75, 0.0075, 0.999)]:
        cfg = _cfg(
            schedule="piecewise_linear",
            boundaries=(flat, flat + uphold / uprate),
            decays=(0.0, uphold),
        )
        for t in range(0, 700, 7):
            nft = 0.0 if t < flat else min((t - flat) * uprate, uphold)
            assert ema.ema_decay(cfg, t) == pytest.approx(nft, abs=1e-12), (flat, t)


@pytest.mark.parametrize("schedule", ema.SCHEDULES)
def test_decay_zero_disables(schedule):
    cfg = _cfg(schedule=schedule, decay=0.0, boundaries=(0, 10), decays=(0.5, 0.9))
    assert not ema.enabled(cfg)
    assert all(ema.ema_decay(cfg, t) == 0.0 for t in (0, 5, 100))


def test_update_formula_and_dtypes():
    rng = np.random.default_rng(0)
    e = {"a": rng.normal(size=(3, 4)).astype(np.float32), "b": rng.normal(size=5)}
    p = {"a": rng.normal(size=(3, 4)).astype(np.float32), "b": rng.normal(size=5)}
    e_bf16 = {"a": jnp.asarray(e["a"], jnp.bfloat16), "b": jnp.asarray(e["b"], jnp.bfloat16)}
    update = jax.jit(ema.ema_update)
    for decay in (0.9, 0.25):
        out = update(jax.tree.map(jnp.asarray, e), p, decay)
        for k in e:
            ref = decay * np.float64(e[k]) + (1 - decay) * np.float64(p[k])
            np.testing.assert_allclose(out[k], ref, rtol=1e-6, atol=1e-7)
            assert out[k].dtype == jnp.float32
        out16 = update(e_bf16, p, decay)
        assert all(v.dtype == jnp.bfloat16 for v in out16.values())
        ref16 = decay * np.float64(np.asarray(e_bf16["a"], np.float32)) + (1 - decay) * p["a"]
        np.testing.assert_allclose(np.asarray(out16["a"], np.float32), ref16, rtol=1e-2, atol=1e-2)
    assert update._cache_size() == 2  # decay is traced: no recompile per value
    copied = update(jax.tree.map(jnp.asarray, e), p, 0.0)  # decay 0 copies the weights
    np.testing.assert_array_equal(copied["a"], p["a"])


@pytest.mark.parametrize(
    "overrides,match",
    [
        (dict(boundaries=(0, 10, 20), decays=(0.1, 0.5)), "equal length"),
        (dict(boundaries=(), decays=()), "non-empty"),
        (dict(boundaries=(0, 10, 10), decays=(0.1, 0.5, 0.6)), "strictly increasing"),
        (dict(boundaries=(5, 2), decays=(0.1, 0.5)), "strictly increasing"),
        (dict(boundaries=(0, 10), decays=(0.1, 1.0)), r"outside \[0, 1\)"),
        (dict(boundaries=(0, 10), decays=(-0.1, 0.5)), r"outside \[0, 1\)"),
    ],
)
def test_bad_piecewise_knots(overrides, match):
    cfg = _cfg(schedule="piecewise_linear", **overrides)
    with pytest.raises(ema.EMAConfigError, match=match):
        ema.validate(cfg)
    with pytest.raises(ema.EMAConfigError, match="config.ema"):
        ema.ema_decay(cfg, 0)


def test_unknown_schedule():
    with pytest.raises(ema.EMAConfigError, match="allowed"):
        ema.validate(_cfg(schedule="exponential"))
