"""WAN configs, built from Diffusers `config.json` files and validated.

`WanTransformerConfig` mirrors `WanTransformer3DModel` (Wan 2.1 T2V/I2V, Wan 2.2
TI2V-5B and each A14B expert) plus ffjax runtime fields; `WanVAEConfig` mirrors
`AutoencoderKLWan` (the Wan 2.1 z=16 VAE and the Wan 2.2 z=48 residual VAE). Unknown
keys and impossible values are errors that name the key.
"""

from __future__ import annotations

import dataclasses

# ConfigError, read_config and REMAT_POLICIES are re-exported: callers import them from here.
from ffjax.models.config_json import REMAT_POLICIES as REMAT_POLICIES
from ffjax.models.config_json import ConfigError as ConfigError
from ffjax.models.config_json import DiffusersConfig
from ffjax.models.config_json import check as _check
from ffjax.models.config_json import read_config as read_config

# ---------------------------------------------------------------- transformer section

TRANSFORMER_CLASS = "WanTransformer3DModel"


def _positive_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


@dataclasses.dataclass(frozen=True)
class WanTransformerConfig(DiffusersConfig):
    """`WanTransformer3DModel` hyper-parameters (Diffusers names) + ffjax runtime fields.

    Defaults are Diffusers' (the Wan 2.1 T2V-14B shape). Wan 2.1 I2V sets `image_dim`
    (the CLIP vision width) and `added_kv_proj_dim` (= inner_dim) for its image
    cross-attention; FLF2V also `pos_embed_seq_len`; Wan 2.2 TI2V-5B is a plain T2V
    layout whose pipeline passes per-token timesteps.
    """

    CLASS_NAME, WHAT = TRANSFORMER_CLASS, "WAN transformer"
    RUNTIME = ("dtype", "param_dtype", "remat", "attention")

    patch_size: tuple[int, int, int] = (1, 2, 2)  # (frames, rows, cols) per token
    num_attention_heads: int = 40
    attention_head_dim: int = 128
    in_channels: int = 16  # latent channels in (VAE z_dim, + mask / image latents for I2V)
    out_channels: int | None = 16  # None: in_channels
    text_dim: int = 4096  # UMT5-XXL width
    freq_dim: int = 256  # sinusoidal timestep embedding width
    ffn_dim: int = 13824
    num_layers: int = 40
    cross_attn_norm: bool = True  # affine LayerNorm before the cross-attention
    qk_norm: str | None = "rms_norm_across_heads"  # the only layout Diffusers builds
    eps: float = 1e-6
    image_dim: int | None = None  # Wan 2.1 I2V: CLIP image-embedding width (1280)
    added_kv_proj_dim: int | None = None  # Wan 2.1 I2V: image K/V input width (= inner_dim)
    rope_max_seq_len: int = 1024  # RoPE table length per axis (max frames / rows / cols)
    pos_embed_seq_len: int | None = None  # FLF2V: image tokens of first + last frame (514)
    # ffjax runtime fields (never in a Diffusers config.json).
    dtype: str = "float32"  # activation dtype
    param_dtype: str = "float32"  # parameter storage dtype
    remat: str = "none"  # per-block rematerialisation: none | full | save_dots
    attention: str = "auto"  # attention kernel: auto | xla | cudnn | splash

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def output_channels(self) -> int:
        """Latent channels out (`out_channels or in_channels`, as Diffusers)."""
        return self.out_channels or self.in_channels

    @property
    def rope_dims(self) -> tuple[int, int, int]:
        """Head-dim split of the 3-D RoPE over (frame, row, col): rows and cols get
        2 * (head_dim // 6) each, frames the rest (`WanRotaryPosEmbed`)."""
        hw = 2 * (self.attention_head_dim // 6)
        return self.attention_head_dim - 2 * hw, hw, hw

    @property
    def has_image_attention(self) -> bool:
        """Wan 2.1 I2V / FLF2V: a CLIP image embedder and per-block image K/V."""
        return self.image_dim is not None

    def validate(self) -> None:
        for k in ("num_attention_heads", "attention_head_dim", "in_channels", "text_dim",
                  "freq_dim", "ffn_dim", "rope_max_seq_len"):  # fmt: skip
            _check(_positive_int(getattr(self, k)), k, getattr(self, k), "a positive int")
        p = self.patch_size
        _check(isinstance(p, tuple) and len(p) == 3 and all(_positive_int(v) for v in p),
               "patch_size", p, "3 positive ints (frames, rows, cols)")  # fmt: skip
        _check(isinstance(self.num_layers, int) and self.num_layers >= 0, "num_layers",
               self.num_layers, "an int >= 0")  # fmt: skip
        _check(self.out_channels is None or _positive_int(self.out_channels), "out_channels",
               self.out_channels, "None or a positive int")  # fmt: skip
        _check(self.attention_head_dim % 2 == 0, "attention_head_dim", self.attention_head_dim,
               "an even int (RoPE rotates pairs)")  # fmt: skip
        _check(self.freq_dim % 2 == 0, "freq_dim", self.freq_dim, "an even int")
        _check(isinstance(self.eps, (int, float)) and self.eps > 0, "eps", self.eps, "> 0")
        # Diffusers builds RMS q/k norms over all heads whatever qk_norm says; refuse other
        # values rather than guess what a checkpoint that sets them expects.
        if self.qk_norm != "rms_norm_across_heads":
            raise ConfigError(
                f"config key qk_norm={self.qk_norm!r} is not supported by ffjax's WAN"
                " transformer; only 'rms_norm_across_heads' (every published checkpoint) loads"
            )
        # The image branch needs both the embedder (image_dim) and the K/V projections
        # (added_kv_proj_dim, which read the embedder's inner_dim output); Diffusers runs
        # other combinations only by treating image tokens as text.
        if (self.image_dim is None) != (self.added_kv_proj_dim is None):
            raise ConfigError(
                f"config keys image_dim={self.image_dim!r} and added_kv_proj_dim="
                f"{self.added_kv_proj_dim!r} must both be set (Wan 2.1 I2V) or both be None"
            )
        if self.image_dim is not None:
            _check(_positive_int(self.image_dim), "image_dim", self.image_dim, "a positive int")
            _check(self.added_kv_proj_dim == self.inner_dim, "added_kv_proj_dim",
                   self.added_kv_proj_dim, f"inner_dim = {self.inner_dim} (heads x head dim)")  # fmt: skip
        if self.pos_embed_seq_len is not None:
            _check(self.image_dim is not None, "pos_embed_seq_len", self.pos_embed_seq_len,
                   "None without image_dim (it embeds image tokens)")  # fmt: skip
            _check(_positive_int(self.pos_embed_seq_len) and self.pos_embed_seq_len % 2 == 0,
                   "pos_embed_seq_len", self.pos_embed_seq_len,
                   "a positive even int (first + last frame image tokens)")  # fmt: skip
        self.check_runtime()


# ---------------------------------------------------------------- vae section

VAE_CLASS = "AutoencoderKLWan"
# Diffusers encodes the first frame alone, then chunks of this many frames (hard-coded
# in `AutoencoderKLWan._encode`); the temporal factor must divide it.
ENCODE_CHUNK = 4

# Wan 2.1's per-channel latent statistics (Diffusers' defaults).
_WAN21_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
               0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)  # fmt: skip
