"""The Qwen-Image VAE in Flax linen, mirroring Diffusers' `AutoencoderKLQwenImage` on images.

`AutoencoderKLQwenImage` is the WAN 2.1 video VAE (Wan team 2025) fine-tuned for
images: causal 3-D convolutions, RMS norms over channels (`F.normalize * sqrt(C) *
gamma`), single-head attention in the mid blocks, 8x spatial compression, 16 latents.
An image is one frame, and Diffusers encodes / decodes the first frame of a video with
empty caches, so:

  * a causal conv pads 2 * (k_t // 2) zero frames in front: only the last temporal
    slice of its kernel meets data, i.e. a 2-D conv with `kernel[-1]`;
  * the temporal down- / up-sampling convs (`time_conv`) are skipped for that frame.

The parameters keep the full 3-D kernels (and the skipped `time_conv`s) so checkpoints
round-trip bit-exactly. Internally images are NHWC; `call_like_diffusers` converts
from / to Diffusers' (B, C, T=1, H, W).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from ffjax.models import layers
from ffjax.models.qwen_image.config import QwenImageVAEConfig
from ffjax.parallel import axes

Dtype = jnp.dtype
_CONV_AXES = (axes.CONV_IN, axes.CONV_OUT)


def _conv2d(x: jax.Array, kernel: jax.Array, stride: int, padding) -> jax.Array:
    return jax.lax.conv_general_dilated(
        x, kernel.astype(x.dtype), (stride, stride), padding,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )  # fmt: skip


class CausalConv3d(nn.Module):
    """`QwenImageCausalConv3d` (kernel k_t x k x k, 'same' spatial padding) on one frame.

    Parameters: kernel (k_t, k, k, in, out), bias (out,). With `x=None` the module
    only declares its parameters (`in_features` then gives their shape) and returns
    None: that is how the `time_conv`s, which never touch a first frame, are kept.
    """

    features: int
    kernel_size: tuple[int, int, int] = (3, 3, 3)
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array | None, in_features: int | None = None) -> jax.Array | None:
        cin = x.shape[-1] if x is not None else in_features
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(
                nn.initializers.lecun_normal(), (None, None, None, *_CONV_AXES)
            ),
            (*self.kernel_size, cin, self.features),
            self.param_dtype,
        )
        bias = self.param(
            "bias",
            nn.with_logical_partitioning(nn.initializers.zeros_init(), (axes.CONV_OUT,)),
            (self.features,),
            self.param_dtype,
        )
        if x is None:
            return None
        # First frame, empty cache: the causal zero frames meet kernel[:-1]; only the
        # last temporal slice contributes.
        x = x.astype(self.dtype)
        pad = [(k // 2, k // 2) for k in self.kernel_size[1:]]
        return _conv2d(x, kernel[-1], 1, pad) + bias.astype(self.dtype)


class Conv2d(nn.Module):
    """torch `nn.Conv2d` in NHWC: kernel (k, k, in, out), bias (out,), explicit padding."""

    features: int
    kernel: int = 3
    stride: int = 1
    padding: int = 1
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(nn.initializers.lecun_normal(), (None, None, *_CONV_AXES)),
            (self.kernel, self.kernel, x.shape[-1], self.features),
            self.param_dtype,
        )
        bias = self.param(
            "bias",
            nn.with_logical_partitioning(nn.initializers.zeros_init(), (axes.CONV_OUT,)),
            (self.features,),
            self.param_dtype,
        )
        x = x.astype(self.dtype)
        pad = [(self.padding, self.padding)] * 2
        return _conv2d(x, kernel, self.stride, pad) + bias.astype(self.dtype)


class RMSNorm(nn.Module):
    """`QwenImageRMS_norm`: x / max(||x||_2, 1e-12) * sqrt(C) * gamma over channels (no bias).

    (Not `layers.RMSNorm`: this divides by the L2 norm, not the root-mean-square plus
    eps, so it differs for small activations.)
    """

    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        gamma = self.param(
            "scale",
            nn.with_logical_partitioning(nn.initializers.ones_init(), (axes.CONV_OUT,)),
            (c,),
            self.param_dtype,
        )
        x32 = x.astype(jnp.float32)
        norm = jnp.sqrt(jnp.sum(jnp.square(x32), axis=-1, keepdims=True))
        y = (x32 / jnp.maximum(norm, 1e-12)).astype(x.dtype)
        return y * jnp.asarray(math.sqrt(c), x.dtype) * gamma.astype(x.dtype)


class ResidualBlock(nn.Module):
    """`QwenImageResidualBlock`: conv2(silu(norm2(conv1(silu(norm1 x))))) + shortcut(x)."""

    out_dim: int
    dtype: Dtype
    param_dtype: Dtype

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = x
        if x.shape[-1] != self.out_dim:
            h = CausalConv3d(self.out_dim, (1, 1, 1), name="conv_shortcut", **kw)(x)
        x = nn.silu(RMSNorm(self.param_dtype, name="norm1")(x))
        x = CausalConv3d(self.out_dim, name="conv1", **kw)(x)
        x = nn.silu(RMSNorm(self.param_dtype, name="norm2")(x))
        x = CausalConv3d(self.out_dim, name="conv2", **kw)(x)  # dropout: identity at inference
        return x + h


class AttentionBlock(nn.Module):
    """`QwenImageAttentionBlock`: single-head self-attention over a frame's pixels + residual."""

    dtype: Dtype
    param_dtype: Dtype

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        b, h, w, c = x.shape
        y = RMSNorm(self.param_dtype, name="norm")(x)
        qkv = Conv2d(3 * c, 1, padding=0, name="to_qkv", **kw)(y).reshape(b, h * w, 1, 3 * c)
        q, k, v = jnp.split(qkv, 3, axis=-1)  # Diffusers chunks channels as [q | k | v]
        # Always xla: one head of dim C and one frame's pixels; not worth a kernel.
        o = layers.xla_attention(q, k, v).reshape(b, h, w, c)
        return x + Conv2d(c, 1, padding=0, name="proj", **kw)(o)


