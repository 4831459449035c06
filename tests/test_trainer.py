"""The epoch loop on the toy flow model (tests/toy_model.py): outputs, bad input, learning."""

import json
import math

import jax
import numpy as np
import pytest

from ffjax import configs, trainer
from ffjax.algorithms.spec import REQUIRED_METRICS
from ffjax.logging import read_metrics
from ffjax.stages import generate
from tests.toy_model import toy_config

EPOCH_KEYS = (
    "epoch", "reward_mean", "reward_std", "reward/brightness", "loss", "ratio_mean",
    "ratio_min", "ratio_max", "clipfrac", "approx_kl", "kl", "grad_norm", "lr",
    "time/rollout_s", "time/reward_s", "time/train_s", "time/epoch_s", "samples_per_s",
)  # fmt: skip


def _train(config, tmp_path, name="run"):
    configs.validate(config)
    workdir = tmp_path / name
    return trainer.train(config, workdir, progress=False), workdir


def test_grpo_writes_metrics_grids_checkpoints(tmp_path):
    c = toy_config(tmp_path)
    c.train.eval_every = 2
    c.checkpoint.every_epochs = 1
    c.logging.tensorboard = True
    c.logging.image_grid_every = 1
    history, workdir = _train(c, tmp_path)
    rows = read_metrics(workdir)
    train_rows = [r for r in rows if r["epoch"] >= 0]
    assert [r["epoch"] for r in train_rows] == [0, 1] and len(history) == 2
    for row in train_rows:
        for k in EPOCH_KEYS:
            assert k in row, k
            assert row[k] is not None and math.isfinite(row[k]), (k, row[k])
    assert train_rows[-1]["eval/reward_mean"] is not None
    assert rows[0]["epoch"] == -1 and "eval/reward_mean" in rows[0]  # before training
    # First inner step of each epoch is on-policy: ratio 1 within float rounding.
    assert abs(train_rows[0]["ratio_min"] - 1) < 1e-3
    assert sorted(p.name for p in (workdir / "samples").iterdir()) == [
        "eval_epoch_0000.png", "eval_epoch_0002.png", "train_epoch_0001.png",
        "train_epoch_0002.png",
    ]  # fmt: skip
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["1", "2", "config.txt"]
    assert any((workdir / "tb").iterdir())


@pytest.mark.parametrize("algorithm", ["nft", "awm"])
def test_final_sample_algorithms_run(tmp_path, algorithm):
    c = toy_config(tmp_path, algorithm)
    c.sampling.noise_level = 0.0
    c.algorithm.num_train_timesteps = 2
    history, _ = _train(c, tmp_path)
    for row in history:
        assert math.isfinite(row["loss"]) and math.isfinite(row["grad_norm"])
        for k in REQUIRED_METRICS:
            assert k in row


def test_full_finetune_with_kl(tmp_path):
    c = toy_config(tmp_path)
    c.train.lora_rank = 0
    c.algorithm.kl_beta = 0.1
    history, _ = _train(c, tmp_path)
    assert all(math.isfinite(r["kl"]) for r in history)


def test_batch_sizes_that_do_not_divide(tmp_path):
    c = toy_config(tmp_path)
    c.train.micro_batch_size = 5  # 16 samples x 2 SDE steps = 32 rows
    with pytest.raises(configs.ConfigError, match="32 training rows.*micro_batch_size"):
        trainer.setup(c)


def test_group_size_one_is_refused(tmp_path):
    c = toy_config(tmp_path)
    c.data.group_size = 1
    with pytest.raises(configs.ConfigError, match="data.group_size=1"):
        configs.validate(c)


def test_nan_rewards_are_dropped_and_counted(tmp_path):
    c = toy_config(tmp_path)
    c.rewards = configs.ConfigDict()
    configs.add_reward(c, "partly", name="tests.toy_model:PartlyNan", every=4)
    history, _ = _train(c, tmp_path)
    assert all(r["num_dropped"] == 4 for r in history)
    assert all(math.isfinite(r["loss"]) for r in history)


def test_all_nan_rewards_stop_clearly_and_keep_finished_epochs(tmp_path):
    c = toy_config(tmp_path)
    c.train.num_epochs = 3
    c.checkpoint.every_epochs = 1
    c.rewards = configs.ConfigDict()
    configs.add_reward(c, "bad", name="tests.toy_model:NanFromCall", start=2)
    with pytest.raises(trainer.TrainingError, match="epoch 1: every sample has a NaN.*'bad'.*kept"):
        _train(c, tmp_path)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0]
    assert (tmp_path / "run" / "checkpoints" / "1").is_dir()


# --------------------------------------------------------------------------- learning

