"""Helpers for groupwise rewards (`kind = "groupwise"`, see `ffjax.rewards.base`).

A groupwise reward scores a sample relative to the other samples of its group; these
helpers do the bookkeeping so a reward only has to produce raw per-sample scores.
"""

from __future__ import annotations

import numpy as np

from ffjax.rewards.base import Samples


def group_ids_of(samples: Samples) -> np.ndarray:
    """int[B]: `samples.group_ids`, or (when None) one group per distinct prompt text.

    The fallback makes a groupwise reward usable where no sampler assigned groups
    (evaluation, a reward server called by another framework): the samples of one
    prompt are the natural group there.
    """
    if samples.group_ids is not None:
        return np.asarray(samples.group_ids)
    first: dict[str, int] = {}
    return np.asarray([first.setdefault(p, len(first)) for p in samples.prompts], np.int64)


def group_rank(scores: np.ndarray, group_ids: np.ndarray) -> np.ndarray:
    """float64[B]: each score's rank within its group divided by the group's size.

    rank(i) = 1 + #{j in g: s_j < s_i} + (#{j in g: s_j = s_i} - 1) / 2, i.e. 1 for the
    lowest score and K for the highest of a group of K finite scores, tied scores
    sharing the mean of the ranks they span ("average" ranking, as
    `scipy.stats.rankdata`); the result rank / K lies in (0, 1], the best sample of
    every group gets 1. NaN scores (failed samples) stay NaN and do not count in K.
    """
    scores = np.asarray(scores, np.float64).reshape(-1)
    group_ids = np.asarray(group_ids).reshape(-1)
    if scores.shape != group_ids.shape:
        raise ValueError(f"{scores.shape[0]} scores for {group_ids.shape[0]} group ids")
    out = np.full(scores.shape, np.nan)
    for g in np.unique(group_ids):
        idx = np.nonzero((group_ids == g) & np.isfinite(scores))[0]
        s = scores[idx]
        below = (s[None, :] < s[:, None]).sum(1)  # K is a group size: K^2 is small
        equal = (s[None, :] == s[:, None]).sum(1)
        out[idx] = (1 + below + (equal - 1) / 2) / len(idx)
    return out
