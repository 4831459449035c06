"""Tiny random WanPipeline folders for pipeline-parity and trainer tests.

Variants:
  "t2v":  Wan 2.1 layout: one transformer, the z=4 causal VAE (4x spatial, 4x temporal).
  "a14b": Wan 2.2 A14B layout: two experts (`transformer` for high noise,
          `transformer_2` for low noise) switched at boundary_ratio.
  "ti2v": Wan 2.2 TI2V-5B layout: the residual z=6 VAE with 2x2 patchify (16x spatial,
          4x temporal; tests/models/wan/tiny_vae.py "wan22") and one timestep per
          latent token (`expand_timesteps`); 5 frames of 32 x 64 are 2 x 1 x 2 tokens.

The VAE downsamples 4x in space and time (two stages, both temporal), so 5 frames of
16 x 32 pixels (WanPipeline wants multiples of 16) are 2 latent frames of 4 x 8, i.e.
2 x 2 x 4 = 16 transformer tokens.
The scheduler is a FlowMatchEulerDiscreteScheduler with WAN's 480p shift (3.0).
Built with the real Diffusers / transformers classes and saved with `save_pretrained`;
ffjax loads the folder with its own loaders.
"""

from __future__ import annotations

import os

import torch

from tests.models.flux.tiny import perturb
from tests.models.text.tiny import build, t5_tokenizer

UMT5 = dict(vocab_size=64, d_model=24, d_kv=6, d_ff=36, num_layers=2, num_heads=4,
            feed_forward_proj="gated-gelu")  # fmt: skip
TRANSFORMER = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12,
                   in_channels=4, out_channels=4, text_dim=24, freq_dim=16, ffn_dim=32,
                   num_layers=2, rope_max_seq_len=32)  # fmt: skip
VAE = dict(base_dim=8, z_dim=4, dim_mult=[1, 2, 2], num_res_blocks=1,
           temperal_downsample=[True, True], latents_mean=[0.1, -0.2, 0.3, 0.0],
           latents_std=[1.5, 0.5, 2.0, 1.0], scale_factor_spatial=4,
           scale_factor_temporal=4)  # fmt: skip
A14B_BOUNDARY = 0.875  # Wan2.2-T2V-A14B's boundary_ratio
VARIANTS = ("t2v", "a14b", "ti2v")
SIZES = {"t2v": (16, 32), "a14b": (16, 32), "ti2v": (32, 64)}  # (height, width) per variant


def build_wan_pipeline(path: str | os.PathLike, variant: str = "t2v", seed: int = 0):
    """Writes the pipeline folder to `path` (created); returns (path as str, the pipeline)."""
    from diffusers import (
        AutoencoderKLWan,
        FlowMatchEulerDiscreteScheduler,
        WanPipeline,
        WanTransformer3DModel,
    )

    if variant not in VARIANTS:
        raise ValueError(f"unknown tiny WAN variant {variant!r}; known: {VARIANTS}")
    path = os.fspath(path)
    umt5 = build("UMT5EncoderModel", UMT5, seed=seed + 1)
    transformer_config, vae_config = dict(TRANSFORMER), dict(VAE)
    if variant == "ti2v":
        from tests.models.wan.tiny_vae import VAE_CONFIGS

        vae_config = dict(VAE_CONFIGS["wan22"])
        transformer_config.update(in_channels=6, out_channels=6)
    torch.manual_seed(seed)
    transformer = perturb(WanTransformer3DModel(**transformer_config), seed=seed + 2)
    transformer_2 = None
    if variant == "a14b":
        torch.manual_seed(seed + 10)
        transformer_2 = perturb(WanTransformer3DModel(**TRANSFORMER), seed=seed + 12)
    vae = perturb(AutoencoderKLWan(**vae_config), seed=seed + 3)
    pipe = WanPipeline(
        tokenizer=t5_tokenizer(os.path.join(path, "_tok")), text_encoder=umt5, vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), transformer=transformer,
        transformer_2=transformer_2,
        boundary_ratio=A14B_BOUNDARY if variant == "a14b" else None,
        expand_timesteps=variant == "ti2v",
    )  # fmt: skip
    pipe.save_pretrained(path)
    return path, pipe
