"""The FLUX.1 VAE in Flax linen, mirroring Diffusers' `AutoencoderKL` (Rombach et al. 2022).

FLUX uses 16 latent channels, no quant convs, and maps latents to the transformer's
space as z' = (z - shift_factor) * scaling_factor. Internally images are NHWC (the
TPU/GPU-friendly layout); `call_like_diffusers` converts from / to Diffusers' NCHW.
Module names mirror Diffusers' so the key table in `convert.py` reads one-to-one.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from ffjax.models import layers
from ffjax.models.flux.config import FluxVAEConfig

Dtype = jnp.dtype
_EPS = 1e-6


def _group_norm(groups: int, name: str, param_dtype: Dtype) -> nn.GroupNorm:
    # Two-pass variance: the fast E[x^2] - E[x]^2 form loses digits against torch's.
    return nn.GroupNorm(
        groups, epsilon=_EPS, use_fast_variance=False, param_dtype=param_dtype, name=name
    )


def _conv(
    features: int,
    kernel: int,
    name: str,
    dtype: Dtype,
    param_dtype: Dtype,
    stride: int = 1,
    padding="SAME",
):
    return nn.Conv(
        features,
        (kernel, kernel),
        (stride, stride),
        padding=padding,
        dtype=dtype,
        param_dtype=param_dtype,
        name=name,
    )


class ResnetBlock(nn.Module):
    """GroupNorm-SiLU-Conv3x3 twice plus a (1x1-projected) skip (Diffusers `ResnetBlock2D`)."""

    out_channels: int
    groups: int
    dtype: Dtype
    param_dtype: Dtype

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = nn.silu(_group_norm(self.groups, "norm1", self.param_dtype)(x))
        h = _conv(self.out_channels, 3, "conv1", **kw)(h)
        h = nn.silu(_group_norm(self.groups, "norm2", self.param_dtype)(h))
        h = _conv(self.out_channels, 3, "conv2", **kw)(h)
        if x.shape[-1] != self.out_channels:
            x = _conv(self.out_channels, 1, "conv_shortcut", **kw)(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all pixels with a residual (VAE mid block)."""

    groups: int
    dtype: Dtype
    param_dtype: Dtype

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, c = x.shape
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        y = _group_norm(self.groups, "group_norm", self.param_dtype)(x).reshape(b, h * w, 1, c)
        q, k, v = (layers.Dense(c, (None, None), name=n, **kw)(y) for n in ("to_q", "to_k", "to_v"))
        # Always xla: one head of dim C (up to 512) and short sequences; not worth a kernel.
        o = layers.xla_attention(q, k, v).reshape(b, h * w, c)
        o = layers.Dense(c, (None, None), name="to_out", **kw)(o)
        return x + o.reshape(b, h, w, c)


class MidBlock(nn.Module):
    """resnet -> attention -> resnet at the lowest resolution."""

    groups: int
    add_attention: bool
    dtype: Dtype
    param_dtype: Dtype

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        c = x.shape[-1]
        x = ResnetBlock(c, self.groups, name="resnets_0", **kw)(x)
        if self.add_attention:
            x = AttnBlock(self.groups, name="attentions_0", **kw)(x)
        return ResnetBlock(c, self.groups, name="resnets_1", **kw)(x)


class Encoder(nn.Module):
    """Image (B, H, W, 3) -> moments (B, H/f, W/f, 2 * latent_channels)."""

    config: FluxVAEConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.config
        kw = dict(dtype=jnp.dtype(c.dtype), param_dtype=jnp.dtype(c.param_dtype))
        g = c.norm_num_groups
        x = _conv(c.block_out_channels[0], 3, "conv_in", **kw)(x.astype(kw["dtype"]))
        for i, ch in enumerate(c.block_out_channels):
            for j in range(c.layers_per_block):
                x = ResnetBlock(ch, g, name=f"down_blocks_{i}_resnets_{j}", **kw)(x)
            if i < len(c.block_out_channels) - 1:
                # Diffusers pads (right, bottom) by one, then a VALID stride-2 conv.
                x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
                x = _conv(ch, 3, f"down_blocks_{i}_downsample", stride=2, padding="VALID", **kw)(x)
        x = MidBlock(g, c.mid_block_add_attention, name="mid_block", **kw)(x)
        x = nn.silu(_group_norm(g, "conv_norm_out", kw["param_dtype"])(x))
        return _conv(2 * c.latent_channels, 3, "conv_out", **kw)(x)


