"""The Flow-Factory settings that several keys decide together: batch geometry and EMA.

Sources (facts read, no code taken):
  [A0] X-GenGroup/Flow-Factory a0b2bc5 src/flow_factory/hparams/args.py
       (`_resolve_sampler_type`, `_align_batch_geometry`, `_adjust_gradient_accumulation`,
       `_resolve_scheduler_sde_defaults`) and hparams/training_args.py
       (`compute_gradient_accumulation_steps`, `get_num_train_timesteps`,
       `_standardize_timestep_range`, NFT/AWM `num_train_timesteps` default).
  [B3] X-GenGroup/Flow-Factory b30dc00 src/flow_factory/hparams/training_args/_base.py
       (same geometry; `_initialize_batch_geometry`).
  [EM] X-GenGroup/Flow-Factory a0b2bc5 src/flow_factory/ema/ema_utils.py
       (`create_decay_fn` and its schedules; defaults warmup_steps 10, flat_steps 0,
       ramp_rate 0.001, initial_decay 0).

Flow-Factory counts per-GPU batches: W = num_processes GPUs each sample and train
`per_device_batch_size` = B rows per backward pass, and one optimizer step accumulates
`gradient_accumulation_steps` backward passes on every GPU, i.e. W x B x GAS rows.
ffjax counts global rows (ffjax/trainer.py `_check_run_shapes`): one per (sample, SDE
step) for GRPO ("sde_steps" record) and one per (sample, training sigma) for NFT / AWM
("final" record); one optimizer step takes micro_batch_size x grad_accum_steps rows.
So micro_batch_size = W x B and grad_accum_steps = Flow-Factory's resolved GAS, which
already counts the per-sample rows T ([A0] `_adjust_gradient_accumulation`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any


class Refused(ValueError):
    """A Flow-Factory value ffjax cannot honour; the message says why (no key)."""


@dataclasses.dataclass(frozen=True)
class Geometry:
    """Flow-Factory's resolved batch geometry, in ffjax's terms."""

    prompts_per_epoch: int  # unique_sample_num_per_epoch after Flow-Factory's rounding up
    group_size: int
    micro_batch_size: int  # W x B: one backward pass on every GPU
    grad_accum_steps: int  # Flow-Factory's resolved gradient_accumulation_steps
    rows_per_sample: int  # T: SDE steps (GRPO) or training sigmas (NFT / AWM)
    sampler: str  # the sampler Flow-Factory's "auto" resolves to


def rows_per_sample(trainer: str, train: dict, scheduler: dict) -> int:
    """T, the training rows of one sample ([A0] `get_num_train_timesteps`).

    GRPO: scheduler.num_sde_steps, null = every index of sde_steps, whose null is
    0 .. num_inference_steps - 2 ([A0] `_resolve_scheduler_sde_defaults`). NFT / AWM:
    num_train_timesteps, 0 / null = max(1, int(N (hi - lo))) of timestep_range.
    """
    n = int(train.get("num_inference_steps", 10))
    if trainer in ("grpo", "grpo-guard"):
        if scheduler.get("dynamics_type", "Flow-SDE") == "ODE":
            raise Refused("GRPO needs SDE steps; dynamics_type 'ODE' records none")
        steps = scheduler.get("sde_steps")
        pool = list(steps) if steps is not None else list(range(max(0, n - 1)))
        k = scheduler.get("num_sde_steps", 1)
        return len(pool) if k is None else int(k)
    return num_train_timesteps(train, default_range=0.9)


def sigma_range(value: Any) -> tuple[float, float]:
    """timestep_range as (lo, hi) along denoising: a float v is (0, v) ([A0])."""
    lo, hi = (0.0, float(value)) if not isinstance(value, (list, tuple)) else map(float, value)
    if not 0 <= lo < hi <= 1:
        raise Refused(f"timestep_range {value!r} must satisfy 0 <= start < end <= 1")
    return (lo, hi)


def num_train_timesteps(train: dict, default_range: float) -> int:
    """NFT / AWM training sigmas per sample: the value, or int(N (hi - lo)) for 0 / null."""
    k = train.get("num_train_timesteps", 0)
    if k:
        return int(k)
    lo, hi = sigma_range(train.get("timestep_range", default_range))
    return max(1, int(int(train.get("num_inference_steps", 10)) * (hi - lo)))


def geometry(trainer: str, train: dict, scheduler: dict, world: int, sampler: str) -> Geometry:
    """Flow-Factory's batch geometry ([A0] args.py) for `world` = num_processes GPUs.

    `unique_sample_num_per_epoch` (M) is rounded up as Flow-Factory does: M x K must
    tile W x B (x gradient_step_per_epoch with auto accumulation); group_contiguous also
    needs M % W == 0. "auto" picks distributed_k_repeat when only that constraint fails.
    """
    b = int(train.get("per_device_batch_size", 1))
    k = int(train.get("group_size", 1))
    m = int(train.get("unique_sample_num_per_epoch", 8))
    gsp = int(train.get("gradient_step_per_epoch", 2))
    gas = train.get("gradient_accumulation_steps", "auto")
    for name, v in (("per_device_batch_size", b), ("group_size", k), ("unique_sample_num_per_epoch", m), ("gradient_step_per_epoch", gsp), ("num_processes", world)):  # fmt: skip
        if v < 1:
            raise Refused(f"{name}={v} must be >= 1")
    auto = gas == "auto"
    if not auto and (isinstance(gas, bool) or not isinstance(gas, int) or gas < 1):
        raise Refused(f"gradient_accumulation_steps={gas!r} must be 'auto' or an int >= 1")
    if sampler == "auto":
        tiles = (m // world * k) % b == 0
        sampler = "distributed_k_repeat" if m % world and tiles else "group_contiguous"
    per_iter = world * b
    step = per_iter // math.gcd(k, per_iter) * (gsp if auto else 1)
    if sampler == "group_contiguous":
        step = math.lcm(step, world)
    m = -(-m // step) * step
    t = rows_per_sample(trainer, train, scheduler)
    batches = m * k // per_iter
    steps = max(1, batches // gsp) * t if auto else int(gas)
    if (m * k * t) % (per_iter * steps):
        raise Refused(
            f"{m * k * t} training rows an epoch (unique_sample_num_per_epoch {m} x group_size"
            f" {k} x {t} per sample) do not split into optimizer steps of {per_iter} x {steps}"
            " rows; ffjax takes whole optimizer steps: set gradient_accumulation_steps: auto"
            " or a divisor"
        )
    return Geometry(m, k, per_iter, steps, t, sampler)


# --------------------------------------------------------------------------- EMA

EMA_DEFAULTS = {  # [A0] TrainingArguments (decay, interval, schedule) and [EM]
    "ema_decay": 0.995,
    "ema_update_interval": 10,
    "ema_decay_schedule": "power",
    "warmup_steps": 10,
    "flat_steps": 0,
    "ramp_rate": 0.001,
    "initial_decay": 0.0,
}


def ema(train: dict) -> dict[str, Any]:
    """ffjax `ema.*` keys for Flow-Factory's EMA settings ([EM]), the same EMA: an update
    after every `ema_update_interval`-th epoch (ema.update_interval) with the schedule's
    decay at that epoch. "power" is ffjax's `power_warmup` (min(d, (1 + t) / (w + t))),
    the linear warm-up's and the piecewise ramp's steps are epochs.
    """
    g = {key: train.get(key, default) for key, default in EMA_DEFAULTS.items()}
    d, k, schedule = float(g["ema_decay"]), int(g["ema_update_interval"]), g["ema_decay_schedule"]
    if not 0 <= d < 1:
        raise Refused(f"ema_decay={d} must be in [0, 1)")
    if k < 1:
        raise Refused(f"ema_update_interval={k} must be >= 1")
    if d == 0:
        return {"ema.decay": 0.0}
    w = int(g["warmup_steps"])
    out: dict[str, Any] = {"ema.update_interval": k, "ema.decay": d}
    if schedule == "constant" or (schedule == "power" and w == 0):
        return {**out, "ema.schedule": "constant"}
    if schedule == "power":
        return {**out, "ema.schedule": "power_warmup", "ema.warmup_epochs": w}
    if schedule == "linear":
        return {
            **out,
            "ema.schedule": "linear",
            "ema.start_decay": float(g["initial_decay"]),
            "ema.ramp_epochs": max(1, w),
        }
    if schedule == "piecewise_linear":
        flat, rate = int(g["flat_steps"]), float(g["ramp_rate"])
        if rate <= 0:
            raise Refused(f"ramp_rate={rate} must be > 0")
        return {
            **out,
            "ema.schedule": "piecewise_linear",
            "ema.boundaries": (flat, flat + round(d / rate)),
            "ema.decays": (0.0, d),
        }
    raise Refused(
        f"ema_decay_schedule {schedule!r} is not translated (constant, power, linear and"
        " piecewise_linear are); set config.ema.* with --config.ema.schedule=..."
    )
