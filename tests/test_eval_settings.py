"""Separate evaluation settings (Flow-Factory's eval.guidance_scale / resolution /
num_frames / guidance_scale_2; X-GenGroup/Flow-Factory 6c7882b
src/flow_factory/hparams/training_args/_base.py EvaluationArguments): the evaluation
generator, and an evaluation through the trainer at another size."""

import jax
import numpy as np
import pytest

from ffjax import configs, trainer
from ffjax import run as run_lib
from tests.toy_model import toy_config


def test_no_setting_keeps_the_training_generator(tmp_path):
    c = configs.validate(toy_config(tmp_path))
    run = run_lib.build(c, training=False)
    assert run.eval_gen is run.gen


def test_a_setting_the_model_lacks_is_refused(tmp_path):
    c = toy_config(tmp_path)
    c.sampling.eval_guidance_scale = 4.0
    with pytest.raises(configs.ConfigError, match="eval_guidance_scale=4.0: model .* has no guidance_scale"):  # fmt: skip
        run_lib.build(configs.validate(c), training=False)
    c = toy_config(tmp_path)
    c.model.eval_height = -8
    with pytest.raises(configs.ConfigError, match="model.eval_height=-8 is out of range"):
        configs.validate(c)


def test_evaluation_runs_at_its_own_size(tmp_path):
    c = toy_config(tmp_path)
    c.model.eval_height, c.model.eval_width = 16, 12  # training: 8 x 8
    c.train.num_epochs, c.train.eval_every, c.train.eval_prompts = 1, 1, 2
    run = run_lib.build(configs.validate(c))
    assert (run.gen.height, run.gen.width, run.eval_gen.height, run.eval_gen.width) == (8, 8, 16, 12)  # fmt: skip
    metrics, images, _, rewards = trainer.evaluate(run, run.initial)
    assert rewards.shape == images.shape[:1]
    assert images.shape[1:] == (16, 12, 3) and np.isfinite(metrics["eval/reward_mean"])


@pytest.mark.slow
def test_wan_evaluation_guidance_frames_and_size(tiny_pipelines):
    path, _ = tiny_pipelines.wan()
    c = configs.base_config()
    c.model.name, c.model.path = "wan2-t2v", path
    c.model.height = c.model.width = 32
    c.model.num_frames = 5
    c.sampling.guidance_scale = 1.0
    c.sampling.eval_guidance_scale = 5.0
    c.model.eval_num_frames = 9
    c.model.eval_height, c.model.eval_width = 64, 48
    run = run_lib.build(c, abstract=True, training=False)
    train_adapter, eval_adapter = run.gen.adapter, run.eval_gen.adapter
    assert (train_adapter.guidance_scale, train_adapter.num_frames) == (1.0, 5)
    assert (eval_adapter.guidance_scale, eval_adapter.num_frames) == (5.0, 9)
    assert eval_adapter.do_cfg and not train_adapter.do_cfg
    shape = jax.eval_shape(lambda k: eval_adapter.init_noise(k, 1, 64, 48), jax.random.key(0))
    assert shape.shape[:2] == (1, 3)  # (9 - 1) / 4 + 1 latent frames
    assert run.eval_gen.rollout.velocity == eval_adapter.velocity
    c.model.eval_num_frames = 6  # not 4k + 1
    with pytest.raises(configs.ConfigError, match="do not fit model 'wan2-t2v'.*num_frames=6"):
        run_lib.build(c, abstract=True, training=False)
    c.model.eval_num_frames, c.model.eval_height = 0, 30  # not a multiple of the VAE x patch
    with pytest.raises(configs.ConfigError, match="eval_height=30"):
        run_lib.build(c, abstract=True, training=False)
    c.model.eval_height, c.model.eval_guidance_scale_2 = 0, 3.0  # one expert: no scale 2
    with pytest.raises(configs.ConfigError, match="guidance_scale_2"):
        run_lib.build(c, abstract=True, training=False)
