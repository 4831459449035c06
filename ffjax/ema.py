"""EMA of the trainable weights: per-epoch decay schedules and the pure update.

The trainer steps the EMA after the optimizer steps of every `update_interval`-th epoch
(`due`; 1 = every epoch):

    if due(config.ema, epoch):                   # (epoch + 1) % update_interval == 0
        decay = ema_decay(config.ema, epoch)     # host float; epoch is 0-based
        ema = ema_update(ema, trainable, decay)  # jit-able; decay may be traced

as X-GenGroup/Flow-Factory b30dc00 / a0b2bc5 src/flow_factory/ema/ema.py
(`EMAModuleWrapper.step`, called with the epoch; `ema_update_interval`) does: an update
after epochs k - 1, 2k - 1, ..., with the schedule's decay at that epoch.

    ema <- decay * ema + (1 - decay) * params

so decay 0 copies the current weights. `config.ema.decay = 0` disables EMA for every
schedule (`enabled` is False and `ema_decay` returns 0).

Schedules, with t = epoch, d = `decay`, d0 = `start_decay`, R = `ramp_epochs`,
W = `warmup_epochs` (each matches the Flow-Factory schedule of the same name in
`flow_factory/ema/ema_utils.py` unless noted):

  constant          d
  power             clip(1 - (1 + t / inv_gamma) ** -power, d0, d)
                    Diffusers `EMAModel` with use_ema_warmup (min_decay = d0). Flow-Factory's
                    "power" is Diffusers' other warm-up: power_warmup below.
  power_warmup      min(d, (1 + t) / (W + t)); W = 0: d. Flow-Factory's "power"
                    (`power_warmup_decay(decay, warmup_steps)`, default warmup_steps 10).
  linear            d0 + (d - d0) * min(t / R, 1)
  piecewise_linear  linear interpolation of (`boundaries`, `decays`), held beyond the ends.
                    DiffusionNFT's `return_decay(flat, uprate, uphold)` ("NFT style"
                    in Flow-Factory) is boundaries=(flat, flat + uphold / uprate),
                    decays=(0, uphold): 0 until `flat`, then a ramp of slope `uprate`
                    capped at `uphold`; e.g. (75, 75 + 0.999 / 0.0075), (0, 0.999).
  cosine            d0 + (d - d0) * (1 - cos(pi * min(t / R, 1))) / 2
  warmup_cosine     t < W: d0 * t / W (linear from 0); then the cosine above over
                    t - W, i.e. Flow-Factory's warmup_cosine with total_steps = W + R.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

SCHEDULES = (
    "constant", "power", "power_warmup", "linear", "piecewise_linear", "cosine", "warmup_cosine"
)  # fmt: skip


class EMAConfigError(ValueError):
    """A bad `config.ema` value; the message names the key."""


def enabled(ema_cfg: Any) -> bool:
    """Whether EMA is on (`config.ema.decay > 0`)."""
    return float(ema_cfg.decay) > 0


def validate(ema_cfg: Any) -> None:
    """Raises EMAConfigError for a schedule ffjax does not know or knots/values it cannot use."""
    schedule = ema_cfg.schedule
    if schedule not in SCHEDULES:
        raise EMAConfigError(
            f"config.ema.schedule={schedule!r} is not allowed; allowed: {', '.join(SCHEDULES)}"
        )
    for key in ("decay", "start_decay"):
        value = float(ema_cfg[key])
        if not 0 <= value < 1:
            raise EMAConfigError(f"config.ema.{key}={value!r} must be in [0, 1)")
    if schedule in ("linear", "cosine", "warmup_cosine") and ema_cfg.ramp_epochs < 1:
        raise EMAConfigError(f"config.ema.ramp_epochs={ema_cfg.ramp_epochs!r} must be >= 1")
    if int(ema_cfg.get("update_interval", 1)) < 1:
        raise EMAConfigError(
            f"config.ema.update_interval={ema_cfg.update_interval!r} must be >= 1 (1 = every epoch)"
        )
    if schedule in ("warmup_cosine", "power_warmup") and ema_cfg.warmup_epochs < 0:
        raise EMAConfigError(f"config.ema.warmup_epochs={ema_cfg.warmup_epochs!r} must be >= 0")
    if schedule == "power" and (ema_cfg.inv_gamma <= 0 or ema_cfg.power <= 0):
        raise EMAConfigError(
            f"config.ema.inv_gamma={ema_cfg.inv_gamma!r} and config.ema.power="
            f"{ema_cfg.power!r} must both be > 0 for the power schedule"
        )
    if schedule == "piecewise_linear":
        boundaries, decays = tuple(ema_cfg["boundaries"]), tuple(ema_cfg["decays"])
        if not boundaries or len(boundaries) != len(decays):
            raise EMAConfigError(
                "config.ema.boundaries and config.ema.decays must be non-empty and of equal "
                f"length for piecewise_linear; got {len(boundaries)} boundaries and "
                f"{len(decays)} values"
            )
        if any(b1 <= b0 for b0, b1 in zip(boundaries, boundaries[1:], strict=False)):
            raise EMAConfigError(f"config.ema.boundaries={boundaries} must be strictly increasing")
        bad = [v for v in decays if not 0 <= v < 1]
        if bad:
            raise EMAConfigError(f"config.ema.decays={decays} has {bad} outside [0, 1)")


def ema_decay(ema_cfg: Any, epoch: int) -> float:
    """The decay used for the EMA step after (0-based) epoch `epoch`; formulas above."""
    validate(ema_cfg)
    if not enabled(ema_cfg):
        return 0.0
    t = float(epoch)
    d, d0 = float(ema_cfg.decay), float(ema_cfg.start_decay)
    schedule = ema_cfg.schedule
    if schedule == "constant":
        return d
    if schedule == "power":
        value = 1.0 - (1.0 + t / float(ema_cfg.inv_gamma)) ** -float(ema_cfg.power)
        return min(max(value, d0), d)
    if schedule == "power_warmup":
        w = float(ema_cfg.warmup_epochs)
        return d if w == 0 else min(d, (1.0 + t) / (w + t))
    if schedule == "piecewise_linear":
        return float(np.interp(t, ema_cfg["boundaries"], ema_cfg["decays"]))
    ramp = float(ema_cfg.ramp_epochs)
    if schedule == "linear":
        return d0 + (d - d0) * min(t / ramp, 1.0)
    if schedule == "warmup_cosine":
        warmup = float(ema_cfg.warmup_epochs)
        if t < warmup:
            return d0 * t / warmup
        t -= warmup
    return d0 + (d - d0) * (1.0 - math.cos(math.pi * min(t / ramp, 1.0))) / 2.0


def due(ema_cfg: Any, epoch: int) -> bool:
    """Whether the EMA steps after (0-based) epoch `epoch`: on, and (epoch + 1) a multiple
    of `update_interval` (Flow-Factory's `ema_update_interval`)."""
    return enabled(ema_cfg) and (int(epoch) + 1) % int(ema_cfg.get("update_interval", 1)) == 0


def ema_update(ema: Any, params: Any, decay: float | jax.Array) -> Any:
    """ema * decay + (1 - decay) * params, leaf by leaf, in each EMA leaf's dtype.

    Pure and jit-able; pass `decay` as an array argument so a changing schedule never
    recompiles. The blend is formed in float32 (or wider) and rounded once to the EMA
    leaf's dtype; `params` may have another dtype.
    """

    def blend(e, p):
        dt = jnp.promote_types(e.dtype, jnp.float32)
        w = jnp.asarray(decay, dt)
        return (e.astype(dt) * w + p.astype(dt) * (1 - w)).astype(e.dtype)

    return jax.tree.map(blend, ema, params)
