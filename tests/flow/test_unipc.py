"""UniPC flow-sigma grid and the UniPC multistep sampler (ffjax.flow.schedule, ffjax.flow.unipc).

References:
  - Diffusers 0.42.1 `UniPCMultistepScheduler` (the class itself, run here) with the
    scheduler config Wan 2.1 / 2.2 Diffusers pipelines ship: use_flow_sigmas, flow_shift
    3.0, prediction_type flow_prediction, solver_order 2, solver_type bh2,
    lower_order_final, final_sigmas_type zero.
  - Flow-Factory's WAN rollout grid, X-GenGroup/Flow-Factory a0b2bc5
    src/flow_factory/models/wan/wan2_t2v.py (inference: the scheduler's integer
    `timesteps` t, t_next = 0 after the last) and
    src/flow_factory/scheduler/unipc_multistep.py (`step` with `timestep_next`:
    sigma = timestep / 1000, sigma_prev = timestep_next / 1000).
  - A float64 NumPy transcription of the UniP / UniC updates (Zhao et al. 2023, eqs. 6
    and 8 with B(h); the order schedule of Diffusers' scheduler), written in the
    paper's D_k form, independent of the folded weights in ffjax.flow.unipc.
"""

import json
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from ffjax.flow import schedule, unipc

WAN_UNIPC = dict(
    num_train_timesteps=1000, flow_shift=3.0, prediction_type="flow_prediction",
    use_flow_sigmas=True, solver_order=2, solver_type="bh2", predict_x0=True,
    lower_order_final=True, final_sigmas_type="zero", timestep_spacing="linspace",
)  # fmt: skip


def _diffusers(num_steps, **overrides):
    from diffusers import UniPCMultistepScheduler

    s = UniPCMultistepScheduler(**{**WAN_UNIPC, **overrides})
    s.set_timesteps(num_steps)
    return s


# ------------------------------------------------------------------------- the grid


@pytest.mark.parametrize("shift", [1.0, 3.0, 5.0])
@pytest.mark.parametrize("n", [1, 2, 10, 28, 50])
def test_unipc_flow_sigmas_equal_diffusers(n, shift):
    sched = _diffusers(n, flow_shift=shift)
    np.testing.assert_array_equal(schedule.unipc_flow_sigmas(n, shift), sched.sigmas.numpy())
    np.testing.assert_array_equal(schedule.unipc_flow_timesteps(n, shift), sched.timesteps.numpy())
    # Flow-Factory's rollout: sigma = t / 1000 for the integer timesteps, 0 after the last.
    ff = torch.cat([sched.timesteps / 1000, torch.zeros(1)]).numpy()
    assert ff.dtype == np.float32
    np.testing.assert_array_equal(schedule.unipc_flow_rollout_sigmas(n, shift), ff)


def test_unipc_flow_formula_float64():
    """Start points against the formula typed from the scheduler: u_k = 1 - k (1 - 1/T) / N,
    s_k = shift u_k / (1 + (shift - 1) u_k), and s_0 = 1 - 1e-6."""
    n, shift, T = 10, 3.0, 1000
    u = np.array([1 - k * (1 - 1 / T) / n for k in range(n)])
    s = shift * u / (1 + (shift - 1) * u)
    s[0] = 1 - 1e-6
    np.testing.assert_allclose(schedule._unipc_flow_start_points(n, shift), s, rtol=0, atol=1e-15)
    np.testing.assert_array_equal(schedule.unipc_flow_timesteps(n, shift), np.floor(s * T))


def test_issue_values_n10_shift3():
    """The values of the issue: UniPC grid 0.964 / 0.923 / ..., FlowMatchEuler 0.960 / 0.913."""
    ff = schedule.unipc_flow_rollout_sigmas(10, 3.0)
    np.testing.assert_allclose(ff[:4], [0.999, 0.964, 0.923, 0.875], rtol=0, atol=1e-7)
    fme = schedule.fixed_shift_sigmas(10, 3.0)
    np.testing.assert_allclose(np.round(fme[1:3], 3), [0.960, 0.913])
    assert ff[-1] == 0 and np.all(np.diff(ff) < 0)


def test_grid_argument_errors():
    with pytest.raises(ValueError, match="num_steps must be >= 1"):
        schedule.unipc_flow_sigmas(0, 3.0)
    with pytest.raises(ValueError, match="shift must be > 0"):
        schedule.unipc_flow_rollout_sigmas(10, 0.0)


# ------------------------------------------------------- float64 reference of UniPC


def _lam(s):
    return math.log(1 - s) - math.log(s) if s > 0 else math.inf


def _phis(h, order, bh):
    hh = -h
    h_phi_1 = math.expm1(hh)
    b_h = hh if bh == "bh1" else math.expm1(hh)
    b, h_phi_k, fact = [], h_phi_1 / hh - 1, 1
    for k in range(1, order + 1):
        b.append(h_phi_k * fact / b_h)
        fact *= k + 1
        h_phi_k = h_phi_k / hh - 1 / fact
    return h_phi_1, b_h, np.array(b)


