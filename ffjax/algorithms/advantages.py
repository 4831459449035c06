"""Group-relative advantages from one or several rewards, on host in float64.

Samples come in groups of K generations of the same prompt (`group_ids`). Two ways to
combine rewards (Flow-Factory's names):

- `sum`:  r = sum_k w_k r_k, then A = (r - mean_g(r)) / (std(r) + eps).
- `gdpo`: A_k = (r_k - mean_g(r_k)) / (std(r_k) + eps) per reward, A' = sum_k w_k A_k,
          then A = (A' - mean(A')) / (std(A') + eps) over the whole batch.

`std="group"` uses the group's standard deviation (GRPO), `std="global"` the batch's.

Where the references disagree, the choice names the reference:

- `eps`: "flow_grpo" divides by std + 1e-4 (yifan123/flow_grpo flow_grpo/stat_tracking.py);
  "flow_factory" by max(std, 1e-6) (X-GenGroup/Flow-Factory a0b2bc5
  src/flow_factory/advantage/advantage_processor.py `_global_mean_std`, `compute_gdpo`).
- `gdpo_std` (method "gdpo" only): "flow_factory" normalises each reward by its own
  group's std whatever `std` says, then the weighted sum by the batch mean and std
  (Flow-Factory a0b2bc5 `compute_gdpo`: its `global_std` applies only to "sum");
  "advantage_std" normalises each reward with the `std` mode (ffjax before issue 17).
A sample whose reward is NaN is dropped: its advantage is 0, `valid` is False, and the
group statistics use the remaining samples. If every sample is dropped the run must
stop, so that is an error.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

METHODS = ("sum", "gdpo")
STD_MODES = ("group", "global")
EPS_MODES = ("flow_factory", "flow_grpo")
GDPO_STD_MODES = ("flow_factory", "advantage_std")


@dataclasses.dataclass(frozen=True)
class Advantages:
    """values: float64[B] (0 where dropped); valid: bool[B]; num_dropped: NaN samples."""

    values: np.ndarray
    valid: np.ndarray
    num_dropped: int


def compute_advantages(
    rewards: Mapping[str, np.ndarray],
    weights: Mapping[str, float],
    group_ids: np.ndarray,
    *,
    group_size: int,
    method: str = "sum",
    std: str = "group",
    eps: str | float = "flow_grpo",
    gdpo_std: str = "advantage_std",
    clip: float | None = None,
) -> Advantages:
    """Advantages of B samples.

    Args:
      rewards: reward name -> float[B] raw scores (NaN = failed sample).
      weights: reward name -> weight; must cover exactly the names in `rewards`.
      group_ids: int[B], equal for samples of the same prompt group.
      group_size: K; every group must have exactly K samples.
      method: "sum" | "gdpo".
      std: "group" | "global".
      eps: "flow_grpo" (std + 1e-4) | "flow_factory" (max(std, 1e-6)), or a number
        added to the std (std + eps; "flow_grpo" is 1e-4). The defaults here
        are ffjax's behaviour before the config keys existed; the config's
        `train.advantage_eps` / `train.gdpo_std` (default Flow-Factory's) choose.
      gdpo_std: "flow_factory" | "advantage_std" (see the module docstring).
      clip: if set, advantages are clipped to [-clip, clip].
    """
    if method not in METHODS:
        raise ValueError(f"unknown advantage method {method!r}; allowed: {', '.join(METHODS)}")
    if std not in STD_MODES:
        raise ValueError(f"unknown std mode {std!r}; allowed: {', '.join(STD_MODES)}")
    if isinstance(eps, str) and eps not in EPS_MODES:
        raise ValueError(f"unknown advantage eps {eps!r}; allowed: {', '.join(EPS_MODES)}")
    if gdpo_std not in GDPO_STD_MODES:
        raise ValueError(f"unknown gdpo_std {gdpo_std!r}; allowed: {', '.join(GDPO_STD_MODES)}")
    if not rewards:
        raise ValueError("no rewards given")
    if set(rewards) != set(weights):
        raise ValueError(
            f"reward names {sorted(rewards)} and weight names {sorted(weights)} differ"
        )
    if group_size < 2:
        raise ValueError(f"group_size must be >= 2 for group-relative advantages, got {group_size}")
    group_ids = np.asarray(group_ids)
    table = {k: np.asarray(v, np.float64) for k, v in rewards.items()}
    for name, r in table.items():
        if r.shape != group_ids.shape or r.ndim != 1:
            raise ValueError(f"reward {name!r} has shape {r.shape}, expected {group_ids.shape}")
    groups, counts = np.unique(group_ids, return_counts=True)
    incomplete = {int(g): int(c) for g, c in zip(groups, counts, strict=True) if c != group_size}
    if incomplete:
        raise ValueError(f"incomplete groups (id: count, expected {group_size}): {incomplete}")

    valid = np.all([np.isfinite(r) for r in table.values()], axis=0)
    if not valid.any():
        raise ValueError("every sample has a NaN or infinite reward; nothing to learn from")

    if method == "sum":
        total = sum(weights[k] * table[k] for k in table)
        adv = _normalise(total, group_ids, valid, std, eps)
    else:
        reward_std = "group" if gdpo_std == "flow_factory" else std
        per_reward = sum(
            weights[k] * _normalise(table[k], group_ids, valid, reward_std, eps) for k in table
        )
        adv = _normalise(per_reward, np.zeros_like(group_ids), valid, "global", eps)
    adv = np.where(valid, adv, 0.0)
    if clip is not None:
        adv = np.clip(adv, -clip, clip)
    return Advantages(values=adv, valid=valid, num_dropped=int((~valid).sum()))


def _scale(std: float, eps: str | float) -> float:
    """The divisor of a standard deviation: std + 1e-4 (flow_grpo), max(std, 1e-6)
    (flow_factory), or std + eps for a number."""
    if eps == "flow_factory":
        return max(std, 1e-6)
    return std + (1e-4 if eps == "flow_grpo" else float(eps))


def _normalise(
    r: np.ndarray, group_ids: np.ndarray, valid: np.ndarray, std: str, eps: str | float
) -> np.ndarray:
    """(r - group mean) / scale(group or global std), statistics over valid samples only."""
    out = np.zeros_like(r)
    global_std = np.std(r[valid])
    for g in np.unique(group_ids):
        members = (group_ids == g) & valid
        if not members.any():
            continue
        scale = np.std(r[members]) if std == "group" else global_std
        out[members] = (r[members] - r[members].mean()) / _scale(float(scale), eps)
    return out