class Resample(nn.Module):
    """`QwenImageResample` for one frame: 'downsample2d|3d' or 'upsample2d|3d'.

    down: zero-pad (right, bottom) by one, 3x3 stride-2 conv (C -> C). up: nearest x2,
    3x3 conv (C -> C/2). The 3d modes also own a `time_conv`, declared and skipped.
    """

    mode: str
    dtype: Dtype
    param_dtype: Dtype

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        c = x.shape[-1]
        if self.mode.startswith("down"):
            x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
            x = Conv2d(c, 3, stride=2, padding=0, name="resample", **kw)(x)
            if self.mode == "downsample3d":
                CausalConv3d(c, (3, 1, 1), name="time_conv", **kw)(None, c)
        else:
            x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)  # nearest-exact x2
            x = Conv2d(c // 2, 3, padding=1, name="resample", **kw)(x)
            if self.mode == "upsample3d":
                CausalConv3d(2 * c, (3, 1, 1), name="time_conv", **kw)(None, c)
        return x


class MidBlock(nn.Module):
    """resnet -> attention -> resnet at the lowest resolution."""

    dtype: Dtype
    param_dtype: Dtype

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        c = x.shape[-1]
        x = ResidualBlock(c, name="resnets_0", **kw)(x)
        x = AttentionBlock(name="attentions_0", **kw)(x)
        return ResidualBlock(c, name="resnets_1", **kw)(x)


def encoder_layout(config: QwenImageVAEConfig) -> list[tuple[str, int]]:
    """`QwenImageEncoder3d.down_blocks` in order: ("res", out channels) | (resample mode, C).

    (No attention entries: the config refuses attn_scales, which Diffusers cannot run.)
    """
    c = config
    dims = [c.base_dim * m for m in (1, *c.dim_mult)]
    out = []
    for i, d in enumerate(dims[1:]):
        out += [("res", d)] * c.num_res_blocks
        if i != len(c.dim_mult) - 1:
            out.append(("downsample3d" if c.temperal_downsample[i] else "downsample2d", d))
    return out


def decoder_layout(config: QwenImageVAEConfig) -> list[tuple[int, int, str | None]]:
    """`QwenImageDecoder3d.up_blocks` in order: (in_dim, out_dim, upsample mode or None)."""
    c = config
    dims = [c.base_dim * m for m in (c.dim_mult[-1], *c.dim_mult[::-1])]
    up = c.temperal_downsample[::-1]
    out = []
    for i in range(len(c.dim_mult)):
        d_in = dims[i] // 2 if i > 0 else dims[i]  # the previous upsample halved channels
        mode = None
        if i != len(c.dim_mult) - 1:
            mode = "upsample3d" if up[i] else "upsample2d"
        out.append((d_in, dims[i + 1], mode))
    return out


class Encoder(nn.Module):
    """Image (B, H, W, C_in) -> moments (B, H/f, W/f, 2 z_dim), before `quant_conv`."""

    config: QwenImageVAEConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.config
        kw = dict(dtype=jnp.dtype(c.dtype), param_dtype=jnp.dtype(c.param_dtype))
        x = CausalConv3d(c.base_dim, name="conv_in", **kw)(x)
        for k, (kind, d) in enumerate(encoder_layout(c)):
            name = f"down_blocks_{k}"
            if kind == "res":
                x = ResidualBlock(d, name=name, **kw)(x)
            else:
                x = Resample(kind, name=name, **kw)(x)
        x = MidBlock(name="mid_block", **kw)(x)
        x = nn.silu(RMSNorm(kw["param_dtype"], name="norm_out")(x))
        return CausalConv3d(2 * c.z_dim, name="conv_out", **kw)(x)


class Decoder(nn.Module):
    """Latents (B, h, w, z_dim), after `post_quant_conv` -> image (B, h*f, w*f, C_in)."""

    config: QwenImageVAEConfig

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        c = self.config
        kw = dict(dtype=jnp.dtype(c.dtype), param_dtype=jnp.dtype(c.param_dtype))
        blocks = decoder_layout(c)
        x = CausalConv3d(blocks[0][0], name="conv_in", **kw)(z)
        x = MidBlock(name="mid_block", **kw)(x)
        for i, (_, d_out, mode) in enumerate(blocks):
            for j in range(c.num_res_blocks + 1):
                x = ResidualBlock(d_out, name=f"up_blocks_{i}_resnets_{j}", **kw)(x)
            if mode is not None:
                x = Resample(mode, name=f"up_blocks_{i}_upsampler", **kw)(x)
        x = nn.silu(RMSNorm(kw["param_dtype"], name="norm_out")(x))
        return CausalConv3d(c.input_channels, name="conv_out", **kw)(x)


class QwenImageVAE(nn.Module):
    """AutoencoderKLQwenImage on images: `encode(x) -> (mean, logvar)`, `decode(z) -> x`, NHWC.

    `__call__(x)` runs encode then decode of the mean (used for `init`).
    """

    config: QwenImageVAEConfig

    def setup(self):
        c = self.config
        kw = dict(dtype=jnp.dtype(c.dtype), param_dtype=jnp.dtype(c.param_dtype))
        self.encoder = Encoder(c)
        self.decoder = Decoder(c)
        self.quant_conv = CausalConv3d(2 * c.z_dim, (1, 1, 1), **kw)
        self.post_quant_conv = CausalConv3d(c.z_dim, (1, 1, 1), **kw)

    def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Image float[B, H, W, C_in] in [-1, 1] -> (mean, logvar) float[B, H/f, W/f, z_dim].

        logvar is clipped to [-30, 20] as in Diffusers' `DiagonalGaussianDistribution`.
        """
        mean, logvar = jnp.split(self.quant_conv(self.encoder(x)), 2, axis=-1)
        return mean, jnp.clip(logvar, -30.0, 20.0)

    def decode(self, z: jax.Array) -> jax.Array:
        """Raw (unnormalised) latents float[B, h, w, z_dim] -> image float[B, h*f, w*f, C_in] in [-1, 1].

        Clamped to [-1, 1], as Diffusers' `AutoencoderKLQwenImage._decode` does.
        """
        return jnp.clip(self.decoder(self.post_quant_conv(z)), -1.0, 1.0)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.decode(self.encode(x)[0])


def to_transformer_space(z: jax.Array, config: QwenImageVAEConfig) -> jax.Array:
    """VAE latents -> the transformer's latent space: (z - latents_mean) / latents_std, per channel."""
    mean = jnp.asarray(config.latents_mean, jnp.float32)
    std = jnp.asarray(config.latents_std, jnp.float32)
    return ((z.astype(jnp.float32) - mean) / std).astype(z.dtype)


def from_transformer_space(x: jax.Array, config: QwenImageVAEConfig) -> jax.Array:
    """Inverse of `to_transformer_space`: x * latents_std + latents_mean, per channel.

    (`QwenImagePipeline` writes it latents / (1 / std) + mean: equal to float32 rounding.)
    """
    mean = jnp.asarray(config.latents_mean, jnp.float32)
    std = jnp.asarray(config.latents_std, jnp.float32)
    return (x.astype(jnp.float32) * std + mean).astype(x.dtype)


def init_shapes(config: QwenImageVAEConfig):
    """(module, abstract boxed params) of `QwenImageVAE(config)`, nothing allocated."""
    size = 2 * config.downsample_factor
    x = jax.ShapeDtypeStruct((1, size, size, config.input_channels), jnp.float32)
    module = QwenImageVAE(config)
    return module, jax.eval_shape(lambda a: module.init(jax.random.key(0), a), x)["params"]
