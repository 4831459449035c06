"""Rewards scored in a worker pool while the next rollout chunk runs (`train.async_rewards`).

The trainer samples an epoch in chunks of `sampling.batch_size`. With an
`AsyncScorer`, chunk i's decoded images are handed to the pool (`submit`) and the
device goes on with chunk i+1; `finish` waits for what is left and returns one
float64 array per reward alias, the chunks concatenated in *submission* order,
whichever finished first. Groupwise rewards (`kind == "groupwise"`, see
`ffjax.rewards.base`) see the whole epoch at once: they are scored in `finish`, on
the full epoch's `Samples`, after every chunk has arrived.

Threads, not processes: the work of a reward is NumPy / PIL (C loops that release the
GIL), a jitted JAX model (XLA runs outside the GIL and jit is thread-safe) or an HTTP
request to a reward server (blocked in a socket, GIL released). Threads share the
images and the loaded reward models without pickling uint8 batches or loading a CLIP
model per process, and a JAX runtime must not be forked. A reward used with more than
one worker is called concurrently on different chunks, so it must be thread-safe (the
rewards of `ffjax.rewards` are pure functions of their samples); with one worker the
calls run one at a time, in submission order.

Errors: an exception raised in a worker surfaces in the main thread, from `submit`
(the first failure found; not with `stop_early=False`) or `finish`. `score_fn(alias, reward, samples)` does the
checking; the trainer's turns a `RewardError` or a wrong shape into a `TrainingError`
naming the alias. An exception that does not name the alias gets a note that does
(and the chunk).
"""

from __future__ import annotations

import concurrent.futures as cf
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ffjax.rewards.base import Reward, RewardError, Samples, call_reward

ScoreFn = Callable[[str, Reward, Samples], np.ndarray]


def score_reward(alias: str, reward: Reward, samples: Samples) -> np.ndarray:
    """float64[B] of `reward(samples)`; errors name the alias (the default `score_fn`)."""
    try:
        scores = call_reward(reward, samples)
    except RewardError as e:
        raise RewardError(f"reward {alias!r}: {e}") from None
    if scores.shape != (len(samples),):
        raise ValueError(
            f"reward {alias!r} returned shape {scores.shape} for {len(samples)} samples"
        )
    return scores


class AsyncScorer:
    """Scores decoded chunks in a `ThreadPoolExecutor` as they are produced.

    rewards: {alias: reward} or {alias: (reward, weight)} (the trainer's form);
    workers: threads of the pool (>= 1); score_fn: see the module docstring.
    Use as a context manager, or call `close`; `finish` may be called once.
    """

    def __init__(
        self,
        rewards: Mapping[str, Any],
        workers: int = 2,
        score_fn: ScoreFn = score_reward,
        stop_early: bool = True,
    ):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.rewards = {a: r[0] if isinstance(r, tuple) else r for a, r in rewards.items()}
        self.score_fn = score_fn
        self._pool = cf.ThreadPoolExecutor(workers, thread_name_prefix="ffjax-reward")
        self._futures: dict[str, list[cf.Future]] = {
            a: [] for a, r in self.rewards.items() if r.kind != "groupwise"
        }
        self._chunks: list[Samples] = []
        self._lock = threading.Lock()
        self.busy_s = 0.0  # total time the workers spent scoring
        self.finished = False
        # False: failures surface from `finish` only, so a multi-process caller finishes
        # its rollouts (collectives every process must join) before it stops.
        self.stop_early = stop_early

    def _run(self, alias: str, samples: Samples, chunk: int) -> np.ndarray:
        t0 = time.perf_counter()
        try:
            return self.score_fn(alias, self.rewards[alias], samples)
        except Exception as e:
            if repr(alias) not in str(e):
                e.add_note(f"while scoring reward {alias!r} on chunk {chunk}")
            raise
        finally:
            with self._lock:
                self.busy_s += time.perf_counter() - t0

    def _raise_failed(self) -> None:
        for futures in self._futures.values():
            for f in futures:
                if f.done() and f.exception() is not None:
                    raise f.exception()

    def submit(self, samples: Samples) -> None:
        """Queue one chunk for every pointwise reward; returns at once."""
        if self.finished:
            raise RuntimeError("submit after finish")
        if self.stop_early:
            self._raise_failed()  # stop early: the epoch cannot be scored
        chunk = len(self._chunks)
        self._chunks.append(samples)
        for alias, futures in self._futures.items():
            futures.append(self._pool.submit(self._run, alias, samples, chunk))

    def finish(self, epoch: Samples | None = None) -> dict[str, np.ndarray]:
        """Waits for every chunk; {alias: float64[N]} in the rewards' order.

        epoch: the whole epoch's Samples for the groupwise rewards (its length must be
        the chunks' total); by default the chunks concatenated (group_ids kept).
        """
        if self.finished:
            raise RuntimeError("finish called twice")
        self.finished = True
        n = sum(len(s) for s in self._chunks)
        groupwise = [a for a in self.rewards if a not in self._futures]
        if groupwise:
            epoch = epoch if epoch is not None else _concat(self._chunks)
            if len(epoch) != n:
                raise ValueError(f"epoch Samples of {len(epoch)} for {n} submitted samples")
            group = {a: self._pool.submit(self._run, a, epoch, -1) for a in groupwise}
        out = {}
        for alias in self.rewards:
            if alias in self._futures:
                parts = [f.result() for f in self._futures[alias]]  # submission order
                out[alias] = np.concatenate(parts) if parts else np.zeros(0)
            else:
                out[alias] = group[alias].result()
        return out

    def close(self) -> None:
        """Stops the pool; chunks not started are cancelled."""
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> AsyncScorer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _concat(chunks: list[Samples]) -> Samples:
    """The chunks as one Samples (images or videos, prompts, metadata, group_ids)."""
    first = chunks[0]
    cat = lambda name: (
        None if getattr(first, name) is None else np.concatenate([getattr(s, name) for s in chunks])
    )
    meta = None if first.metadata is None else [m for s in chunks for m in s.metadata]
    return Samples(
        [p for s in chunks for p in s.prompts],
        images=cat("images"),
        videos=cat("videos"),
        metadata=meta,
        group_ids=cat("group_ids"),
    )
