"""Qwen-Image configs, built from Diffusers `config.json` files and validated.

`QwenImageTransformerConfig` mirrors `QwenImageTransformer2DModel`'s config (the 20B
Qwen-Image, or any size, tiny included) plus ffjax runtime fields (dtypes, remat,
attention kernel). `QwenImageVAEConfig` mirrors `AutoencoderKLQwenImage`, as the Wan 2.1
`WanVAEConfig` it is. Unknown keys, impossible values and Diffusers options this port
does not implement (the Edit / Layered variants' switches) are errors that name the key.
"""

from __future__ import annotations

import dataclasses

# ConfigError, read_config and REMAT_POLICIES are re-exported: callers import them from here.
from ffjax.models.config_json import REMAT_POLICIES as REMAT_POLICIES
from ffjax.models.config_json import ConfigError as ConfigError
from ffjax.models.config_json import DiffusersConfig
from ffjax.models.config_json import check as _check
from ffjax.models.config_json import read_config as read_config
from ffjax.models.wan.config import WanVAEConfig

TRANSFORMER_CLASS = "QwenImageTransformer2DModel"
VAE_CLASS = "AutoencoderKLQwenImage"


def _positive_ints(obj, keys) -> None:
    for k in keys:
        v = getattr(obj, k)
        _check(isinstance(v, int) and not isinstance(v, bool) and v > 0, k, v, "a positive int")


@dataclasses.dataclass(frozen=True)
class QwenImageTransformerConfig(DiffusersConfig):
    """`QwenImageTransformer2DModel` hyper-parameters (Diffusers names) + ffjax runtime fields."""

    CLASS_NAME, WHAT = TRANSFORMER_CLASS, "Qwen-Image transformer"
    RUNTIME = ("dtype", "param_dtype", "remat", "attention")

    patch_size: int = 2  # latents are packed in patch_size^2 patches by the pipeline
    in_channels: int = 64  # packed latent channels: patch_size^2 * VAE z_dim
    out_channels: int | None = 16  # unpacked output channels (None: in_channels)
    num_layers: int = 60  # dual-stream MMDiT blocks
    attention_head_dim: int = 128
    num_attention_heads: int = 24
    joint_attention_dim: int = 3584  # Qwen2.5-VL hidden size
    guidance_embeds: bool = False  # must stay False: Diffusers builds no guidance embedder
    axes_dims_rope: tuple[int, ...] = (16, 56, 56)  # RoPE dims for (frame, row, col)
    zero_cond_t: bool = False  # Qwen-Image-Edit-2511 switch; not implemented here
    use_additional_t_cond: bool = False  # Qwen-Image-Layered switch; not implemented here
    use_layer3d_rope: bool = False  # Qwen-Image-Layered switch; not implemented here
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
        _positive_ints(self, ("patch_size", "in_channels", "attention_head_dim",
                              "num_attention_heads", "joint_attention_dim"))  # fmt: skip
        _check(isinstance(self.num_layers, int) and self.num_layers >= 0, "num_layers",
               self.num_layers, "an int >= 0")  # fmt: skip
        _check(self.out_channels is None or (isinstance(self.out_channels, int) and self.out_channels > 0),
               "out_channels", self.out_channels, "None or a positive int")  # fmt: skip
        dims = self.axes_dims_rope
        _check(
            len(dims) == 3 and all(d > 0 and d % 2 == 0 for d in dims) and sum(dims) == self.attention_head_dim,
            "axes_dims_rope", dims, f"3 positive even ints summing to attention_head_dim={self.attention_head_dim}",
        )  # fmt: skip
        # Diffusers' forward breaks when guidance is passed (its timestep embedding takes
        # no guidance argument), and the Edit / Layered switches change the forward in ways
        # this port does not implement: refuse them rather than compute something else.
        unsupported = {
            "guidance_embeds": "Diffusers' QwenImageTransformer2DModel has no guidance embedder",
            "zero_cond_t": "per-token zero-timestep modulation (Qwen-Image-Edit-2511)",
            "use_additional_t_cond": "the additional timestep embedding (Qwen-Image-Layered)",
            "use_layer3d_rope": "the layered 3-D RoPE (Qwen-Image-Layered)",
        }
        for key, what in unsupported.items():
            if getattr(self, key):
                raise ConfigError(
                    f"config key {key}=True is not supported by ffjax's Qwen-Image transformer"
                    f" ({what}); only {key}=False checkpoints load"
                )
        self.check_runtime()


# AutoencoderKLQwenImage's config.json keys (+ the runtime dtypes), each with the
# WanVAEConfig fields it sets: its one pixel-channel count is both ends of the VAE.
_VAE_KEYS = {
    **{k: (k,) for k in ("base_dim", "z_dim", "dim_mult", "num_res_blocks", "attn_scales",
                         "temperal_downsample", "dropout")},
    "input_channels": ("in_channels", "out_channels"),
    **{k: (k,) for k in ("latents_mean", "latents_std", "dtype", "param_dtype")},
}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class QwenImageVAEConfig(WanVAEConfig):
    """`AutoencoderKLQwenImage` hyper-parameters: a `WanVAEConfig` of the Wan 2.1 layout.

    Diffusers' `AutoencoderKLQwenImage` is `AutoencoderKLWan` (Wan 2.1: causal 3-D
    convolutions, 8x spatial compression, 16 latents, the same latent statistics)
    fine-tuned for images, so ffjax runs it with the WAN VAE (`QwenImageVAE`, an image
    is one frame). Its config.json has its own class name, spells the pixel channels
    `input_channels` (encoder in = decoder out) and has none of Wan 2.2's keys, whose
    fields keep their Wan 2.1 values (validated).
    """

    CLASS_NAME, WHAT, KEYS = VAE_CLASS, "Qwen-Image VAE", _VAE_KEYS

    # Not in AutoencoderKLQwenImage's config: nothing to check against the layout.
    scale_factor_temporal: int | None = None
    scale_factor_spatial: int | None = None

    @property
    def input_channels(self) -> int:
        """Pixel channels (`AutoencoderKLQwenImage`'s name; in_channels = out_channels)."""
        return self.in_channels

    @property
    def downsample_factor(self) -> int:
        """Pixels per latent along height / width (8 for Qwen-Image)."""
        return self.spatial_factor

    def validate(self) -> None:
        super().validate()
        # The fields AutoencoderKLQwenImage cannot set must keep their Wan 2.1 values.
        for key, want in (("is_residual", False), ("patch_size", None),
                          ("decoder_base_dim", None), ("out_channels", self.in_channels)):  # fmt: skip
            v = getattr(self, key)
            _check(v == want, key, v, f"{want!r} (AutoencoderKLQwenImage is the Wan 2.1 layout)")
