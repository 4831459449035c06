"""What an algorithm declares to the rest of ffjax, and the contract of its loss.

An algorithm is a config section, what the rollout must record, and a pure loss built
by `make_loss(config.algorithm, policy, dynamics=...)`:

    loss_fn(trainable, frozen, batch, key) -> (loss float32[], metrics {name: float32[]})

which the trainer wraps in `jax.value_and_grad` and `jax.jit`. The algorithm sees the
model only through `policy`:

    policy(weights, base, x, sigma, cond) -> v float32[B, ...]

where `weights` is a trainable pytree (current, old, EMA or reference weights) or
None for "the base model alone" (LoRA switched off), `base` the frozen model
variables, x float32[B, ...] latents at sigma, sigma float32[B], cond the batch's
conditioning pytree (every leaf has leading axis B).

Batches (dicts; every array has leading axis B = micro-batch size, one row per
trained item):

- record == "sde_steps" (likelihood-ratio methods, one row per (sample, SDE step)):
    cond, x_t [B, ...], x_next [B, ...] (stored step, storage dtype),
    log_prob float32[B] (old policy's log-prob of x_next, from the rollout),
    sigma, sigma_next, noise_level float32[B], advantage float32[B] (not clipped).
- record == "final" (forward-process methods, one row per (sample, training sigma)):
    cond, x0 float32[B, ...] (final rollout latents), noise float32[B, ...]
    (standard normal, drawn by the trainer), sigma float32[B] (training sigma),
    advantage float32[B] (not clipped).

Metrics always include the keys of `REQUIRED_METRICS` that apply; a metric that has
no meaning for an algorithm (a ratio for DiffusionNFT) is left out and the trainer
records it as null.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import ml_collections

PolicyFn = Callable[[Any, Any, jax.Array, jax.Array, Any], jax.Array]
LossFn = Callable[[Any, "Frozen", dict, jax.Array], tuple[jax.Array, dict[str, jax.Array]]]

REQUIRED_METRICS = (
    "loss",
    "ratio_mean",
    "ratio_min",
    "ratio_max",
    "clipfrac",
    "approx_kl",
    "kl",
)


@flax.struct.dataclass
class Frozen:
    """Everything the loss reads but does not differentiate.

    Attributes:
      base: frozen model variables passed to `policy` as `base`.
      ref: reference-policy trainable weights; None = the base model alone (LoRA off).
        For full fine-tuning the trainer keeps a copy of the initial weights here.
      ema: EMA of the trainable weights, or None when EMA is disabled.
      snapshot: the trainable weights the epoch's rollout was sampled with, or None
        when the algorithm does not ask for it (`AlgorithmSpec.needs_snapshot`).
    """

    base: Any
    ref: Any = None
    ema: Any = None
    snapshot: Any = None


@dataclasses.dataclass(frozen=True)
class AlgorithmSpec:
    """A registered RL algorithm.

    Attributes:
      name: registry name (e.g. "grpo").
      default_config: returns the algorithm's `config.algorithm` keys with defaults;
        each key documented where it is defined.
      record: what the rollout must keep: "sde_steps" (x_t, x_next, log_prob of the
        stochastic steps, for likelihood-ratio methods) or "final" (only x0, for
        decoupled methods that re-noise the final sample).
      make_loss: `make_loss(algorithm_config, policy, *, dynamics) -> loss_fn` (see the
        module docstring); `dynamics` is the rollout's step type (steps.DYNAMICS).
      needs_snapshot: whether `Frozen.snapshot` must hold the rollout-time weights; a
        bool or a function of `config.algorithm`.
      sample_with_ema: whether rollouts sample with the EMA weights instead of the
        current ones (off-policy methods whose old policy is the EMA); a bool or a
        function of `config.algorithm`.
      choices: allowed values of string keys of the section, checked at start-up.
    """

    name: str
    default_config: Callable[[], ml_collections.ConfigDict]
    record: str
    make_loss: Callable[..., LossFn] | None = None
    needs_snapshot: bool | Callable[[ml_collections.ConfigDict], bool] = False
    sample_with_ema: bool | Callable[[ml_collections.ConfigDict], bool] = False
    choices: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)

    def wants(self, field: str, algorithm_config: ml_collections.ConfigDict) -> bool:
        """The value of the bool-or-function field `field` for this run's config."""
        value = getattr(self, field)
        return bool(value(algorithm_config) if callable(value) else value)
