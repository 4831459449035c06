"""Smoke run of the embedded default recipe (configs/demo.py on assets/demo): a few
epochs write finite metrics, grids and checkpoints. The full run is a benchmark
(docs/benchmarks.md), not a test."""

import math

import numpy as np
import pytest
from PIL import Image

from configs import demo
from ffjax import configs, registry, trainer
from ffjax import run as run_lib
from ffjax.logging import read_metrics


@pytest.mark.parametrize("variant", ["grpo", "nft", "awm"])
def test_every_variant_validates_and_divides_into_steps(variant):
    c = configs.validate(demo.get_config(variant))
    spec = registry.ALGORITHMS.get(c.algorithm.name)
    assert run_lib.check_run_shapes(c, spec, 1) % c.train.micro_batch_size == 0


# The default recipe (GRPO) only: the NFT and AWM trainers run on the same FLUX adapter in
# tests/test_trainer_flux.py; a second 2-epoch demo run would add a minute to CI.
@pytest.mark.slow
@pytest.mark.skipif(not demo.ASSETS.is_dir(), reason="assets/demo not built")
def test_default_recipe_smoke(tmp_path):
    c = demo.get_config("grpo")
    c.train.num_epochs = 2
    c.train.eval_every = 2
    c.train.eval_prompts = 8
    c.checkpoint.every_epochs = 1
    c.logging.image_grid_every = 1
    configs.validate(c)
    history = trainer.train(c, tmp_path, progress=False)
    assert len(history) == 2
    rows = read_metrics(tmp_path)
    for row in rows:
        for k, v in row.items():
            if isinstance(v, float):
                assert math.isfinite(v), (k, v)
    assert 0 <= history[-1]["reward_mean"] <= 1
    # The reward curve (matplotlib) and the evaluation grids: whole prompts under each
    # tile, so a grid is taller than one 12-pixel caption line per row of 128-pixel tiles.
    curve = Image.open(tmp_path / "reward_curve.png")
    assert curve.size == (640, 400)
    assert len(np.unique(np.asarray(curve.convert("L")))) > 16  # drawn, not blank
    for epoch in (0, 2):
        grid = Image.open(tmp_path / "samples" / f"eval_epoch_{epoch:04d}.png")
        assert grid.size[0] == 8 * 128 and grid.size[1] >= 128 + 3 * 12
    assert (tmp_path / "samples" / "train_epoch_0001.png").exists()
    assert (tmp_path / "checkpoints" / "2").is_dir()
    assert any((tmp_path / "tb").iterdir())