class Decoder(nn.Module):
    """Latents (B, h, w, latent_channels) -> image (B, h*f, w*f, 3)."""

    config: FluxVAEConfig

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        c = self.config
        kw = dict(dtype=jnp.dtype(c.dtype), param_dtype=jnp.dtype(c.param_dtype))
        g = c.norm_num_groups
        chans = list(reversed(c.block_out_channels))
        x = _conv(chans[0], 3, "conv_in", **kw)(z.astype(kw["dtype"]))
        x = MidBlock(g, c.mid_block_add_attention, name="mid_block", **kw)(x)
        for i, ch in enumerate(chans):
            for j in range(c.layers_per_block + 1):
                x = ResnetBlock(ch, g, name=f"up_blocks_{i}_resnets_{j}", **kw)(x)
            if i < len(chans) - 1:
                x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)  # nearest-neighbour x2
                x = _conv(ch, 3, f"up_blocks_{i}_upsample", **kw)(x)
        x = nn.silu(_group_norm(g, "conv_norm_out", kw["param_dtype"])(x))
        return _conv(c.out_channels, 3, "conv_out", **kw)(x)


class FluxVAE(nn.Module):
    """AutoencoderKL: `encode(x) -> (mean, logvar)`, `decode(z) -> x`, all NHWC.

    `__call__(x)` runs encode then decode of the mean (used for `init`).
    """

    config: FluxVAEConfig

    def setup(self):
        c = self.config
        kw = dict(dtype=jnp.dtype(c.dtype), param_dtype=jnp.dtype(c.param_dtype))
        self.encoder = Encoder(c)
        self.decoder = Decoder(c)
        # setup() names submodules by attribute, hence name=None.
        self.quant_conv = _conv(2 * c.latent_channels, 1, None, **kw) if c.use_quant_conv else None
        self.post_quant_conv = (
            _conv(c.latent_channels, 1, None, **kw) if c.use_post_quant_conv else None
        )

    def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Image float[B, H, W, 3] in [-1, 1] -> (mean, logvar) float[B, H/f, W/f, C_lat].

        logvar is clipped to [-30, 20] as in Diffusers' `DiagonalGaussianDistribution`.
        """
        moments = self.encoder(x)
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        mean, logvar = jnp.split(moments, 2, axis=-1)
        return mean, jnp.clip(logvar, -30.0, 20.0)

    def decode(self, z: jax.Array) -> jax.Array:
        """Raw (unscaled) latents float[B, h, w, C_lat] -> image float[B, h*f, w*f, 3] ~[-1, 1]."""
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.decode(self.encode(x)[0])


def to_transformer_space(z: jax.Array, config: FluxVAEConfig) -> jax.Array:
    """VAE latents -> the transformer's latent space: (z - shift_factor) * scaling_factor."""
    return (z - (config.shift_factor or 0.0)) * config.scaling_factor


def from_transformer_space(z: jax.Array, config: FluxVAEConfig) -> jax.Array:
    """Inverse of `to_transformer_space`: z / scaling_factor + shift_factor."""
    return z / config.scaling_factor + (config.shift_factor or 0.0)


def init_shapes(config: FluxVAEConfig):
    """Abstract (boxed) params of `FluxVAE(config)`, without allocating them."""
    size = 2 * config.downsample_factor
    x = jax.ShapeDtypeStruct((1, size, size, config.in_channels), jnp.float32)
    module = FluxVAE(config)
    return module, jax.eval_shape(lambda a: module.init(jax.random.key(0), a), x)["params"]
