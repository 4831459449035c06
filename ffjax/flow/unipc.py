"""UniPC multistep sampling of a velocity model (Zhao et al. 2023, "UniPC: A Unified
Predictor-Corrector Framework for Fast Sampling of Diffusion Models", arXiv:2302.04867).

Convention (DESIGN.md): sigma in [0, 1], x_sigma = (1 - sigma) x0 + sigma noise, the
model predicts v = noise - x0. In the paper's terms alpha = 1 - sigma, the data
prediction is x0_hat = x - sigma v, and lambda = log(alpha / sigma) is the log-SNR.

Each step i (from sigma_i to sigma_{i+1}, h = lambda_{i+1} - lambda_i) evaluates the
model once, then
  - UniC (i > 0): corrects x_i with the new x0_hat_i, reusing that same evaluation
    (eq. 8 of the paper; Diffusers' `multistep_uni_c_bh_update`);
  - UniP: predicts x_{i+1} from the corrected x_i and the last p data predictions
    (eq. 6 with the B(h) of section 3.3; `multistep_uni_p_bh_update`).
Orders follow Diffusers' `UniPCMultistepScheduler` with `lower_order_final=True`: the
predictor of step i has order min(order, i + 1, N - i) (warm-up, then first order on
the last step, where sigma = 0 makes the update return x0_hat), the corrector of step i
the order of step i - 1's predictor. With `solver_type="bh2"`, B(h) = e^h - 1
(Diffusers' and WanPipeline's default), "bh1": B(h) = h.

Every update is linear in the current sample, the previous corrected sample and the
data predictions, with weights that depend on the sigmas alone. `unipc_coefficients`
folds each step's UniP / UniC formulas into those weights (a few scalars per step,
computed once), so `unipc_sample` is one `lax.scan` whose carry is the sample, the
last corrected sample and the history of `order` data predictions.

WanPipeline evaluates its transformer at the scheduler's integer timesteps while the
solver uses the float sigmas (`ffjax.flow.schedule.unipc_flow_timesteps` /
`unipc_flow_sigmas`); `model_sigmas` carries the former.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from ffjax.flow.rollout import PrepareFn, VelocityFn

SOLVER_TYPES = ("bh1", "bh2")
MAX_ORDER = 3  # Diffusers recommends order 2 (guided sampling) or 3 (unconditional)
DEFAULT_OPTIONS = (2, "bh2")  # (solver_order, solver_type) of WanPipeline's scheduler

# UniPCMultistepScheduler settings this solver implements, with the value it needs
# (Diffusers' defaults): data prediction, lower orders on the last steps, the corrector
# on every step, UniC's own predictor.
_FIXED = {"predict_x0": True, "lower_order_final": True, "disable_corrector": [], "solver_p": None}


def scheduler_options(path: str | os.PathLike | None) -> tuple[int, str]:
    """(order, solver_type) of a pipeline folder's UniPC scheduler: `solver_order` and
    `solver_type` of scheduler/scheduler_config.json, as WanPipeline's
    UniPCMultistepScheduler reads them (Diffusers' defaults 2 and "bh2"). A folder whose
    scheduler is another class, or none, gives DEFAULT_OPTIONS (Flow-Factory evaluates
    WAN with its UniPC scheduler at those). ModelFolderError, naming the file and key,
    for a value this solver does not implement (see _FIXED)."""
    from ffjax.errors import ModelFolderError

    f = None if path is None else os.path.join(path, "scheduler", "scheduler_config.json")
    if f is None or not os.path.isfile(f):
        return DEFAULT_OPTIONS
    with open(f) as fh:
        cfg = json.load(fh)
    if cfg.get("_class_name") != "UniPCMultistepScheduler":
        return DEFAULT_OPTIONS
    order = cfg.get("solver_order", DEFAULT_OPTIONS[0])
    solver_type = cfg.get("solver_type", DEFAULT_OPTIONS[1])
    bad = [f"{k}={cfg[k]!r} (ffjax: {v!r})" for k, v in _FIXED.items() if k in cfg and cfg[k] != v]
    if not isinstance(order, int) or not 1 <= order <= MAX_ORDER:
        bad.append(f"solver_order={order!r} (ffjax: 1 to {MAX_ORDER})")
    if solver_type not in SOLVER_TYPES:
        bad.append(f"solver_type={solver_type!r} (ffjax: {', '.join(SOLVER_TYPES)})")
    if bad:
        raise ModelFolderError(
            f"{f}: the UniPC evaluation solver does not implement {', '.join(bad)};"
            " set config.sampling.eval_solver=euler or use the folder's scheduler defaults"
        )
    return int(order), str(solver_type)


@flax.struct.dataclass
class UniPCCoefficients:
    """Per-step weights of the folded UniPC updates (N steps, p = order).

    With H_i = [x0_hat_i, x0_hat_{i-1}, ..., x0_hat_{i-p}] (entries before step 0 unused):
      corrected x_i = corr_self[i] x_i + corr_last[i] xc_{i-1} + sum_j corr_m[i, j] H_i[j]
      x_{i+1}       = pred_x[i] xc_i + sum_j pred_m[i, j] H_i[j]      (j < p)

    corr_self: [N] (1 at step 0, which has no corrector, else 0); corr_last: [N];
    corr_m: [N, p + 1]; pred_x: [N]; pred_m: [N, p].
    """

    corr_self: jax.Array
    corr_last: jax.Array
    corr_m: jax.Array
    pred_x: jax.Array
    pred_m: jax.Array


def _lam(sigma: jax.Array) -> jax.Array:
    """Log-SNR lambda = log(alpha) - log(sigma) of the flow path (alpha = 1 - sigma)."""
    return jnp.log(1 - sigma) - jnp.log(sigma)


def _bh_terms(h: jax.Array, order: int, solver_type: str):
    """(h phi_1(-h), B(h), b[order]) of the B(h) update with data prediction (hh = -h).

    b_k = k! phi_{k+1}(hh) / B(h) with the phi functions of exponential integrators,
    built by phi_{k+1} = (phi_k - 1 / k!) / hh (Diffusers' recurrence).
    """
    hh = -h
    h_phi_1 = jnp.expm1(hh)
    b_h = hh if solver_type == "bh1" else jnp.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1
    fact, b = 1, []
    for k in range(1, order + 1):
        b.append(h_phi_k * fact / b_h)
        fact *= k + 1
        h_phi_k = h_phi_k / hh - 1 / fact
    return h_phi_1, b_h, jnp.stack(b)


def _rho_predictor(rks: list[jax.Array], b: jax.Array, dtype) -> jax.Array:
    """UniP weights of order p = len(rks) + 1 >= 2: rho = 1/2 at p = 2 (Diffusers'
    simplification), else the solution of sum_j r_j^k rho_j = b_k, k < p - 1."""
    if len(rks) == 1:
        return jnp.full((1,), 0.5, dtype)
    r = jnp.stack(rks)
    return jnp.linalg.solve(jnp.stack([r**k for k in range(len(rks))]), b[: len(rks)])


def _rho_corrector(rks: list[jax.Array], b: jax.Array, dtype) -> jax.Array:
    """UniC weights of order q = len(rks) + 1: rho = 1/2 at q = 1, else the solution of
    sum_j r_j^k rho_j = b_k, k < q, over r = [r_1, ..., r_{q-1}, 1]."""
    if not rks:
        return jnp.full((1,), 0.5, dtype)
    r = jnp.stack([*rks, jnp.ones((), dtype)])
    return jnp.linalg.solve(jnp.stack([r**k for k in range(len(r))]), b[: len(r)])


def unipc_coefficients(
    sigmas: jax.Array, order: int = 2, solver_type: str = "bh2"
) -> UniPCCoefficients:
    """The folded UniPC weights of every step (see `UniPCCoefficients`), in sigmas' dtype.

    sigmas: float[N + 1] decreasing, sigmas[:N] in (0, 1) (lambda finite), the last >= 0.
    Jit-able: the orders of each step are Python ints (from N and `order`).
    """
    if solver_type not in SOLVER_TYPES:
        raise ValueError(f"solver_type {solver_type!r}; allowed: {', '.join(SOLVER_TYPES)}")
    if not 1 <= order <= MAX_ORDER:
        raise ValueError(f"order must be in [1, {MAX_ORDER}], got {order}")
    sigmas = jnp.asarray(sigmas)
    dtype = sigmas.dtype
    n = sigmas.shape[0] - 1
    lam = [_lam(sigmas[i]) for i in range(n)]  # sigmas[n] may be 0: lambda = inf there
    zero = jnp.zeros((), dtype)
    orders = [min(order, i + 1, n - i) for i in range(n)]
    rows = {k: [] for k in ("corr_self", "corr_last", "corr_m", "pred_x", "pred_m")}
    for i in range(n):
        # UniC at step i: from x_{i-1} (s0 = i - 1) to sigma_i, order of step i - 1's UniP.
        cm = [zero] * (order + 1)
        if i == 0:
            rows["corr_self"].append(jnp.ones((), dtype))
            rows["corr_last"].append(zero)
        else:
            q = orders[i - 1]
            s0, t = sigmas[i - 1], sigmas[i]
            h = lam[i] - lam[i - 1]
            rks = [(lam[i - 1 - k] - lam[i - 1]) / h for k in range(1, q)]
            h_phi_1, b_h, b = _bh_terms(h, q, solver_type)
            rho = _rho_corrector(rks, b, dtype)
            alpha_t = 1 - t
            # x_i^c = t/s0 xc_{i-1} - alpha h_phi_1 m0
            #         - alpha B (sum_k rho_k D_k + rho_q (m_i - m0)),
            # D_k = (m_{i-1-k} - m0) / r_k, m0 = x0_hat_{i-1}.
            cm[0] = -alpha_t * b_h * rho[-1]
            cm[1] = -alpha_t * h_phi_1 + alpha_t * b_h * rho[-1]
            for k in range(1, q):
                w = alpha_t * b_h * rho[k - 1] / rks[k - 1]
                cm[1] = cm[1] + w
                cm[1 + k] = -w
            rows["corr_self"].append(zero)
            rows["corr_last"].append(t / s0)
        rows["corr_m"].append(jnp.stack(cm))
        # UniP at step i: from xc_i (s0 = i) to sigma_{i+1}. At sigma_{i+1} = 0, lambda
        # is inf and h phi_1 = -1: the last step returns x0_hat.
        p = orders[i]
        s0, t = sigmas[i], sigmas[i + 1]
        alpha_t = 1 - t
        h = _lam(t) - lam[i]
        rks = [(lam[i - k] - lam[i]) / h for k in range(1, p)]
        h_phi_1, b_h, b = _bh_terms(h, p, solver_type)
        # x_{i+1} = t/s0 xc_i - alpha h_phi_1 m0 - alpha B sum_k rho_k D_k,
        # D_k = (m_{i-k} - m0) / r_k, m0 = x0_hat_i.
        pm = [-alpha_t * h_phi_1] + [zero] * (order - 1)
        if p > 1:
            rho = _rho_predictor(rks, b, dtype)
            for k in range(1, p):
                w = alpha_t * b_h * rho[k - 1] / rks[k - 1]
                pm[0] = pm[0] + w
                pm[k] = -w
        rows["pred_x"].append(t / s0)
        rows["pred_m"].append(jnp.stack(pm))
    return UniPCCoefficients(**{k: jnp.stack(v).astype(dtype) for k, v in rows.items()})


def unipc_sample(
    velocity_fn: VelocityFn,
    params: Any,
    cond: Any,
    noise: jax.Array,
    sigmas: jax.Array,
    *,
    model_sigmas: jax.Array | None = None,
    order: int = 2,
    solver_type: str = "bh2",
    prepare_fn: PrepareFn | None = None,
) -> jax.Array:
    """Integrates the flow ODE from `noise` at sigmas[0] to sigmas[-1] with UniPC.

    Args:
      velocity_fn: `velocity_fn(params, x, sigma, cond) -> v` with sigma float32[B]
        (static: the same function object reuses the compilation).
      params, cond: pytrees passed through to `velocity_fn`.
      noise: initial latents [B, ...] (taken to be at sigmas[0]).
      sigmas: float[N + 1] decreasing solver sigmas, sigmas[:N] in (0, 1), e.g.
        `schedule.unipc_flow_sigmas` (UniPCMultistepScheduler's).
      model_sigmas: float[N], the sigma the model is evaluated at in step i (None:
        sigmas[:N]). WanPipeline: `schedule.unipc_flow_timesteps / 1000`.
      order: solver order p in [1, 3] (WanPipeline: 2).
      solver_type: "bh2" (B(h) = e^h - 1; WanPipeline) or "bh1" (B(h) = h).
      prepare_fn: optional `prepare_fn(params, cond) -> cond` run once before the steps
        (static), as in `ffjax.flow.rollout.rollout`.

    Returns:
      the final latents [B, ...] in noise's dtype (x0_hat of the last step when
      sigmas[-1] = 0).
    """
    sigmas = jnp.asarray(sigmas, jnp.result_type(float))
    n = sigmas.shape[0] - 1
    model_sigmas = sigmas[:n] if model_sigmas is None else jnp.asarray(model_sigmas, sigmas.dtype)
    _check_args(noise, sigmas, model_sigmas)
    return _unipc_jit(
        velocity_fn, params, cond, noise, sigmas, model_sigmas,
        order=order, solver_type=solver_type, prepare_fn=prepare_fn,
    )  # fmt: skip


def _check_args(noise, sigmas, model_sigmas) -> None:
    if sigmas.ndim != 1 or sigmas.shape[0] < 2:
        raise ValueError(f"sigmas must be float[N + 1] with N >= 1, got shape {sigmas.shape}")
    n = sigmas.shape[0] - 1
    if model_sigmas.shape != (n,):
        raise ValueError(f"model_sigmas must have shape ({n},), got {model_sigmas.shape}")
    if jnp.ndim(noise) < 1:
        raise ValueError("noise must have a leading batch dimension")
    if isinstance(sigmas, jax.core.Tracer):
        return
    s = np.asarray(sigmas, np.float64)
    if not (np.all(np.diff(s) < 0) and np.all(s[:-1] < 1) and s[-1] >= 0):
        raise ValueError(
            "UniPC needs strictly decreasing sigmas with sigmas[:N] in (0, 1) (the log-SNR"
            f" is infinite at sigma = 1) and sigmas[N] >= 0, got {s}"
        )


@functools.partial(jax.jit, static_argnames=("velocity_fn", "order", "solver_type", "prepare_fn"))
def _unipc_jit(velocity_fn, params, cond, noise, sigmas, model_sigmas, *, order, solver_type,
               prepare_fn):  # fmt: skip
    if prepare_fn is not None:
        cond = prepare_fn(params, cond)
    co = unipc_coefficients(sigmas, order, solver_type)
    batch, dtype = noise.shape[0], noise.dtype
    # Weighted sum over the history axis: coefficient vector [k] . stack [k, B, ...].
    combine = lambda w, h: jnp.tensordot(w.astype(dtype), h, axes=1)

    def body(carry, i):
        x, last, hist = carry  # hist[j] = x0_hat_{i-1-j}
        v = velocity_fn(params, x, jnp.full((batch,), model_sigmas[i]), cond)  # float32 unless x64
        x0_hat = (x - sigmas[i].astype(dtype) * v.astype(dtype)).astype(dtype)
        h = jnp.concatenate([x0_hat[None], hist])
        xc = co.corr_self[i].astype(dtype) * x + co.corr_last[i].astype(dtype) * last
        xc = xc + combine(co.corr_m[i], h)
        x_next = co.pred_x[i].astype(dtype) * xc + combine(co.pred_m[i], h[:order])
        return (x_next.astype(dtype), xc.astype(dtype), h[:order]), None

    hist0 = jnp.zeros((order, *noise.shape), dtype)
    steps = jnp.arange(sigmas.shape[0] - 1)
    (x, _, _), _ = jax.lax.scan(body, (noise, noise, hist0), steps)
    return x