_WAN21_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
              3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)  # fmt: skip


def _is_pos_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


@dataclasses.dataclass(frozen=True)
class WanVAEConfig(DiffusersConfig):
    """`AutoencoderKLWan` hyper-parameters (Diffusers names) + dtypes.

    Wan 2.1: base_dim 96, z_dim 16, 8x spatial / 4x temporal compression. Wan 2.2
    (TI2V-5B): is_residual, patch_size 2 (pixels are 2x2-patchified into 12 channels
    before the encoder), base_dim 160, decoder_base_dim 256, z_dim 48, 16x spatial.
    """

    CLASS_NAME, WHAT = VAE_CLASS, "WAN VAE"

    base_dim: int = 96
    decoder_base_dim: int | None = None  # None: base_dim
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attn_scales: tuple[float, ...] = ()
    temperal_downsample: tuple[bool, ...] = (False, True, True)  # Diffusers' spelling
    dropout: float = 0.0  # inference only: dropout is the identity
    latents_mean: tuple[float, ...] = _WAN21_MEAN
    latents_std: tuple[float, ...] = _WAN21_STD
    is_residual: bool = False  # Wan 2.2: residual down / up blocks with pooled shortcuts
    in_channels: int = 3  # encoder input channels (after patchify: 3 * patch_size^2)
    out_channels: int = 3  # decoder output channels (before unpatchify)
    patch_size: int | None = None  # None or 1: no patchify
    scale_factor_temporal: int | None = 4  # what the pipeline uses; must match the layout
    scale_factor_spatial: int | None = 8
    # ffjax runtime fields.
    dtype: str = "float32"
    param_dtype: str = "float32"

    @property
    def patch(self) -> int:
        """Pixels per patchified position along height / width (1 without patchify)."""
        return self.patch_size or 1

    @property
    def spatial_factor(self) -> int:
        """Pixels per latent along height / width: patch * 2^(len(dim_mult) - 1)."""
        return self.patch * 2 ** (len(self.dim_mult) - 1)

    @property
    def temporal_factor(self) -> int:
        """Frames per latent frame after the first: 2^(number of temporal downsamples)."""
        return 2 ** sum(bool(t) for t in self.temperal_downsample)

    @property
    def pixel_channels(self) -> int:
        """Channels of the decoded video (out_channels / patch^2; 3 for RGB)."""
        return self.out_channels // self.patch**2

    @property
    def decoder_dim(self) -> int:
        return self.base_dim if self.decoder_base_dim is None else self.decoder_base_dim

    def validate(self) -> None:
        for key in ("base_dim", "z_dim", "num_res_blocks", "in_channels", "out_channels"):
            _check(_is_pos_int(getattr(self, key)), key, getattr(self, key), "a positive int")
        _check(self.decoder_base_dim is None or _is_pos_int(self.decoder_base_dim),
               "decoder_base_dim", self.decoder_base_dim, "None or a positive int")  # fmt: skip
        _check(self.patch_size is None or _is_pos_int(self.patch_size), "patch_size",
               self.patch_size, "None or a positive int")  # fmt: skip
        n = len(self.dim_mult)
        _check(n >= 1 and all(_is_pos_int(m) for m in self.dim_mult), "dim_mult",
               self.dim_mult, "a non-empty list of positive ints")  # fmt: skip
        # Diffusers builds encoder attention blocks for attn_scales but cannot run them
        # (its encoder passes them the frame cache, which they do not take): refuse.
        _check(self.attn_scales == (), "attn_scales", self.attn_scales,
               "[] (Diffusers' AutoencoderKLWan cannot run encoder attention blocks)")  # fmt: skip
        _check(len(self.temperal_downsample) == n - 1 and
               all(isinstance(t, bool) for t in self.temperal_downsample),
               "temperal_downsample", self.temperal_downsample,
               f"{n - 1} bools (one per downsampling stage)")  # fmt: skip
        _check(ENCODE_CHUNK % self.temporal_factor == 0, "temperal_downsample",
               self.temperal_downsample,
               f"at most 2 temporal stages (the factor must divide the {ENCODE_CHUNK}-frame chunks)")  # fmt: skip
        for key, want in (("scale_factor_temporal", self.temporal_factor),
                          ("scale_factor_spatial", self.spatial_factor)):  # fmt: skip
            v = getattr(self, key)
            _check(v is None or v == want, key, v, f"None or {want} (what the layout compresses)")
        if self.is_residual:
            self._check_shortcuts()
        p2 = self.patch**2
        _check(self.in_channels % p2 == 0, "in_channels", self.in_channels,
               f"a multiple of patch_size^2 = {p2}")  # fmt: skip
        _check(self.out_channels % p2 == 0, "out_channels", self.out_channels,
               f"a multiple of patch_size^2 = {p2}")  # fmt: skip
        for key in ("latents_mean", "latents_std"):
            v = getattr(self, key)
            _check(len(v) == self.z_dim, key, v, f"{self.z_dim} floats (z_dim)")
        _check(all(s > 0 for s in self.latents_std), "latents_std", self.latents_std, "> 0")
        _check(0.0 <= self.dropout < 1.0, "dropout", self.dropout, "in [0, 1)")
        self.check_runtime()

    def _check_shortcuts(self) -> None:
        # Wan 2.2's shortcuts fold (t, h, w) blocks into channels: the channel counts
        # must divide (AvgDown3D) / be divided (DupUp3D) as Diffusers asserts.
        n, td = len(self.dim_mult), self.temperal_downsample
        enc = [self.base_dim * m for m in (1, *self.dim_mult)]
        dec = [self.decoder_dim * m for m in (self.dim_mult[-1], *self.dim_mult[::-1])]
        for i in range(n):
            down = i != n - 1
            f = (2 if down and td[i] else 1) * (4 if down else 1)
            _check(enc[i] * f % enc[i + 1] == 0, "dim_mult", self.dim_mult,
                   f"encoder stage {i}: {enc[i]} channels x {f} divisible by {enc[i + 1]}"
                   " (Wan 2.2 pooled shortcut)")  # fmt: skip
            if down:
                f = (2 if td[::-1][i] else 1) * 4
                _check(dec[i + 1] * f % dec[i] == 0, "dim_mult", self.dim_mult,
                       f"decoder stage {i}: {dec[i + 1]} channels x {f} divisible by {dec[i]}"
                       " (Wan 2.2 repeated shortcut)")  # fmt: skip