# Seeded: each algorithm must raise the brightness reward of the toy model by a margin
# within 20 epochs (~10 s each on 2 CPU cores). GRPO trains LoRA, NFT / AWM the full
# weights; the clip range is widened because the toy's 16-dim log-probs move faster
# than those of a 4096-token image. Measured on 2026-11-25 (2-core CPU), first two vs
# last two epochs: grpo 0.510 -> 0.615, nft 0.512 -> 0.799, awm 0.511 -> 0.789.
LEARNING = {
    "grpo": dict(
        margin=0.05,
        overrides={
            "train.lora_rank": "4",
            "train.learning_rate": "3e-2",
            "algorithm.clip_range": "1e-2",
            "sampling.sde_num_steps": "0",
            "train.micro_batch_size": "16",
        },
    ),  # fmt: skip
    "nft": dict(
        margin=0.1,
        overrides={
            "train.lora_rank": "0",
            "train.learning_rate": "1e-2",
            "algorithm.off_policy": "False",
            "sampling.noise_level": "0.0",
            "algorithm.num_train_timesteps": "2",
        },
    ),  # fmt: skip
    "awm": dict(
        margin=0.1,
        overrides={
            "train.lora_rank": "0",
            "train.learning_rate": "1e-2",
            "algorithm.clip_range": "1e-2",
            "sampling.noise_level": "0.0",
            "algorithm.num_train_timesteps": "2",
        },
    ),  # fmt: skip
}


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", sorted(LEARNING))
def test_learning_raises_reward(tmp_path, algorithm):
    spec = LEARNING[algorithm]
    c = toy_config(tmp_path, algorithm)
    c.train.num_epochs = 20
    for key, value in spec["overrides"].items():
        configs.apply_override(c, key, value)
    history, _ = _train(c, tmp_path)
    first = np.mean([r["reward_mean"] for r in history[:2]])
    last = np.mean([r["reward_mean"] for r in history[-2:]])
    print(f"{algorithm}: reward {first:.4f} -> {last:.4f}")
    assert last - first > spec["margin"], (first, last)


@pytest.mark.slow
def test_resume_ends_with_the_parameters_of_an_uninterrupted_run(tmp_path):
    c = toy_config(tmp_path)
    c.train.num_epochs = 4
    c.checkpoint.every_epochs = 2
    full, _ = _train(c, tmp_path, "full")
    c.train.num_epochs = 2
    _train(c, tmp_path, "parts")
    c.train.num_epochs = 4
    rest, workdir = _train(c, tmp_path, "parts")
    assert [r["epoch"] for r in rest] == [2, 3]
    assert rest[-1]["params_digest"] == full[-1]["params_digest"]
    assert [r["epoch"] for r in read_metrics(workdir)] == [0, 1, 2, 3]
    c.train.learning_rate = 0.5
    with pytest.raises(configs.ConfigError, match="train.learning_rate"):
        _train(c, tmp_path, "parts")


def test_summary_table_rows_and_eval_change():
    history = [
        {"epoch": 0, "reward_mean": 0.25, "reward_std": 0.1},
        {"epoch": 1, "reward_mean": 0.5, "reward_std": 0.2, "eval/reward_mean": 0.375},
    ]
    lines = trainer.summary_table(history, eval_before=0.25).splitlines()
    assert lines[1].split() == ["before", "0.2500"]
    assert lines[2].split() == ["0", "0.2500", "0.1000"]
    assert lines[3].split() == ["1", "0.5000", "0.2000", "0.3750"]
    assert lines[4] == "eval reward: 0.2500 before training -> 0.3750 after (+0.1250)"
    assert len(trainer.summary_table(history).splitlines()) == 3  # no eval before: no summary


def test_decode_runs_in_chunks_of_the_rollout_batch(tmp_path):
    """One VAE call per sampling.batch_size samples (a whole FLUX.1 epoch in one call
    would need hundreds of GiB), and the same images as one call."""
    import dataclasses

    import jax.numpy as jnp

    c = toy_config(tmp_path)
    c.sampling.batch_size = 4
    configs.validate(c)
    run = trainer.setup(c)
    calls = []

    def spy(vae, x, h, w):
        calls.append(x.shape[0])
        return run.decode(vae, x, h, w)

    noise = jnp.linspace(-1, 1, 10 * 16, dtype=jnp.float32).reshape(10, 16)
    cond = run.adapter.encode_prompts([f"p{i}" for i in range(10)], 8, 8)
    sigmas = run.adapter.sigmas(2, 8, 8)
    final, _, images = generate.rollout_and_decode(
        dataclasses.replace(run.gen, decode=spy), run.initial.trainable, cond, noise, sigmas,
        np.zeros(2, np.float32), jax.random.key(0),
    )  # fmt: skip
    assert calls == [4, 4, 2]
    np.testing.assert_array_equal(images, np.asarray(run.decode(run.weights["vae"], final, 8, 8)))


def test_stage_progress_bars_change_nothing(tmp_path, capsys):
    c = toy_config(tmp_path)
    c.sampling.batch_size = 8  # 2 rollout chunks
    c.checkpoint.every_epochs = 2
    plain, _ = _train(c, tmp_path, "plain")
    c.logging.step_progress = True
    shown, _ = _train(c, tmp_path, "shown")
    err = capsys.readouterr().err
    assert "rollout" in err and "train" in err and "micro-batch" in err
    assert "rewards" in err
    assert shown[-1]["params_digest"] == plain[-1]["params_digest"]
