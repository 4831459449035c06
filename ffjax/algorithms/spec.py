"""What an algorithm declares to the rest of ffjax: its config section and rollout needs."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import ml_collections


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
      choices: allowed values of string keys of the section, checked at start-up.
    """

    name: str
    default_config: Callable[[], ml_collections.ConfigDict]
    record: str
    choices: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
