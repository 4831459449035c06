"""End-to-end parity with a tiny Diffusers FluxPipeline saved to disk.

Same initial noise, same prompt embeddings, same sigmas: ffjax Euler ODE sampling
through the `flux1` adapter must reproduce the pipeline's final latents and image.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from ffjax.flow.schedule import flux_sigmas
from ffjax.models.flux import Flux1Adapter
from tests.models.flux.tiny import perturb, rel_err

HEIGHT, WIDTH, STEPS, GUIDANCE = 32, 48, 4, 3.5


def _clip_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    special = ["<|startoftext|>", "<|endoftext|>"]
    tok = Tokenizer(models.BPE(unk_token="<|endoftext|>", end_of_word_suffix="</w>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=80, special_tokens=special, end_of_word_suffix="</w>")
    tok.train_from_iterator(["a photo of a cat", "a red dog on a mat", "two birds"], trainer)
    merges = json.loads(tok.to_str())["model"]["merges"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split()) for m in merges]
    return CLIPTokenizer(vocab=tok.get_vocab(), merges=merges)


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory):
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        FluxPipeline,
        FluxTransformer2DModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel, T5Tokenizer

    torch.manual_seed(0)
    transformer = perturb(FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=16,
        guidance_embeds=True, axes_dims_rope=(4, 6, 6)), seed=1)  # fmt: skip
    vae = perturb(AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16), layers_per_block=1, latent_channels=16, norm_num_groups=4,
        scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False,
        use_post_quant_conv=False, sample_size=32), seed=2)  # fmt: skip
    clip = CLIPTextModel(CLIPTextConfig(hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                                        num_attention_heads=2, vocab_size=80, projection_dim=16,
                                        bos_token_id=0, eos_token_id=1, pad_token_id=1))  # fmt: skip
    t5 = T5EncoderModel(
        T5Config(d_model=32, d_kv=8, d_ff=24, num_layers=1, num_heads=2, vocab_size=110)
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
        base_image_seq_len=256, max_image_seq_len=4096)  # fmt: skip
    pipe = FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=clip, tokenizer=_clip_tokenizer(),
                        text_encoder_2=t5, tokenizer_2=T5Tokenizer(), transformer=transformer)  # fmt: skip
    path = tmp_path_factory.mktemp("flux_pipeline")
    pipe.save_pretrained(path)
    return FluxPipeline.from_pretrained(path), path


@pytest.mark.slow
def test_pipeline_parity(tiny_pipeline):
    pipe, path = tiny_pipeline
    adapter, params = Flux1Adapter.from_pretrained(path, guidance_scale=GUIDANCE)
    g = torch.Generator().manual_seed(0)
    prompt_embeds = torch.randn(1, 7, 32, generator=g)
    pooled = torch.randn(1, 16, generator=g)
    noise = torch.randn(adapter.latent_shape(1, HEIGHT, WIDTH), generator=g)
    call = dict(prompt_embeds=prompt_embeds, pooled_prompt_embeds=pooled, latents=noise, height=HEIGHT,
                width=WIDTH, num_inference_steps=STEPS, guidance_scale=GUIDANCE)  # fmt: skip
    with torch.no_grad():
        ref_latents = pipe(**call, output_type="latent").images.numpy()
        pipe_sigmas = pipe.scheduler.sigmas.numpy()
        ref_image = pipe(**call, output_type="np").images  # (B, H, W, 3) in [0, 1]

    sigmas = flux_sigmas(STEPS, adapter.latent_shape(1, HEIGHT, WIDTH)[1])
    np.testing.assert_allclose(sigmas, pipe_sigmas, rtol=1e-6)

    cond = adapter.make_cond(prompt_embeds.numpy(), pooled.numpy(), HEIGHT, WIDTH)
    velocity = jax.jit(adapter.velocity)
    x = jnp.asarray(noise.numpy())
    for s, s_next in zip(sigmas[:-1], sigmas[1:], strict=True):
        v = velocity({"params": params["transformer"]}, x, jnp.full((1,), s, jnp.float32), cond)
        x = x + v * (s_next - s)  # Euler ODE step (DESIGN.md time convention)
    assert rel_err(x, ref_latents) < 1e-4

    image = np.asarray(adapter.decode_latents(params["vae"], x, HEIGHT, WIDTH))
    np.testing.assert_allclose(np.clip(image / 2 + 0.5, 0, 1), ref_image, atol=1e-4)
    uint8 = np.asarray(adapter.decode(params["vae"], x, HEIGHT, WIDTH))
    assert uint8.shape == (1, HEIGHT, WIDTH, 3)
    assert np.abs(uint8.astype(int) - np.round(ref_image * 255).astype(int)).max() <= 1