def _uni_p(x, ms, sig, i, p, bh):
    """UniP-p from sigma_i to sigma_{i+1}: ms[-1] = x0_hat_i, ms[-1-k] = x0_hat_{i-k}."""
    s0, t = sig[i], sig[i + 1]
    h = _lam(t) - _lam(s0)
    h_phi_1, b_h, b = _phis(h, p, bh)
    m0 = ms[-1]
    out = t / s0 * x - (1 - t) * h_phi_1 * m0
    if p > 1:
        r = np.array([(_lam(sig[i - k]) - _lam(s0)) / h for k in range(1, p)])
        d = [(ms[-1 - k] - m0) / r[k - 1] for k in range(1, p)]
        rho = [0.5] if p == 2 else np.linalg.solve(np.vander(r, p - 1, True).T, b[: p - 1])
        out = out - (1 - t) * b_h * sum(rk * dk for rk, dk in zip(rho, d, strict=True))
    return out


def _uni_c(x_last, ms, m_new, sig, i, q, bh):
    """UniC-q at step i: corrects with x0_hat_i = m_new; ms[-1] = x0_hat_{i-1}, ..."""
    s0, t = sig[i - 1], sig[i]
    h = _lam(t) - _lam(s0)
    h_phi_1, b_h, b = _phis(h, q, bh)
    m0 = ms[-1]
    r = [(_lam(sig[i - 1 - k]) - _lam(s0)) / h for k in range(1, q)]
    d = [(ms[-1 - k] - m0) / r[k - 1] for k in range(1, q)]
    rho = [0.5] if q == 1 else np.linalg.solve(np.vander(np.array([*r, 1.0]), q, True).T, b)
    res = sum(rk * dk for rk, dk in zip(rho[:-1], d, strict=True)) + rho[-1] * (m_new - m0)
    return t / s0 * x_last - (1 - t) * h_phi_1 * m0 - (1 - t) * b_h * res


def _reference(velocity, noise, sig, model_sig, order, bh, num_steps=None):
    """NumPy float64 UniPC over the first num_steps steps (all by default)."""
    n = len(sig) - 1
    x, last, ms, prev_p = noise, None, [], None
    for i in range(n if num_steps is None else num_steps):
        m = x - sig[i] * velocity(x, model_sig[i])
        if i > 0:
            x = _uni_c(last, ms, m, sig, i, prev_p, bh)
        ms = (ms + [m])[-order:]
        prev_p = min(order, i + 1, n - i)
        last = x
        x = _uni_p(x, ms, sig, i, prev_p, bh)
    return x


def _linear_model(seed, shape):
    """A velocity linear in x with a sigma-dependent offset: v = a * x + (1 + sigma) c."""
    rng = np.random.default_rng(seed)
    a, c = rng.normal(size=shape[1:]) * 0.3, rng.normal(size=shape[1:])
    np_fn = lambda x, s: a * x + (1 + s) * c

    def jax_fn(params, x, sigma, cond):  # constants in x's dtype (float64 under x64)
        s = sigma.reshape((-1,) + (1,) * (x.ndim - 1)).astype(x.dtype)
        return jnp.asarray(a, x.dtype) * x + (1 + s) * jnp.asarray(c, x.dtype)

    return np_fn, jax_fn


@pytest.mark.parametrize(
    "order,bh,n", [(1, "bh2", 4), (2, "bh2", 1), (2, "bh2", 2), (2, "bh2", 7), (2, "bh1", 7),
                   (3, "bh2", 7), (3, "bh1", 3)],
)  # fmt: skip
def test_unipc_sample_matches_float64_reference(order, bh, n):
    shape = (2, 3, 5)
    np_fn, jax_fn = _linear_model(order * 10 + n, shape)
    noise = np.random.default_rng(1).normal(size=shape)
    sig = schedule.unipc_flow_sigmas(n, 3.0).astype(np.float64)
    model_sig = schedule.unipc_flow_timesteps(n, 3.0) / 1000.0
    with jax.enable_x64(True):
        got = unipc.unipc_sample(
            jax_fn, None, None, jnp.asarray(noise), jnp.asarray(sig),
            model_sigmas=jnp.asarray(model_sig), order=order, solver_type=bh,
        )  # fmt: skip
        assert got.dtype == jnp.float64
        got = np.asarray(got)
    want = _reference(np_fn, noise, sig, model_sig, order, bh)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_one_and_two_steps_float64():
    """The first steps alone: step 0 is UniP-1 (no corrector), step 1 UniC-1 + UniP-2."""
    shape, n = (1, 4), 6
    np_fn, jax_fn = _linear_model(3, shape)
    noise = np.random.default_rng(2).normal(size=shape)
    sig = schedule.unipc_flow_sigmas(n, 3.0).astype(np.float64)
    for k in (1, 2):
        with jax.enable_x64(True):
            got = unipc.unipc_sample(
                jax_fn, None, None, jnp.asarray(noise), jnp.asarray(sig[: k + 1])
            )
        # A k-step run on sigmas[:k+1] is the first k steps of the n-step run except for
        # lower_order_final, which makes the last step of the short run first order.
        want = _reference(np_fn, noise, sig[: k + 1], sig[:k], 2, "bh2")
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-12, atol=1e-12)
    # Step 0 by hand: x1 = s1/s0 x - (1 - s1) expm1(-h) x0_hat (UniP-1 = DPM-Solver-1).
    s0, s1 = sig[0], sig[1]
    x0_hat = noise - s0 * np_fn(noise, s0)
    h = _lam(s1) - _lam(s0)
    by_hand = s1 / s0 * noise - (1 - s1) * math.expm1(-h) * x0_hat
    np.testing.assert_allclose(_reference(np_fn, noise, sig, sig, 2, "bh2", 1), by_hand, rtol=1e-14)


