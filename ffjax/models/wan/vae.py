"""The WAN 2.1 / 2.2 video VAEs in Flax linen, mirroring Diffusers' `AutoencoderKLWan`.

Both are causal 3-D convolutional VAEs (Wan team 2025) with RMS norms over channels
(`F.normalize * sqrt(C) * gamma`) and single-head per-frame attention in the mid blocks.
Wan 2.1: 8x spatial, 4x temporal compression, 16 latents. Wan 2.2 (TI2V-5B): pixels
are 2x2-patchified into 12 channels first (`patch_size=2`), down / up blocks carry a
parameter-free shortcut (`avg_down` / `dup_up`: space-/time-to-channel reshapes and a
group mean / repeat), 16x spatial compression, 48 latents.

Time is causal and processed in chunks, as Diffusers does, so that memory does not grow
with the number of frames: encode runs the first frame alone, then chunks of 4 frames;
decode runs one latent frame at a time. Every temporal kernel sees the frames before
its chunk through a cache: the last `k_t - 1` frames of its input (zeros before the
video starts), the last frame before a stride-2 temporal down-sampling, and so on.
Here the cache is an explicit pytree (nested dicts of arrays, one entry per temporal
kernel): each block maps `(x, cache) -> (y, new_cache)`, `cache=None` meaning "first
chunk". The first chunk runs outside the loop (it has other shapes and skips the
temporal up-sampling and the first temporal down-sampling conv), the rest in
`nn.scan` (`lax.scan`) carrying the cache, writing each chunk's output into its slice.

Videos are channels-last, (B, T, H, W, C); `call_like_diffusers` converts from / to
Diffusers' (B, C, T, H, W).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from ffjax.models import layers
from ffjax.models.wan.config import ENCODE_CHUNK, WanVAEConfig
from ffjax.parallel import axes

Dtype = Any
Cache = Any  # nested dicts of arrays; None for the first chunk
_CONV_AXES = (axes.CONV_IN, axes.CONV_OUT)


def _kw(module) -> dict:
    return dict(dtype=module.dtype, param_dtype=module.param_dtype)


def _bias(module: nn.Module, features: int) -> jax.Array:
    return module.param(
        "bias",
        nn.with_logical_partitioning(nn.initializers.zeros_init(), (axes.CONV_OUT,)),
        (features,),
        module.param_dtype,
    )


class CausalConv3d(nn.Module):
    """`WanCausalConv3d`: kernel (k_t, k, k), 'same' spatial padding, causal in time.

    `__call__(x, cache) -> (y, new_cache)`: the conv sees `cache` (the last k_t - 1
    frames of the previous chunks' input; zeros when None) before `x`, and the new
    cache is the last k_t - 1 frames of cat(cache, x). `causal=False` is the plain
    valid conv with temporal stride `stride_t` (the down-sampling `time_conv`, whose
    caller prepends its own cache). With `x=None` only the parameters are declared
    (`in_features` gives their shape): the temporal convs a first chunk skips.
    """

    features: int
    kernel_size: tuple[int, int, int] = (3, 3, 3)
    stride_t: int = 1
    causal: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self, x: jax.Array | None, cache: jax.Array | None = None, in_features: int | None = None
    ) -> tuple[jax.Array | None, jax.Array | None]:
        cin = x.shape[-1] if x is not None else in_features
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(
                nn.initializers.lecun_normal(), (None, None, None, *_CONV_AXES)
            ),
            (*self.kernel_size, cin, self.features),
            self.param_dtype,
        )
        bias = _bias(self, self.features)
        if x is None:
            return None, None
        x = x.astype(self.dtype)
        kt, kh, kw = self.kernel_size
        new_cache = None
        if self.causal and kt > 1 and cache is None and x.shape[1] == 1:
            # A first frame (an image): the k_t - 1 zero frames before it meet
            # kernel[:-1] and add nothing, so only the last temporal slice is run.
            new_cache = jnp.pad(x, ((0, 0), (kt - 2, 0), (0, 0), (0, 0), (0, 0)))
            kernel = kernel[-1:]
        elif self.causal and kt > 1:
            if cache is None:
                cache = jnp.zeros((x.shape[0], kt - 1, *x.shape[2:]), x.dtype)
            x = jnp.concatenate([cache.astype(x.dtype), x], axis=1)
            new_cache = x[:, -(kt - 1) :]
        y = jax.lax.conv_general_dilated(
            x, kernel.astype(x.dtype), (self.stride_t, 1, 1),
            [(0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2)],
            dimension_numbers=("NDHWC", "DHWIO", "NDHWC"),
        )  # fmt: skip
        return y + bias.astype(self.dtype), new_cache


class Conv2d(nn.Module):
    """torch `nn.Conv2d` applied to every frame: kernel (k, k, in, out), bias (out,)."""

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
        bias = _bias(self, self.features)
        lead = x.shape[:-3]
        x = x.reshape(-1, *x.shape[-3:]).astype(self.dtype)
        pad = [(self.padding, self.padding)] * 2
        y = jax.lax.conv_general_dilated(
            x, kernel.astype(x.dtype), (self.stride, self.stride), pad,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )  # fmt: skip
        return (y + bias.astype(self.dtype)).reshape(*lead, *y.shape[1:])


class RMSNorm(nn.Module):
    """`WanRMS_norm`: x / max(||x||_2, 1e-12) * sqrt(C) * gamma over channels (no bias).

    (Not `layers.RMSNorm`: this divides by the L2 norm, not the root-mean-square plus
    eps. The norm is taken in float32, as Diffusers does for half-precision inputs.)
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
    """`WanResidualBlock`: conv2(silu(norm2(conv1(silu(norm1 x))))) + shortcut(x)."""

    out_dim: int
    dtype: Dtype
    param_dtype: Dtype

    @nn.compact
    def __call__(self, x: jax.Array, cache: Cache) -> tuple[jax.Array, Cache]:
        kw, cache = _kw(self), cache or {}
        h = x
        if x.shape[-1] != self.out_dim:
            h, _ = CausalConv3d(self.out_dim, (1, 1, 1), name="conv_shortcut", **kw)(x)
        x = nn.silu(RMSNorm(self.param_dtype, name="norm1")(x))
        x, c1 = CausalConv3d(self.out_dim, name="conv1", **kw)(x, cache.get("conv1"))
        x = nn.silu(RMSNorm(self.param_dtype, name="norm2")(x))  # dropout: identity
        x, c2 = CausalConv3d(self.out_dim, name="conv2", **kw)(x, cache.get("conv2"))
        return x + h, {"conv1": c1, "conv2": c2}


class AttentionBlock(nn.Module):
    """`WanAttentionBlock`: single-head self-attention over each frame's pixels + residual."""

    dtype: Dtype
    param_dtype: Dtype

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kw = _kw(self)
        b, t, h, w, c = x.shape
        y = RMSNorm(self.param_dtype, name="norm")(x)
        qkv = Conv2d(3 * c, 1, padding=0, name="to_qkv", **kw)(y).reshape(b * t, h * w, 1, 3 * c)
        q, k, v = jnp.split(qkv, 3, axis=-1)  # Diffusers chunks channels as [q | k | v]
        # Always xla: one head of dim C over one frame's pixels; not worth a kernel.
        o = layers.xla_attention(q, k, v).reshape(b, t, h, w, c)
        return x + Conv2d(c, 1, padding=0, name="proj", **kw)(o)


class Resample(nn.Module):
    """`WanResample`: 'downsample2d|3d' (C -> C) or 'upsample2d|3d' (C -> out_dim).

    down: zero-pad (right, bottom) by one, 3x3 stride-2 conv per frame; 3d then a
    (3, 1, 1) stride-2 valid `time_conv` over [last frame before the chunk, chunk]
    (skipped for the first chunk, which keeps its one frame). up: 3d first doubles the
    frames with a causal (3, 1, 1) `time_conv` C -> 2C (channel halves = even / odd
    frames; skipped for the first chunk), then nearest x2 and a 3x3 conv per frame.
    """

    mode: str
    out_dim: int
    dtype: Dtype
    param_dtype: Dtype

    @nn.compact
    def __call__(self, x: jax.Array, cache: Cache) -> tuple[jax.Array, Cache]:
        kw = _kw(self)
        b, _, h, w, c = x.shape
        if self.mode.startswith("down"):
            x = jnp.pad(x, ((0, 0), (0, 0), (0, 1), (0, 1), (0, 0)))
            x = Conv2d(c, 3, stride=2, padding=0, name="resample", **kw)(x)
            if self.mode == "downsample2d":
                return x, {}
            conv = CausalConv3d(c, (3, 1, 1), stride_t=2, causal=False, name="time_conv", **kw)
            last = x[:, -1:]
            if cache is None:
                conv(None, in_features=c)
            else:
                x, _ = conv(jnp.concatenate([cache["time_conv"].astype(x.dtype), x], axis=1))
            return x, {"time_conv": last}
        new_cache = {}
        if self.mode == "upsample3d":
            conv = CausalConv3d(2 * c, (3, 1, 1), name="time_conv", **kw)
            if cache is None:
                # Diffusers marks the cache "Rep": the next chunk's conv sees zeros.
                conv(None, in_features=c)
                new_cache["time_conv"] = jnp.zeros((b, 2, h, w, c), x.dtype)
            else:
                x, new_cache["time_conv"] = conv(x, cache["time_conv"])
                t = x.shape[1]
                x = (
                    x.reshape(b, t, h, w, 2, c)
                    .transpose(0, 1, 4, 2, 3, 5)
                    .reshape(b, 2 * t, h, w, c)
                )
        x = jnp.repeat(jnp.repeat(x, 2, axis=2), 2, axis=3)  # nearest-exact x2
        return Conv2d(self.out_dim, 3, padding=1, name="resample", **kw)(x), new_cache


class MidBlock(nn.Module):
    """`WanMidBlock`: resnet -> attention -> resnet at the lowest resolution."""

    dtype: Dtype
    param_dtype: Dtype

    @nn.compact
    def __call__(self, x: jax.Array, cache: Cache) -> tuple[jax.Array, Cache]:
        kw, cache = _kw(self), cache or {}
        c = x.shape[-1]
        x, c0 = ResidualBlock(c, name="resnets_0", **kw)(x, cache.get("resnets_0"))
        x = AttentionBlock(name="attentions_0", **kw)(x)
        x, c1 = ResidualBlock(c, name="resnets_1", **kw)(x, cache.get("resnets_1"))
        return x, {"resnets_0": c0, "resnets_1": c1}


# ----------------------------------------------------------------- Wan 2.2 shortcuts


def avg_down(x: jax.Array, out_dim: int, ft: int, fs: int) -> jax.Array:
    """`AvgDown3D`: (ft, fs, fs) blocks into channels, then the mean of channel groups.

    The chunk is zero-padded in front to a multiple of ft frames (a first chunk of one
    frame becomes [0, x0]). Channel order (c, t, h, w) of the block, as Diffusers.
    """
    b, t, h, w, c = x.shape
    pad = (-t) % ft
    x = jnp.pad(x, ((0, 0), (pad, 0), (0, 0), (0, 0), (0, 0)))
    t = (t + pad) // ft
    x = x.reshape(b, t, ft, h // fs, fs, w // fs, fs, c).transpose(0, 1, 3, 5, 7, 2, 4, 6)
    return x.reshape(b, t, h // fs, w // fs, out_dim, -1).mean(axis=-1)


def dup_up(x: jax.Array, out_dim: int, ft: int, fs: int, first: bool) -> jax.Array:
    """`DupUp3D`: repeat channels, unfold them into (ft, fs, fs) blocks.

    For the first chunk only the last of the ft frames is kept (its one frame).
    """
    b, t, h, w, c = x.shape
    x = jnp.repeat(x, out_dim * ft * fs * fs // c, axis=-1)
    x = x.reshape(b, t, h, w, out_dim, ft, fs, fs).transpose(0, 1, 5, 2, 6, 3, 7, 4)
    x = x.reshape(b, t * ft, h * fs, w * fs, out_dim)
    return x[:, ft - 1 :] if first else x


class ResidualDownBlock(nn.Module):
    """`WanResidualDownBlock` (Wan 2.2): resnets, optional down-sampler, + avg_down(x)."""

    out_dim: int
    num_res_blocks: int
    temporal: bool
    down: bool
    dtype: Dtype
    param_dtype: Dtype

    @nn.compact
    def __call__(self, x: jax.Array, cache: Cache) -> tuple[jax.Array, Cache]:
        kw, first, cache = _kw(self), cache is None, cache or {}
        shortcut = avg_down(x, self.out_dim, 2 if self.temporal else 1, 2 if self.down else 1)
        new = {}
        for j in range(self.num_res_blocks):
            name = f"resnets_{j}"
            x, new[name] = ResidualBlock(self.out_dim, name=name, **kw)(x, cache.get(name))
        if self.down:
            mode = "downsample3d" if self.temporal else "downsample2d"
            x, new["downsampler"] = Resample(mode, self.out_dim, name="downsampler", **kw)(
                x, None if first else cache["downsampler"]
            )
        return x + shortcut, new


class UpBlock(nn.Module):
    """`WanUpBlock` (2.1) or `WanResidualUpBlock` (2.2, `residual`): resnets, up-sampler.

    2.1's up-sampler halves the channels; 2.2's keeps them and adds dup_up(x).
    """

    out_dim: int
    num_res_blocks: int
    mode: str | None
    residual: bool
    dtype: Dtype
    param_dtype: Dtype

    @nn.compact
    def __call__(self, x: jax.Array, cache: Cache) -> tuple[jax.Array, Cache]:
        kw, first, cache = _kw(self), cache is None, cache or {}
        x_in, new = x, {}
        for j in range(self.num_res_blocks + 1):
            name = f"resnets_{j}"
            x, new[name] = ResidualBlock(self.out_dim, name=name, **kw)(x, cache.get(name))
        if self.mode is not None:
            out = self.out_dim if self.residual else self.out_dim // 2
            x, new["upsampler"] = Resample(self.mode, out, name="upsampler", **kw)(
                x, None if first else cache["upsampler"]
            )
            if self.residual:
                ft = 2 if self.mode == "upsample3d" else 1
                x = x + dup_up(x_in, self.out_dim, ft, 2, first)
        return x, new


# ----------------------------------------------------------------- encoder / decoder


class EncoderEntry(NamedTuple):
    """One of `WanEncoder3d.down_blocks`: kind "res" (in -> out), "downsample2d|3d"
    (out channels), or "down_block" (2.2's residual block: in -> out, temporal, down)."""

    kind: str
    in_dim: int
    out_dim: int
    temporal: bool = False
    down: bool = False


class DecoderEntry(NamedTuple):
    """One of `WanDecoder3d.up_blocks`: in -> out channels, then an up-sampler (or None)."""

    in_dim: int
    out_dim: int
    mode: str | None


def encoder_layout(config: WanVAEConfig) -> list[EncoderEntry]:
    """`WanEncoder3d.down_blocks` in order (one flat list for 2.1, blocks for 2.2)."""
    c = config
    dims = [c.base_dim * m for m in (1, *c.dim_mult)]
    last = len(c.dim_mult) - 1
    out = []
    for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        temporal = i != last and c.temperal_downsample[i]
        if c.is_residual:
            out.append(EncoderEntry("down_block", d_in, d_out, temporal, i != last))
            continue
        for _ in range(c.num_res_blocks):
            out.append(EncoderEntry("res", d_in, d_out))
            d_in = d_out
        if i != last:
            out.append(EncoderEntry("downsample3d" if temporal else "downsample2d", d_out, d_out))
    return out


def decoder_layout(config: WanVAEConfig) -> list[DecoderEntry]:
    """`WanDecoder3d.up_blocks` in order."""
    c = config
    dims = [c.decoder_dim * m for m in (c.dim_mult[-1], *c.dim_mult[::-1])]
    up = c.temperal_downsample[::-1]
    last = len(c.dim_mult) - 1
    out = []
    for i in range(len(c.dim_mult)):
        # 2.1's up-samplers halve the channels, so the next block takes half.
        d_in = dims[i] // 2 if i > 0 and not c.is_residual else dims[i]
        mode = None if i == last else ("upsample3d" if up[i] else "upsample2d")
        out.append(DecoderEntry(d_in, dims[i + 1], mode))
    return out


def _head(x, cache, features: int, kw) -> tuple[jax.Array, jax.Array]:
    x = nn.silu(RMSNorm(kw["param_dtype"], name="norm_out")(x))
    return CausalConv3d(features, name="conv_out", **kw)(x, cache.get("conv_out"))


class Encoder(nn.Module):
    """One chunk (B, T_c, H, W, in_channels), patchified -> moments (B, t_c, h, w, 2 z_dim)."""

    config: WanVAEConfig

    @nn.compact
    def __call__(self, x: jax.Array, cache: Cache) -> tuple[jax.Array, Cache]:
        c = self.config
        kw = dict(dtype=jnp.dtype(c.dtype), param_dtype=jnp.dtype(c.param_dtype))
        first, cache, new = cache is None, cache or {}, {}
        x, new["conv_in"] = CausalConv3d(c.base_dim, name="conv_in", **kw)(x, cache.get("conv_in"))
        for k, e in enumerate(encoder_layout(c)):
            name = f"down_blocks_{k}"
            if e.kind == "res":
                block = ResidualBlock(e.out_dim, name=name, **kw)
            elif e.kind == "down_block":
                block = ResidualDownBlock(
                    e.out_dim, c.num_res_blocks, e.temporal, e.down, name=name, **kw
                )
            else:
                block = Resample(e.kind, e.out_dim, name=name, **kw)
            x, new[name] = block(x, None if first else cache[name])
        x, new["mid_block"] = MidBlock(name="mid_block", **kw)(x, cache.get("mid_block"))
        x, new["conv_out"] = _head(x, cache, 2 * c.z_dim, kw)
        return x, new


class Decoder(nn.Module):
    """One latent chunk (B, 1, h, w, z_dim), after `post_quant_conv` -> frames
    (B, T_c, h*f, w*f, out_channels), T_c = 1 for the first chunk, else the temporal factor."""

    config: WanVAEConfig

    @nn.compact
    def __call__(self, z: jax.Array, cache: Cache) -> tuple[jax.Array, Cache]:
        c = self.config
        kw = dict(dtype=jnp.dtype(c.dtype), param_dtype=jnp.dtype(c.param_dtype))
        first, cache, new = cache is None, cache or {}, {}
        blocks = decoder_layout(c)
        x, new["conv_in"] = CausalConv3d(blocks[0].in_dim, name="conv_in", **kw)(
            z, cache.get("conv_in")
        )
        x, new["mid_block"] = MidBlock(name="mid_block", **kw)(x, cache.get("mid_block"))
        for i, e in enumerate(blocks):
            name = f"up_blocks_{i}"
            block = UpBlock(e.out_dim, c.num_res_blocks, e.mode, c.is_residual, name=name, **kw)
            x, new[name] = block(x, None if first else cache[name])
        x, new["conv_out"] = _head(x, cache, c.out_channels, kw)
        return x, new


def patchify(x: jax.Array, p: int) -> jax.Array:
    """(B, T, H, W, C) -> (B, T, H/p, W/p, C p^2); channel c p^2 + i_w p + i_h, as Diffusers."""
    if p == 1:
        return x
    b, t, h, w, c = x.shape
    x = x.reshape(b, t, h // p, p, w // p, p, c).transpose(0, 1, 2, 4, 6, 5, 3)
    return x.reshape(b, t, h // p, w // p, c * p * p)


def unpatchify(x: jax.Array, p: int) -> jax.Array:
    """Inverse of `patchify`."""
    if p == 1:
        return x
    b, t, h, w, cp = x.shape
    x = x.reshape(b, t, h, w, cp // (p * p), p, p).transpose(0, 1, 2, 6, 3, 5, 4)
    return x.reshape(b, t, h * p, w * p, cp // (p * p))


def _scan_chunks(fn, module: nn.Module, carry, n: int, *broadcast):
    """carry = fn(module, carry, i, *broadcast) for i in range(n), as one `lax.scan`."""

    def body(mdl, c, i, *args):
        return fn(mdl, c, i, *args), None

    scan = nn.scan(
        body,
        variable_broadcast="params",
        split_rngs={"params": False},
        in_axes=(0, *(nn.broadcast,) * len(broadcast)),
        length=n,
    )
    return scan(module, carry, jnp.arange(n), *broadcast)[0]


class WanVAE(nn.Module):
    """AutoencoderKLWan: `encode(x) -> (mean, logvar)`, `decode(z) -> x`, channels-last.

    `__call__(x)` runs encode then decode of the mean (used for `init`).
    """

    config: WanVAEConfig

    def setup(self):
        c = self.config
        kw = dict(dtype=jnp.dtype(c.dtype), param_dtype=jnp.dtype(c.param_dtype))
        self.encoder = Encoder(c)
        self.decoder = Decoder(c)
        self.quant_conv = CausalConv3d(2 * c.z_dim, (1, 1, 1), **kw)
        self.post_quant_conv = CausalConv3d(c.z_dim, (1, 1, 1), **kw)

    def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Video float[B, T, H, W, 3] in [-1, 1] -> (mean, logvar) float[B, t, h, w, z_dim].

        T = 1 + 4k frames; t = 1 + 4k / temporal_factor (1 + k for Wan 2.1 / 2.2);
        H, W divisible by the spatial factor (8 for Wan 2.1, 16 for 2.2), h = H / f.
        logvar is clipped to [-30, 20] as in Diffusers' `DiagonalGaussianDistribution`.
        """
        c = self.config
        t, h, w, ch = x.shape[1:]
        f, p = c.spatial_factor, c.patch
        if (t - 1) % ENCODE_CHUNK:
            raise ValueError(
                f"WAN VAE encode: T={t} frames; expected 1 + {ENCODE_CHUNK}k (1, 5, 9, ...)"
            )
        if h % f or w % f:
            raise ValueError(
                f"WAN VAE encode: frame size {h}x{w} (HxW) is not divisible by the VAE's"
                f" spatial factor {f}"
            )
        if ch * p * p != c.in_channels:
            raise ValueError(
                f"WAN VAE encode: {ch} channels; expected {c.in_channels // (p * p)} (x is"
                " (B, T, H, W, C) channels-last)"
            )
        return self._encode(x)

    def _encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        # `encode` without its checks (`QwenImageVAE` takes any image size, as Diffusers).
        c, (b, t) = self.config, x.shape[:2]
        p = c.patch
        k, per = (t - 1) // ENCODE_CHUNK, ENCODE_CHUNK // c.temporal_factor
        y0, cache = self.encoder(patchify(x[:, :1], p), None)
        moments = jnp.zeros((b, 1 + k * per, *y0.shape[2:]), y0.dtype)
        moments = jax.lax.dynamic_update_slice_in_dim(moments, y0, 0, axis=1)
        if k:

            def chunk(enc, carry, i, video):
                cache, out = carry
                xi = jax.lax.dynamic_slice_in_dim(video, 1 + ENCODE_CHUNK * i, ENCODE_CHUNK, 1)
                y, cache = enc(patchify(xi, p), cache)
                return cache, jax.lax.dynamic_update_slice_in_dim(out, y, 1 + per * i, axis=1)

            _, moments = _scan_chunks(chunk, self.encoder, (cache, moments), k, x)
        mean, logvar = jnp.split(self.quant_conv(moments)[0], 2, axis=-1)
        return mean, jnp.clip(logvar, -30.0, 20.0)

    def decode(self, z: jax.Array) -> jax.Array:
        """Raw (unnormalised) latents float[B, t, h, w, z_dim] -> video float[B, T, H, W, 3].

        T = 1 + temporal_factor (t - 1) (1 + 4 (t - 1) for Wan 2.1 / 2.2), H = h * f;
        clamped to [-1, 1], as Diffusers' `AutoencoderKLWan._decode` does.
        """
        c = self.config
        b, t, h, w, ch = z.shape
        if ch != c.z_dim:
            raise ValueError(f"WAN VAE decode: z has {ch} channels; expected z_dim={c.z_dim}")
        p, tf = c.patch, c.temporal_factor
        x = self.post_quant_conv(z)[0]

        def frames(y):
            return jnp.clip(unpatchify(y, p), -1.0, 1.0)

        y0, cache = self.decoder(x[:, :1], None)
        y0 = frames(y0)
        video = jnp.zeros((b, 1 + tf * (t - 1), *y0.shape[2:]), y0.dtype)
        video = jax.lax.dynamic_update_slice_in_dim(video, y0, 0, axis=1)
        if t > 1:

            def chunk(dec, carry, i, lat):
                cache, out = carry
                y, cache = dec(jax.lax.dynamic_slice_in_dim(lat, 1 + i, 1, axis=1), cache)
                return cache, jax.lax.dynamic_update_slice_in_dim(out, frames(y), 1 + tf * i, 1)

            _, video = _scan_chunks(chunk, self.decoder, (cache, video), t - 1, x)
        return video

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.decode(self.encode(x)[0])


def _stats(config: WanVAEConfig) -> tuple[jax.Array, jax.Array]:
    # As WanPipeline builds them: mean, and 1 / std (the pipeline's "latents_std").
    mean = jnp.asarray(config.latents_mean, jnp.float32)
    return mean, 1.0 / jnp.asarray(config.latents_std, jnp.float32)


def to_transformer_space(z: jax.Array, config: WanVAEConfig) -> jax.Array:
    """VAE latents [..., z_dim] -> the transformer's space: (z - latents_mean) * (1 / latents_std).

    (`WanImageToVideoPipeline.prepare_latents` normalises its condition this way.)
    """
    mean, inv_std = _stats(config)
    return ((z.astype(jnp.float32) - mean) * inv_std).astype(z.dtype)


def from_transformer_space(x: jax.Array, config: WanVAEConfig) -> jax.Array:
    """Inverse of `to_transformer_space`, as `WanPipeline` decodes: x / (1 / latents_std) + latents_mean."""
    mean, inv_std = _stats(config)
    return (x.astype(jnp.float32) / inv_std + mean).astype(x.dtype)


def init_shapes(config: WanVAEConfig):
    """(module, abstract boxed params) of `WanVAE(config)`, nothing allocated."""
    size = config.spatial_factor
    x = jax.ShapeDtypeStruct((1, 1, size, size, config.in_channels // config.patch**2), jnp.float32)
    module = WanVAE(config)
    return module, jax.eval_shape(lambda a: module.init(jax.random.key(0), a), x)["params"]
