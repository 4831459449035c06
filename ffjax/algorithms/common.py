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


def clip_advantages(advantage: jax.Array, adv_clip_max: float | tuple) -> jax.Array:
    """A <- clip(A, -adv_clip_max, adv_clip_max), as every reference does before the loss;
    a pair (lo, hi) clips to [lo, hi] (Flow-Factory's asymmetric `adv_clip_range`)."""
    if isinstance(adv_clip_max, (tuple, list)):
        lo, hi = (float(v) for v in adv_clip_max)
        return jnp.clip(jnp.asarray(advantage, jnp.float32), lo, hi)
    a = float(adv_clip_max)
    return jnp.clip(jnp.asarray(advantage, jnp.float32), -a, a)


def bounds(name: str, symmetric: float, pair: tuple | list, *, ratio: bool) -> float | tuple:
    """`symmetric` when `pair` is empty, else the validated pair (lo, hi) as floats.

    Flow-Factory's clip pairs (X-GenGroup/Flow-Factory b30dc00
    src/flow_factory/hparams/training_args/_base.py `_standardize_clip_range`): a scalar c
    means (-c, c); a pair needs lo < hi. A ratio pair clips r to [1 + lo, 1 + hi], so it
    also needs lo > -1 (a ratio bound must stay positive) and lo <= 0 <= hi (r = 1, the
    old policy itself, is never clipped). ValueError naming `name` otherwise.
    """
    if not pair:
        return float(symmetric)
    if len(pair) != 2:
        raise ValueError(f"{name} must be () or a pair (lo, hi), got {tuple(pair)!r}")
    lo, hi = float(pair[0]), float(pair[1])
    if not lo < hi:
        raise ValueError(f"{name}=({lo}, {hi}): lo must be < hi")
    if ratio and not (-1 < lo <= 0 <= hi):
        raise ValueError(f"{name}=({lo}, {hi}): a ratio clip needs -1 < lo <= 0 <= hi")
    return (lo, hi)


def clip_bounds(config) -> tuple[float | tuple, float | tuple]:
    """(ratio clip, advantage clip) of an algorithm section: `clip_range` / `adv_clip_max`,
    or the asymmetric `clip_bounds` / `adv_clip_bounds` pairs when set (`bounds`)."""
    eps = bounds(
        "algorithm.clip_bounds", config.clip_range, config.get("clip_bounds", ()), ratio=True
    )
    adv = bounds(
        "algorithm.adv_clip_bounds", config.adv_clip_max, config.get("adv_clip_bounds", ()),
        ratio=False,
    )  # fmt: skip
    return eps, adv


def num_train_timesteps(algorithm: Any, num_steps: int) -> int:
    """Training sigmas per sample of a "final" algorithm (NFT, AWM): `num_train_timesteps`,
    or for 0 max(1, int(N (hi - lo))) with N = `num_steps` (the rollout's steps) and
    (lo, hi) = `sigma_range`, as X-GenGroup/Flow-Factory b30dc00 (and a0b2bc5)
    src/flow_factory/hparams/training_args.py resolves `num_train_timesteps: 0` from
    num_inference_steps and timestep_range (ffjax before 2026-12-08: int(0.9 N), the same
    for the default NFT range (0, 0.9))."""
    n = int(algorithm.get("num_train_timesteps", 0))
    if n > 0:
        return n
    lo, hi = (float(v) for v in algorithm.get("sigma_range", (0.0, 0.9)))
    return max(1, int(num_steps * (hi - lo)))


def forward_noise(x0: jax.Array, noise: jax.Array, sigma: jax.Array) -> jax.Array:
    """The forward process x_sigma = (1 - sigma) x0 + sigma noise (DESIGN.md convention)."""
    s = per_sample(sigma, x0)
    return (1 - s) * jnp.asarray(x0, jnp.float32) + s * jnp.asarray(noise, jnp.float32)


def velocity_mse(v: jax.Array, v_other: jax.Array) -> jax.Array:
    """mean_i mean_d (v - v_other)^2: the velocity-space ("v-based") KL surrogate, float32[]."""
    return jnp.mean(batch_mean(jnp.square(v - v_other)))


def _ratio_interval(clip_range: float | tuple) -> tuple[float, float]:
    """[1 - eps, 1 + eps] for a scalar eps, [1 + lo, 1 + hi] for a pair (lo, hi)."""
    if isinstance(clip_range, (tuple, list)):
        return 1.0 + float(clip_range[0]), 1.0 + float(clip_range[1])
    eps = float(clip_range)
    return 1.0 - eps, 1.0 + eps


def ppo_clip_loss(ratio: jax.Array, advantage: jax.Array, clip_range: float | tuple) -> jax.Array:
    """Per-row PPO-clip loss (Schulman et al. 2017, eq. 7, negated to minimise):

        l = max(-A r, -A clip(r, 1 - eps, 1 + eps)),

    or with Flow-Factory's asymmetric pair (lo, hi), clip(r, 1 + lo, 1 + hi).

    Args:
      ratio: r, float32[B].
      advantage: A, float32[B], already clipped.
      clip_range: eps, or a pair (lo, hi) (see `bounds`).
    """
    low, high = _ratio_interval(clip_range)
    unclipped = -advantage * ratio
    clipped = -advantage * jnp.clip(ratio, low, high)
    return jnp.maximum(unclipped, clipped)


def ratio_metrics(
    ratio: jax.Array, log_ratio: jax.Array, clip_range: float | tuple
) -> dict[str, Any]:
    """What a practitioner watches on a likelihood-ratio method (all float32 scalars).

    ratio_mean / min / max of r; clipfrac = fraction of rows with |r - 1| > eps (for a
    pair (lo, hi): r outside [1 + lo, 1 + hi]);
    approx_kl = 0.5 mean((log pi_theta - log pi_old)^2), the flow_grpo estimator.
    """
    ratio = jax.lax.stop_gradient(ratio)
    log_ratio = jax.lax.stop_gradient(log_ratio)
    return {
        "ratio_mean": jnp.mean(ratio),
        "ratio_min": jnp.min(ratio),
        "ratio_max": jnp.max(ratio),
        "clipfrac": jnp.mean(_outside(ratio, clip_range).astype(jnp.float32)),
        "approx_kl": 0.5 * jnp.mean(jnp.square(log_ratio)),
    }


def _outside(ratio: jax.Array, clip_range: float | tuple) -> jax.Array:
    """Rows whose ratio the clip moves (|r - 1| > eps, or r outside [1 + lo, 1 + hi])."""
    if isinstance(clip_range, (tuple, list)):
        low, high = _ratio_interval(clip_range)
        return (ratio < low) | (ratio > high)
    return jnp.abs(ratio - 1.0) > float(clip_range)


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
