"""EMA and reference weights in pinned host memory (`ema.offload`, `train.offload_ref`).

The offloaded run must train exactly as the run that keeps both on the devices (the same
float32 math, only the memory they rest in differs), keep them in host memory across
steps, checkpoints and resume, and show in the dry run as host bytes, not device bytes.
"""

import jax
import pytest

from ffjax import configs, dry_run, run_folder, trainer
from ffjax import run as run_lib
from ffjax.parallel import offload
from tests.test_dry_run import _demo
from tests.toy_model import toy_config


def _train(config, workdir):
    configs.validate(config)
    return trainer.train(config, workdir, progress=False)


def _kinds(tree) -> set[str]:
    return {a.sharding.memory_kind for a in jax.tree.leaves(tree)}


def _awm_full_ft_with_both_kls(tmp_path):
    """Full fine-tune AWM reading the reference and the EMA in every train step."""
    c = toy_config(tmp_path, "awm")
    c.sampling.noise_level = 0.0
    c.algorithm.num_train_timesteps = 2
    c.train.lora_rank = 0
    c.algorithm.kl_beta = 0.1
    c.algorithm.ema_kl_beta = 0.1
    c.train.eval_every = 1  # evaluation samples with the EMA
    c.checkpoint.every_epochs = 1
    return c


@pytest.mark.slow
def test_offloaded_ema_and_reference_train_and_resume_as_on_device(tmp_path):
    c = _awm_full_ft_with_both_kls(tmp_path)
    c.train.num_epochs = 3
    on_device = _train(c, tmp_path / "device")
    c.ema.offload = c.train.offload_ref = True
    c.train.num_epochs = 2
    first = _train(c, tmp_path / "host")
    c.train.num_epochs = 3
    rest = _train(c, tmp_path / "host")  # resumes from the host-memory checkpoint
    offloaded = first + rest
    assert [r["epoch"] for r in offloaded] == [0, 1, 2]
    for a, b in zip(on_device, offloaded, strict=True):
        assert a["params_digest"] == b["params_digest"], a["epoch"]
        for k in ("loss", "kl", "kl_ema", "eval/reward_mean"):
            assert a[k] == pytest.approx(b[k], rel=1e-6, abs=1e-9), (a["epoch"], k)
    assert on_device[-1]["kl_ema"] > 0 and on_device[-1]["kl"] > 0  # both were read


@pytest.mark.slow
def test_offloaded_weights_stay_in_host_memory(tmp_path):
    c = _awm_full_ft_with_both_kls(tmp_path)
    c.ema.offload = c.train.offload_ref = True
    run = trainer.setup(configs.validate(c))
    state = run.initial
    assert _kinds(state.ema) == {offload.HOST} and _kinds(run.ref) == {offload.HOST}
    assert _kinds(state.trainable) == {"device"}
    ema = run.ema_step(jax.tree.map(lambda a: a.copy(), state.ema), state.trainable, 0.5)
    assert _kinds(ema) == {offload.HOST}
    state, _, _ = trainer.run_epoch(run, state)
    assert _kinds(state.ema) == {offload.HOST} and _kinds(run.ref) == {offload.HOST}
    assert _kinds(run_lib.device_copy(state.ema)) == {"device"}
    weights, name = run_folder.pick_weights(run, state, "ema")  # ffjax.sample --weights ema
    assert name == "ema" and _kinds(weights) == {"device"}


@pytest.mark.slow
def test_nft_off_policy_samples_with_the_offloaded_ema(tmp_path):
    c = toy_config(tmp_path, "nft")
    c.sampling.noise_level = 0.0
    c.algorithm.num_train_timesteps = 2
    c.algorithm.off_policy = True
    c.checkpoint.every_epochs = 1  # params_digest at every epoch
    on_device = _train(c, tmp_path / "device")
    c.ema.offload = True
    offloaded = _train(c, tmp_path / "host")
    assert [r["params_digest"] for r in on_device] == [r["params_digest"] for r in offloaded]
    assert [r["reward_mean"] for r in on_device] == [r["reward_mean"] for r in offloaded]


def test_dry_run_counts_offloaded_weights_as_host_memory():
    kw = dict(train__lora_rank=0, algorithm__kl_beta=0.1)
    plain = dry_run.plan(_demo(**kw), compile=False)
    off = dry_run.plan(_demo(**kw, ema__offload=True, train__offload_ref=True), compile=False)
    saved = 0
    for row in ("EMA", "reference copy"):
        before, after = plain.resident[row][0], off.resident[row][0]
        assert before.per_device > 0 and before.host == 0
        assert after.per_device == 0 and after.host == before.per_device, row
        assert "in pinned host memory" in off.resident[row][1]
        saved += before.per_device
    assert plain.resident_bytes() - off.resident_bytes() == saved


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(ema__offload=True, ema__decay=0.0), "config.ema.offload=True .* config.ema.decay=0"),
        (dict(train__offload_ref=True), "config.train.offload_ref=True .* has none"),
    ],
)
def test_offload_without_anything_to_offload_is_refused(overrides, match):
    with pytest.raises(configs.ConfigError, match=match):
        dry_run.plan(_demo(**overrides), compile=False)


@pytest.mark.slow
def test_dry_run_compiles_the_step_that_streams_offloaded_weights():
    c = _demo(train__lora_rank=0, algorithm__kl_beta=0.1, ema__offload=True,
              train__offload_ref=True, data__prompts_per_epoch=2, train__micro_batch_size=8)  # fmt: skip
    report = dry_run.plan(c, programs=("train",))
    assert report.programs["train"].temp is not None
