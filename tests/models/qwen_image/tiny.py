"""Tiny Qwen-Image configs shared by the Qwen-Image tests.

Weights are perturbed away from Diffusers' init (zero-init biases would hide bugs) with
a fixed seed (`tests.models.flux.tiny.perturb`); every parity test loads them through
our own code.
"""

# Two transformer shapes: (a) two blocks, 2 heads of 16, RoPE split (4, 6, 6);
# (b) one block, 3 heads of 8, other RoPE split, more output than latent channels.
TRANSFORMER_CONFIGS = {
    "two_blocks": dict(
        patch_size=2, in_channels=16, out_channels=4, num_layers=2, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=24, axes_dims_rope=(4, 6, 6),
    ),
    "one_block": dict(
        patch_size=2, in_channels=32, out_channels=12, num_layers=1, attention_head_dim=8,
        num_attention_heads=3, joint_attention_dim=12, axes_dims_rope=(2, 2, 4),
    ),
}  # fmt: skip

# Two VAE shapes: (a) 4x compression, 4 latents with their own latents_mean / std, one
# temporal stage; (b) the real Qwen-Image layout (8x, 16 latents, its latents_mean /
# latents_std, two 3-D stages) at base_dim 8.
VAE_CONFIGS = {
    "small": dict(
        base_dim=8, z_dim=4, dim_mult=[1, 2, 2], num_res_blocks=1,
        temperal_downsample=[False, True], latents_mean=[0.1, -0.2, 0.3, 0.0],
        latents_std=[1.5, 0.5, 2.0, 1.0],
    ),
    "qwen": dict(base_dim=8, dim_mult=[1, 2, 4, 4], num_res_blocks=2),
}  # fmt: skip
