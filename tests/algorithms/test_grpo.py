"""GRPO / GRPO-Guard losses: ratio exactly 1 on-policy, hand-computed clipping, KL and
RatioNorm against float64 NumPy written from the papers, no reference forward at kl_beta=0."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ffjax import registry
from ffjax.algorithms import grpo
from ffjax.algorithms.spec import REQUIRED_METRICS, Frozen
from ffjax.flow import steps

B, T, D = 6, 3, 4
SIGMA = np.array([1.0, 0.9, 0.75, 0.6, 0.45, 0.3], np.float32)
SIGMA_NEXT = np.array([0.9, 0.75, 0.6, 0.45, 0.3, 0.1], np.float32)
ETA = 0.7
RNG_KEY = jax.random.key(0, impl="rbg")  # compiles much faster on CPU than threefry


# --- a tiny analytic policy: v = x @ (W0 + W) + sigma (b0 + b) + c --------------------------


def policy(weights, base, x, sigma, cond):
    w = base["W"] if weights is None else base["W"] + weights["W"]
    b = base["b"] if weights is None else base["b"] + weights["b"]
    x = jnp.asarray(x, jnp.float32)
    return x @ w + sigma[:, None, None] * b + cond["c"][:, None, :]


def np_policy(weights, base, x, sigma, c):
    w = base["W"] if weights is None else base["W"] + weights["W"]
    b = base["b"] if weights is None else base["b"] + weights["b"]
    return x @ w + sigma[:, None, None] * b + c[:, None, :]


def _params(rng, scale):
    return {
        "W": (scale * rng.standard_normal((D, D))).astype(np.float32),
        "b": (scale * rng.standard_normal(D)).astype(np.float32),
    }


def _setup(seed=0):
    rng = np.random.default_rng(seed)
    base = _params(rng, 0.5)
    trainable = _params(rng, 0.1)
    snapshot = jax.tree.map(
        lambda a: a + np.float32(0.05) * rng.standard_normal(a.shape), trainable
    )
    snapshot = jax.tree.map(lambda a: a.astype(np.float32), snapshot)
    ref = _params(rng, 0.1)
    x_t = rng.standard_normal((B, T, D)).astype(np.float32)
    c = rng.standard_normal((B, D)).astype(np.float32)
    adv = np.array([2.0, -1.0, 0.5, -7.0, 3.0, 9.0], np.float32)
    return base, trainable, snapshot, ref, x_t, c, adv


def _config(name, **kw):
    c = registry.ALGORITHMS.get(name).default_config()
    c.update(kw)
    return c


def _loss(name, config, dynamics="flow_sde", count=None):
    pol = policy
    if count is not None:

        def pol(*args):
            count.append(1)
            return policy(*args)

    spec = registry.ALGORITHMS.get(name)
    return spec.make_loss(config, pol, dynamics=dynamics)


def _batch(x_t, x_next, log_prob, c, adv):
    return {
        "cond": {"c": jnp.asarray(c)},
        "x_t": jnp.asarray(x_t),
        "x_next": jnp.asarray(x_next),
        "log_prob": jnp.asarray(log_prob, jnp.float32),
        "sigma": jnp.asarray(SIGMA),
        "sigma_next": jnp.asarray(SIGMA_NEXT),
        "noise_level": jnp.full((B,), ETA, jnp.float32),
        "advantage": jnp.asarray(adv),
    }


@jax.jit
def _score(trainable, base, x_t, x_next, c):
    v = policy(trainable, base, x_t, jnp.asarray(SIGMA), {"c": c})
    _, mean, std, lp = steps.step("flow_sde", x_t, v, SIGMA, SIGMA_NEXT, ETA, x_next=x_next)
    return mean, std, lp


# --- float64 references ---------------------------------------------------------------------


def np_flow_sde(x, v, s, s_next, eta):
    """Flow-GRPO eq. 9 per row; returns (mean, std[B, 1, 1])."""
    s_den = np.where(s == 1.0, s_next, s)
    g = eta * np.sqrt(s / (1 - s_den))
    dt = s_next - s
    g, s_, dt = (a[:, None, None] for a in (g, s, dt))
    mean = x + (v + g**2 / (2 * s_) * (x + (1 - s_) * v)) * dt
    return mean, g * np.sqrt(-dt)


def np_log_prob(x_next, mean, std):
    lp = -((x_next - mean) ** 2) / (2 * std**2) - np.log(std) - 0.5 * math.log(2 * math.pi)
    return lp.mean(axis=(1, 2))


def f64(tree):
    return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


# --- tests ----------------------------------------------------------------------------------


def test_specs_registered():
    g, guard = registry.ALGORITHMS.get("grpo"), registry.ALGORITHMS.get("grpo-guard")
    assert g.make_loss is grpo.make_loss and guard.make_loss is grpo.make_guard_loss
    assert g.record == guard.record == "sde_steps"
    assert not g.needs_snapshot and guard.needs_snapshot
    assert "grad_reweight" in guard.default_config() and "grad_reweight" not in g.default_config()


@pytest.mark.parametrize(
    "name,dynamics",
    [("grpo", "flow_sde"), ("grpo", "cps"), ("grpo-guard", "dance_sde")],
)
def test_ratio_exactly_one_at_first_inner_step(name, dynamics):
    base, trainable, _, _, x_t, c, adv = _setup()
    x_t = jnp.asarray(x_t, jnp.bfloat16)  # the rollout carries latents in the storage dtype

    @jax.jit
    def rollout(weights, base, x_t, sigma, sigma_next, eta, cond, key):
        v = policy(weights, base, x_t, sigma, cond)
        x_next, _, _, lp = steps.step(
            dynamics, x_t, v, sigma, sigma_next, eta, key=key, storage_dtype=jnp.bfloat16
        )
        return x_next.astype(jnp.bfloat16), lp

    x_next, lp = rollout(
        trainable, base, x_t, SIGMA, SIGMA_NEXT, jnp.full((B,), ETA), {"c": c}, RNG_KEY
    )
    batch = _batch(x_t, x_next, lp, c, adv)
    frozen = Frozen(base=base, snapshot=jax.tree.map(jnp.copy, trainable))
    loss_fn = _loss(name, _config(name, kl_beta=0.1), dynamics)
    grad_fn = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
    (_, m), grads = grad_fn(trainable, frozen, batch, jax.random.key(1))
    np.testing.assert_array_equal(m["ratio_min"], 1.0)
    np.testing.assert_array_equal(m["ratio_max"], 1.0)
    np.testing.assert_array_equal(m["clipfrac"], 0.0)
    # Bit-equal log-probs would give 0; XLA may fuse cps's final negation into the
    # loss's subtraction (an FMA), a ~1e-8 difference that still rounds r to 1.0.
    assert float(m["approx_kl"]) < 1e-14
    assert set(REQUIRED_METRICS) <= set(m) and "policy_loss" in m
    assert all(v.dtype == jnp.float32 and v.shape == () for v in m.values())
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))


def test_clipping_hand_computed():
    base, trainable, _, _, x_t, c, _ = _setup()
    x_next = x_t + 0.1
    _, _, lp = _score(trainable, base, x_t, x_next, c)
    # Rows (A, r) with eps = 0.2, adv_clip_max = 5: per-row max(-A r, -A clip(r)) is
    # (2, 1.5) -> -2.4; (-2, 1.5) -> 3; (2, 0.5) -> -1; (-2, 0.5) -> 1.6; (1, 1.1) -> -1.1;
    # (10 -> 5, 1.0) -> -5.
    r = np.array([1.5, 1.5, 0.5, 0.5, 1.1, 1.0])
    adv = np.array([2.0, -2.0, 2.0, -2.0, 1.0, 10.0], np.float32)
    old = np.asarray(lp, np.float64) - np.log(r)
    loss_fn = _loss("grpo", _config("grpo", clip_range=0.2, adv_clip_max=5.0))
    loss, m = jax.jit(loss_fn)(
        trainable, Frozen(base=base), _batch(x_t, x_next, old, c, adv), jax.random.key(0)
    )
    expected = np.mean([-2.4, 3.0, -1.0, 1.6, -1.1, -5.0])
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    np.testing.assert_allclose(m["policy_loss"], expected, rtol=1e-5)
    assert float(m["clipfrac"]) == np.float32(4 / 6)
    np.testing.assert_allclose([m["ratio_min"], m["ratio_max"]], [0.5, 1.5], rtol=1e-5)
    np.testing.assert_allclose(m["approx_kl"], 0.5 * np.mean(np.log(r) ** 2), rtol=1e-4)
    np.testing.assert_array_equal(m["kl"], 0.0)


@pytest.mark.parametrize(
    "kl_type,kl_form",
    [
        ("x-based", "flow_factory"),
        ("x-based", "flow_grpo"),
        ("x-based", "gaussian"),
        ("v-based", "flow_factory"),
    ],
)
@pytest.mark.parametrize("use_ref", [True, False])
def test_kl_matches_numpy(kl_type, kl_form, use_ref):
    """Float64 references of the KL forms. x-based, m = mean_d (mu - mu_ref)^2:
    flow_factory m (X-GenGroup/Flow-Factory a0b2bc5 src/flow_factory/trainers/grpo.py
    lines 301-307); flow_grpo m / (2 g^2) with g = s / sqrt(-dt) its std_dev_t
    (yifan123/flow_grpo 54809b5 flow_grpo/diffusers_patch/sd3_sde_with_logprob.py);
    gaussian m / (2 s^2)."""
    base, trainable, _, ref, x_t, c, adv = _setup()
    ref = ref if use_ref else None  # None: the base model alone
    rng = np.random.default_rng(3)
    x_next = x_t + 0.2 * rng.standard_normal(x_t.shape).astype(np.float32)
    old = np.asarray(_score(trainable, base, x_t, x_next, c)[2]) - 0.01
    beta = 0.3
    loss_fn = _loss("grpo", _config("grpo", kl_beta=beta, kl_type=kl_type, kl_form=kl_form))
    loss, m = jax.jit(loss_fn)(
        trainable, Frozen(base=base, ref=ref), _batch(x_t, x_next, old, c, adv), None
    )

    bb, tt, rr = f64(base), f64(trainable), f64(ref)
    s, sn = SIGMA.astype(np.float64), SIGMA_NEXT.astype(np.float64)
    x, cc = x_t.astype(np.float64), c.astype(np.float64)
    v, v_ref = np_policy(tt, bb, x, s, cc), np_policy(rr, bb, x, s, cc)
    mean, std = np_flow_sde(x, v, s, sn, ETA)
    mean_ref, _ = np_flow_sde(x, v_ref, s, sn, ETA)
    sq = ((mean - mean_ref) ** 2).mean(axis=(1, 2))
    std_row = np.broadcast_to(std, mean.shape).reshape(len(mean), -1)[:, 0]
    if kl_type == "x-based" and kl_form == "flow_factory":
        kl = np.mean(sq)
    elif kl_type == "x-based" and kl_form == "flow_grpo":
        kl = np.mean(sq / (2 * std_row**2 / (s - sn)))
    elif kl_type == "x-based":
        kl = np.mean(sq / (2 * std_row**2))
    else:
        kl = np.mean(((v - v_ref) ** 2).mean(axis=(1, 2)))
    ratio = np.exp(np_log_prob(x_next.astype(np.float64), mean, std) - old)
    a = np.clip(adv, -5, 5)
    eps = 1e-4
    policy_loss = np.mean(np.maximum(-a * ratio, -a * np.clip(ratio, 1 - eps, 1 + eps)))
    np.testing.assert_allclose(m["kl"], kl, rtol=1e-5)
    np.testing.assert_allclose(m["policy_loss"], policy_loss, rtol=1e-4)
    np.testing.assert_allclose(loss, policy_loss + beta * kl, rtol=1e-4)


@pytest.mark.parametrize("name", ["grpo", "grpo-guard"])
def test_kl_beta_zero_skips_reference_forward(name):
    base, trainable, snapshot, ref, x_t, c, adv = _setup()
    batch = _batch(x_t, x_t + 0.1, np.zeros(B), c, adv)
    frozen = Frozen(base=base, ref=ref, snapshot=snapshot)
    own = 2 if name == "grpo-guard" else 1  # the guard also scores the rollout weights
    for kl_beta, calls in ((0.0, own), (0.5, own + 1)):
        count = []
        loss_fn = _loss(name, _config(name, kl_beta=kl_beta), count=count)
        jax.eval_shape(loss_fn, trainable, frozen, batch, jax.random.key(0))
        assert len(count) == calls


def _np_guard(trainable, snapshot, base, x_t, x_next, c, old_lp, adv, eps, reweight):
    """GRPO-Guard from its equations, float64: RatioNorm ratio and the 1/(-dt) reweighting."""
    bb, s, sn = f64(base), SIGMA.astype(np.float64), SIGMA_NEXT.astype(np.float64)
    x, xn, cc = (a.astype(np.float64) for a in (x_t, x_next, c))
    mean, std = np_flow_sde(x, np_policy(f64(trainable), bb, x, s, cc), s, sn, ETA)
    mean_old, _ = np_flow_sde(x, np_policy(f64(snapshot), bb, x, s, cc), s, sn, ETA)
    lp = np_log_prob(xn, mean, std)
    sd = std.reshape(-1)
    bias = ((mean - mean_old) ** 2).mean(axis=(1, 2)) / (2 * sd**2)
    ratio = np.exp((lp - old_lp + bias) * sd)
    a = np.clip(adv, -5, 5)
    per_row = np.maximum(-a * ratio, -a * np.clip(ratio, 1 - eps, 1 + eps))
    if reweight:
        per_row = per_row / (s - sn)
    return np.mean(per_row), ratio, bias


@pytest.mark.parametrize("reweight", [True, False])
def test_guard_ratio_norm_matches_numpy(reweight):
    base, trainable, snapshot, _, x_t, c, adv = _setup()
    rng = np.random.default_rng(5)
    # Steps sampled from the rollout-time (snapshot) policy, with its log-prob.
    mean_old, std, old_lp = (np.asarray(a) for a in _score(snapshot, base, x_t, x_t, c))
    x_next = (mean_old + std * rng.standard_normal(x_t.shape)).astype(np.float32)
    old_lp = np.asarray(_score(snapshot, base, x_t, x_next, c)[2], np.float64)
    eps = 0.004
    cfg = _config("grpo-guard", clip_range=eps, grad_reweight=reweight)
    loss, m = jax.jit(_loss("grpo-guard", cfg))(
        trainable,
        Frozen(base=base, snapshot=snapshot),
        _batch(x_t, x_next, old_lp, c, adv),
        jax.random.key(0),
    )
    ref_loss, ratio, bias = _np_guard(
        trainable, snapshot, base, x_t, x_next, c, old_lp, adv, eps, reweight
    )
    assert 0 < np.mean(np.abs(ratio - 1) > eps) < 1  # some rows clipped, some not
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-4)
    np.testing.assert_allclose(m["ratio_mean"], ratio.mean(), rtol=1e-5)
    np.testing.assert_allclose(
        [m["ratio_min"], m["ratio_max"]], [ratio.min(), ratio.max()], rtol=1e-5
    )
    np.testing.assert_allclose(m["clipfrac"], np.mean(np.abs(ratio - 1) > eps))
    np.testing.assert_allclose(m["guard_bias"], bias.mean(), rtol=1e-4)
    # RatioNorm's closed form: log r~ = mean_d (mu_theta - mu_old)(x_next - mu_old) / s.
    bb, s, sn = f64(base), SIGMA.astype(np.float64), SIGMA_NEXT.astype(np.float64)
    x, cc = x_t.astype(np.float64), c.astype(np.float64)
    mu, sd = np_flow_sde(x, np_policy(f64(trainable), bb, x, s, cc), s, sn, ETA)
    mu_old, _ = np_flow_sde(x, np_policy(f64(snapshot), bb, x, s, cc), s, sn, ETA)
    closed = ((mu - mu_old) * (x_next - mu_old) / sd).mean(axis=(1, 2))
    np.testing.assert_allclose(np.log(ratio), closed, rtol=1e-4, atol=1e-7)


def test_guard_gradient_matches_finite_differences():
    base, trainable, snapshot, _, x_t, c, adv = _setup()
    rng = np.random.default_rng(6)
    x_next = (x_t + 0.3 * rng.standard_normal(x_t.shape)).astype(np.float32)
    old_lp = np.asarray(_score(snapshot, base, x_t, x_next, c)[2], np.float64)
    eps = 10.0  # no clipping: a smooth objective for finite differences
    cfg = _config("grpo-guard", clip_range=eps)
    loss_fn = _loss("grpo-guard", cfg)
    batch = _batch(x_t, x_next, old_lp, c, adv)
    grads = jax.jit(
        jax.grad(lambda w: loss_fn(w, Frozen(base, snapshot=snapshot), batch, None)[0])
    )(trainable)
    w64 = f64(trainable)
    for name in ("W", "b"):
        fd = np.zeros_like(w64[name])
        for i in np.ndindex(fd.shape):
            hi, lo = jax.tree.map(np.copy, w64), jax.tree.map(np.copy, w64)
            hi[name][i] += 1e-6
            lo[name][i] -= 1e-6
            f = lambda w: _np_guard(w, snapshot, base, x_t, x_next, c, old_lp, adv, eps, True)[0]
            fd[i] = (f(hi) - f(lo)) / 2e-6
        np.testing.assert_allclose(grads[name], fd, rtol=1e-3, atol=1e-4)


def test_unsupported_dynamics_rejected():
    with pytest.raises(ValueError, match="stochastic"):
        _loss("grpo", _config("grpo"), "ode")
    with pytest.raises(ValueError, match="Gaussian"):
        _loss("grpo-guard", _config("grpo-guard"), "cps")


def test_guard_needs_snapshot():
    base, trainable, _, _, x_t, c, adv = _setup()
    loss_fn = _loss("grpo-guard", _config("grpo-guard"))
    with pytest.raises(ValueError, match="snapshot is None"):
        jax.eval_shape(
            loss_fn, trainable, Frozen(base=base), _batch(x_t, x_t, np.zeros(B), c, adv), None
        )
