"""FLUX.1 checkpoints <-> ffjax params: the key tables, and loaders built on them.

Each table row is `Rule(ours, theirs, transform, layers)` (see `ffjax.models.weights`);
`dense` / `conv` / `norm` expand to the kernel + bias rows of one layer. `layers=N`
stacks Diffusers' per-block tensors `...{i}...` into our scanned `(N, ...)` arrays.
Read the tables top to bottom next to Diffusers' `FluxTransformer2DModel` and
`AutoencoderKL`: the order follows their forward passes.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp

from ffjax.models.flux.config import FluxTransformerConfig, FluxVAEConfig
from ffjax.models.flux.transformer import FluxTransformer
from ffjax.models.flux.vae import FluxVAE
from ffjax.models.flux.vae import init_shapes as vae_init_shapes
from ffjax.models.weights import (
    DIFFUSERS_WEIGHTS,
    Rule,
    TensorSource,
    component_rules,
    conv,
    dense,
    identify_folder,
    load_folder,
    norm,
    save_folder,
)

WEIGHTS_PREFIX = DIFFUSERS_WEIGHTS  # Diffusers' weight file name stem (ffjax.convert reads it)

# --------------------------------------------------------------------------- transformer


def _double_block(n: int) -> list[Rule]:
    o, t = "double_blocks", "transformer_blocks.{i}"
    qkv = ["to_q", "to_k", "to_v"]
    added = ["add_q_proj", "add_k_proj", "add_v_proj"]
    return [
        *dense(f"{o}/norm1/linear", f"{t}.norm1.linear", layers=n),
        *dense(f"{o}/norm1_context/linear", f"{t}.norm1_context.linear", layers=n),
        *[r for p in qkv for r in dense(f"{o}/attn/{p}", f"{t}.attn.{p}", layers=n)],
        *norm(f"{o}/attn/norm_q", f"{t}.attn.norm_q", layers=n, bias=False),
        *norm(f"{o}/attn/norm_k", f"{t}.attn.norm_k", layers=n, bias=False),
        *[r for p in added for r in dense(f"{o}/attn_context/{p}", f"{t}.attn.{p}", layers=n)],
        *norm(f"{o}/attn_context/norm_added_q", f"{t}.attn.norm_added_q", layers=n, bias=False),
        *norm(f"{o}/attn_context/norm_added_k", f"{t}.attn.norm_added_k", layers=n, bias=False),
        *dense(f"{o}/to_out", f"{t}.attn.to_out.0", layers=n),
        *dense(f"{o}/to_add_out", f"{t}.attn.to_add_out", layers=n),
        *dense(f"{o}/ff/proj_in", f"{t}.ff.net.0.proj", layers=n),
        *dense(f"{o}/ff/proj_out", f"{t}.ff.net.2", layers=n),
        *dense(f"{o}/ff_context/proj_in", f"{t}.ff_context.net.0.proj", layers=n),
        *dense(f"{o}/ff_context/proj_out", f"{t}.ff_context.net.2", layers=n),
    ]


def _single_block(n: int) -> list[Rule]:
    o, t = "single_blocks", "single_transformer_blocks.{i}"
    return [
        *dense(f"{o}/norm/linear", f"{t}.norm.linear", layers=n),
        *dense(f"{o}/proj_mlp", f"{t}.proj_mlp", layers=n),
        *[
            r
            for p in ("to_q", "to_k", "to_v")
            for r in dense(f"{o}/attn/{p}", f"{t}.attn.{p}", layers=n)
        ],
        *norm(f"{o}/attn/norm_q", f"{t}.attn.norm_q", layers=n, bias=False),
        *norm(f"{o}/attn/norm_k", f"{t}.attn.norm_k", layers=n, bias=False),
        *dense(f"{o}/proj_out", f"{t}.proj_out", layers=n),
    ]


def transformer_rules(config: FluxTransformerConfig) -> list[Rule]:
    """The key table of `FluxTransformer` <-> `FluxTransformer2DModel` for `config`."""
    emb = "time_text_embed"
    rules = [
        *dense("x_embedder", "x_embedder"),
        *dense("context_embedder", "context_embedder"),
        *dense("timestep_embedder/linear_1", f"{emb}.timestep_embedder.linear_1"),
        *dense("timestep_embedder/linear_2", f"{emb}.timestep_embedder.linear_2"),
    ]
    if config.guidance_embeds:
        rules += [
            *dense("guidance_embedder/linear_1", f"{emb}.guidance_embedder.linear_1"),
            *dense("guidance_embedder/linear_2", f"{emb}.guidance_embedder.linear_2"),
        ]
    rules += [
        *dense("text_embedder/linear_1", f"{emb}.text_embedder.linear_1"),
        *dense("text_embedder/linear_2", f"{emb}.text_embedder.linear_2"),
    ]
    if config.num_layers:
        rules += _double_block(config.num_layers)
    if config.num_single_layers:
        rules += _single_block(config.num_single_layers)
    return rules + [*dense("norm_out/linear", "norm_out.linear"), *dense("proj_out", "proj_out")]


# --------------------------------------------------------------------------- VAE


def _resnet(ours: str, theirs: str, shortcut: bool) -> list[Rule]:
    rules = [
        *norm(f"{ours}/norm1", f"{theirs}.norm1"),
        *conv(f"{ours}/conv1", f"{theirs}.conv1"),
        *norm(f"{ours}/norm2", f"{theirs}.norm2"),
        *conv(f"{ours}/conv2", f"{theirs}.conv2"),
    ]
    return rules + (conv(f"{ours}/conv_shortcut", f"{theirs}.conv_shortcut") if shortcut else [])


def _mid_block(ours: str, theirs: str, attention: bool) -> list[Rule]:
    rules = _resnet(f"{ours}/resnets_0", f"{theirs}.resnets.0", False)
    if attention:
        a, ta = f"{ours}/attentions_0", f"{theirs}.attentions.0"
        rules += [
            *norm(f"{a}/group_norm", f"{ta}.group_norm"),
            *[r for p in ("to_q", "to_k", "to_v") for r in dense(f"{a}/{p}", f"{ta}.{p}")],
            *dense(f"{a}/to_out", f"{ta}.to_out.0"),
        ]
    return rules + _resnet(f"{ours}/resnets_1", f"{theirs}.resnets.1", False)


def vae_rules(config: FluxVAEConfig) -> list[Rule]:
    """The key table of `FluxVAE` <-> `AutoencoderKL` for `config`."""
    ch = config.block_out_channels
    rules = [*conv("encoder/conv_in", "encoder.conv_in")]
    for i, c in enumerate(ch):
        for j in range(config.layers_per_block):
            c_in = (ch[i - 1] if i else ch[0]) if j == 0 else c
            rules += _resnet(
                f"encoder/down_blocks_{i}_resnets_{j}",
                f"encoder.down_blocks.{i}.resnets.{j}",
                c_in != c,
            )
        if i < len(ch) - 1:
            rules += conv(
                f"encoder/down_blocks_{i}_downsample",
                f"encoder.down_blocks.{i}.downsamplers.0.conv",
            )
    rules += _mid_block("encoder/mid_block", "encoder.mid_block", config.mid_block_add_attention)
    rules += [
        *norm("encoder/conv_norm_out", "encoder.conv_norm_out"),
        *conv("encoder/conv_out", "encoder.conv_out"),
    ]
    if config.use_quant_conv:
        rules += conv("quant_conv", "quant_conv")
    if config.use_post_quant_conv:
        rules += conv("post_quant_conv", "post_quant_conv")

    up = list(reversed(ch))
    rules += conv("decoder/conv_in", "decoder.conv_in")
    rules += _mid_block("decoder/mid_block", "decoder.mid_block", config.mid_block_add_attention)
    for i, c in enumerate(up):
        for j in range(config.layers_per_block + 1):
            c_in = (up[i - 1] if i else up[0]) if j == 0 else c
            rules += _resnet(
                f"decoder/up_blocks_{i}_resnets_{j}",
                f"decoder.up_blocks.{i}.resnets.{j}",
                c_in != c,
            )
        if i < len(up) - 1:
            rules += conv(
                f"decoder/up_blocks_{i}_upsample", f"decoder.up_blocks.{i}.upsamplers.0.conv"
            )
    return rules + [
        *norm("decoder/conv_norm_out", "decoder.conv_norm_out"),
        *conv("decoder/conv_out", "decoder.conv_out"),
    ]


# --------------------------------------------------------------------------- loaders


def transformer_init_shapes(config: FluxTransformerConfig):
    """(module, abstract boxed params) of `FluxTransformer(config)`, nothing allocated."""
    module = FluxTransformer(config)
    f32 = lambda *s: jax.ShapeDtypeStruct(s, jnp.float32)
    args = (
        f32(1, 4, config.in_channels),
        f32(1, 2, config.joint_attention_dim),
        f32(1, config.pooled_projection_dim),
        f32(1),
        f32(4, 3),
        f32(2, 3),
        f32(1) if config.guidance_embeds else None,
    )
    return module, jax.eval_shape(lambda *a: module.init(jax.random.key(0), *a), *args)["params"]


def load_transformer(
    path: str | os.PathLike, dtype: Any = "float32", source: TensorSource | None = None, **runtime
) -> tuple[FluxTransformer, dict]:
    """Loads a Diffusers `transformer/` folder (config.json + safetensors, sharded or not).

    Args:
      path: the folder.
      dtype: parameter and activation dtype; None keeps the stored dtype (bit-exact).
      source: tensors to use instead of the folder's safetensors (e.g. an ArraySource).
      runtime: FluxTransformerConfig runtime fields (remat, attention, ...).

    Returns:
      (module, params) with params as NumPy arrays in the nested Flax layout.
    """
    return load_folder(path, FluxTransformerConfig, transformer_init_shapes, transformer_rules,
                       "FLUX.1 transformer", dtype, source, **runtime)  # fmt: skip


def load_vae(
    path: str | os.PathLike, dtype: Any = "float32", source: TensorSource | None = None
) -> tuple[FluxVAE, dict]:
    """Loads a Diffusers `vae/` folder of the FLUX VAE; see `load_transformer`."""
    return load_folder(path, FluxVAEConfig, vae_init_shapes, vae_rules, "FLUX.1 VAE", dtype, source)


def save_diffusers(
    kind: str, config: FluxTransformerConfig | FluxVAEConfig, params: dict, out_dir: str | os.PathLike,
    *, dtype: Any = None, max_shard_bytes: int = 10 * 2**30,
) -> int:  # fmt: skip
    """Writes `params` as a Diffusers folder (config.json + safetensors); returns tensor count.

    `kind` is "transformer" or "vae"; dtype None keeps each parameter's dtype.
    """
    rules = component_rules(_TABLES, "FLUX.1", kind, config)
    return save_folder(rules, config, params, out_dir, dtype=dtype, max_shard_bytes=max_shard_bytes)


_TABLES = {"transformer": transformer_rules, "vae": vae_rules}

# Diffusers class names that make a folder a FLUX.1 component.
FLUX_CLASSES = {
    "transformer": "FluxTransformer2DModel",
    "vae": "AutoencoderKL",
    "pipeline": "FluxPipeline",
}


def identify(path: str | os.PathLike) -> str:
    """ "pipeline", "transformer" or "vae" for a FLUX.1 folder; CheckpointFormatError otherwise.

    The message names what does not match (missing config, or the class found).
    """
    components = {k: FLUX_CLASSES[k] for k in ("transformer", "vae")}
    return identify_folder(path, "FLUX.1", (FLUX_CLASSES["pipeline"],), components)
