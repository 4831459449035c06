"""`TrainState`: everything a run carries from one optimizer step to the next, as one pytree."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
    """One pytree, donated to every train step and saved whole by the checkpointer.

    Attributes:
      step: int32[] optimizer calls so far (micro-steps when accumulating gradients).
      epoch: int32[] epochs completed; with the seed it fixes the data position, the
        rollout noise and the SDE window of the next epoch.
      trainable: the trained weights (LoRA collection or full denoiser params), float32.
      opt_state: the optax state of `trainable`.
      ema: EMA of `trainable` (same structure), or None when EMA is disabled.
    """

    step: jax.Array
    epoch: jax.Array
    trainable: Any
    opt_state: Any
    ema: Any


def init_state(trainable: Any, optimizer: optax.GradientTransformation, ema: bool) -> TrainState:
    """A fresh TrainState at step 0; the EMA (if kept) starts as a copy of `trainable`."""
    trainable = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), trainable)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        epoch=jnp.zeros((), jnp.int32),
        trainable=trainable,
        opt_state=optimizer.init(trainable),
        ema=jax.tree.map(jnp.copy, trainable) if ema else None,
    )
