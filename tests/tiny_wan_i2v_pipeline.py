"""Tiny random WanImageToVideoPipeline folders for the `wan2-i2v` parity tests.

Variants:
  "i2v":   Wan 2.1 I2V layout: a CLIPVisionModel `image_encoder` (28 px, 4 px patches:
           50 tokens) + CLIPImageProcessor, a transformer with image cross-attention
           taking 4 + 4 + 4 input channels (noise, first-frame mask, image latents),
           the z=4 VAE of `tiny_wan_pipeline` (4x spatial, 4x temporal).
  "flf2v": Wan 2.1 FLF2V layout: "i2v" with a position embedding over the first and last
           frame's 2 x 50 CLIP tokens.
  "a14b":  Wan 2.2 I2V A14B layout: two "i2v"-shaped experts without image attention
           (`transformer` above boundary_ratio * 1000, `transformer_2` below), no image
           encoder.
  "ti2v":  Wan 2.2 TI2V-5B layout: `expand_timesteps=True`, no image encoder, the Wan 2.2
           VAE of `tests/models/wan/tiny_vae.py` (16x spatial, z=6), a transformer with
           z input channels (the first latent frame is replaced by the image's).

Built with the real Diffusers / transformers classes and saved with `save_pretrained`;
ffjax loads the folder with its own loaders.
"""

from __future__ import annotations

import os

import torch

from tests.models.flux.tiny import perturb
from tests.models.text.tiny import build, t5_tokenizer
from tests.models.wan.tiny_vae import VAE_CONFIGS
from tests.tiny_wan_pipeline import A14B_BOUNDARY, UMT5, VAE

CLIP_VISION = dict(hidden_size=16, intermediate_size=24, num_hidden_layers=3,
                   num_attention_heads=2, image_size=28, patch_size=4, hidden_act="gelu",
                   layer_norm_eps=1e-5)  # fmt: skip
CLIP_PROCESSOR = dict(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
TRANSFORMERS = {
    "i2v": dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12,
                in_channels=12, out_channels=4, text_dim=24, freq_dim=16, ffn_dim=32,
                num_layers=2, image_dim=16, added_kv_proj_dim=24, rope_max_seq_len=32),
    # Wan 2.1 FLF2V: as "i2v" with a learned position embedding over both images' tokens.
    "flf2v": dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12,
                  in_channels=12, out_channels=4, text_dim=24, freq_dim=16, ffn_dim=32,
                  num_layers=2, image_dim=16, added_kv_proj_dim=24, rope_max_seq_len=32,
                  pos_embed_seq_len=2 * 50),
    # Wan 2.2 I2V A14B: two such experts without image attention (no image encoder).
    "a14b": dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12,
                 in_channels=12, out_channels=4, text_dim=24, freq_dim=16, ffn_dim=32,
                 num_layers=2, rope_max_seq_len=32),
    "ti2v": dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12,
                 in_channels=6, out_channels=6, text_dim=24, freq_dim=16, ffn_dim=32,
                 num_layers=2, rope_max_seq_len=32),
}  # fmt: skip
VARIANTS = tuple(TRANSFORMERS)


def build_wan_i2v_pipeline(path: str | os.PathLike, variant: str = "i2v", seed: int = 0):
    """Writes the pipeline folder to `path` (created); returns (path as str, the pipeline)."""
    from diffusers import (
        AutoencoderKLWan,
        FlowMatchEulerDiscreteScheduler,
        WanImageToVideoPipeline,
        WanTransformer3DModel,
    )
    from transformers import CLIPImageProcessor

    if variant not in VARIANTS:
        raise ValueError(f"unknown tiny WAN I2V variant {variant!r}; known: {VARIANTS}")
    path = os.fspath(path)
    umt5 = build("UMT5EncoderModel", UMT5, seed=seed + 1)
    torch.manual_seed(seed)
    transformer = perturb(WanTransformer3DModel(**TRANSFORMERS[variant]), seed=seed + 2)
    transformer_2 = None
    if variant == "a14b":
        torch.manual_seed(seed + 10)
        transformer_2 = perturb(WanTransformer3DModel(**TRANSFORMERS[variant]), seed=seed + 12)
    torch.manual_seed(seed + 3)
    vae_cfg = VAE_CONFIGS["wan22"] if variant == "ti2v" else VAE
    vae = perturb(AutoencoderKLWan(**vae_cfg), seed=seed + 4)
    extra = {}
    if variant in ("i2v", "flf2v"):
        extra["image_encoder"] = build("CLIPVisionModel", CLIP_VISION, seed=seed + 5)
        extra["image_processor"] = CLIPImageProcessor(**CLIP_PROCESSOR)
    pipe = WanImageToVideoPipeline(
        tokenizer=t5_tokenizer(os.path.join(path, "_tok")), text_encoder=umt5, vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), transformer=transformer,
        transformer_2=transformer_2,
        boundary_ratio=A14B_BOUNDARY if variant == "a14b" else None,
        expand_timesteps=variant == "ti2v", **extra,
    )  # fmt: skip
    pipe.save_pretrained(path)
    return path, pipe
