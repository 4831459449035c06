"""AWM loss: ratio exactly 1 before the first update, float64 NumPy parity for every
weighting, gradients against central finite differences, and an accurate log-ratio."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ffjax import registry
from ffjax.algorithms import awm
from ffjax.algorithms.spec import REQUIRED_METRICS, Frozen

B, T, D = 6, 3, 4
SIGMA = np.array([0.95, 0.8, 0.65, 0.5, 0.3, 0.1], np.float32)
ADV = np.array([2.0, -1.5, 0.7, -9.0, 1.0, 6.0], np.float32)
WEIGHTINGS = awm.WEIGHTINGS


def policy(weights, base, x, sigma, cond):
    w = base["W"] if weights is None else base["W"] + weights["W"]
    b = base["b"] if weights is None else base["b"] + weights["b"]
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


def f64(tree):
    return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def _setup(seed=0, x0_scale=1.0):
    rng = np.random.default_rng(seed)
    w = {"base": _params(rng, 0.5), "trainable": _params(rng, 0.1)}
    w["snapshot"] = jax.tree.map(
        lambda a: (a + 0.02 * rng.standard_normal(a.shape)).astype(np.float32), w["trainable"]
    )
    w.update(ema=_params(rng, 0.1), ref=_params(rng, 0.1))
    x0 = (x0_scale * rng.standard_normal((B, T, D))).astype(np.float32)
    noise = rng.standard_normal((B, T, D)).astype(np.float32)
    c = rng.standard_normal((B, D)).astype(np.float32)
    return w, x0, noise, c


def _batch(x0, noise, c):
    return {
        "cond": {"c": jnp.asarray(c)},
        "x0": jnp.asarray(x0),
        "noise": jnp.asarray(noise),
        "sigma": jnp.asarray(SIGMA),
        "advantage": jnp.asarray(ADV),
    }


def _config(**kw):
    # The snapshot form unless a test says otherwise: it has a ratio to test.
    c = awm.default_config()
    c.update({"on_policy_old": "rollout", **kw})
    return c


def np_log_pi(v, target, s, weighting, p):
    """AWM's log-likelihood surrogate, float64 (scxue/advantage_weighted_matching)."""
    m = ((v - target) ** 2).mean(axis=(1, 2))
    e = 1e-10
    return {
        "uniform": -m,
        "t": -m * s,
        "t2": -m * s**2,
        "huber": -(np.sqrt(m + e) - np.sqrt(e)) * s,
        "ghuber": -((m + e) ** p - e**p) * s / p,
    }[weighting]


def np_awm(trainable, w, x0, noise, c, *, weighting, p, eps, a, kl_beta, ema_kl_beta, m=0.0):
    base = f64(w["base"])
    x0, noise, c, s = (np.asarray(z, np.float64) for z in (x0, noise, c, SIGMA))
    t = s[:, None, None]
    xt = (1 - t) * x0 + t * noise
    target = noise - x0
    v = np_policy(f64(trainable), base, xt, s, c)
    v_old = np_policy(f64(w["snapshot"]), base, xt, s, c)
    ratio = np.exp(
        np_log_pi(v, target, s, weighting, p) - np_log_pi(v_old, target, s, weighting, p)
    )
    adv = np.clip(ADV, -a, a)
    if m > 0:  # scxue/advantage_weighted_matching train_sd3_awm.py: advantage_max
        adv = adv / a * m
    policy_loss = np.mean(np.maximum(-adv * ratio, -adv * np.clip(ratio, 1 - eps, 1 + eps)))
    kl = np.mean(((v - np_policy(f64(w["ref"]), base, xt, s, c)) ** 2).mean(axis=(1, 2)))
    kl_ema = np.mean(((v - np_policy(f64(w["ema"]), base, xt, s, c)) ** 2).mean(axis=(1, 2)))
    loss = policy_loss + kl_beta * kl + ema_kl_beta * kl_ema
    return {"loss": loss, "policy_loss": policy_loss, "ratio": ratio, "kl": kl, "kl_ema": kl_ema}


def _frozen(w):
    return Frozen(base=w["base"], ref=w["ref"], ema=w["ema"], snapshot=w["snapshot"])


def test_spec_registered():
    spec = registry.ALGORITHMS.get("awm")
    assert spec.record == "final" and spec.make_loss is awm.make_loss and spec.needs_snapshot


# t and t2 share uniform's code path (-delta times a weight).
@pytest.mark.parametrize("weighting", ["uniform", "huber", "ghuber"])
def test_ratio_exactly_one_at_first_inner_step(weighting):
    w, x0, noise, c = _setup()
    frozen = _frozen(w).replace(snapshot=jax.tree.map(jnp.copy, w["trainable"]))
    loss_fn = awm.make_loss(_config(weighting=weighting, kl_beta=0.1), policy, dynamics="ode")
    grad_fn = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
    (_, m), _ = grad_fn(w["trainable"], frozen, _batch(x0, noise, c), jax.random.key(0))
    np.testing.assert_array_equal(m["ratio_min"], 1.0)
    np.testing.assert_array_equal(m["ratio_max"], 1.0)
    np.testing.assert_array_equal(m["clipfrac"], 0.0)
    np.testing.assert_array_equal(m["approx_kl"], 0.0)
    assert set(REQUIRED_METRICS) | {"kl_ema"} <= set(m)
    assert all(v.dtype == jnp.float32 and v.shape == () for v in m.values())


