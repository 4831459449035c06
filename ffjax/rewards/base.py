"""The reward interface: decoded samples in, one float32 score per sample out.

Two kinds of reward (`Reward.kind`):

- "pointwise": each sample's score depends on that sample alone, so the caller may
  split a batch freely (the remote client does, by `batch_size`).
- "groupwise": a sample's score depends on the other samples of its group (e.g. a
  rank among the K images of one prompt, a pairwise preference). The trainer calls
  it once per epoch with *all* of the epoch's samples and `Samples.group_ids`:
  int[B], the sampler's group of each sample (the K samples drawn for one prompt
  share an id; ids need not be contiguous or sorted). It still returns one score per
  sample, float32[B]. Where no sampler assigned groups (evaluation), `group_ids` is
  None and `ffjax.rewards.groupwise.group_ids_of` groups samples by prompt text.

Videos (`Reward.video`): a reward declares how it scores videos. "frames": it scores
images, and `call_reward` hands it every frame of every clip as one image batch (prompt,
metadata and group id repeated per frame), then averages each clip's frame scores;
"clip" (the default when a reward declares nothing): it sees the videos themselves,
uint8[B, T, H, W, 3], and scores whole clips (motion, temporal consistency, a video
judge). Groupwise rewards should be "clip": "frames" would rank frames, not clips.

Failures: a score of NaN marks a failed sample (dropped from the advantages and
counted); a reward that cannot score at all (a remote server gone) raises
`RewardError`, which the trainer reports as a one-line `TrainingError`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np


class RewardError(RuntimeError):
    """A reward could not score a batch at all (not a per-sample NaN)."""


@dataclasses.dataclass(frozen=True)
class Samples:
    """What a reward sees of a batch of B generations.

    images: uint8[B, H, W, 3] for image models (None for video);
    videos: uint8[B, T, H, W, 3] for video models (None for images);
    prompts: B strings; metadata: B dicts (e.g. jsonl fields of the prompt);
    group_ids: int[B] group of each sample (see the module docstring), or None.
    """

    prompts: Sequence[str]
    images: np.ndarray | None = None
    videos: np.ndarray | None = None
    metadata: Sequence[dict[str, Any]] | None = None
    group_ids: np.ndarray | None = None

    def __post_init__(self):
        if (self.images is None) == (self.videos is None):
            raise ValueError("Samples needs exactly one of images or videos")
        pixels = self.images if self.images is not None else self.videos
        ndim = 4 if self.images is not None else 5
        if pixels.dtype != np.uint8 or pixels.ndim != ndim or pixels.shape[-1] != 3:
            kind = "images (B, H, W, 3)" if ndim == 4 else "videos (B, T, H, W, 3)"
            raise ValueError(f"{kind} must be uint8 RGB, got {pixels.dtype} {pixels.shape}")
        if len(self.prompts) != pixels.shape[0]:
            raise ValueError(f"{len(self.prompts)} prompts for {pixels.shape[0]} samples")
        if self.metadata is not None and len(self.metadata) != len(self.prompts):
            raise ValueError(f"{len(self.metadata)} metadata dicts for {len(self.prompts)} samples")
        if self.group_ids is not None:
            ids = np.asarray(self.group_ids)
            if ids.shape != (len(self.prompts),) or not np.issubdtype(ids.dtype, np.integer):
                raise ValueError(
                    f"group_ids must be int[{len(self.prompts)}], got {ids.dtype} {ids.shape}"
                )
            object.__setattr__(self, "group_ids", ids)

    def __len__(self) -> int:
        return len(self.prompts)

    @classmethod
    def of(cls, prompts: Sequence[str], pixels: np.ndarray, **fields: Any) -> Samples:
        """Samples of decoded generations: uint8[B, H, W, 3] become `images`,
        uint8[B, T, H, W, 3] `videos` (what an adapter's `decode` returns)."""
        pixels = np.asarray(pixels)
        if pixels.ndim == 5:
            return cls(prompts, videos=pixels, **fields)
        return cls(prompts, images=pixels, **fields)


VIDEO_MODES = ("frames", "clip")


class Reward(Protocol):
    """A reward: `name`, `kind` ("pointwise" | "groupwise"), optionally `video`
    ("frames" | "clip", see the module docstring), and a call -> float32[B]."""

    name: str
    kind: str

    def __call__(self, samples: Samples) -> np.ndarray: ...


def video_mode(reward: Any) -> str:
    """The reward's declared `video` mode ("clip" when it declares none); ValueError
    naming the reward for anything else."""
    mode = getattr(reward, "video", "clip")
    if mode not in VIDEO_MODES:
        name = getattr(reward, "name", type(reward).__name__)
        raise ValueError(f"reward {name!r} declares video={mode!r}; allowed: {VIDEO_MODES}")
    return mode


def call_reward(reward: Any, samples: Samples) -> np.ndarray:
    """`reward(samples)` as its `video` mode asks: float64[B], one score per sample.

    Images, and videos for "clip" rewards, go to the reward unchanged. For "frames"
    rewards a video batch uint8[B, T, H, W, 3] is scored as B*T images and each clip's
    score is the mean of its T frame scores (NaN if any frame failed).
    """
    if samples.videos is None or video_mode(reward) == "clip":
        return np.asarray(reward(samples), np.float64).reshape(-1)
    b, t = samples.videos.shape[:2]
    rep = lambda seq: None if seq is None else [x for x in seq for _ in range(t)]
    frames = Samples(
        prompts=rep(samples.prompts),
        images=samples.videos.reshape(b * t, *samples.videos.shape[2:]),
        metadata=rep(samples.metadata),
        group_ids=None if samples.group_ids is None else np.repeat(samples.group_ids, t),
    )
    scores = np.asarray(reward(frames), np.float64).reshape(-1)
    if scores.shape != (b * t,):
        return scores  # the caller reports the wrong shape
    return scores.reshape(b, t).mean(axis=1)
