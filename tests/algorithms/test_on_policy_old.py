"""The on-policy old policy of DiffusionNFT and AWM through the trainer (toy model):
Flow-Factory's is the current weights at every micro-batch, "rollout" the epoch's snapshot."""

import pytest

from ffjax import configs, trainer
from tests.toy_model import toy_config


@pytest.mark.parametrize("on_policy_old", ["flow_factory", "rollout"])
def test_old_policy_at_every_micro_batch(tmp_path, on_policy_old):
    c = toy_config(tmp_path, "nft")
    c.sampling.noise_level = 0.0
    c.algorithm.off_policy = False
    c.algorithm.on_policy_old = on_policy_old
    c.algorithm.num_train_timesteps = 2  # 16 samples x 2 sigmas: 4 micro-batches of 8
    c.train.learning_rate = 1e-2
    configs.validate(c)
    history = trainer.train(c, tmp_path / "run", progress=False)
    deviation = [row["old_deviate"] for row in history]
    if on_policy_old == "flow_factory":
        # mean over the epoch's micro-batches of mean (v - v_old)^2 >= 0: each one is 0,
        # the old velocities being the current weights' at that micro-batch.
        assert deviation == [0.0, 0.0]
    else:  # the snapshot falls behind after the epoch's first optimizer step
        assert all(d > 1e-9 for d in deviation), deviation


def test_awm_ratio_is_one_at_every_micro_batch(tmp_path):
    # Flow-Factory's AWM old log-probs are the current weights' at each micro-batch: the
    # ratio is exactly 1 on every step (epoch min and max over the micro-batches).
    c = toy_config(tmp_path, "awm")
    c.sampling.noise_level = 0.0
    c.algorithm.num_train_timesteps = 2
    c.train.learning_rate = 1e-2
    configs.validate(c)
    history = trainer.train(c, tmp_path / "run", progress=False)
    assert [(r["ratio_min"], r["ratio_max"], r["clipfrac"]) for r in history] == [
        (1.0, 1.0, 0.0)
    ] * 2
