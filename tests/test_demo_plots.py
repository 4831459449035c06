"""What a demo run shows a person: the reward curve (`ffjax.plots`) and evaluation grids
with whole prompts, rewards and the tiles that changed most (`ffjax.logging`)."""

import json

import numpy as np
from PIL import Image

from ffjax import plots
from ffjax.logging import (
    MARK_DOWN,
    MARK_UP,
    changed_most,
    eval_captions,
    image_grid,
    wrap_caption,
)

ROWS = [
    {"epoch": -1, "eval/reward_mean": 0.3},
    {"epoch": 0, "reward_mean": 0.31},
    {"epoch": 1, "reward_mean": 0.35, "eval/reward_mean": 0.4},
    {"epoch": 2, "reward_mean": 0.45},
    {"epoch": 1, "reward_mean": 0.36, "eval/reward_mean": 0.41},  # resumed: last row wins
]


def test_curve_points_place_evaluations_after_their_epochs():
    pts = plots.curve_points(ROWS)
    assert pts["base"] == 0.3
    assert pts["train"] == [(1, 0.31), (2, 0.36), (3, 0.45)]
    assert pts["eval"] == [(0, 0.3), (2, 0.41)]


def test_write_reward_curve_draws_a_png(tmp_path):
    assert plots.write_reward_curve(tmp_path) is None  # no metrics yet
    with open(tmp_path / "metrics.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in ROWS)
    path = plots.write_reward_curve(tmp_path, title="grpo, seed 0")
    image = np.asarray(Image.open(path).convert("RGB"))
    assert image.shape == (400, 640, 3)
    # the evaluation line is drawn in matplotlib's tab:orange
    assert (np.abs(image.astype(int) - (255, 127, 14)).sum(-1) < 30).sum() > 50


def test_compare_curves_draws_both_axes(tmp_path):
    runs = {"grpo": [(0, 0, 0.3), (10, 100, 0.5)], "nft": [(0, 0, 0.3), (5, 100, 0.7)]}
    path = plots.compare_curves(runs, tmp_path / "c.png", title="t")
    assert Image.open(path).size == (1000, 400)


def test_captions_wrap_whole_words_to_the_tile():
    lines = wrap_caption("reward 0.50\na blue triangle right of a yellow triangle", 128)
    assert lines[0] == "reward 0.50"
    assert " ".join(lines[1:]) == "a blue triangle right of a yellow triangle"
    assert all(len(line) <= 128 // 6 for line in lines)
    assert wrap_caption("abcdefgh", 24) == ["abcd", "efgh"]  # a word wider than the tile


def test_grid_rows_make_room_for_the_longest_caption():
    images = np.zeros((3, 32, 32, 3), np.uint8)
    captions = eval_captions(["a red circle", "a red circle left of a blue square", "x"],
                             np.array([0.1, 0.2, 0.3]))  # fmt: skip
    assert captions[0] == "reward 0.10\na red circle"
    grid = image_grid(images, captions, columns=3, scale=4)
    lines = max(len(wrap_caption(c, 126)) for c in captions)
    assert lines >= 3
    assert grid.shape == (128 + 12 * lines, 3 * 128, 3)


def test_the_largest_changes_are_framed():
    before, after = np.array([0.5, 0.5, 0.5, 0.5]), np.array([0.9, 0.5, 0.1, 0.6])
    marks = changed_most(before, after, 2)
    assert marks == [MARK_UP, None, MARK_DOWN, None]
    assert eval_captions(["p"], after[:1], before[:1]) == ["0.50 -> 0.90 (+0.40)\np"]
    grid = image_grid(np.full((4, 8, 8, 3), 255, np.uint8), columns=4, scale=4, marks=marks)
    assert tuple(grid[0, 0]) == MARK_UP and tuple(grid[0, 64]) == MARK_DOWN
    assert tuple(grid[0, 32]) == (255, 255, 255)


def test_compare_table_times_each_variant_to_grpos_final_reward():
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "tools" / "compare_demo.py"
    spec = importlib.util.spec_from_file_location("compare_demo", path)
    compare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compare)
    rows = [
        {"epoch": -1, "eval/reward_mean": 0.3},
        {"epoch": 0, "time/epoch_s": 2.0},
        {"epoch": 1, "time/epoch_s": 1.0, "eval/reward_mean": 0.5},
    ]
    assert compare.curve(rows, 128) == [(0.0, 0, 0.3), (3.0, 256, 0.5)]
    grpo = {"variant": "grpo", "seed": 0, "epochs": 2, "samples_per_epoch": 128,
            "points": [(0.0, 0, 0.3), (10.0, 256, 0.5)]}  # fmt: skip
    nft = {"variant": "nft", "seed": 0, "epochs": 2, "samples_per_epoch": 128,
           "points": [(0.0, 0, 0.3), (4.0, 128, 0.55), (8.0, 256, 0.6)]}  # fmt: skip
    text = compare.table([grpo, nft])
    assert "| grpo | 0 | 2 x 128 | 10 | 0.300 -> 0.500 | +0.200 | 10 |" in text
    assert "| nft | 0 | 2 x 128 | 8 | 0.300 -> 0.600 | +0.300 | 4 |" in text
