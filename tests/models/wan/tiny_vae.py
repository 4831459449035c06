"""Tiny AutoencoderKLWan configs (Wan 2.1 and Wan 2.2 layouts) shared by the WAN VAE tests.

Weights are perturbed away from Diffusers' init (zero-init biases would hide bugs) with
a fixed seed (`tests.models.flux.tiny.perturb`); every parity test loads them through
our own code.
"""

from tests.models.flux.tiny import save_tiny_models

# Both keep the real temporal layout (two temporal stages: 4x, T = 1 + 4k) at base_dim 8.
# (a) Wan 2.1: 8x spatial, 4 latents with their own latents_mean / std, one resnet a stage.
# (b) Wan 2.2: residual blocks, 2x2 patchify (12 channels), 16x spatial, a wider decoder
#     (decoder_base_dim 12), 6 latents, two resnets a stage (the real count).
VAE_CONFIGS = {
    "wan21": dict(
        base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
        temperal_downsample=[False, True, True], latents_mean=[0.1, -0.2, 0.3, 0.0],
        latents_std=[1.5, 0.5, 2.0, 1.0],
    ),
    "wan22": dict(
        base_dim=8, decoder_base_dim=12, z_dim=6, dim_mult=[1, 2, 2, 2], num_res_blocks=2,
        temperal_downsample=[False, True, True], is_residual=True, patch_size=2,
        in_channels=12, out_channels=12, scale_factor_spatial=16,
        latents_mean=[0.1, -0.2, 0.3, 0.0, 0.5, -0.4], latents_std=[1.5, 0.5, 2.0, 1.0, 0.8, 1.2],
    ),
}  # fmt: skip


def save_tiny_vaes(tmp_path_factory) -> dict:
    """{name: (AutoencoderKLWan, saved folder)} for VAE_CONFIGS."""
    from diffusers import AutoencoderKLWan

    return save_tiny_models(AutoencoderKLWan, VAE_CONFIGS, tmp_path_factory, "wan_vae", 40, 500)
