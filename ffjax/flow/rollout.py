"""Jit-compiled sampler: `lax.scan` over denoising steps, recording the steps RL trains on.

Which steps are stochastic (SDE) and which are recorded are *arrays*, not Python
values, so moving a Flow-GRPO-Fast / MixGRPO window from one epoch to the next changes
data only: the program is compiled once per shape.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from ffjax.flow import steps

VelocityFn = Callable[[Any, jax.Array, jax.Array, Any], jax.Array]
PrepareFn = Callable[[Any, Any], Any]


@flax.struct.dataclass
class Trajectory:
    """The recorded steps of a rollout; leading axis k = number of recorded steps.

    x_t, x_next: [k, B, ...] in the storage dtype; log_prob: float32[k, B];
    sigma, sigma_next: float32[k]; step: int32[k] (index into the schedule).
    """

    x_t: jax.Array
    x_next: jax.Array
    log_prob: jax.Array
    sigma: jax.Array
    sigma_next: jax.Array
    step: jax.Array


def rollout(
    velocity_fn: VelocityFn,
    params: Any,
    cond: Any,
    noise: jax.Array,
    sigmas: jax.Array,
    noise_levels: jax.Array,
    key: jax.Array,
    record_steps: jax.Array | None = None,
    *,
    dynamics: str = "flow_sde",
    storage_dtype: Any = jnp.float32,
    prepare_fn: PrepareFn | None = None,
) -> tuple[jax.Array, Trajectory | None]:
    """Integrates from `noise` at sigmas[0] to sigmas[-1] and records the chosen steps.

    Args:
      velocity_fn: `velocity_fn(params, x, sigma, cond) -> v` with sigma float32[B];
        a static argument (hashable; the same function object reuses the compilation).
      params, cond: pytrees passed through to `velocity_fn`.
      noise: initial latents [B, ...] at sigmas[0].
      sigmas: float32[N + 1] decreasing schedule.
      noise_levels: float32[N] per-step eta (0 = ODE step).
      key: PRNG key; step i uses fold_in(key, i).
      record_steps: int32[k] schedule step indices to record (data, not static); None
        records nothing. Each index must be in [0, N).
      dynamics: one of steps.DYNAMICS used for every step (static).
      storage_dtype: dtype of latents carried between steps and stored (static).
      prepare_fn: optional `prepare_fn(params, cond) -> cond`, run once before the
        steps (static): what every step would recompute from `cond` and the fixed
        `params` alone, e.g. WAN's cross-attention keys / values of the prompt.

    Returns:
      (final latents [B, ...] in storage_dtype, Trajectory or None).
    """
    sigmas = jnp.asarray(sigmas, jnp.float32)
    noise_levels = jnp.asarray(noise_levels, jnp.float32)
    _check_rollout_args(noise, sigmas, noise_levels, record_steps)
    return _rollout_jit(
        velocity_fn,
        params,
        cond,
        noise,
        sigmas,
        noise_levels,
        key,
        None if record_steps is None else jnp.asarray(record_steps, jnp.int32),
        dynamics=dynamics,
        storage_dtype=jnp.dtype(storage_dtype),
        prepare_fn=prepare_fn,
    )


def _check_rollout_args(noise, sigmas, noise_levels, record_steps) -> None:
    if sigmas.ndim != 1 or sigmas.shape[0] < 2:
        raise ValueError(f"sigmas must be float[N + 1] with N >= 1, got shape {sigmas.shape}")
    n = sigmas.shape[0] - 1
    if noise_levels.shape != (n,):
        raise ValueError(
            f"noise_levels must have shape ({n},) for {n} steps, got {noise_levels.shape}"
        )
    if jnp.ndim(noise) < 1:
        raise ValueError("noise must have a leading batch dimension")
    if not isinstance(sigmas, jax.core.Tracer) and not bool(jnp.all(jnp.diff(sigmas) < 0)):
        raise ValueError(f"sigmas must be strictly decreasing, got {np.asarray(sigmas)}")
    if not isinstance(noise_levels, jax.core.Tracer) and bool(jnp.any(noise_levels < 0)):
        raise ValueError(f"noise_levels must be >= 0, got {np.asarray(noise_levels)}")
    if record_steps is not None and not isinstance(record_steps, jax.core.Tracer):
        r = np.asarray(record_steps)
        if r.ndim != 1 or np.any((r < 0) | (r >= n)) or len(set(r.tolist())) != r.size:
            raise ValueError(f"record_steps must be distinct step indices in [0, {n}), got {r}")


@functools.partial(
    jax.jit, static_argnames=("velocity_fn", "dynamics", "storage_dtype", "prepare_fn")
)
def _rollout_jit(
    velocity_fn,
    params,
    cond,
    noise,
    sigmas,
    noise_levels,
    key,
    record_steps,
    *,
    dynamics,
    storage_dtype,
    prepare_fn,
):
    batch = noise.shape[0]
    if prepare_fn is not None:
        cond = prepare_fn(params, cond)
    x0 = noise.astype(storage_dtype)
    n_rec = 0 if record_steps is None else record_steps.shape[0]
    buffers = (
        jnp.zeros((n_rec,) + noise.shape, storage_dtype),
        jnp.zeros((n_rec,) + noise.shape, storage_dtype),
        jnp.zeros((n_rec, batch), jnp.float32),
    )

    def body(carry, i):
        x, (bx, bnext, blp) = carry
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        v = velocity_fn(params, x, jnp.full((batch,), sigma, jnp.float32), cond)
        x_next, _, _, log_prob = steps.step(
            dynamics,
            x,
            v,
            sigma,
            sigma_next,
            noise_levels[i],
            key=jax.random.fold_in(key, i),
            storage_dtype=storage_dtype,
        )
        x_next = x_next.astype(storage_dtype)
        if n_rec:
            hit = record_steps == i
            slot = jnp.argmax(hit)
            keep = jnp.any(hit)
            bx = bx.at[slot].set(jnp.where(keep, x, bx[slot]))
            bnext = bnext.at[slot].set(jnp.where(keep, x_next, bnext[slot]))
            blp = blp.at[slot].set(jnp.where(keep, log_prob, blp[slot]))
        return (x_next, (bx, bnext, blp)), None

    num_steps = sigmas.shape[0] - 1
    (x_final, (bx, bnext, blp)), _ = jax.lax.scan(body, (x0, buffers), jnp.arange(num_steps))
    if not n_rec:
        return x_final, None
    traj = Trajectory(
        x_t=bx,
        x_next=bnext,
        log_prob=blp,
        sigma=sigmas[record_steps],
        sigma_next=sigmas[record_steps + 1],
        step=record_steps,
    )
    return x_final, traj


def sde_window(
    seed: int,
    epoch: int,
    candidates: Sequence[int],
    k: int,
    *,
    contiguous: bool = False,
    progressive: tuple[int, int, bool] | None = None,
) -> np.ndarray:
    """Picks the k SDE steps of an epoch from `candidates`, deterministically.

    Flow-Factory draws k of the candidate steps at random; `contiguous=True` takes k
    consecutive candidates at a random start; `progressive` = (interval, stride,
    roll_back) slides a window of k consecutive candidates from the first one, `stride`
    candidates later every `interval` epochs (`progressive_start`; MixGRPO). The same
    (seed, epoch) gives the same window on every host.

    Returns:
      int32[k] sorted step indices.
    """
    cand = np.asarray(list(candidates), np.int64)
    if cand.ndim != 1 or cand.size == 0 or len(set(cand.tolist())) != cand.size:
        raise ValueError(f"candidates must be distinct step indices, got {list(candidates)}")
    if not 1 <= k <= cand.size:
        raise ValueError(f"k must be in [1, {cand.size}] (number of candidates), got {k}")
    if progressive is not None:
        start = progressive_start(epoch, cand.size - k, *progressive)
        return np.sort(cand)[start : start + k].astype(np.int32)
    rng = np.random.default_rng([int(seed), int(epoch)])
    if contiguous:
        start = int(rng.integers(0, cand.size - k + 1))
        chosen = np.sort(cand)[start : start + k]
    else:
        chosen = rng.choice(cand, size=k, replace=False)
    return np.sort(chosen).astype(np.int32)


def progressive_start(epoch: int, last: int, interval: int, stride: int, roll_back: bool) -> int:
    """First candidate of MixGRPO's progressive window at `epoch` (0-based): 0 for the
    first `interval` epochs, then `stride` later every `interval` epochs; past `last` (the
    last start whose window still fits) back to 0 (`roll_back`) or held at `last`.

    Tencent-Hunyuan/MixGRPO e5cdd6a fastvideo/utils/grpo_states.py (GRPOTrainingStates,
    sample_strategy "progressive": update_iteration after each training step, prog_overlap
    with prog_overlap_step, roll_back) and fastvideo/train_grpo_flux.py (the window of
    step n is read before its update). The reference's window keeps its start up to
    max_timesteps and shrinks at the end (range(l, min(l + w, max_timesteps)), even to
    no step); ffjax keeps k steps every epoch (fixed shapes), so its starts stop at `last`.
    """
    if interval < 1 or stride < 1:
        raise ValueError(f"interval and stride must be >= 1, got {interval}, {stride}")
    moves = int(epoch) // int(interval)
    if roll_back:
        return stride * (moves % (last // stride + 1))
    return min(stride * moves, last)


def noise_levels_for(num_steps: int, sde_steps: Sequence[int], level: float) -> np.ndarray:
    """float32[num_steps]: `level` on the SDE steps, 0 (ODE) elsewhere."""
    if level < 0:
        raise ValueError(f"noise level must be >= 0, got {level}")
    out = np.zeros(num_steps, np.float32)
    idx = np.asarray(list(sde_steps), np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= num_steps):
        raise ValueError(f"SDE steps must lie in [0, {num_steps}), got {idx.tolist()}")
    out[idx] = level
    return out
