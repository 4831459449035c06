"""Image and video grids (`ffjax.logging`) and `Samples.of` (images vs videos by rank)."""

import numpy as np
import pytest
from PIL import Image

from ffjax.logging import image_grid, save_grid
from ffjax.rewards.base import Samples


def _pixels(*shape):
    return np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)


def test_image_grid_is_one_png(tmp_path):
    grid = image_grid(_pixels(6, 8, 10, 3), columns=4)
    assert grid.shape == (2 * 8, 4 * 10, 3)
    path = save_grid(tmp_path / "g.png", grid)
    assert path.endswith("g.png")
    np.testing.assert_array_equal(np.asarray(Image.open(path)), grid)


def test_video_grid_is_an_animated_gif_of_per_frame_grids(tmp_path):
    videos = _pixels(3, 5, 8, 10, 3)
    grid = image_grid(videos, ["a", "b", "c"], columns=2)
    assert grid.shape == (5, 2 * (8 + 12), 2 * 10, 3)
    # Frame f of the grid holds frame f of every video at its tile.
    np.testing.assert_array_equal(grid[2, 0:8, 10:20], videos[1, 2])
    np.testing.assert_array_equal(grid[4, 20:28, 0:10], videos[2, 4])
    path = save_grid(tmp_path / "eval_epoch_0001.png", grid)
    assert path.endswith("eval_epoch_0001.gif")
    gif = Image.open(path)
    assert gif.n_frames == 5 and gif.size == (20, 40)


def test_grid_rejects_non_uint8_rgb():
    with pytest.raises(ValueError, match="uint8"):
        image_grid(np.zeros((2, 4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="videos"):
        image_grid(_pixels(2, 4, 4, 4))


def test_samples_of_picks_images_or_videos_by_rank():
    s = Samples.of(["a", "b"], _pixels(2, 4, 4, 3), group_ids=np.array([0, 0]))
    assert s.images is not None and s.videos is None
    v = Samples.of(["a", "b"], _pixels(2, 5, 4, 4, 3))
    assert v.videos is not None and v.images is None
    with pytest.raises(ValueError, match="uint8"):
        Samples.of(["a"], np.zeros((1, 4, 4, 3), np.float32))
