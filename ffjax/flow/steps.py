"""One denoising step of a flow-matching sampler, with its transition log-probability.

Convention (DESIGN.md): x_sigma = (1 - sigma) x0 + sigma noise, v = noise - x0, and a
step goes from `sigma` to a smaller `sigma_next` (dt = sigma_next - sigma < 0).

Dynamics (all float32; `eta` = noise_level):

- `ode`: Euler, x' = x + v dt. Deterministic; log_prob = 0.
- `flow_sde` (Flow-GRPO, Liu et al. 2025, eq. 9): the reverse SDE with the same
  marginals as the ODE, diffusion g = eta sqrt(sigma / (1 - sigma)):
      mean = x + [v + g^2 / (2 sigma) (x + (1 - sigma) v)] dt,   std = g sqrt(-dt).
  At sigma = 1 the factor 1 / (1 - sigma) is singular; as the references do, sigma
  in the denominator is replaced by the schedule's second sigma, which is the
  `sigma_next` of the step that starts at 1.
- `dance_sde` (DanceGRPO, Xue et al. 2025): score = -(x - (1 - sigma) x0_hat) / sigma^2
  with x0_hat = x - sigma v,
      mean = x + (v - eta^2 / 2 * score) dt,   std = eta sqrt(-dt).
- `cps` (coefficients-preserving sampling, Wang & Yu 2025): std = sigma_next sin(eta pi/2),
      mean = (1 - sigma_next) x0_hat + sqrt(sigma_next^2 - std^2) noise_hat,
  noise_hat = x + (1 - sigma) v, so the noise coefficient keeps total variance
  sigma_next^2. Its log_prob is the simplified -mean((x' - mean)^2) CPS trains with.

log_prob for the Gaussian dynamics is the per-sample log-density averaged over all
non-batch dimensions (the flow_grpo / Flow-Factory convention, so clip ranges such as
1e-4 transfer). With noise_level 0 every SDE reduces to the Euler step and log_prob is
defined as 0, which is how a rollout mixes SDE and ODE steps in one compiled program.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

DYNAMICS = ("ode", "flow_sde", "dance_sde", "cps")

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def step(
    dynamics: str,
    x: jax.Array,
    v: jax.Array,
    sigma: jax.Array | float,
    sigma_next: jax.Array | float,
    noise_level: jax.Array | float,
    *,
    key: jax.Array | None = None,
    x_next: jax.Array | None = None,
    storage_dtype: jnp.dtype | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Samples (given `key`) or scores (given `x_next`) one step of `dynamics`.

    Args:
      dynamics: one of DYNAMICS.
      x: latents at `sigma`, [B, ...] any float dtype (computed in float32).
      v: predicted velocity, same shape as `x`.
      sigma, sigma_next: scalars or float[B]; sigma_next < sigma, both in [0, 1].
      noise_level: eta >= 0, scalar or float[B]; 0 gives the Euler step.
      key: PRNG key; samples x_next ~ N(mean, std^2). Used when `x_next` is None.
      x_next: latents at `sigma_next` to score (e.g. stored by a rollout).
      storage_dtype: dtype trajectories are stored in; a sampled x_next is rounded
        through it before scoring so that training re-scores the identical value.

    Returns:
      (x_next float32[B, ...], mean float32[B, ...], std float32[B, 1, ...] (the
      transition standard deviation, broadcastable to x), log_prob float32[B]).
    """
    if dynamics not in DYNAMICS:
        raise ValueError(f"unknown dynamics {dynamics!r}; allowed: {', '.join(DYNAMICS)}")
    x = jnp.asarray(x)
    v = jnp.asarray(v)
    if x.shape != v.shape:
        raise ValueError(f"x and v must have the same shape, got x {x.shape} and v {v.shape}")
    if x.ndim < 1:
        raise ValueError("x must have a leading batch dimension")
    _check_concrete(sigma, sigma_next, noise_level)

    x = x.astype(jnp.float32)
    v = v.astype(jnp.float32)
    sigma = _per_sample(sigma, x)
    sigma_next = _per_sample(sigma_next, x)
    eta = _per_sample(noise_level, x)
    dt = sigma_next - sigma

    if dynamics == "ode":
        mean = x + v * dt
        std = jnp.zeros_like(sigma)
    elif dynamics == "flow_sde":
        denom_sigma = jnp.where(sigma == 1.0, sigma_next, sigma)
        g = jnp.sqrt(sigma / (1 - denom_sigma)) * eta
        mean = x + (v + g**2 / (2 * sigma) * (x + (1 - sigma) * v)) * dt
        std = g * jnp.sqrt(-dt)
    elif dynamics == "dance_sde":
        x0 = x - sigma * v
        score = -(x - (1 - sigma) * x0) / sigma**2
        mean = x + (v - 0.5 * eta**2 * score) * dt
        std = eta * jnp.sqrt(-dt)
    else:  # cps
        std = sigma_next * jnp.sin(eta * (math.pi / 2))
        x0 = x - sigma * v
        noise_hat = x + (1 - sigma) * v
        mean = (1 - sigma_next) * x0 + jnp.sqrt(
            jnp.maximum(sigma_next**2 - std**2, 0.0)
        ) * noise_hat

    if x_next is None:
        if key is None and dynamics != "ode":
            raise ValueError("step needs `key` to sample or `x_next` to score")
        noise = jnp.zeros_like(x) if key is None else jax.random.normal(key, x.shape, jnp.float32)
        x_next = mean + std * noise
        if storage_dtype is not None:
            x_next = x_next.astype(storage_dtype)
    else:
        x_next = jnp.asarray(x_next)
        if x_next.shape != x.shape:
            raise ValueError(f"x_next must have shape {x.shape}, got {x_next.shape}")
    x_next = x_next.astype(jnp.float32)
    # Materialise the operands so the compiler cannot fold `(mean + std z) - mean` or
    # contract it differently in the sampling and scoring programs: the log-prob of a
    # sampled step must equal, bit for bit, the log-prob of the stored step.
    x_next, mean, std = jax.lax.optimization_barrier((x_next, mean, std))
    return x_next, mean, std, _log_prob(dynamics, x_next, mean, std)


