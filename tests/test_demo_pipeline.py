"""tools/make_demo_pipeline.py: a quick build is a FluxPipeline folder that Diffusers and
ffjax both load, that samples alike in both, and that is byte-for-byte reproducible;
the committed assets/demo is such a folder, small, with the settings configs/demo.py uses.
"""

import importlib.util
import json
import os
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ffjax.models.flux import Flux1Adapter
from ffjax.models.text.encode import encode_prompts_flux, load_flux_text

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "assets" / "demo"
PROMPTS = ["two red circles and a blue square", "a yellow triangle right of a green square"]
STEPS = 4


def _tool():
    spec = importlib.util.spec_from_file_location(
        "make_demo_pipeline", ROOT / "tools" / "make_demo_pipeline.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while decorating
    spec.loader.exec_module(module)
    return module


tool = _tool()
SIZE, LENGTH = tool.IMAGE_SIZE, tool.MAX_SEQUENCE_LENGTH


@pytest.fixture(scope="module")
def quick_build(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "pipe"
    tool.build(str(out), quick=True, evaluate=False, log=lambda *_: None)
    return out


def _files(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def _ffjax_sample(folder, noise):
    """Euler ODE sampling through the flux1 adapter with ffjax's own text encoders."""
    adapter, weights = Flux1Adapter.from_pretrained(folder)
    embeds, pooled, _ = encode_prompts_flux(
        load_flux_text(folder), PROMPTS, max_sequence_length=LENGTH
    )
    cond = adapter.make_cond(embeds, pooled, SIZE, SIZE)
    sigmas = adapter.sigmas(STEPS, SIZE, SIZE)
    velocity = jax.jit(adapter.velocity)
    x = jnp.asarray(noise)
    for s, s_next in zip(sigmas[:-1], sigmas[1:], strict=True):
        v = velocity({"params": weights["transformer"]}, x, jnp.full((len(PROMPTS),), s), cond)
        x = x + v * (s_next - s)
    image = adapter.decode_latents(weights["vae"], x, SIZE, SIZE)
    return np.asarray(x), np.clip(np.asarray(image) / 2 + 0.5, 0, 1), sigmas


@pytest.mark.slow
def test_quick_build_samples_like_diffusers(quick_build):
    import torch
    from diffusers import FluxPipeline

    pipe = FluxPipeline.from_pretrained(quick_build)
    adapter, _ = Flux1Adapter.from_pretrained(quick_build)
    noise = torch.randn(
        adapter.latent_shape(len(PROMPTS), SIZE, SIZE), generator=torch.Generator().manual_seed(0)
    )
    call = dict(prompt=PROMPTS, height=SIZE, width=SIZE, num_inference_steps=STEPS, latents=noise,
                max_sequence_length=LENGTH)  # fmt: skip
    with torch.no_grad():
        ref_latents = pipe(**call, output_type="latent").images.numpy()
        ref_sigmas = pipe.scheduler.sigmas.numpy()
        ref_image = pipe(**call, output_type="np").images
    latents, image, sigmas = _ffjax_sample(quick_build, noise.numpy())
    np.testing.assert_allclose(sigmas, ref_sigmas, rtol=1e-6)
    scale = np.abs(ref_latents).max()
    assert np.abs(latents - ref_latents).max() <= 1e-4 * scale
    np.testing.assert_allclose(image, ref_image, atol=1e-4)


@pytest.mark.slow
def test_quick_build_is_deterministic(quick_build, tmp_path):
    again = tmp_path / "pipe"
    tool.build(str(again), quick=True, evaluate=False, log=lambda *_: None)
    first, second = _files(quick_build), _files(again)
    assert sorted(first) == sorted(second)
    different = [name for name in first if first[name] != second[name]]
    assert not different, f"files differ between two builds with the same seed: {different}"


@pytest.mark.slow
def test_quick_build_layout(quick_build):
    expected = {"model_index.json", "prompts/train.txt", "prompts/test.txt",
                "scheduler/scheduler_config.json", "vae/config.json", "transformer/config.json",
                "text_encoder/config.json", "text_encoder_2/config.json",
                "tokenizer/tokenizer.json", "tokenizer_2/tokenizer.json"}  # fmt: skip
    assert expected <= set(_files(quick_build))


needs_assets = pytest.mark.skipif(not ASSETS.is_dir(), reason="assets/demo not built")


@needs_assets
def test_committed_demo_assets():
    """The committed pipeline is small, has the tool's configs, and loads in ffjax."""
    size = sum(os.path.getsize(p) for p in ASSETS.rglob("*") if p.is_file())
    assert size < 20 * 2**20
    transformer = json.loads((ASSETS / "transformer" / "config.json").read_text())
    assert {k: transformer[k] for k in tool.TRANSFORMER_CONFIG} == tool.TRANSFORMER_CONFIG
    vae = json.loads((ASSETS / "vae" / "config.json").read_text())
    fitted = {"scaling_factor", "shift_factor"}  # set from the trained VAE's latents
    assert {k: vae[k] for k in tool.VAE_CONFIG if k not in fitted} == {
        k: v for k, v in tool.VAE_CONFIG.items() if k not in fitted
    }
    adapter, _ = Flux1Adapter.from_pretrained(ASSETS)
    assert not adapter.config.guidance_embeds  # guidance_scale does not matter
    text = load_flux_text(ASSETS)
    assert text.clip.tokenizer.model_max_length == LENGTH
    for name, n in (("train.txt", tool.N_TRAIN), ("test.txt", tool.N_TEST)):
        lines = (ASSETS / "prompts" / name).read_text().splitlines()
        assert len(lines) == n
        for tokenizer in (text.clip.tokenizer, text.t5.tokenizer):
            ids = tokenizer(lines)["input_ids"]
            assert max(map(len, ids)) <= LENGTH  # no prompt is truncated in the recipe


@needs_assets
@pytest.mark.slow
def test_committed_demo_is_partially_competent():
    """8-step ODE samples score well above 0 and well below the true renders' 1: room
    for RL to show."""
    adapter, weights = Flux1Adapter.from_pretrained(ASSETS)
    prompts = (ASSETS / "prompts" / "test.txt").read_text().splitlines()
    embeds, pooled, _ = encode_prompts_flux(
        load_flux_text(ASSETS), prompts, max_sequence_length=LENGTH
    )
    cond = adapter.make_cond(embeds, pooled, SIZE, SIZE)
    images = tool.sample(adapter, weights, cond, jax.random.key(0), tool.EVAL_STEPS)
    reward = tool.shapes_reward(prompts, images).mean()
    assert 0.15 < reward < 0.7, reward
