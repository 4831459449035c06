"""DiffusionNFT loss against a float64 NumPy implementation of the published formulas, and
its gradient against central finite differences of that implementation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ffjax import registry
from ffjax.algorithms import nft
from ffjax.algorithms.spec import Frozen

B, T, D = 6, 3, 4
SIGMA = np.array([1.0, 0.85, 0.7, 0.5, 0.3, 0.1], np.float32)
ADV = np.array([-7.0, -5.0, -1.0, 0.0, 2.0, 9.0], np.float32)


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


def _setup(seed=0):
    rng = np.random.default_rng(seed)
    w = {k: _params(rng, s) for k, s in (("base", 0.5), ("trainable", 0.2), ("snapshot", 0.2))}
    w.update(ema=_params(rng, 0.2), ref=_params(rng, 0.2))
    x0 = rng.standard_normal((B, T, D)).astype(np.float32)
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
    c = nft.default_config()
    c.update(kw)
    return c


def np_nft(trainable, old, ref, base, x0, noise, c, *, beta, a, kl_beta, weights=None):
    """DiffusionNFT, float64, written from the paper / NVlabs code.

    `weights` fixes the adaptive weights (w+, w-), which the loss treats as constants.
    """
    trainable, old, ref, base = f64(trainable), f64(old), f64(ref), f64(base)
    x0, noise, c, s = (np.asarray(z, np.float64) for z in (x0, noise, c, SIGMA))
    t = s[:, None, None]
    xt = (1 - t) * x0 + t * noise
    v, v_old = np_policy(trainable, base, xt, s, c), np_policy(old, base, xt, s, c)
    x0_pos = xt - t * (beta * v + (1 - beta) * v_old)
    x0_neg = xt - t * ((1 + beta) * v_old - beta * v)
    if weights is None:
        weights = tuple(
            np.maximum(np.abs(z - x0).mean(axis=(1, 2)), 1e-5) for z in (x0_pos, x0_neg)
        )
    pos = ((x0_pos - x0) ** 2).mean(axis=(1, 2)) / weights[0]
    neg = ((x0_neg - x0) ** 2).mean(axis=(1, 2)) / weights[1]
    r = np.clip(np.clip(ADV, -a, a) / a / 2 + 0.5, 0, 1)
    policy_loss = np.mean((r * pos + (1 - r) * neg) / beta * a)
    kl = np.mean(((v - np_policy(ref, base, xt, s, c)) ** 2).mean(axis=(1, 2)))
    out = {"policy_loss": policy_loss, "positive_loss": pos.mean(), "negative_loss": neg.mean()}
    out.update(kl=kl, loss=policy_loss + kl_beta * kl, weights=weights)
    return out


def test_spec_registered():
    spec = registry.ALGORITHMS.get("nft")
    assert spec.record == "final" and spec.make_loss is nft.make_loss and spec.needs_snapshot


@pytest.mark.parametrize(
    "off_policy,on_policy_old,beta,kl_beta,use_ref",
    [
        (True, "flow_factory", 1.0, 0.0, True),
        (False, "rollout", 0.5, 0.2, False),
        (False, "flow_factory", 0.5, 0.2, True),
    ],
)
def test_loss_matches_numpy(off_policy, on_policy_old, beta, kl_beta, use_ref):
    w, x0, noise, c = _setup()
    ref = w["ref"] if use_ref else None
    frozen = Frozen(base=w["base"], ref=ref, ema=w["ema"], snapshot=w["snapshot"])
    cfg = _config(off_policy=off_policy, on_policy_old=on_policy_old, beta=beta,
                  kl_beta=kl_beta, adv_clip_max=5.0)  # fmt: skip
    loss, m = jax.jit(nft.make_loss(cfg, policy, dynamics="ode"))(
        w["trainable"], frozen, _batch(x0, noise, c), jax.random.key(0)
    )
    # The old policy: the EMA (off-policy), the rollout snapshot, or the current weights.
    old = {"off": w["ema"], "rollout": w["snapshot"], "flow_factory": w["trainable"]}[
        "off" if off_policy else on_policy_old
    ]
    want = np_nft(w["trainable"], old, ref, w["base"], x0, noise, c, beta=beta, a=5.0,
                  kl_beta=kl_beta)  # fmt: skip
    np.testing.assert_allclose(loss, want["loss"], rtol=1e-5)
    for k in ("policy_loss", "positive_loss", "negative_loss"):
        np.testing.assert_allclose(m[k], want[k], rtol=1e-5)
    np.testing.assert_allclose(m["kl"], want["kl"] if kl_beta > 0 else 0.0, rtol=1e-5)
    assert not {"ratio_mean", "ratio_min", "ratio_max", "clipfrac", "approx_kl"} & set(m)
    assert all(v.dtype == jnp.float32 and v.shape == () for v in m.values())


@pytest.mark.parametrize("on_policy_old", ["rollout", "flow_factory"])
def test_gradient_matches_finite_differences(on_policy_old):
    w, x0, noise, c = _setup(1)
    beta, a, kl_beta = 0.5, 5.0, 0.2
    frozen = Frozen(base=w["base"], ref=w["ref"], snapshot=w["snapshot"])
    cfg = _config(off_policy=False, on_policy_old=on_policy_old, beta=beta, kl_beta=kl_beta)
    loss_fn = nft.make_loss(cfg, policy, dynamics="flow_sde")
    batch = _batch(x0, noise, c)
    grads = jax.jit(jax.grad(lambda p: loss_fn(p, frozen, batch, None)[0]))(w["trainable"])
    # The old policy is a constant of the loss: the snapshot, or the current weights
    # held at the point (Flow-Factory computes them without gradient).
    old = w["snapshot"] if on_policy_old == "rollout" else f64(w["trainable"])

    def f(p, weights):
        return np_nft(p, old, w["ref"], w["base"], x0, noise, c, beta=beta, a=a,
                      kl_beta=kl_beta, weights=weights)  # fmt: skip

    fixed = f(w["trainable"], None)["weights"]  # stop-gradient: hold w+- at the point
    p64, h = f64(w["trainable"]), 1e-6
    for name in ("W", "b"):
        fd = np.zeros_like(p64[name])
        for i in np.ndindex(fd.shape):
            hi, lo = jax.tree.map(np.copy, p64), jax.tree.map(np.copy, p64)
            hi[name][i] += h
            lo[name][i] -= h
            fd[i] = (f(hi, fixed)["loss"] - f(lo, fixed)["loss"]) / (2 * h)
        np.testing.assert_allclose(grads[name], fd, rtol=1e-3, atol=1e-5)


def test_old_policy_must_be_present():
    w, x0, noise, c = _setup()
    batch = _batch(x0, noise, c)
    for off_policy, missing in ((True, "ema"), (False, "snapshot")):
        frozen = Frozen(base=w["base"], ema=w["ema"], snapshot=w["snapshot"])
        frozen = frozen.replace(**{missing: None})
        cfg = _config(off_policy=off_policy, on_policy_old="rollout")
        loss_fn = nft.make_loss(cfg, policy, dynamics="ode")
        with pytest.raises(ValueError, match=f"{missing} is None"):
            jax.eval_shape(loss_fn, w["trainable"], frozen, batch, None)


@pytest.mark.parametrize("off_policy,extra", [(True, 1), (False, 0)])
def test_kl_beta_zero_skips_reference_forward(off_policy, extra):
    # Off-policy: old + current (+ reference); on-policy at Flow-Factory's default the
    # old velocities are the current pass's, so no second forward.
    w, x0, noise, c = _setup()
    frozen = Frozen(base=w["base"], ref=w["ref"], ema=w["ema"])
    for kl_beta, calls in ((0.0, 1 + extra), (0.1, 2 + extra)):
        count = []

        def counting(*args, count=count):
            count.append(1)
            return policy(*args)

        cfg = _config(kl_beta=kl_beta, off_policy=off_policy)
        loss_fn = nft.make_loss(cfg, counting, dynamics="ode")
        jax.eval_shape(loss_fn, w["trainable"], frozen, _batch(x0, noise, c), None)
        assert len(count) == calls


def test_adaptive_weight_floor():
    x0 = jnp.zeros((2, 3))
    x0_hat = jnp.array([[1e-7, -1e-7, 1e-7], [1.0, -2.0, 3.0]])
    # Row 0: mean|e| = 1e-7 < 1e-5 -> w = 1e-5; row 1: w = 2, mean e^2 = 14/3.
    np.testing.assert_allclose(
        nft._weighted_x0_error(x0_hat, x0), [1e-14 / 1e-5, 14 / 3 / 2], rtol=1e-5
    )


def test_on_policy_old_is_the_current_weights():
    """Flow-Factory's on-policy old policy equals the rollout form with the snapshot set
    to the current weights: same loss, same gradient, old_deviate 0."""
    w, x0, noise, c = _setup(2)
    batch = _batch(x0, noise, c)

    def run(on_policy_old, snapshot):
        frozen = Frozen(base=w["base"], ref=w["ref"], snapshot=snapshot)
        cfg = _config(off_policy=False, on_policy_old=on_policy_old, beta=0.7, kl_beta=0.1)
        loss_fn = nft.make_loss(cfg, policy, dynamics="ode")
        return jax.jit(jax.value_and_grad(lambda p: loss_fn(p, frozen, batch, None), has_aux=True))(
            w["trainable"]
        )

    (loss, m), grads = run("flow_factory", None)  # no snapshot needed
    (want, m_want), grads_want = run("rollout", w["trainable"])
    np.testing.assert_allclose(loss, want, rtol=1e-6)
    assert float(m["old_deviate"]) == 0.0  # a second pass of the same weights: ~1e-15
    assert float(m_want["old_deviate"]) < 1e-12
    for k in grads:
        np.testing.assert_allclose(grads[k], grads_want[k], rtol=1e-5, atol=1e-7)
    spec = registry.ALGORITHMS.get("nft")
    on_policy = _config(off_policy=False)
    assert not spec.wants("needs_snapshot", on_policy)
    assert spec.wants("needs_snapshot", _config(off_policy=False, on_policy_old="rollout"))
    assert not spec.wants("needs_snapshot", _config(off_policy=True, on_policy_old="rollout"))


def test_bad_config_rejected():
    with pytest.raises(ValueError, match="beta"):
        nft.make_loss(_config(beta=0.0), policy, dynamics="ode")
    with pytest.raises(ValueError, match="on_policy_old"):
        nft.make_loss(_config(on_policy_old="ema"), policy, dynamics="ode")
