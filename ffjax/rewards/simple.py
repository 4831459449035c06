"""Exact, download-free rewards for smoke runs and tests.

- `jpeg_compressibility` / `jpeg_incompressibility` (DDPO, Black et al. 2023): minus /
  plus the JPEG file size in kB (quality 95, 1 kB = 1000 bytes).
- `brightness`: mean luma (ITU-R BT.601 weights) in [0, 1].
- `symmetry`: 1 - mean |x - mirror(x)| / 255 for the left-right mirror, in [0, 1].
Videos are scored frame by frame and averaged.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from ffjax import registry
from ffjax.rewards.base import Samples, call_reward

_LUMA = np.array([0.299, 0.587, 0.114])


def jpeg_kb(image: np.ndarray, quality: int = 95) -> float:
    """Size in kB (1000 bytes) of the JPEG encoding of one uint8[H, W, 3] image."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return buffer.tell() / 1000.0


class _Pointwise:
    kind = "pointwise"
    name = ""
    video = "frames"  # a video scores the mean of its frames (ffjax.rewards.base)

    def __call__(self, samples: Samples) -> np.ndarray:
        if samples.videos is not None:
            return call_reward(self, samples).astype(np.float32)
        return np.asarray([self.score(f) for f in samples.images], np.float32)

    def score(self, frame: np.ndarray) -> float:
        raise NotImplementedError


@registry.REWARDS.register("jpeg_compressibility")
class JpegCompressibility(_Pointwise):
    """-kB of the quality-95 JPEG: smaller files score higher."""

    name = "jpeg_compressibility"

    def score(self, frame: np.ndarray) -> float:
        return -jpeg_kb(frame)


@registry.REWARDS.register("jpeg_incompressibility")
class JpegIncompressibility(_Pointwise):
    """+kB of the quality-95 JPEG: larger files score higher."""

    name = "jpeg_incompressibility"

    def score(self, frame: np.ndarray) -> float:
        return jpeg_kb(frame)


@registry.REWARDS.register("brightness")
class Brightness(_Pointwise):
    """Mean BT.601 luma / 255, in [0, 1]."""

    name = "brightness"

    def score(self, frame: np.ndarray) -> float:
        return float((frame.astype(np.float64) @ _LUMA).mean() / 255.0)


@registry.REWARDS.register("symmetry")
class Symmetry(_Pointwise):
    """1 - mean |x - x[:, ::-1]| / 255: 1 for a left-right symmetric image."""

    name = "symmetry"

    def score(self, frame: np.ndarray) -> float:
        f = frame.astype(np.float64)
        return float(1.0 - np.abs(f - f[:, ::-1]).mean() / 255.0)
