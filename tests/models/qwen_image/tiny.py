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
