"""FLUX.1 configs, built from Diffusers `config.json` files and validated.

`FluxTransformerConfig` mirrors `FluxTransformer2DModel`'s config (FLUX.1-dev,
FLUX.1-schnell, or any size, tiny included) plus ffjax runtime fields (dtypes, remat,
attention kernel). `FluxVAEConfig` mirrors the `AutoencoderKL` config of the FLUX VAE.
Unknown keys and impossible values are errors that name the key.
"""

from __future__ import annotations

import dataclasses

# ConfigError, read_config and REMAT_POLICIES are re-exported: callers import them from here.
from ffjax.models.config_json import REMAT_POLICIES as REMAT_POLICIES
from ffjax.models.config_json import ConfigError as ConfigError
from ffjax.models.config_json import DiffusersConfig
from ffjax.models.config_json import check as _check
from ffjax.models.config_json import read_config as read_config


@dataclasses.dataclass(frozen=True)
class FluxTransformerConfig(DiffusersConfig):
    """`FluxTransformer2DModel` hyper-parameters (Diffusers names) + ffjax runtime fields."""

    CLASS_NAME = "FluxTransformer2DModel"
    RUNTIME = ("dtype", "param_dtype", "remat", "attention")

    patch_size: int = 1
    in_channels: int = 64  # packed latent channels: 4 * VAE latent_channels
    out_channels: int | None = None  # None: in_channels
    num_layers: int = 19  # double-stream blocks
    num_single_layers: int = 38  # single-stream blocks
    attention_head_dim: int = 128
    num_attention_heads: int = 24
    joint_attention_dim: int = 4096  # T5 hidden size
    pooled_projection_dim: int = 768  # CLIP pooled size
    guidance_embeds: bool = False  # True for guidance-distilled FLUX.1-dev
    axes_dims_rope: tuple[int, ...] = (16, 56, 56)  # RoPE dims for (text/index, row, col) ids
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
        return self.patch_size**2 * (self.out_channels or self.in_channels)

    def validate(self) -> None:
        for k in ("patch_size", "in_channels", "attention_head_dim", "num_attention_heads",
                  "joint_attention_dim", "pooled_projection_dim"):  # fmt: skip
            v = getattr(self, k)
            _check(isinstance(v, int) and v > 0, k, v, "a positive int")
        for k in ("num_layers", "num_single_layers"):
            v = getattr(self, k)
            _check(isinstance(v, int) and v >= 0, k, v, "an int >= 0")
        _check(
            self.out_channels is None or self.out_channels > 0,
            "out_channels",
            self.out_channels,
            "None or > 0",
        )
        dims = self.axes_dims_rope
        _check(
            len(dims) == 3 and all(d > 0 and d % 2 == 0 for d in dims) and sum(dims) == self.attention_head_dim,
            "axes_dims_rope", dims, f"3 positive even ints summing to attention_head_dim={self.attention_head_dim}",
        )  # fmt: skip
        self.check_runtime()


@dataclasses.dataclass(frozen=True)
class FluxVAEConfig(DiffusersConfig):
    """`AutoencoderKL` hyper-parameters of the FLUX.1 VAE (Diffusers names) + dtypes."""

    CLASS_NAME = "AutoencoderKL"

    in_channels: int = 3
    out_channels: int = 3
    down_block_types: tuple[str, ...] = ("DownEncoderBlock2D",) * 4
    up_block_types: tuple[str, ...] = ("UpDecoderBlock2D",) * 4
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    act_fn: str = "silu"
    latent_channels: int = 16
    norm_num_groups: int = 32
    sample_size: int | tuple[int, ...] = 1024
    scaling_factor: float = 0.3611
    shift_factor: float | None = 0.1159
    latents_mean: tuple[float, ...] | None = None
    latents_std: tuple[float, ...] | None = None
    force_upcast: bool = True
    use_quant_conv: bool = False
    use_post_quant_conv: bool = False
    mid_block_add_attention: bool = True
    # ffjax runtime fields.
    dtype: str = "float32"
    param_dtype: str = "float32"

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    def validate(self) -> None:
        n = len(self.block_out_channels)
        _check(n >= 1 and all(c > 0 and c % self.norm_num_groups == 0 for c in self.block_out_channels),
               "block_out_channels", self.block_out_channels, f"positive multiples of norm_num_groups={self.norm_num_groups}")  # fmt: skip
        _check(self.down_block_types == ("DownEncoderBlock2D",) * n, "down_block_types",
               self.down_block_types, f"{n} x 'DownEncoderBlock2D'")  # fmt: skip
        _check(self.up_block_types == ("UpDecoderBlock2D",) * n, "up_block_types",
               self.up_block_types, f"{n} x 'UpDecoderBlock2D'")  # fmt: skip
        _check(self.act_fn == "silu", "act_fn", self.act_fn, "'silu'")
        _check(self.latent_channels > 0, "latent_channels", self.latent_channels, "> 0")
        _check(self.layers_per_block > 0, "layers_per_block", self.layers_per_block, "> 0")
        self.check_runtime()
