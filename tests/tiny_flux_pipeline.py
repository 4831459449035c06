"""A tiny random FluxPipeline folder (all seven components) for end-to-end trainer tests.

32x32 images: the VAE downsamples 4x (three blocks), so the transformer sees 8x8
latents packed into 16 tokens. Built with the real Diffusers / transformers classes and
saved with `save_pretrained`, then loaded by ffjax's own loaders.
"""

from __future__ import annotations

import os

import torch

from tests.models.flux.tiny import perturb
from tests.models.text.tiny import build, clip_tokenizer, t5_tokenizer


def build_flux_pipeline(path: str | os.PathLike, seed: int = 0) -> str:
    """Writes the pipeline folder to `path` (created) and returns it as a string."""
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        FluxPipeline,
        FluxTransformer2DModel,
    )

    path = os.fspath(path)
    torch.manual_seed(seed)
    clip = build("CLIPTextModel", dict(vocab_size=130, hidden_size=16, intermediate_size=24,
                 num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=77,
                 eos_token_id=1, bos_token_id=0, pad_token_id=1), seed=seed + 1)  # fmt: skip
    t5 = build("T5EncoderModel", dict(vocab_size=64, d_model=16, d_kv=8, d_ff=24, num_layers=1,
               num_heads=2, feed_forward_proj="gated-gelu"), seed=seed + 2)  # fmt: skip
    transformer = perturb(FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=16, pooled_projection_dim=16,
        guidance_embeds=True, axes_dims_rope=(4, 6, 6)), seed=seed + 3)  # fmt: skip
    vae = perturb(AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(4, 8, 8), layers_per_block=1, latent_channels=16, norm_num_groups=4,
        scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False,
        use_post_quant_conv=False, sample_size=32), seed=seed + 4)  # fmt: skip
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
        base_image_seq_len=256, max_image_seq_len=4096)  # fmt: skip
    tok = os.path.join(path, "_tok")
    pipe = FluxPipeline(
        scheduler=scheduler, vae=vae, text_encoder=clip, tokenizer=clip_tokenizer(tok + "1"),
        text_encoder_2=t5, tokenizer_2=t5_tokenizer(tok + "2"), transformer=transformer,
    )  # fmt: skip
    pipe.save_pretrained(path)
    return path
