"""The reward interface: decoded samples in, one float32 score per sample out."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np


@dataclasses.dataclass(frozen=True)
class Samples:
    """What a reward sees of a batch of B generations.

    images: uint8[B, H, W, 3] for image models (None for video);
    videos: uint8[B, T, H, W, 3] for video models (None for images);
    prompts: B strings; metadata: B dicts (e.g. jsonl fields of the prompt).
    """

    prompts: Sequence[str]
    images: np.ndarray | None = None
    videos: np.ndarray | None = None
    metadata: Sequence[dict[str, Any]] | None = None

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

    def __len__(self) -> int:
        return len(self.prompts)


class Reward(Protocol):
    """A reward: `name`, `kind` ("pointwise" | "groupwise"), and a call -> float32[B]."""

    name: str
    kind: str

    def __call__(self, samples: Samples) -> np.ndarray: ...
