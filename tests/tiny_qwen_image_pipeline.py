"""A tiny random QwenImagePipeline folder (all five components) for pipeline and trainer tests.

The VAE downsamples 4x (two stages, one temporal) with its own latents_mean / std, so a
32x48 image is an 8x12 latent grid packed into 4x6 = 24 tokens. The scheduler is the
released Qwen-Image scheduler config (dynamic shift up to 8192 tokens, terminal 0.02).
Built with the real Diffusers / transformers classes and saved with `save_pretrained`;
ffjax loads it with its own loaders.
"""

from __future__ import annotations

import os
import tempfile

import torch

from tests.models.flux.tiny import perturb
from tests.models.text.tiny import QWEN_IMAGE_TEXT, QWEN_IMAGE_VISION, build, qwen2_tokenizer

# Qwen/Qwen-Image scheduler/scheduler_config.json (the fields that shape sigmas).
QWEN_IMAGE_SCHEDULER_CONFIG = dict(
    shift=1.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=0.9,
    base_image_seq_len=256, max_image_seq_len=8192, shift_terminal=0.02,
    time_shift_type="exponential",
)  # fmt: skip


def build_qwen_image_pipeline(path: str | os.PathLike, seed: int = 0) -> str:
    """Writes the pipeline folder to `path` (created) and returns it as a string."""
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImagePipeline,
        QwenImageTransformer2DModel,
    )

    path = os.fspath(path)
    text_encoder = build(
        "Qwen2_5_VLForConditionalGeneration",
        dict(text_config=QWEN_IMAGE_TEXT, vision_config=QWEN_IMAGE_VISION),
        seed=seed + 1,
    )
    torch.manual_seed(seed)
    transformer = perturb(QwenImageTransformer2DModel(
        patch_size=2, in_channels=16, out_channels=4, num_layers=2, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=QWEN_IMAGE_TEXT["hidden_size"],
        axes_dims_rope=(2, 2, 4)), seed=seed + 2)  # fmt: skip
    vae = perturb(AutoencoderKLQwenImage(
        base_dim=8, z_dim=4, dim_mult=[1, 2, 2], num_res_blocks=1, temperal_downsample=[False, True],
        latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[1.5, 0.5, 2.0, 1.0]), seed=seed + 3)  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = qwen2_tokenizer(tmp)
    pipe = QwenImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**QWEN_IMAGE_SCHEDULER_CONFIG), vae=vae,
        text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer,
    )  # fmt: skip
    pipe.save_pretrained(path)
    return path
