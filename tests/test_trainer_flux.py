"""The trainer end to end on a tiny real FLUX.1 pipeline (text encoders, LoRA on the
FLUX targets, VAE decoding): every algorithm runs, metrics are finite, ratio starts at 1."""

import math

import pytest

from ffjax import configs, trainer


@pytest.fixture(scope="module")
def flux_folder(tiny_pipelines):
    return tiny_pipelines.flux()  # the session's (tests/conftest.py): read-only


def _config(tmp_path, folder, algorithm):
    data = tmp_path / "prompts"
    data.mkdir()
    (data / "train.txt").write_text("a red cat\na dog on a mat\ntwo birds\na photo of a fox\n")
    c = configs.base_config()
    c.model.path = folder
    c.model.height = c.model.width = 32
    c.model.max_sequence_length = 16
    c.data.path = str(data)
    c.data.group_size = 2
    c.data.prompts_per_epoch = 2
    c.sampling.num_steps = 4
    c.sampling.eval_num_steps = 4
    c.sampling.sde_num_steps = 2
    c.train.num_epochs = 2
    c.train.micro_batch_size = 4
    c.train.lora_rank = 4
    c.train.eval_every = 2
    c.checkpoint.every_epochs = 0
    c.logging.tensorboard = False
    configs.set_algorithm(c, algorithm)
    if algorithm != "grpo":
        c.sampling.noise_level = 0.0
        c.algorithm.num_train_timesteps = 2
    configs.add_reward(c, "brightness")
    return configs.validate(c)


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["grpo", "nft", "awm"])
def test_flux_epochs(tmp_path, flux_folder, algorithm):
    c = _config(tmp_path, flux_folder, algorithm)
    history = trainer.train(c, tmp_path / "run", progress=False)
    assert len(history) == 2
    for row in history:
        assert math.isfinite(row["loss"]) and math.isfinite(row["grad_norm"])
        assert math.isfinite(row["eval/reward_mean"] if "eval/reward_mean" in row else 0.0)
    if algorithm in ("grpo", "awm"):
        assert abs(history[0]["ratio_min"] - 1) < 1e-2 and abs(history[0]["ratio_max"] - 1) < 1
    assert (tmp_path / "run" / "samples" / "eval_epoch_0002.png").exists()
