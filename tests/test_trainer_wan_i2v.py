"""configs/wan_i2v_grpo.py on tiny real WanImageToVideoPipelines: the trainer hands each
prompt's metadata (its jsonl "image") to `wan2-i2v`, one GRPO epoch rolls out, decodes,
scores and trains (Wan 2.1 I2V layout and Wan 2.2 TI2V, whose final latents keep the
image's first latent frame), and adapters without `wants_metadata` are called as before."""

import importlib.util
import json
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

from ffjax import configs, trainer
from ffjax.stages import generate

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PROMPTS = ["a red cat", "a dog on a mat", "two birds"]


def _recipe():
    spec = importlib.util.spec_from_file_location("wan_i2v_grpo", CONFIGS / "wan_i2v_grpo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A Flow-Factory i2v data folder: train.jsonl rows with images under images/."""
    tmp = tmp_path_factory.mktemp("wan_i2v_data")
    (tmp / "images").mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i, p in enumerate(PROMPTS):
        Image.fromarray(rng.integers(0, 256, (20 + 4 * i, 28, 3), np.uint8)).save(
            tmp / "images" / f"{i}.png"
        )
        rows.append({"prompt": p, "image": f"{i}.png"})
    (tmp / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(tmp)


def test_encode_prompts_passes_metadata_only_when_wanted():
    from ffjax.models.adapter import AdapterBase

    calls = []

    class Plain(AdapterBase):  # wants_metadata False: AdapterBase's default
        def encode_prompts(self, prompts, height, width):
            calls.append(("plain", prompts))

    class Wants(Plain):
        wants_metadata = True

        def encode_prompts(self, prompts, height, width, metadata=None):
            calls.append(("wants", prompts, metadata))

    generate.encode_prompts(Plain(), ["a"], 8, 8, [{"image": "x"}])
    generate.encode_prompts(Wants(), ["a"], 8, 8, [{"image": "x"}])
    assert calls == [("plain", ["a"]), ("wants", ["a"], [{"image": "x"}])]


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["i2v", "ti2v"])
def test_tiny_grpo_epoch(variant, data, tiny_pipelines):
    path, _ = tiny_pipelines.wan_i2v(variant)  # the session's (tests/conftest.py): read-only
    c = _recipe().get_config("tiny")
    c.model.path, c.data.path = path, data
    if variant == "ti2v":  # Wan 2.2 VAE: 16x spatial, patch 2; no image attention
        c.model.height, c.model.width, c.model.max_sequence_length = 32, 64, 32
    run = trainer.setup(configs.validate(c))
    state, metrics, videos = trainer.run_epoch(run, run.initial)
    assert videos.shape == (8, 5, c.model.height, c.model.width, 3) and videos.dtype == np.uint8
    assert np.isfinite(metrics["loss"]) and np.isfinite(metrics["grad_norm"])
    assert int(state.epoch) == 1
    if variant == "ti2v":
        # Final latents keep the image's latent frame: every sample of a group (same
        # image, different noise) decodes to the same first frame.
        first = videos[:, 0].astype(int).reshape(2, 4, -1)
        assert np.abs(first - first[:, :1]).max() <= 1
    jax.clear_caches()