def test_point_mass_is_recovered():
    """For data = one point c the exact velocity is (x - c) / sigma: every x0_hat is c and
    the last step (sigma = 0) returns it."""
    c = jnp.array([[0.3, -1.2, 2.0]])
    fn = lambda p, x, s, cond: (x - c) / s[:, None]
    out = unipc.unipc_sample(fn, None, None, jnp.ones((1, 3)), schedule.unipc_flow_sigmas(8, 3.0))
    np.testing.assert_allclose(out, c, rtol=1e-6)


@pytest.mark.parametrize("n", [3, 10])
def test_matches_diffusers_scheduler_float32(n):
    """Our sampler against Diffusers' own UniPCMultistepScheduler loop (float32), the model
    evaluated at the scheduler's integer timesteps / 1000 as WanPipeline does."""
    shape = (2, 4, 6)
    np_fn, jax_fn = _linear_model(7, shape)
    noise = np.random.default_rng(3).normal(size=shape).astype(np.float32)
    sched = _diffusers(n)
    x = torch.from_numpy(noise)
    for t in sched.timesteps:
        v = torch.from_numpy(
            np_fn(x.numpy().astype(np.float64), float(t) / 1000).astype(np.float32)
        )
        x = sched.step(v, t, x).prev_sample
    got = unipc.unipc_sample(
        jax_fn, None, None, jnp.asarray(noise), schedule.unipc_flow_sigmas(n, 3.0),
        model_sigmas=schedule.unipc_flow_rollout_sigmas(n, 3.0)[:-1],
    )  # fmt: skip
    np.testing.assert_allclose(np.asarray(got), x.numpy(), rtol=1e-5, atol=1e-5)


def test_argument_errors():
    fn = lambda p, x, s, c: x
    with pytest.raises(ValueError, match=r"sigmas\[:N\] in \(0, 1\)"):
        unipc.unipc_sample(fn, None, None, jnp.ones((1, 2)), np.array([1.0, 0.5, 0.0]))
    with pytest.raises(ValueError, match=r"model_sigmas must have shape \(2,\)"):
        unipc.unipc_sample(fn, None, None, jnp.ones((1, 2)), np.array([0.9, 0.5, 0.0]),
                           model_sigmas=np.ones(3))  # fmt: skip
    with pytest.raises(ValueError, match="order must be in"):
        unipc.unipc_sample(fn, None, None, jnp.ones((1, 2)), np.array([0.9, 0.0]), order=4)
    with pytest.raises(ValueError, match="solver_type"):
        unipc.unipc_coefficients(jnp.array([0.9, 0.0]), 2, "bh3")


# ------------------------------------------------------- the folder's scheduler settings


def _folder(tmp_path, **cfg):
    (tmp_path / "scheduler").mkdir(exist_ok=True)
    (tmp_path / "scheduler" / "scheduler_config.json").write_text(json.dumps(cfg))
    return str(tmp_path)


def test_scheduler_options_read_from_the_folder(tmp_path):
    from ffjax.errors import ModelFolderError

    u = "UniPCMultistepScheduler"
    assert unipc.scheduler_options(None) == (2, "bh2")  # no folder: WanPipeline's
    assert unipc.scheduler_options(str(tmp_path)) == (2, "bh2")  # no scheduler folder
    assert unipc.scheduler_options(_folder(tmp_path, _class_name=u)) == (2, "bh2")
    assert unipc.scheduler_options(_folder(tmp_path, _class_name=u, **WAN_UNIPC)) == (2, "bh2")
    got = _folder(tmp_path, _class_name=u, solver_order=3, solver_type="bh1")
    assert unipc.scheduler_options(got) == (3, "bh1")
    euler = _folder(tmp_path, _class_name="FlowMatchEulerDiscreteScheduler", solver_order=5)
    assert unipc.scheduler_options(euler) == (2, "bh2")
    for bad, needle in [
        (dict(solver_order=4), "solver_order=4"),
        (dict(solver_type="midpoint"), "solver_type='midpoint'"),
        (dict(predict_x0=False), "predict_x0=False"),
        (dict(lower_order_final=False), "lower_order_final=False"),
        (dict(disable_corrector=[0]), "disable_corrector=[0]"),
    ]:
        with pytest.raises(ModelFolderError, match=re.escape(needle)):
            unipc.scheduler_options(_folder(tmp_path, _class_name=u, **bad))
