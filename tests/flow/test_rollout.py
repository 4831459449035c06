"""The jit rollout: marginals, recording, no retracing when the SDE window moves."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ffjax.flow import rollout, schedule, steps

# Gaussian data x0 ~ N(M, S^2) per coordinate. Its exact flow-matching velocity is linear:
# with a = 1 - sigma and var = a^2 S^2 + sigma^2,
#   v(x, sigma) = E[noise - x0 | x] = (sigma - a S^2) / var * (x - a M) - M.
M, S = 1.5, 0.5


def gaussian_velocity(params, x, sigma, cond):
    m, s = params
    sigma = sigma.reshape((-1,) + (1,) * (x.ndim - 1))
    a = 1 - sigma
    var = a**2 * s**2 + sigma**2
    return (sigma - a * s**2) / var * (x - a * m) - m


PARAMS = (jnp.float32(M), jnp.float32(S))


@pytest.mark.slow
# CPS is checked at a small noise level: it re-noises a constant fraction sin(eta pi/2) of
# sigma_next each step with a *posterior-mean* x0 estimate, so its end variance falls
# short of the data's by a fraction growing with eta (measured here with 40 steps: 0.1%
# at eta 0.1, 16% at eta 0.7) and not shrinking with more steps. That is the method,
# not a bug: Flow-Factory's CPS step gives the same chain.
@pytest.mark.parametrize("dynamics,eta", [("flow_sde", 0.7), ("dance_sde", 0.5), ("cps", 0.1)])
def test_sde_end_marginals_match_ode(dynamics, eta):
    n_steps, batch = 40, 20_000
    sig = schedule.fixed_shift_sigmas(n_steps, 1.0)
    noise = jax.random.normal(jax.random.key(0), (batch, 2))
    # SDE on every step but the last (the references' default candidate set).
    levels = rollout.noise_levels_for(n_steps, range(n_steps - 1), eta)
    x_ode, _ = rollout.rollout(
        gaussian_velocity,
        PARAMS,
        None,
        noise,
        sig,
        np.zeros(n_steps, np.float32),
        jax.random.key(1),
        dynamics="ode",
    )
    x_sde, _ = rollout.rollout(
        gaussian_velocity, PARAMS, None, noise, sig, levels, jax.random.key(2), dynamics=dynamics
    )
    x_ode, x_sde = np.asarray(x_ode, np.float64), np.asarray(x_sde, np.float64)
    # The ODE reaches the data distribution up to discretisation error.
    assert x_ode.mean() == pytest.approx(M, abs=0.02)
    assert x_ode.std() == pytest.approx(S, rel=0.05)
    # Standard errors: mean ~ S / sqrt(2n) = 0.0025; std ~ S / sqrt(4n) = 0.0018.
    assert x_sde.mean() == pytest.approx(x_ode.mean(), abs=0.02)
    assert x_sde.std() == pytest.approx(x_ode.std(), rel=0.05)


def test_recorded_steps_rescore_to_the_same_log_prob():
    n_steps = 6
    sig = schedule.flux_sigmas(n_steps, 64)
    noise = jax.random.normal(jax.random.key(0), (4, 3, 2))
    record = np.array([1, 3], np.int32)
    levels = rollout.noise_levels_for(n_steps, record, 0.8)
    x_final, traj = rollout.rollout(
        gaussian_velocity,
        PARAMS,
        None,
        noise,
        sig,
        levels,
        jax.random.key(5),
        record,
        storage_dtype=jnp.bfloat16,
    )
    assert x_final.dtype == jnp.bfloat16 and traj.x_t.shape == (2, 4, 3, 2)
    np.testing.assert_array_equal(traj.step, record)
    np.testing.assert_array_equal(traj.sigma, sig[record])
    np.testing.assert_array_equal(traj.sigma_next, sig[record + 1])
    for j, i in enumerate(record):
        v = gaussian_velocity(PARAMS, traj.x_t[j].astype(jnp.float32), jnp.full((4,), sig[i]), None)
        _, _, _, lp = jax.jit(
            lambda v, xt, xn, i=i: steps.step("flow_sde", xt, v, sig[i], sig[i + 1], 0.8, x_next=xn)
        )(v, traj.x_t[j], traj.x_next[j])
        np.testing.assert_allclose(lp, traj.log_prob[j], rtol=1e-6, atol=1e-6)
        assert np.all(np.asarray(traj.log_prob[j]) != 0)


def test_rollout_without_noise_is_euler_integration():
    n_steps = 5
    sig = schedule.fixed_shift_sigmas(n_steps, 3.0)
    noise = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    x_final, traj = rollout.rollout(
        gaussian_velocity,
        PARAMS,
        None,
        noise,
        sig,
        np.zeros(n_steps, np.float32),
        jax.random.key(0),
    )
    assert traj is None
    x = noise.astype(np.float64)
    for i in range(n_steps):
        s = np.full((2,), sig[i], np.float64)
        a = 1 - s[:, None]
        var = a**2 * S**2 + s[:, None] ** 2
        v = (s[:, None] - a * S**2) / var * (x - a * M) - M
        x = x + v * (float(sig[i + 1]) - float(sig[i]))
    np.testing.assert_allclose(x_final, x, rtol=1e-5, atol=1e-5)


def test_prepare_fn_runs_once_before_the_steps():
    """`prepare_fn(params, cond)` is evaluated once per rollout, outside the step loop,
    and the steps see its result (what WAN's cross-attention K/V caching relies on)."""
    n_steps = 4
    sig = schedule.fixed_shift_sigmas(n_steps, 3.0)
    noise = jnp.ones((2, 3))
    levels = np.zeros(n_steps, np.float32)
    calls = []

    def prepare(params, cond):
        calls.append(1)  # trace time: once per compilation
        return {"offset": cond["raw"] * 2.0}

    def velocity(params, x, sigma, cond):
        assert "offset" in cond, "the steps must see the prepared cond"
        return gaussian_velocity(params, x, sigma, None) + cond["offset"]

    def plain(params, x, sigma, cond):
        return gaussian_velocity(params, x, sigma, None) + 2.0 * cond["raw"]

    cond = {"raw": jnp.full((2, 3), 0.25)}
    got, _ = rollout.rollout(velocity, PARAMS, cond, noise, sig, levels, jax.random.key(0),
                             prepare_fn=prepare)  # fmt: skip
    want, _ = rollout.rollout(plain, PARAMS, cond, noise, sig, levels, jax.random.key(0))
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert len(calls) == 1
    jaxpr = jax.make_jaxpr(
        lambda c: rollout._rollout_jit(
            velocity,
            PARAMS,
            c,
            noise,
            jnp.asarray(sig),
            levels,
            jax.random.key(0),
            None,
            dynamics="flow_sde",
            storage_dtype=jnp.float32,
            prepare_fn=prepare,
        )  # fmt: skip
    )(cond)
    # The doubling happens once: outside the scan body, which sees the doubled array.
    assert "mul" in str(jaxpr.jaxpr).split("scan")[0]


def test_moving_the_sde_window_does_not_retrace():
    traces = []

    def counting_velocity(params, x, sigma, cond):
        traces.append(1)  # runs at trace time only
        return gaussian_velocity(params, x, sigma, cond)

    n_steps = 8
    sig = schedule.flux_sigmas(n_steps, 64)
    noise = jnp.ones((2, 4))
    for epoch in range(4):
        window = rollout.sde_window(seed=3, epoch=epoch, candidates=range(n_steps - 1), k=2)
        levels = rollout.noise_levels_for(n_steps, window, 0.7)
        rollout.rollout(
            counting_velocity, PARAMS, None, noise, sig, levels, jax.random.key(epoch), window
        )
    assert len(traces) == 1


def test_sde_window_is_deterministic_and_valid():
    a = rollout.sde_window(0, 5, range(10), 3)
    b = rollout.sde_window(0, 5, range(10), 3)
    np.testing.assert_array_equal(a, b)
    assert len(set(a.tolist())) == 3 and a.min() >= 0 and a.max() < 10
    windows = {tuple(rollout.sde_window(0, e, range(10), 3)) for e in range(20)}
    assert len(windows) > 5  # it moves with the epoch
    c = rollout.sde_window(1, 2, [2, 3, 4, 5, 6], 3, contiguous=True)
    assert np.all(np.diff(c) == 1)
    with pytest.raises(ValueError, match="k must be in"):
        rollout.sde_window(0, 0, range(3), 4)


def test_rollout_bad_input():
    sig = schedule.fixed_shift_sigmas(4, 1.0)
    noise = jnp.ones((2, 3))
    key = jax.random.key(0)
    zeros = np.zeros(4, np.float32)
    with pytest.raises(ValueError, match="strictly decreasing"):
        rollout.rollout(gaussian_velocity, PARAMS, None, noise, sig[::-1].copy(), zeros, key)
    with pytest.raises(ValueError, match="noise_levels must have shape"):
        rollout.rollout(gaussian_velocity, PARAMS, None, noise, sig, np.zeros(3), key)
    with pytest.raises(ValueError, match="noise_levels must be >= 0"):
        rollout.rollout(gaussian_velocity, PARAMS, None, noise, sig, -np.ones(4), key)
    with pytest.raises(ValueError, match="record_steps"):
        rollout.rollout(gaussian_velocity, PARAMS, None, noise, sig, zeros, key, np.array([4]))
    with pytest.raises(ValueError, match="unknown dynamics"):
        rollout.rollout(gaussian_velocity, PARAMS, None, noise, sig, zeros, key, dynamics="sde")


def _mixgrpo_starts(n, last, interval, stride, roll_back):
    """Window starts of Tencent-Hunyuan/MixGRPO e5cdd6a fastvideo/utils/grpo_states.py
    (progressive, prog_overlap) with max_timesteps = last, as its training loop reads them:
    get_current_timesteps, then update_iteration, once per step."""
    cur, count, out = 0, 0, []
    for _ in range(n):
        out.append(cur)
        count += 1
        if count >= interval:
            count = 0
            cur += stride
        if cur > last:
            cur, count = (0, 0) if roll_back else (last, count)
    return out


@pytest.mark.parametrize("interval,stride,roll_back", [(25, 1, True), (3, 2, True), (4, 3, False), (1, 1, False)])  # fmt: skip
def test_progressive_window_follows_mixgrpo(interval, stride, roll_back):
    candidates, k = list(range(1, 24)), 4  # 23 candidates: starts 0 .. 19
    last = len(candidates) - k
    want = _mixgrpo_starts(300, last, interval, stride, roll_back)
    for epoch in range(300):
        got = rollout.sde_window(7, epoch, candidates, k, progressive=(interval, stride, roll_back))
        start = want[epoch]
        np.testing.assert_array_equal(got, candidates[start : start + k])
    assert rollout.progressive_start(10**6, last, interval, stride, roll_back) <= last
    with pytest.raises(ValueError, match="interval and stride"):
        rollout.progressive_start(0, last, 0, 1, True)


def test_the_run_reads_the_window_keys():
    from ffjax import configs
    from ffjax import run as run_lib

    c = configs.base_config()
    c.sampling.num_steps, c.sampling.sde_num_steps = 10, 3  # candidates 0 .. 8
    c.sampling.sde_window = "progressive"
    c.sampling.window_interval, c.sampling.window_stride = 2, 2
    starts = [int(run_lib.sde_window(c, e)[0]) for e in range(10)]
    assert starts == [0, 0, 2, 2, 4, 4, 6, 6, 0, 0]  # 6 = 9 - 3 is the last start
    c.sampling.window_roll_back = False
    assert [int(run_lib.sde_window(c, e)[0]) for e in (8, 100)] == [6, 6]
