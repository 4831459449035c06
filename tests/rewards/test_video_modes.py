"""Video rewards: `Reward.video` "frames" (scored per frame, averaged per clip by
`call_reward`) vs "clip" (the reward sees whole videos)."""

import numpy as np
import pytest

from ffjax import registry
from ffjax.rewards.base import Samples, call_reward, video_mode


class _FirstPixel:
    """A "frames" reward whose score is the image's first pixel: the mean over a clip is
    then checkable by hand. It records the batches it was given."""

    name, kind, video = "first_pixel", "pointwise", "frames"

    def __init__(self):
        self.seen = []

    def __call__(self, samples):
        self.seen.append(samples)
        return samples.images[:, 0, 0, 0].astype(np.float32)


class _Motion:
    """A "clip" reward: mean |frame[t+1] - frame[t]| (needs the whole clip)."""

    name, kind, video = "motion", "pointwise", "clip"

    def __call__(self, samples):
        v = samples.videos.astype(np.float64)
        return np.abs(np.diff(v, axis=1)).mean(axis=(1, 2, 3, 4)).astype(np.float32)


def _videos(b=2, t=3):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (b, t, 4, 5, 3), dtype=np.uint8)


def test_frames_reward_sees_every_frame_with_its_clips_fields():
    videos = _videos()
    reward = _FirstPixel()
    samples = Samples(["a", "b"], videos=videos, metadata=[{"i": 0}, {"i": 1}],
                      group_ids=np.array([7, 9]))  # fmt: skip
    got = call_reward(reward, samples)
    np.testing.assert_allclose(got, videos[:, :, 0, 0, 0].astype(np.float64).mean(axis=1))
    (frames,) = reward.seen
    assert frames.images.shape == (6, 4, 5, 3) and frames.videos is None
    assert list(frames.prompts) == ["a"] * 3 + ["b"] * 3
    assert [m["i"] for m in frames.metadata] == [0, 0, 0, 1, 1, 1]
    np.testing.assert_array_equal(frames.group_ids, [7, 7, 7, 9, 9, 9])


def test_clip_reward_and_images_pass_through():
    videos = _videos()
    motion = call_reward(_Motion(), Samples(["a", "b"], videos=videos))
    want = np.abs(np.diff(videos.astype(np.float64), axis=1)).mean(axis=(1, 2, 3, 4))
    np.testing.assert_allclose(motion, want, rtol=1e-6)
    images = Samples(["a"], images=videos[0, :1])
    assert call_reward(_FirstPixel(), images)[0] == videos[0, 0, 0, 0, 0]


def test_registered_image_rewards_score_videos_per_frame():
    videos = _videos()
    samples = Samples(["a red circle", "a blue square"], videos=videos)
    for name in ("brightness", "symmetry", "jpeg_compressibility", "shapes"):
        reward = registry.REWARDS.get(name)()
        assert video_mode(reward) == "frames"
        per_frame = [
            reward(Samples([p] * 3, images=v)).astype(np.float64).mean()
            for p, v in zip(samples.prompts, videos, strict=True)
        ]
        np.testing.assert_allclose(call_reward(reward, samples), per_frame, rtol=1e-6)
        np.testing.assert_allclose(reward(samples), per_frame, rtol=1e-6)  # direct call too


def test_undeclared_mode_is_clip_and_a_bad_mode_is_named():
    class Plain:
        name, kind = "plain", "pointwise"

    assert video_mode(Plain()) == "clip"
    bad = Plain()
    bad.video = "per_pixel"
    with pytest.raises(ValueError, match=r"reward 'plain' declares video='per_pixel'"):
        call_reward(bad, Samples(["a", "b"], videos=_videos()))
