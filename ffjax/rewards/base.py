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


class Reward(Protocol):
    """A reward: `name`, `kind` ("pointwise" | "groupwise"), and a call -> float32[B]."""

    name: str
    kind: str

    def __call__(self, samples: Samples) -> np.ndarray: ...