def _log_prob(dynamics: str, x_next: jax.Array, mean: jax.Array, std: jax.Array) -> jax.Array:
    """Per-sample log-prob averaged over non-batch dims; 0 where the step is deterministic."""
    axes = tuple(range(1, x_next.ndim))
    # Gradients flow through `mean` only: x_next is data (the sampled action).
    diff = jax.lax.stop_gradient(x_next) - mean
    if dynamics == "ode":
        return jnp.zeros(x_next.shape[:1], jnp.float32)
    if dynamics == "cps":
        return -jnp.mean(diff**2, axis=axes)
    noisy = std > 0
    safe_std = jnp.where(noisy, std, 1.0)
    lp = -(diff**2) / (2 * safe_std**2) - jnp.log(safe_std) - _LOG_SQRT_2PI
    return jnp.where(noisy.reshape(-1), jnp.mean(lp, axis=axes), 0.0)


def _per_sample(value: jax.Array | float, x: jax.Array) -> jax.Array:
    """Scalar or float[B] -> float32[B, 1, ..., 1] broadcastable against x."""
    value = jnp.asarray(value, jnp.float32)
    if value.ndim == 0:
        value = jnp.broadcast_to(value, x.shape[:1])
    if value.shape != x.shape[:1]:
        raise ValueError(
            f"per-sample values must be scalars or shape {x.shape[:1]}, got {value.shape}"
        )
    return value.reshape(value.shape + (1,) * (x.ndim - 1))


def _check_concrete(sigma, sigma_next, noise_level) -> None:
    """Validates values known at trace time (Python / NumPy numbers); traced values pass."""
    s, s_next, eta = (_concrete(a) for a in (sigma, sigma_next, noise_level))
    if eta is not None and np.any(eta < 0):
        raise ValueError(f"noise_level must be >= 0, got {eta}")
    if s is not None and s_next is not None and np.any(s_next >= s):
        raise ValueError(f"sigmas must decrease along a step: sigma={s}, sigma_next={s_next}")
    for name, a in (("sigma", s), ("sigma_next", s_next)):
        if a is not None and np.any((a < 0) | (a > 1)):
            raise ValueError(f"{name} must lie in [0, 1], got {a}")


def _concrete(a) -> np.ndarray | None:
    if isinstance(a, jax.core.Tracer):
        return None
    return np.asarray(a, np.float64)
