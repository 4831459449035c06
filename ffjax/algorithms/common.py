"""Small pieces the losses share: non-batch means, advantage clipping, the PPO clip.

Every function is pure, float32 and jit-able. Symbols follow the papers: A advantage,
r = pi_theta / pi_old the likelihood ratio, eps the clip range.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def batch_mean(x: jax.Array) -> jax.Array:
    """Per-sample mean over every non-batch axis: float[B, ...] -> float32[B]."""
    x = jnp.asarray(x, jnp.float32)
    return jnp.mean(x, axis=tuple(range(1, x.ndim)))


def per_sample(value: jax.Array, like: jax.Array) -> jax.Array:
    """float[B] -> float32[B, 1, ..., 1], broadcastable against `like` ([B, ...])."""
    value = jnp.asarray(value, jnp.float32)
    return value.reshape(value.shape + (1,) * (like.ndim - 1))


def clip_advantages(advantage: jax.Array, adv_clip_max: float) -> jax.Array:
    """A <- clip(A, -adv_clip_max, adv_clip_max), as every reference does before the loss."""
    a = float(adv_clip_max)
    return jnp.clip(jnp.asarray(advantage, jnp.float32), -a, a)


def forward_noise(x0: jax.Array, noise: jax.Array, sigma: jax.Array) -> jax.Array:
    """The forward process x_sigma = (1 - sigma) x0 + sigma noise (DESIGN.md convention)."""
    s = per_sample(sigma, x0)
    return (1 - s) * jnp.asarray(x0, jnp.float32) + s * jnp.asarray(noise, jnp.float32)


def velocity_mse(v: jax.Array, v_other: jax.Array) -> jax.Array:
    """mean_i mean_d (v - v_other)^2: the velocity-space ("v-based") KL surrogate, float32[]."""
    return jnp.mean(batch_mean(jnp.square(v - v_other)))


def ppo_clip_loss(ratio: jax.Array, advantage: jax.Array, clip_range: float) -> jax.Array:
    """Per-row PPO-clip loss (Schulman et al. 2017, eq. 7, negated to minimise):

        l = max(-A r, -A clip(r, 1 - eps, 1 + eps)).

    Args:
      ratio: r, float32[B].
      advantage: A, float32[B], already clipped.
      clip_range: eps.
    """
    eps = float(clip_range)
    unclipped = -advantage * ratio
    clipped = -advantage * jnp.clip(ratio, 1.0 - eps, 1.0 + eps)
    return jnp.maximum(unclipped, clipped)


def ratio_metrics(ratio: jax.Array, log_ratio: jax.Array, clip_range: float) -> dict[str, Any]:
    """What a practitioner watches on a likelihood-ratio method (all float32 scalars).

    ratio_mean / min / max of r; clipfrac = fraction of rows with |r - 1| > eps;
    approx_kl = 0.5 mean((log pi_theta - log pi_old)^2), the flow_grpo estimator.
    """
    ratio = jax.lax.stop_gradient(ratio)
    log_ratio = jax.lax.stop_gradient(log_ratio)
    return {
        "ratio_mean": jnp.mean(ratio),
        "ratio_min": jnp.min(ratio),
        "ratio_max": jnp.max(ratio),
        "clipfrac": jnp.mean((jnp.abs(ratio - 1.0) > float(clip_range)).astype(jnp.float32)),
        "approx_kl": 0.5 * jnp.mean(jnp.square(log_ratio)),
    }


def required(weights: Any, field: str, algorithm: str) -> Any:
    """`Frozen.<field>` (snapshot / ema), or a clear error when the trainer left it None."""
    if weights is None:
        raise ValueError(
            f"{algorithm}: Frozen.{field} is None but this loss needs it"
            f" ({'rollout-time weights' if field == 'snapshot' else 'the EMA weights'})"
        )
    return weights


def as_metrics(metrics: dict[str, Any]) -> dict[str, jax.Array]:
    """Casts every metric to a float32 scalar with no gradient."""
    return {
        k: jax.lax.stop_gradient(jnp.asarray(v, jnp.float32).reshape(()))
        for k, v in metrics.items()
    }
