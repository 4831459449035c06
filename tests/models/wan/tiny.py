"""Tiny WanTransformer3DModel configs for the WAN transformer tests, and their save helper.

Weights are perturbed away from Diffusers' init (zero-init biases would hide bugs) with
a fixed seed (`tests.models.flux.tiny.save_tiny_models`); every parity test loads them
through our own code. The VAE's tiny configs live in `tiny_vae.py`.
"""

from tests.models.flux.tiny import save_tiny_models

# head_dim 12 splits the RoPE as (frames 4, rows 4, cols 4); 16 as (8, 4, 4); 8 as (4, 2, 2).
TRANSFORMER_CONFIGS = {
    # Wan 2.1 T2V layout: cross_attn_norm, patch (1, 2, 2), 2 blocks, odd ffn width.
    "t2v": dict(
        patch_size=[1, 2, 2], num_attention_heads=2, attention_head_dim=12, in_channels=4,
        out_channels=4, text_dim=20, freq_dim=32, ffn_dim=36, num_layers=2,
        cross_attn_norm=True, rope_max_seq_len=32,
    ),
    # Wan 2.1 I2V layout: image cross-attention (image_dim, added_kv_proj_dim = inner_dim),
    # more input than output channels (noise + mask + image latents), no norm2.
    "i2v": dict(
        patch_size=[1, 2, 2], num_attention_heads=2, attention_head_dim=8, in_channels=9,
        out_channels=4, text_dim=12, freq_dim=16, ffn_dim=24, num_layers=2,
        cross_attn_norm=False, image_dim=10, added_kv_proj_dim=16, rope_max_seq_len=16,
    ),
    # Wan 2.2 TI2V layout (per-token timesteps from the pipeline), one block, patch
    # (2, 2, 2) to exercise temporal patches.
    "ti2v": dict(
        patch_size=[2, 2, 2], num_attention_heads=3, attention_head_dim=16, in_channels=6,
        out_channels=6, text_dim=16, freq_dim=24, ffn_dim=40, num_layers=1,
        cross_attn_norm=True, rope_max_seq_len=16,
    ),
    # Wan 2.1 FLF2V: image cross-attention with a learned position embedding over the
    # first + last frame's image tokens (2 x 3).
    "flf2v": dict(
        patch_size=[1, 2, 2], num_attention_heads=2, attention_head_dim=8, in_channels=4,
        out_channels=4, text_dim=12, freq_dim=16, ffn_dim=24, num_layers=1,
        cross_attn_norm=True, image_dim=10, added_kv_proj_dim=16, pos_embed_seq_len=6,
        rope_max_seq_len=16,
    ),
}  # fmt: skip


def save_tiny_transformers(tmp_path_factory) -> dict:
    """{name: (torch WanTransformer3DModel, saved folder)} for TRANSFORMER_CONFIGS."""
    from diffusers import WanTransformer3DModel

    return save_tiny_models(
        WanTransformer3DModel, TRANSFORMER_CONFIGS, tmp_path_factory, "wan_transformer", 0, 500
    )
