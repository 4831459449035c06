"""Simple rewards against their definitions computed independently."""

import io

import numpy as np
import pytest
from PIL import Image

from ffjax import registry
from ffjax.rewards import simple  # noqa: F401  (registers)
from ffjax.rewards.base import Samples


def _samples(images):
    return Samples(prompts=["p"] * len(images), images=np.asarray(images, np.uint8))


def test_brightness_and_symmetry_definitions():
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (3, 8, 6, 3), dtype=np.uint8)
    b = registry.REWARDS.get("brightness")()(_samples(imgs))
    luma = (0.299 * imgs[..., 0] + 0.587 * imgs[..., 1] + 0.114 * imgs[..., 2]) / 255.0
    np.testing.assert_allclose(b, luma.reshape(3, -1).mean(1), rtol=1e-6)
    s = registry.REWARDS.get("symmetry")()(_samples(imgs))
    f = imgs.astype(np.float64)
    want = 1 - np.abs(f - f[:, :, ::-1]).reshape(3, -1).mean(1) / 255
    np.testing.assert_allclose(s, want, rtol=1e-6)
    mirrored = np.concatenate([imgs[:, :, :3], imgs[:, :, :3][:, :, ::-1]], axis=2)
    np.testing.assert_allclose(registry.REWARDS.get("symmetry")()(_samples(mirrored)), 1.0)


def test_jpeg_rewards_are_file_sizes_in_kb():
    rng = np.random.default_rng(1)
    flat = np.full((1, 32, 32, 3), 128, np.uint8)
    noisy = rng.integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)
    batch = _samples(np.concatenate([flat, noisy]))
    comp = registry.REWARDS.get("jpeg_compressibility")()(batch)
    incomp = registry.REWARDS.get("jpeg_incompressibility")()(batch)
    buf = io.BytesIO()
    Image.fromarray(noisy[0]).save(buf, format="JPEG", quality=95)
    assert incomp[1] == pytest.approx(len(buf.getvalue()) / 1000.0)
    np.testing.assert_allclose(comp, -incomp)
    assert comp[0] > comp[1]  # the flat image compresses better


def test_video_rewards_average_frames():
    rng = np.random.default_rng(2)
    video = rng.integers(0, 256, (2, 3, 8, 8, 3), dtype=np.uint8)
    r = registry.REWARDS.get("brightness")()(Samples(prompts=["a", "b"], videos=video))
    per_frame = [[registry.REWARDS.get("brightness")().score(f) for f in v] for v in video]
    np.testing.assert_allclose(r, np.mean(per_frame, axis=1), rtol=1e-6)


def test_samples_validation():
    with pytest.raises(ValueError, match="uint8 RGB"):
        Samples(prompts=["a"], images=np.zeros((1, 4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="2 prompts for 1 samples"):
        Samples(prompts=["a", "b"], images=np.zeros((1, 4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="exactly one"):
        Samples(prompts=["a"])