@pytest.mark.parametrize("weighting", WEIGHTINGS)
def test_loss_matches_numpy(weighting):
    w, x0, noise, c = _setup()
    eps, p = 4e-3, 0.3
    kw = dict(weighting=weighting, ghuber_p=p, clip_range=eps, adv_clip_max=5.0)
    kw.update(kl_beta=0.2, ema_kl_beta=0.05)
    loss, m = jax.jit(awm.make_loss(_config(**kw), policy, dynamics="ode"))(
        w["trainable"], _frozen(w), _batch(x0, noise, c), None
    )
    want = np_awm(w["trainable"], w, x0, noise, c, weighting=weighting, p=p, eps=eps, a=5.0,
                  kl_beta=0.2, ema_kl_beta=0.05)  # fmt: skip
    r = want["ratio"]
    assert 0 < np.mean(np.abs(r - 1) > eps) < 1  # some rows clipped, some not
    np.testing.assert_allclose(loss, want["loss"], rtol=1e-5)
    np.testing.assert_allclose(m["policy_loss"], want["policy_loss"], rtol=1e-5)
    np.testing.assert_allclose(m["ratio_mean"], r.mean(), rtol=1e-6)
    np.testing.assert_allclose([m["ratio_min"], m["ratio_max"]], [r.min(), r.max()], rtol=1e-6)
    np.testing.assert_allclose(m["clipfrac"], np.mean(np.abs(r - 1) > eps))
    np.testing.assert_allclose(m["approx_kl"], 0.5 * np.mean(np.log(r) ** 2), rtol=1e-4)
    np.testing.assert_allclose([m["kl"], m["kl_ema"]], [want["kl"], want["kl_ema"]], rtol=1e-5)


@pytest.mark.parametrize("advantage_max", [0.0, 1.0, 2.5])
def test_advantage_max_rescales_like_awm(advantage_max):
    """0: Flow-Factory's clipped advantage; m > 0: scxue AWM's clip(A, +-a) / a * m."""
    w, x0, noise, c = _setup()
    kw = dict(weighting="ghuber", ghuber_p=0.25, clip_range=4e-3, adv_clip_max=5.0)
    loss_fn = awm.make_loss(_config(advantage_max=advantage_max, **kw), policy, dynamics="ode")
    loss, m = jax.jit(loss_fn)(w["trainable"], _frozen(w), _batch(x0, noise, c), None)
    want = np_awm(w["trainable"], w, x0, noise, c, weighting="ghuber", p=0.25, eps=4e-3,
                  a=5.0, kl_beta=0.0, ema_kl_beta=0.0, m=advantage_max)  # fmt: skip
    np.testing.assert_allclose(loss, want["loss"], rtol=1e-5)
    if advantage_max:  # the policy loss is linear in A: the rescale is a factor m / a
        plain = np_awm(w["trainable"], w, x0, noise, c, weighting="ghuber", p=0.25, eps=4e-3,
                       a=5.0, kl_beta=0.0, ema_kl_beta=0.0)  # fmt: skip
        np.testing.assert_allclose(want["loss"], plain["loss"] * advantage_max / 5.0, rtol=1e-8)


def test_advantage_max_bad_values():
    with pytest.raises(ValueError, match="advantage_max must be >= 0"):
        awm.make_loss(_config(advantage_max=-1.0), policy, dynamics="ode")
    with pytest.raises(ValueError, match="adv_clip_bounds"):
        awm.make_loss(_config(advantage_max=1.0, adv_clip_bounds=(-1.0, 2.0)), policy,
                      dynamics="ode")  # fmt: skip


@pytest.mark.parametrize("weighting", ["uniform", "huber", "ghuber"])
def test_gradient_matches_finite_differences(weighting):
    w, x0, noise, c = _setup(1)
    kw = dict(weighting=weighting, ghuber_p=0.3, clip_range=0.02, kl_beta=0.2, ema_kl_beta=0.05)
    loss_fn = awm.make_loss(_config(**kw), policy, dynamics="ode")
    batch, frozen = _batch(x0, noise, c), _frozen(w)
    grads = jax.jit(jax.grad(lambda p: loss_fn(p, frozen, batch, None)[0]))(w["trainable"])

    def f(p):
        return np_awm(p, w, x0, noise, c, weighting=weighting, p=0.3, eps=0.02, a=5.0,
                      kl_beta=0.2, ema_kl_beta=0.05)["loss"]  # fmt: skip

    p64, h = f64(w["trainable"]), 1e-6
    for name in ("W", "b"):
        fd = np.zeros_like(p64[name])
        for i in np.ndindex(fd.shape):
            hi, lo = jax.tree.map(np.copy, p64), jax.tree.map(np.copy, p64)
            hi[name][i] += h
            lo[name][i] -= h
            fd[i] = (f(hi) - f(lo)) / (2 * h)
        np.testing.assert_allclose(grads[name], fd, rtol=1e-3, atol=1e-5)


