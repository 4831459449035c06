"""WAN checkpoints <-> ffjax params: the key tables, and loaders built on them.

Each table row is `Rule(ours, theirs, transform, layers)` (see `ffjax.models.weights`).
The transformer table follows `WanTransformer3DModel`'s forward pass; the VAE table
follows `AutoencoderKLWan`'s module tree.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ffjax.models.wan.config import (
    TRANSFORMER_CLASS,
    VAE_CLASS,
    WanTransformerConfig,
)
from ffjax.models.wan.transformer import WanTransformer
from ffjax.models.wan.transformer import init_shapes as transformer_init_shapes
from ffjax.models.weights import (
    DIFFUSERS_WEIGHTS,
    IDENTITY,
    Rule,
    TensorSource,
    Transform,
    component_rules,
    dense,
    identify_folder,
    load_folder,
    norm,
    open_diffusers,
    reshape,
    save_folder,
)

WEIGHTS_PREFIX = DIFFUSERS_WEIGHTS  # Diffusers' weight file name stem (ffjax.convert reads it)

# ---------------------------------------------------------------- transformer section


def _patch_embedding(config: WanTransformerConfig) -> Transform:
    """Conv3d weight (D, C, pt, ph, pw) <-> our Dense kernel (pt*ph*pw*C, D).

    A stride = kernel Conv3d is a matmul over patches; the kernel rows follow
    `patchify`'s channel order (dt, dy, dx, c).
    """
    pt, ph, pw = config.patch_size
    c, d = config.in_channels, config.inner_dim
    theirs, ours = (d, c, pt, ph, pw), (pt * ph * pw * c, d)
    return Transform(
        f"conv3d{theirs}->dense{ours}",
        lambda a: a.transpose(2, 3, 4, 1, 0).reshape(ours),
        lambda a: a.reshape(pt, ph, pw, c, d).transpose(4, 3, 0, 1, 2),
        lambda s: ours if tuple(s) == theirs else tuple(s),
        lambda s: theirs if tuple(s) == ours else tuple(s),
    )


def _block(config: WanTransformerConfig) -> list[Rule]:
    n, d = config.num_layers, config.inner_dim
    o, t = "blocks", "blocks.{i}"
    rules = []
    for a in ("attn1", "attn2"):
        for p in ("to_q", "to_k", "to_v"):
            rules += dense(f"{o}/{a}/{p}", f"{t}.{a}.{p}", layers=n)
        # to_out is ModuleList(Linear, Dropout)
        rules += dense(f"{o}/{a}/to_out", f"{t}.{a}.to_out.0", layers=n)
        for p in ("norm_q", "norm_k"):
            rules += norm(f"{o}/{a}/{p}", f"{t}.{a}.{p}", layers=n, bias=False)
    if config.has_image_attention:
        rules += [*dense(f"{o}/attn2/add_k_proj", f"{t}.attn2.add_k_proj", layers=n),
                  *dense(f"{o}/attn2/add_v_proj", f"{t}.attn2.add_v_proj", layers=n),
                  *norm(f"{o}/attn2/norm_added_k", f"{t}.attn2.norm_added_k", layers=n, bias=False)]  # fmt: skip
    if config.cross_attn_norm:
        rules += norm(f"{o}/norm2", f"{t}.norm2", layers=n)
    rules += [*dense(f"{o}/ffn/proj_in", f"{t}.ffn.net.0.proj", layers=n),  # GELU(Linear)
              *dense(f"{o}/ffn/proj_out", f"{t}.ffn.net.2", layers=n),
              Rule(f"{o}/scale_shift_table", f"{t}.scale_shift_table", reshape((1, 6, d), (6, d)), n)]  # fmt: skip
    return rules


def transformer_rules(config: WanTransformerConfig) -> list[Rule]:
    """The key table of `WanTransformer` <-> `WanTransformer3DModel` for `config`."""
    d, ce = config.inner_dim, "condition_embedder"
    rules = [
        Rule("patch_embedding/kernel", "patch_embedding.weight", _patch_embedding(config)),
        Rule("patch_embedding/bias", "patch_embedding.bias", IDENTITY),
        *dense("time_embedder/linear_1", f"{ce}.time_embedder.linear_1"),
        *dense("time_embedder/linear_2", f"{ce}.time_embedder.linear_2"),
        *dense("time_proj", f"{ce}.time_proj"),
        *dense("text_embedder/linear_1", f"{ce}.text_embedder.linear_1"),
        *dense("text_embedder/linear_2", f"{ce}.text_embedder.linear_2"),
    ]
    if config.has_image_attention:
        ie = f"{ce}.image_embedder"
        rules += [*norm("image_embedder/norm1", f"{ie}.norm1"),
                  *dense("image_embedder/ff/proj_in", f"{ie}.ff.net.0.proj"),
                  *dense("image_embedder/ff/proj_out", f"{ie}.ff.net.2"),
                  *norm("image_embedder/norm2", f"{ie}.norm2")]  # fmt: skip
        if config.pos_embed_seq_len is not None:
            rules.append(Rule("image_embedder/pos_embed", f"{ie}.pos_embed"))
    if config.num_layers:
        rules += _block(config)
    return rules + [
        *dense("proj_out", "proj_out"),
        Rule("scale_shift_table", "scale_shift_table", reshape((1, 2, d), (2, d))),
    ]


class _WithoutIgnored:
    """A TensorSource that hides the keys Diffusers drops on load: `norm_added_q`
    weights (`WanTransformer3DModel._keys_to_ignore_on_load_unexpected`), which older
    I2V conversions carry but no forward uses."""

    def __init__(self, source: TensorSource):
        self._source = source

    def keys(self) -> list[str]:
        return [k for k in self._source.keys() if "norm_added_q" not in k]

    def shape(self, key: str):
        return self._source.shape(key)

    def read(self, key: str) -> np.ndarray:
        return self._source.read(key)


def load_transformer(
    path: str | os.PathLike, dtype: Any = "float32", source: TensorSource | None = None, **runtime
) -> tuple[WanTransformer, dict]:
    """Loads a Diffusers WAN `transformer/` folder (config.json + safetensors, sharded or not).

    Args:
      path: the folder (a Wan 2.1 / 2.2 `WanTransformer3DModel`, or an A14B
        `transformer_2/` expert).
      dtype: parameter and activation dtype; None keeps the stored dtype (bit-exact).
      source: tensors to use instead of the folder's safetensors (e.g. an ArraySource).
      runtime: WanTransformerConfig runtime fields (remat, attention, ...).

    Returns:
      (module, params) with params as NumPy arrays in the nested Flax layout.

    Raises:
      ConfigError for a folder of another model (e.g. a FLUX or Qwen-Image
      transformer) or an unsupported config; ConversionError naming every missing,
      unexpected or mis-shaped tensor.
    """
    return load_folder(path, WanTransformerConfig, transformer_init_shapes, transformer_rules,
                       "WAN transformer", dtype, _WithoutIgnored(open_diffusers(path, source)),
                       **runtime)  # fmt: skip


def save_diffusers(
    kind: str, config: Any, params: dict, out_dir: str | os.PathLike, *, dtype: Any = None,
    max_shard_bytes: int = 10 * 2**30,
) -> int:  # fmt: skip
    """Writes `params` as a Diffusers folder (config.json + safetensors); returns tensor count.

    `kind` is "transformer" (a `WanTransformerConfig`) or "vae" (a `WanVAEConfig`);
    dtype None keeps each parameter's dtype.
    """
    tables = {"transformer": transformer_rules, "vae": vae_rules}  # noqa: F821 (vae section)
    rules = component_rules(tables, "WAN", kind, config)
    return save_folder(rules, config, params, out_dir, dtype=dtype, max_shard_bytes=max_shard_bytes)


# Diffusers class names that make a folder a WAN component / pipeline.
WAN_PIPELINES = ("WanPipeline", "WanImageToVideoPipeline")


def identify(path: str | os.PathLike) -> str:
    """ "pipeline", "transformer" or "vae" for a WAN folder; CheckpointFormatError otherwise.

    The message names what does not match (missing config, or the class found).
    """
    components = {"transformer": TRANSFORMER_CLASS, "vae": VAE_CLASS}
    return identify_folder(path, "WAN", WAN_PIPELINES, components)


# ---------------------------------------------------------------- vae section

from ffjax.models.wan.config import WanVAEConfig  # noqa: E402
from ffjax.models.wan.vae import WanVAE, decoder_layout, encoder_layout  # noqa: E402
from ffjax.models.wan.vae import init_shapes as vae_init_shapes  # noqa: E402
from ffjax.models.weights import CONV2D, transpose  # noqa: E402

CONV3D = transpose((2, 3, 4, 1, 0))  # torch Conv3d (out, in, kt, kh, kw) -> (kt, kh, kw, in, out)


def _gamma(trailing: int) -> Transform:
    """`WanRMS_norm.gamma` (C, 1, ..., 1) <-> our scale (C,)."""
    ones = (1,) * trailing
    return Transform(
        f"gamma(C{', 1' * trailing})",
        lambda a: a.reshape(a.shape[0]),
        lambda a: a.reshape(a.shape[0], *ones),
        lambda s: (s[0],),
        lambda s: (s[0], *ones),
    )


def _conv3d(ours: str, theirs: str) -> list[Rule]:
    return [Rule(f"{ours}/kernel", f"{theirs}.weight", CONV3D),
            Rule(f"{ours}/bias", f"{theirs}.bias", IDENTITY)]  # fmt: skip


def _conv2d(ours: str, theirs: str) -> list[Rule]:
    return [Rule(f"{ours}/kernel", f"{theirs}.weight", CONV2D),
            Rule(f"{ours}/bias", f"{theirs}.bias", IDENTITY)]  # fmt: skip


def _rms(ours: str, theirs: str, images: bool = False) -> list[Rule]:
    # gamma is (C, 1, 1) in attention blocks ("images") and (C, 1, 1, 1) elsewhere.
    return [Rule(f"{ours}/scale", f"{theirs}.gamma", _gamma(2 if images else 3))]


def _resnet(ours: str, theirs: str, shortcut: bool) -> list[Rule]:
    rules = [*_rms(f"{ours}/norm1", f"{theirs}.norm1"), *_conv3d(f"{ours}/conv1", f"{theirs}.conv1"),
             *_rms(f"{ours}/norm2", f"{theirs}.norm2"), *_conv3d(f"{ours}/conv2", f"{theirs}.conv2")]  # fmt: skip
    return rules + (_conv3d(f"{ours}/conv_shortcut", f"{theirs}.conv_shortcut") if shortcut else [])


def _resample(ours: str, theirs: str, mode: str) -> list[Rule]:
    rules = _conv2d(f"{ours}/resample", f"{theirs}.resample.1")  # Sequential(pad | upsample, conv)
    return rules + (
        _conv3d(f"{ours}/time_conv", f"{theirs}.time_conv") if mode.endswith("3d") else []
    )


def _mid(ours: str, theirs: str) -> list[Rule]:
    a, ta = f"{ours}/attentions_0", f"{theirs}.attentions.0"
    return [*_resnet(f"{ours}/resnets_0", f"{theirs}.resnets.0", False),
            *_rms(f"{a}/norm", f"{ta}.norm", images=True),
            *_conv2d(f"{a}/to_qkv", f"{ta}.to_qkv"), *_conv2d(f"{a}/proj", f"{ta}.proj"),
            *_resnet(f"{ours}/resnets_1", f"{theirs}.resnets.1", False)]  # fmt: skip


def _encoder_rules(config: WanVAEConfig) -> list[Rule]:
    rules = _conv3d("encoder/conv_in", "encoder.conv_in")
    for k, e in enumerate(encoder_layout(config)):
        o, t = f"encoder/down_blocks_{k}", f"encoder.down_blocks.{k}"
        if e.kind == "res":  # Wan 2.1: one flat list of resnets and resamplers
            rules += _resnet(o, t, shortcut=e.in_dim != e.out_dim)
        elif e.kind == "down_block":  # Wan 2.2: blocks of resnets + a downsampler
            for j in range(config.num_res_blocks):
                d_in = e.in_dim if j == 0 else e.out_dim
                rules += _resnet(f"{o}/resnets_{j}", f"{t}.resnets.{j}", shortcut=d_in != e.out_dim)
            if e.down:
                mode = "downsample3d" if e.temporal else "downsample2d"
                rules += _resample(f"{o}/downsampler", f"{t}.downsampler", mode)
        else:
            rules += _resample(o, t, e.kind)
    return rules + [*_mid("encoder/mid_block", "encoder.mid_block"),
                    *_rms("encoder/norm_out", "encoder.norm_out"),
                    *_conv3d("encoder/conv_out", "encoder.conv_out")]  # fmt: skip


def _decoder_rules(config: WanVAEConfig) -> list[Rule]:
    rules = [*_conv3d("decoder/conv_in", "decoder.conv_in"),
             *_mid("decoder/mid_block", "decoder.mid_block")]  # fmt: skip
    # 2.1 keeps its up-sampler in a ModuleList (`upsamplers.0`), 2.2 as `upsampler`.
    up = "upsampler" if config.is_residual else "upsamplers.0"
    for i, e in enumerate(decoder_layout(config)):
        o, t = f"decoder/up_blocks_{i}", f"decoder.up_blocks.{i}"
        for j in range(config.num_res_blocks + 1):
            shortcut = j == 0 and e.in_dim != e.out_dim
            rules += _resnet(f"{o}/resnets_{j}", f"{t}.resnets.{j}", shortcut)
        if e.mode is not None:
            rules += _resample(f"{o}/upsampler", f"{t}.{up}", e.mode)
    return rules + [*_rms("decoder/norm_out", "decoder.norm_out"),
                    *_conv3d("decoder/conv_out", "decoder.conv_out")]  # fmt: skip


def vae_rules(config: WanVAEConfig) -> list[Rule]:
    """The key table of `WanVAE` <-> `AutoencoderKLWan` for `config` (Wan 2.1 or 2.2)."""
    return [*_encoder_rules(config), *_conv3d("quant_conv", "quant_conv"),
            *_conv3d("post_quant_conv", "post_quant_conv"), *_decoder_rules(config)]  # fmt: skip


def load_vae(
    path: str | os.PathLike, dtype: Any = "float32", source: TensorSource | None = None
) -> tuple[WanVAE, dict]:
    """Loads a Diffusers WAN `vae/` folder (`AutoencoderKLWan`, Wan 2.1 or 2.2).

    Args:
      path: the folder (config.json + safetensors, sharded or not).
      dtype: parameter and activation dtype; None keeps the stored dtype (bit-exact).
      source: tensors to use instead of the folder's safetensors (e.g. an ArraySource).

    Returns:
      (module, params) with params as NumPy arrays in the nested Flax layout.

    Raises:
      ConfigError for a folder of another model (e.g. a Qwen-Image or FLUX VAE) or an
      unsupported config; ConversionError naming every missing, unexpected or
      mis-shaped tensor.
    """
    return load_folder(path, WanVAEConfig, vae_init_shapes, vae_rules, "WAN VAE", dtype, source)
