"""End-to-end parity of the `qwen-image` adapter with a tiny Diffusers QwenImagePipeline.

Same initial noise (passed to the pipeline as packed `latents=`), same prompts: the
adapter's prompt encoding, schedule, velocity (with true CFG and its norm rescaling
for true_cfg_scale > 1) and Euler ODE steps must reproduce the pipeline's noise
predictions, final latents and decoded image.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from ffjax import configs, registry
from ffjax.models.qwen_image import QwenImageAdapter
from ffjax.models.weights import CheckpointFormatError
from tests.models.flux.tiny import rel_err

HEIGHT, WIDTH, STEPS = 32, 48, 4
PROMPTS = ["a photo of a cat", "an astronaut riding a horse on the moon"]
NEGATIVE = " "


def _config(path, guidance_scale: float) -> configs.ConfigDict:
    c = configs.base_config()
    c.model.name = "qwen-image"
    c.model.path = str(path)
    c.model.height, c.model.width = HEIGHT, WIDTH
    c.sampling.guidance_scale = guidance_scale
    c.model.negative_prompt = NEGATIVE  # the pipeline's call below gets the same
    return c


@pytest.fixture(scope="module")
def qwen_pipeline(tiny_pipelines):
    from diffusers import QwenImagePipeline

    path = tiny_pipelines.qwen_image()
    return QwenImagePipeline.from_pretrained(path), path


def _run_pipeline(pipe, noise, scale):
    """Runs the pipeline; returns (images in [0, 1], final latents, [(x, sigma, v)] per step)."""
    steps, final = [], {}
    step = pipe.scheduler.step

    def recording_step(model_output, timestep, sample, **kw):
        sigma = pipe.scheduler.sigmas[pipe.scheduler.step_index or 0]
        steps.append((sample.numpy().copy(), float(sigma), model_output.numpy().copy()))
        return step(model_output, timestep, sample, **kw)

    def on_step_end(_pipe, i, t, kwargs):
        final["latents"] = kwargs["latents"].numpy().copy()
        return {}

    pipe.scheduler.step = recording_step
    try:
        with torch.no_grad():
            out = pipe(
                prompt=PROMPTS, negative_prompt=[NEGATIVE] * len(PROMPTS) if scale > 1 else None,
                true_cfg_scale=scale, latents=noise, height=HEIGHT, width=WIDTH,
                num_inference_steps=STEPS, output_type="np", callback_on_step_end=on_step_end,
            )  # fmt: skip
    finally:
        del pipe.scheduler.step
    return out.images, final["latents"], steps, pipe.scheduler.sigmas.numpy()


@pytest.mark.slow
@pytest.mark.parametrize("scale", [1.0, 4.0], ids=["no_cfg", "true_cfg"])
def test_pipeline_parity(qwen_pipeline, scale):
    pipe, path = qwen_pipeline
    adapter, weights = registry.MODELS.get("qwen-image").load(_config(path, scale))
    assert adapter.do_cfg == (scale > 1)
    shape = adapter.latent_shape(len(PROMPTS), HEIGHT, WIDTH)
    assert shape == (2, 24, 16)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    ref_images, ref_latents, ref_steps, pipe_sigmas = _run_pipeline(pipe, noise, scale)

    sigmas = adapter.sigmas(STEPS, HEIGHT, WIDTH)
    np.testing.assert_allclose(sigmas, pipe_sigmas, rtol=1e-6)
    cond = adapter.encode_prompts(PROMPTS, HEIGHT, WIDTH)
    assert cond.cfg == (scale > 1)
    assert all(leaf.shape[0] == len(PROMPTS) for leaf in jax.tree.leaves(cond))

    velocity = jax.jit(adapter.velocity)
    variables = {"params": weights["transformer"]}
    # The velocity on the pipeline's own latents at every step equals its noise prediction.
    for x_ref, s_ref, v_ref in ref_steps:
        v = velocity(variables, jnp.asarray(x_ref), jnp.full((2,), s_ref, jnp.float32), cond)
        assert rel_err(v, v_ref) < 1e-4, s_ref

    x = jnp.asarray(noise.numpy())
    for s, s_next in zip(sigmas[:-1], sigmas[1:], strict=True):
        v = velocity(variables, x, jnp.full((2,), s, jnp.float32), cond)
        x = x + v * (s_next - s)  # Euler ODE step (DESIGN.md time convention)
    assert rel_err(x, ref_latents) < 1e-4

    image = np.asarray(adapter.decode_latents(weights["vae"], x, HEIGHT, WIDTH))
    np.testing.assert_allclose(np.clip(image / 2 + 0.5, 0, 1), ref_images, atol=1e-4)
    uint8 = np.asarray(
        jax.jit(adapter.decode, static_argnums=(2, 3))(weights["vae"], x, HEIGHT, WIDTH)
    )
    assert uint8.shape == (2, HEIGHT, WIDTH, 3) and uint8.dtype == np.uint8
    assert np.abs(uint8.astype(int) - np.round(ref_images * 255).astype(int)).max() <= 1


def test_true_cfg_rescales_to_the_conditional_norm():
    from ffjax.models.qwen_image.adapter import true_cfg

    rng = np.random.default_rng(0)
    pos, neg = rng.normal(size=(2, 2, 3, 5)).astype(np.float32)
    s = np.array([4.0, 1.5], np.float32)
    comb = neg + s[:, None, None] * (pos - neg)
    want = (
        comb
        * np.linalg.norm(pos, axis=-1, keepdims=True)
        / np.linalg.norm(comb, axis=-1, keepdims=True)
    )
    np.testing.assert_allclose(true_cfg(pos, neg, s), want, rtol=1e-6)


def test_image_size_not_divisible_by_packing(qwen_pipeline):
    _, path = qwen_pipeline
    adapter, _ = QwenImageAdapter.from_pretrained(path)
    # VAE factor 4 x packing 2: sides must be multiples of 8.
    with pytest.raises(ValueError, match=r"36x48 is not divisible by 8"):
        adapter.init_noise(jax.random.key(0), 1, 36, 48)
    with pytest.raises(ValueError, match=r"32x44 is not divisible by 8"):
        adapter.sigmas(4, 32, 44)
    with pytest.raises(ValueError, match="not divisible"):
        adapter.make_cond(np.zeros((1, 3, 32), np.float32), None, 32, 44)


def test_flux_folder_is_refused(tiny_pipelines):
    path = tiny_pipelines.flux()
    with pytest.raises(CheckpointFormatError, match="not a Qwen-Image checkpoint.*FluxPipeline"):
        QwenImageAdapter.load(_config(path, 4.0))


def test_lora_targets_select_the_attention_and_mlp_inputs(qwen_pipeline):
    import re

    from ffjax.models.lora import dense_kernels
    from ffjax.models.qwen_image.adapter import QWEN_IMAGE_TARGETS_WITH_MLP_OUT

    adapter, weights = QwenImageAdapter.from_pretrained(qwen_pipeline[1])
    paths = dense_kernels(weights["transformer"])

    def chosen(targets):
        return sorted(p for p in paths if any(re.search(t, p) for t in targets))

    block = "transformer_blocks/"
    attn = [f"{block}attn/{n}" for n in ("add_k_proj", "add_q_proj", "add_v_proj")]
    attn += [f"{block}attn/{n}" for n in ("to_add_out", "to_k", "to_out", "to_q", "to_v")]
    mlp_in = [f"{block}img_mlp/proj_in", f"{block}txt_mlp/proj_in"]
    mlp_out = [f"{block}img_mlp/proj_out", f"{block}txt_mlp/proj_out"]
    assert chosen(adapter.lora_targets) == sorted(attn + mlp_in)
    assert chosen(QWEN_IMAGE_TARGETS_WITH_MLP_OUT) == sorted(attn + mlp_in + mlp_out)
