"""configs/qwen_image_grpo.py: both variants validate, and its `tiny` variant trains two
epochs end to end on a tiny real QwenImagePipeline (Qwen2.5-VL prompts, true CFG in the
rollout and the training forward, LoRA on the Qwen-Image targets, VAE decoding).
A smoke test (finite metrics, ratio 1 before the first update), not a learning test."""

import importlib.util
import math
from pathlib import Path

import pytest

from ffjax import configs, registry, trainer
from tests.tiny_qwen_image_pipeline import build_qwen_image_pipeline

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "qwen_image_grpo.py"


def _recipe():
    spec = importlib.util.spec_from_file_location("qwen_image_grpo", RECIPE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("variant", ["", "tiny"])
def test_variants_validate_and_divide_into_two_optimizer_steps(variant):
    c = _recipe().get_config(variant)
    assert c.model.path is None and c.data.path is None
    c.model.path, c.data.path = "/data/Qwen-Image", "/data/pickscore"
    configs.validate(c)
    spec = registry.ALGORITHMS.get(c.algorithm.name)
    rows = trainer._check_run_shapes(c, spec, 1)
    assert rows // (c.train.micro_batch_size * c.train.grad_accum_steps) == 2
    assert c.model.name == "qwen-image" and c.sampling.guidance_scale > 1
    assert c.algorithm.cfg_in_train  # the qwen-image velocity guides in training too


def test_tiny_trains_two_epochs(tmp_path):
    folder = build_qwen_image_pipeline(tmp_path / "pipe")
    data = tmp_path / "prompts"
    data.mkdir()
    (data / "train.txt").write_text("a red cat\na dog on a mat\ntwo birds\na photo of a fox\n")
    c = _recipe().get_config("tiny")
    c.model.path, c.data.path = folder, str(data)
    history = trainer.train(configs.validate(c), tmp_path / "run", progress=False)
    assert len(history) == 2
    for row in history:
        assert math.isfinite(row["loss"]) and math.isfinite(row["grad_norm"])
    assert abs(history[0]["ratio_min"] - 1) < 1e-2 and abs(history[0]["ratio_max"] - 1) < 1e-2
    assert math.isfinite(history[-1]["eval/reward_mean"])
