"""Qwen-Image checkpoints <-> ffjax params: the key tables, and loaders built on them.

Each table row is `Rule(ours, theirs, transform, layers)` (see `ffjax.models.weights`);
`dense` / `norm` expand to the kernel + bias rows of one layer. `layers=N` stacks
Diffusers' per-block tensors `transformer_blocks.{i}...` into our scanned `(N, ...)`
arrays. Read the table top to bottom next to Diffusers' `QwenImageTransformer2DModel`:
the order follows its forward pass. The VAE table is the WAN 2.1 one (`AutoencoderKLQwenImage`
has `AutoencoderKLWan`'s module tree).
"""

from __future__ import annotations

import os
from typing import Any

from ffjax.models.qwen_image.config import (
    TRANSFORMER_CLASS,
    VAE_CLASS,
    QwenImageTransformerConfig,
    QwenImageVAEConfig,
)
from ffjax.models.qwen_image.transformer import QwenImageTransformer
from ffjax.models.qwen_image.transformer import init_shapes as transformer_init_shapes
from ffjax.models.qwen_image.vae import QwenImageVAE
from ffjax.models.qwen_image.vae import init_shapes as vae_init_shapes
from ffjax.models.wan.convert import vae_rules as wan_vae_rules
from ffjax.models.weights import (
    DIFFUSERS_WEIGHTS,
    Rule,
    TensorSource,
    component_rules,
    dense,
    identify_folder,
    load_folder,
    norm,
    save_folder,
)

WEIGHTS_PREFIX = DIFFUSERS_WEIGHTS  # Diffusers' weight file name stem (ffjax.convert reads it)

# --------------------------------------------------------------------------- transformer


def _block(n: int) -> list[Rule]:
    o, t = "transformer_blocks", "transformer_blocks.{i}"
    a, ta = f"{o}/attn", f"{t}.attn"
    rules = [*dense(f"{o}/img_mod", f"{t}.img_mod.1", layers=n),  # Sequential(SiLU, Linear)
             *dense(f"{o}/txt_mod", f"{t}.txt_mod.1", layers=n)]  # fmt: skip
    for p in ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj"):
        rules += dense(f"{a}/{p}", f"{ta}.{p}", layers=n)
    for p in ("norm_q", "norm_k", "norm_added_q", "norm_added_k"):
        rules += norm(f"{a}/{p}", f"{ta}.{p}", layers=n, bias=False)
    rules += [*dense(f"{a}/to_out", f"{ta}.to_out.0", layers=n),
              *dense(f"{a}/to_add_out", f"{ta}.to_add_out", layers=n)]  # fmt: skip
    for s in ("img_mlp", "txt_mlp"):
        rules += [*dense(f"{o}/{s}/proj_in", f"{t}.{s}.net.0.proj", layers=n),
                  *dense(f"{o}/{s}/proj_out", f"{t}.{s}.net.2", layers=n)]  # fmt: skip
    return rules


def transformer_rules(config: QwenImageTransformerConfig) -> list[Rule]:
    """The key table of `QwenImageTransformer` <-> `QwenImageTransformer2DModel` for `config`."""
    emb = "time_text_embed.timestep_embedder"
    rules = [
        *dense("img_in", "img_in"),
        *norm("txt_norm", "txt_norm", bias=False),
        *dense("txt_in", "txt_in"),
        *dense("timestep_embedder/linear_1", f"{emb}.linear_1"),
        *dense("timestep_embedder/linear_2", f"{emb}.linear_2"),
    ]
    if config.num_layers:
        rules += _block(config.num_layers)
    return rules + [*dense("norm_out", "norm_out.linear"), *dense("proj_out", "proj_out")]


# --------------------------------------------------------------------------- VAE


def vae_rules(config: QwenImageVAEConfig) -> list[Rule]:
    """The key table of `QwenImageVAE` <-> `AutoencoderKLQwenImage` for `config`.

    Diffusers' `AutoencoderKLQwenImage` has `AutoencoderKLWan`'s 2.1 module tree (one flat
    list of encoder down blocks, `up_blocks.{i}.upsamplers.0`), so this is the WAN table.
    """
    return wan_vae_rules(config)


# --------------------------------------------------------------------------- loaders


def load_transformer(
    path: str | os.PathLike, dtype: Any = "float32", source: TensorSource | None = None, **runtime
) -> tuple[QwenImageTransformer, dict]:
    """Loads a Diffusers Qwen-Image `transformer/` folder (config.json + safetensors, sharded or not).

    Args:
      path: the folder.
      dtype: parameter and activation dtype; None keeps the stored dtype (bit-exact).
      source: tensors to use instead of the folder's safetensors (e.g. an ArraySource).
      runtime: QwenImageTransformerConfig runtime fields (remat, attention, ...).

    Returns:
      (module, params) with params as NumPy arrays in the nested Flax layout.

    Raises:
      ConfigError for a folder of another model (e.g. a FLUX transformer) or an
      unsupported config; ConversionError naming every missing, unexpected or
      mis-shaped tensor.
    """
    return load_folder(path, QwenImageTransformerConfig, transformer_init_shapes,
                       transformer_rules, "Qwen-Image transformer", dtype, source, **runtime)  # fmt: skip


def load_vae(
    path: str | os.PathLike, dtype: Any = "float32", source: TensorSource | None = None
) -> tuple[QwenImageVAE, dict]:
    """Loads a Diffusers Qwen-Image `vae/` folder (`AutoencoderKLQwenImage`); see `load_transformer`."""
    return load_folder(path, QwenImageVAEConfig, vae_init_shapes, vae_rules, "Qwen-Image VAE",
                       dtype, source)  # fmt: skip


def save_diffusers(
    kind: str, config: QwenImageTransformerConfig | QwenImageVAEConfig, params: dict,
    out_dir: str | os.PathLike, *, dtype: Any = None, max_shard_bytes: int = 10 * 2**30,
) -> int:  # fmt: skip
    """Writes `params` as a Diffusers folder (config.json + safetensors); returns tensor count.

    `kind` is "transformer" or "vae"; dtype None keeps each parameter's dtype.
    """
    rules = component_rules(_TABLES, "Qwen-Image", kind, config)
    return save_folder(rules, config, params, out_dir, dtype=dtype, max_shard_bytes=max_shard_bytes)


_TABLES = {"transformer": transformer_rules, "vae": vae_rules}

# Diffusers class names that make a folder a Qwen-Image component.
QWEN_IMAGE_CLASSES = {
    "transformer": TRANSFORMER_CLASS,
    "vae": VAE_CLASS,
    "pipeline": "QwenImagePipeline",
}


def identify(path: str | os.PathLike) -> str:
    """ "pipeline", "transformer" or "vae" for a Qwen-Image folder; CheckpointFormatError otherwise.

    The message names what does not match (missing config, or the class found).
    """
    components = {k: QWEN_IMAGE_CLASSES[k] for k in ("transformer", "vae")}
    return identify_folder(path, "Qwen-Image", (QWEN_IMAGE_CLASSES["pipeline"],), components)
