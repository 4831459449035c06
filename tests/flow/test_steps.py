"""Flow steps against independent float64 NumPy formulas written from the papers."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from ffjax.flow import steps

SHAPE = (3, 4, 5, 2)


# --- float64 references, written from each paper's equations ---------------------------


def ref_flow_sde(x, v, s, s_next, eta):
    """Flow-GRPO eq. 9: dx = [v + g^2/(2t)(x + (1-t)v)] dt + g dW, g = eta sqrt(t/(1-t))."""
    t_for_g = s_next if s == 1.0 else s  # singular end: the schedule's second sigma
    g = eta * math.sqrt(s / (1 - t_for_g))
    dt = s_next - s
    drift = v + g**2 / (2 * s) * (x + (1 - s) * v)
    return x + drift * dt, g * math.sqrt(-dt)


def ref_dance_sde(x, v, s, s_next, eta):
    """DanceGRPO: Euler step plus the score correction -eta^2/2 * score * dt."""
    x0 = x - s * v
    score = -(x - (1 - s) * x0) / s**2
    dt = s_next - s
    return x + v * dt - 0.5 * eta**2 * score * dt, eta * math.sqrt(-dt)


def ref_cps(x, v, s, s_next, eta):
    """CPS: x' = (1-s')x0 + sqrt(s'^2 - c^2) eps_hat + c z, c = s' sin(eta pi / 2)."""
    c = s_next * math.sin(eta * math.pi / 2)
    x0, eps = x - s * v, x + (1 - s) * v
    return (1 - s_next) * x0 + math.sqrt(s_next**2 - c**2) * eps, c


REFS = {"flow_sde": ref_flow_sde, "dance_sde": ref_dance_sde, "cps": ref_cps}


def _data(seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(SHAPE), rng.standard_normal(SHAPE), rng.standard_normal(SHAPE)


@pytest.mark.parametrize("dynamics", ["flow_sde", "dance_sde", "cps"])
@pytest.mark.parametrize(
    "sigma,sigma_next,eta", [(1.0, 0.9, 0.7), (0.8, 0.6, 0.5), (0.3, 0.0, 1.0), (0.5, 0.45, 0.2)]
)
def test_dynamics_match_float64_reference(dynamics, sigma, sigma_next, eta):
    x, v, x_next = _data()
    mean_ref, std_ref = REFS[dynamics](x, v, sigma, sigma_next, eta)
    _, mean, std, log_prob = steps.step(
        dynamics, x, v, sigma, sigma_next, eta, x_next=x_next.astype(np.float32)
    )
    np.testing.assert_allclose(mean, mean_ref, rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(
        np.broadcast_to(std, SHAPE), np.broadcast_to(std_ref, SHAPE), rtol=1e-5, atol=1e-7
    )
    xn = x_next.astype(np.float32).astype(np.float64)
    if dynamics == "cps":
        lp_ref = -np.mean((xn - mean_ref) ** 2, axis=(1, 2, 3))
    elif std_ref == 0:
        lp_ref = np.zeros(SHAPE[0])
    else:
        lp_ref = stats.norm.logpdf(xn, loc=mean_ref, scale=std_ref).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(log_prob, lp_ref, rtol=1e-4, atol=1e-4)


def test_ode_step_is_euler_and_zero_noise_sdes_reduce_to_it():
    x, v, _ = _data(1)
    x_next, mean, _, lp = steps.step("ode", x, v, 0.7, 0.5, 0.0)
    np.testing.assert_allclose(x_next, x + v * (0.5 - 0.7), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(lp, np.zeros(SHAPE[0]))
    for dyn in ("flow_sde", "dance_sde", "cps"):
        xs, _, std, lps = steps.step(dyn, x, v, 0.7, 0.5, 0.0, key=jax.random.key(0))
        np.testing.assert_allclose(xs, mean, rtol=1e-5, atol=1e-5)
        assert float(jnp.max(std)) == 0.0
        np.testing.assert_allclose(lps, 0.0, atol=1e-10)


def test_per_sample_sigmas_and_noise_levels():
    x, v, xn = _data(2)
    sig = np.array([0.9, 0.5, 0.3])
    sig_next = np.array([0.8, 0.2, 0.0])
    eta = np.array([0.7, 0.0, 1.0])
    _, mean, _, lp = steps.step("flow_sde", x, v, sig, sig_next, eta, x_next=xn)
    for b in range(3):
        m_ref, s_ref = ref_flow_sde(x[b], v[b], sig[b], sig_next[b], eta[b])
        np.testing.assert_allclose(mean[b], m_ref, rtol=2e-5, atol=2e-5)
        want = 0.0 if s_ref == 0 else stats.norm.logpdf(xn[b], m_ref, s_ref).mean()
        np.testing.assert_allclose(lp[b], want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dynamics", ["flow_sde", "dance_sde", "cps"])
@pytest.mark.parametrize("storage_dtype", [None, jnp.bfloat16])
def test_sample_then_score_is_bit_identical(dynamics, storage_dtype):
    x, v, _ = _data(3)
    x, v = jnp.asarray(x, jnp.float32), jnp.asarray(v, jnp.float32)

    @jax.jit
    def sample(key):
        return steps.step(dynamics, x, v, 0.6, 0.4, 0.8, key=key, storage_dtype=storage_dtype)

    @jax.jit
    def score(x_next):
        return steps.step(dynamics, x, v, 0.6, 0.4, 0.8, x_next=x_next)

    x_next, _, _, lp_sampled = sample(jax.random.key(7))
    stored = x_next.astype(storage_dtype or jnp.float32)
    if storage_dtype is not None:  # the sample is already representable in storage dtype
        np.testing.assert_array_equal(stored.astype(jnp.float32), x_next)
    _, _, _, lp_scored = score(stored)
    np.testing.assert_array_equal(lp_sampled, lp_scored)


def test_cps_keeps_total_variance():
    rng = np.random.default_rng(4)
    n, s, s_next, eta = 200_000, 0.7, 0.4, 0.6
    x0 = rng.standard_normal((n, 1)) * 0.5 + 1.0
    eps = rng.standard_normal((n, 1))
    x = (1 - s) * x0 + s * eps
    v = eps - x0  # oracle velocity
    x_next, _, std, _ = steps.step("cps", x, v, s, s_next, eta, key=jax.random.key(1))
    resid = np.asarray(x_next, np.float64) - (1 - s_next) * x0
    assert np.var(resid) == pytest.approx(s_next**2, rel=0.01)
    c = float(np.max(std))
    assert c == pytest.approx(s_next * math.sin(eta * math.pi / 2), rel=1e-6)


def test_gradients_flow_through_mean_only():
    x, v, xn = (jnp.asarray(a, jnp.float32) for a in _data(5))

    def lp_of(v_, xn_):
        return steps.step("flow_sde", x, v_, 0.6, 0.4, 0.7, x_next=xn_)[3].sum()

    gv, gx = jax.grad(lp_of, argnums=(0, 1))(v, xn)
    assert float(jnp.abs(gv).sum()) > 0
    assert float(jnp.abs(gx).sum()) == 0.0


def test_bad_input_names_the_problem():
    x, v, _ = _data()
    with pytest.raises(ValueError, match="unknown dynamics 'sde'.*flow_sde"):
        steps.step("sde", x, v, 0.5, 0.4, 0.7, key=jax.random.key(0))
    with pytest.raises(ValueError, match="noise_level must be >= 0"):
        steps.step("flow_sde", x, v, 0.5, 0.4, -0.1, key=jax.random.key(0))
    with pytest.raises(ValueError, match="sigmas must decrease"):
        steps.step("flow_sde", x, v, 0.4, 0.5, 0.7, key=jax.random.key(0))
    with pytest.raises(ValueError, match="sigmas must decrease"):
        steps.step("ode", x, v, 0.4, 0.4, 0.0)
    with pytest.raises(ValueError, match="same shape"):
        steps.step("flow_sde", x, v[:, :2], 0.5, 0.4, 0.7, key=jax.random.key(0))
    with pytest.raises(ValueError, match="needs `key`"):
        steps.step("flow_sde", x, v, 0.5, 0.4, 0.7)
    with pytest.raises(ValueError, match="x_next must have shape"):
        steps.step("flow_sde", x, v, 0.5, 0.4, 0.7, x_next=x[:2])
