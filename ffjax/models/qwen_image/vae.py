"""The Qwen-Image VAE: the WAN 2.1 VAE (`ffjax.models.wan.vae`) run on images.

Diffusers' `AutoencoderKLQwenImage` is `AutoencoderKLWan`'s Wan 2.1 layout (Wan team
2025) fine-tuned for images: the same causal 3-D convolutions, RMS norms, mid-block
attention and module tree. An image is a one-frame video, which the WAN VAE encodes /
decodes as its first chunk (empty caches: each causal kernel runs its last temporal
slice only, the temporal down- / up-sampling convs are skipped), as Diffusers does.

`QwenImageVAE` is `WanVAE` with images in and out, NHWC (B, H, W, C) instead of
(B, T, H, W, C); unlike the WAN video VAE it takes any image size, as Diffusers does
(stride-2 convs pad right / bottom). The parameters are the WAN VAE's, so the
converter's key table is the WAN one. `call_like_diffusers` converts from / to
Diffusers' (B, C, T=1, H, W).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ffjax.models.qwen_image.config import QwenImageVAEConfig
from ffjax.models.wan.vae import (
    WanVAE,
    decoder_layout,
    encoder_layout,
    from_transformer_space,
    to_transformer_space,
)

# The WAN functions, under the names Qwen-Image code imports from here. The latent
# normalisation is QwenImagePipeline's too: latents / (1 / std) + mean.
__all__ = [
    "QwenImageVAE",
    "decoder_layout",
    "encoder_layout",
    "from_transformer_space",
    "init_shapes",
    "to_transformer_space",
]


class QwenImageVAE(WanVAE):
    """AutoencoderKLQwenImage on images: `encode(x) -> (mean, logvar)`, `decode(z) -> x`, NHWC.

    `__call__(x)` runs encode then decode of the mean (used for `init`).
    """

    config: QwenImageVAEConfig

    def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Image float[B, H, W, C_in] in [-1, 1] -> (mean, logvar) float[B, H/f, W/f, z_dim].

        (Sizes not divisible by f = 8 round up, as in Diffusers.) logvar is clipped to
        [-30, 20] as in Diffusers' `DiagonalGaussianDistribution`.
        """
        mean, logvar = self._encode(x[:, None])
        return mean[:, 0], logvar[:, 0]

    def decode(self, z: jax.Array) -> jax.Array:
        """Raw (unnormalised) latents float[B, h, w, z_dim] -> image float[B, h*f, w*f, C_in] in [-1, 1].

        Clamped to [-1, 1], as Diffusers' `AutoencoderKLQwenImage._decode` does.
        """
        return super().decode(z[:, None])[:, 0]


def init_shapes(config: QwenImageVAEConfig):
    """(module, abstract boxed params) of `QwenImageVAE(config)`, nothing allocated."""
    size = config.downsample_factor
    x = jax.ShapeDtypeStruct((1, size, size, config.in_channels), jnp.float32)
    module = QwenImageVAE(config)
    return module, jax.eval_shape(lambda a: module.init(jax.random.key(0), a), x)["params"]
