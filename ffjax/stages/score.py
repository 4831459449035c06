"""Score: rewards of decoded samples (registry; JAX models, simple functions, a remote
server), optionally in a thread pool while the next rollout chunk runs
(`train.async_rewards`, `ffjax.rewards.async_pool`), combined by their config weights,
then group-normalised advantages (host, float64).

Scores are of this process's rows; the caller gathers them (`rows.gather_rows`) so
that every process computes the same advantages.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

from ffjax import configs, registry
from ffjax.algorithms.advantages import Advantages, compute_advantages
from ffjax.rewards.base import RewardError, Samples, call_reward
from ffjax.stages import TrainingError

Rewards = dict[str, tuple[Any, float]]  # alias -> (reward, weight)


def build_rewards(section: configs.ConfigDict) -> Rewards:
    """{alias: (reward, weight)} of a `config.rewards` / `config.eval_rewards` section.

    TrainingError when a reward cannot start (e.g. a remote reward whose server is down).
    """
    out = {}
    for alias, entry in section.items():
        cls = registry.REWARDS.get(entry.get("name", alias))
        try:
            out[alias] = (cls(**dict(entry.get("args", {}))), float(entry.get("weight", 1.0)))
        except RewardError as e:  # e.g. a remote reward whose server is not up
            raise TrainingError(f"reward {alias!r}: {e}") from None
    return out


def score_one(alias: str, reward: Any, samples: Samples) -> np.ndarray:
    """float64[B] scores of one reward; RewardError / a wrong shape -> TrainingError."""
    try:
        scores = call_reward(reward, samples)  # videos: per frame or per clip, as declared
    except RewardError as e:  # e.g. the reward server died: stop, keep what is done
        raise TrainingError(
            f"reward {alias!r}: {e}; stopping. Finished epochs, metrics and checkpoints are kept."
        ) from None
    if scores.shape != (len(samples),):
        raise TrainingError(
            f"reward {alias!r} returned shape {scores.shape} for {len(samples)} samples"
        )
    return scores


def score(rewards: Rewards, samples: Samples, progress: bool = False) -> dict[str, np.ndarray]:
    """{alias: float64[B]} of every reward, one after another (a bar per reward with
    `progress`: reward models can take as long as the rollout)."""
    bar = tqdm(rewards.items(), desc="rewards", unit="reward", leave=False, disable=not progress)
    return {alias: score_one(alias, reward, samples) for alias, (reward, _) in bar}


def generate_and_score(
    generate: Callable[[Callable[[np.ndarray, int], None]], Any],
    rewards: Rewards,
    workers: int,
    samples_of: Callable[[np.ndarray, int | None], Samples],
) -> tuple[Any, dict[str, np.ndarray], dict[str, float]]:
    """generate(on_images) with every chunk's images scored in a thread pool as they
    arrive (`ffjax.rewards.async_pool`): chunk i is scored while chunk i+1 rolls out.

    `generate` returns an object with `.images` (this process's, every chunk);
    samples_of(images, start) -> Samples of the chunk from row `start` (None: all).
    Same chunks, keys and decode calls as scoring after the rollout: the same images and
    scores. Returns (generate's result, scores, {"rollout_s", "reward_s" (the wait after
    the last chunk), "reward_busy_s" (time spent scoring)}).
    """
    from ffjax.rewards.async_pool import AsyncScorer

    t0 = time.perf_counter()
    # With several processes a failure waits for `finish`: the other processes are
    # rolling out the next chunks, whose collectives need this one too.
    stop_early = jax.process_count() == 1
    with AsyncScorer(rewards, workers, score_one, stop_early=stop_early) as scorer:
        out = generate(lambda images, start: scorer.submit(samples_of(images, start)))
        t1 = time.perf_counter()
        scores = scorer.finish(samples_of(out.images, None))
        times = {"rollout_s": t1 - t0, "reward_s": time.perf_counter() - t1}
        times["reward_busy_s"] = scorer.busy_s
    return out, scores, times


def weights_of(rewards: Rewards) -> dict[str, float]:
    """{alias: weight} of `rewards`."""
    return {a: w for a, (_, w) in rewards.items()}


def combine(raw: dict[str, np.ndarray], weights: dict[str, float]) -> np.ndarray:
    """The weighted sum of the rewards' scores (NaN where any is NaN)."""
    return sum(weights[a] * raw[a] for a in raw)


def advantages(
    raw: dict[str, np.ndarray],
    weights: dict[str, float],
    group_ids: np.ndarray,
    group_size: int,
    method: str,
    std: str,
    epoch: int,
    *,
    eps: str = "flow_grpo",
    gdpo_std: str = "advantage_std",
) -> Advantages:
    """`compute_advantages` of every row's scores (`eps`, `gdpo_std`: the references'
    choices, `train.advantage_eps` / `train.gdpo_std`); TrainingError when none is usable."""
    try:
        return compute_advantages(
            raw, weights, group_ids, group_size=group_size, method=method, std=std,
            eps=eps, gdpo_std=gdpo_std,
        )  # fmt: skip
    except ValueError as e:
        bad = [a for a in raw if not np.isfinite(raw[a]).any()]
        raise TrainingError(
            f"epoch {epoch}: {e} (rewards with no finite value: {bad or 'none'}); stopping."
            " Finished epochs, metrics and checkpoints are kept."
        ) from None