def test_log_ratio_accurate_for_large_matching_error():
    # m ~ 1e3 (x0 ~ 30 N(0, 1)): a float32 m rounds at ~6e-5, near the clip range; the
    # log-ratio formed from differences keeps float32 accuracy relative to itself.
    rng = np.random.default_rng(2)
    x0 = (30 * rng.standard_normal((B, T, D))).astype(np.float32)
    noise = rng.standard_normal((B, T, D)).astype(np.float32)
    va = rng.standard_normal((B, T, D)).astype(np.float32)
    vb = (va + 1e-3 * rng.standard_normal((B, T, D))).astype(np.float32)

    def select(weights, base, x, sigma, cond):  # weights {"sel": 1} -> vb, {"sel": 0} -> va
        return cond["va"] * (1 - weights["sel"]) + cond["vb"] * weights["sel"]

    batch = _batch(x0, noise, np.zeros((B, D), np.float32))
    batch["cond"] = {"va": jnp.asarray(va), "vb": jnp.asarray(vb)}
    frozen = Frozen(base={}, snapshot={"sel": jnp.float32(0)})
    loss_fn = awm.make_loss(_config(clip_range=1.0), select, dynamics="ode")
    _, m = jax.jit(loss_fn)({"sel": jnp.float32(1)}, frozen, batch, None)

    target = noise.astype(np.float64) - x0.astype(np.float64)
    s = SIGMA.astype(np.float64)
    log_r = np_log_pi(vb.astype(np.float64), target, s, "uniform", 0.5) - np_log_pi(
        va.astype(np.float64), target, s, "uniform", 0.5
    )
    assert np.abs(log_r).max() > 1e-3  # a change the clip range would see
    np.testing.assert_allclose(m["approx_kl"], 0.5 * np.mean(log_r**2), rtol=1e-4)
    np.testing.assert_allclose(m["ratio_min"], np.exp(log_r).min(), rtol=0, atol=3e-7)
    np.testing.assert_allclose(m["ratio_max"], np.exp(log_r).max(), rtol=0, atol=3e-7)


def test_kl_terms_only_when_enabled():
    w, x0, noise, c = _setup()
    for kl_beta, ema_kl_beta, calls in ((0.0, 0.0, 2), (0.1, 0.0, 3), (0.1, 0.1, 4)):
        count = []

        def counting(*args, count=count):
            count.append(1)
            return policy(*args)

        cfg = _config(kl_beta=kl_beta, ema_kl_beta=ema_kl_beta)
        loss_fn = awm.make_loss(cfg, counting, dynamics="ode")
        jax.eval_shape(loss_fn, w["trainable"], _frozen(w), _batch(x0, noise, c), None)
        assert len(count) == calls


def test_missing_weights_rejected():
    w, x0, noise, c = _setup()
    batch = _batch(x0, noise, c)
    loss_fn = awm.make_loss(_config(ema_kl_beta=0.1), policy, dynamics="ode")
    for missing in ("snapshot", "ema"):
        frozen = _frozen(w).replace(**{missing: None})
        with pytest.raises(ValueError, match=f"{missing} is None"):
            jax.eval_shape(loss_fn, w["trainable"], frozen, batch, None)
    with pytest.raises(ValueError, match="weighting"):
        awm.make_loss(_config(weighting="t**2"), policy, dynamics="ode")


def test_flow_factory_old_policy_is_the_current_weights():
    """Flow-Factory's on-policy old policy: the current weights at the micro-batch, so
    r = 1 in value and the loss equals the snapshot form with the snapshot set to the
    current weights (value and gradient); no snapshot is needed."""
    w, x0, noise, c = _setup(3)
    batch = _batch(x0, noise, c)
    kw = dict(weighting="ghuber", ghuber_p=0.25, clip_range=0.02, kl_beta=0.1, ema_kl_beta=0.05)

    def run(on_policy_old, snapshot):
        loss_fn = awm.make_loss(_config(on_policy_old=on_policy_old, **kw), policy, dynamics="ode")
        frozen = _frozen(w).replace(snapshot=snapshot)
        grad_fn = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
        return grad_fn(w["trainable"], frozen, batch, None)

    (loss, m), grads = run("flow_factory", None)
    (want, m_want), grads_want = run("rollout", jax.tree.map(jnp.copy, w["trainable"]))
    np.testing.assert_array_equal([m["ratio_min"], m["ratio_max"], m["clipfrac"]], [1, 1, 0])
    np.testing.assert_allclose(loss, want, rtol=1e-6)
    for k in grads:
        np.testing.assert_allclose(grads[k], grads_want[k], rtol=1e-5, atol=1e-7)
    spec = registry.ALGORITHMS.get("awm")
    assert not spec.wants("needs_snapshot", awm.default_config())
    assert spec.wants("needs_snapshot", _config())
    with pytest.raises(ValueError, match="on_policy_old"):
        awm.make_loss(_config(on_policy_old="ema"), policy, dynamics="ode")
