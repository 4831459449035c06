"""Qwen-Image checkpoints <-> ffjax params: the key tables, and loaders built on them.

Each table row is `Rule(ours, theirs, transform, layers)` (see `ffjax.models.weights`);
`dense` / `norm` expand to the kernel + bias rows of one layer. `layers=N` stacks
Diffusers' per-block tensors `transformer_blocks.{i}...` into our scanned `(N, ...)`
arrays. Read the table top to bottom next to Diffusers' `QwenImageTransformer2DModel`:
the order follows its forward pass. The VAE table is the WAN 2.1 one (`AutoencoderKLQwenImage`
has `AutoencoderKLWan`'s module tree).
"""

from __future__ import annotations

import json
import os
from typing import Any

from ffjax.models.qwen_image.config import (
    TRANSFORMER_CLASS,
    VAE_CLASS,
    QwenImageTransformerConfig,
    QwenImageVAEConfig,
    read_config,
)
from ffjax.models.qwen_image.transformer import QwenImageTransformer
from ffjax.models.qwen_image.transformer import init_shapes as transformer_init_shapes
from ffjax.models.qwen_image.vae import QwenImageVAE
from ffjax.models.qwen_image.vae import init_shapes as vae_init_shapes
from ffjax.models.wan.convert import vae_rules as wan_vae_rules
from ffjax.models.weights import (
    CheckpointFormatError,
    Rule,
    TensorSource,
    dense,
    dtype_overrides,
    export_params,
    flat_shapes,
    load_params,
    norm,
    open_diffusers,
    save_sharded,
)

WEIGHTS_PREFIX = "diffusion_pytorch_model"  # Diffusers' weight file name stem

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
    config = QwenImageTransformerConfig.from_diffusers(path, **dtype_overrides(dtype), **runtime)
    module, abstract = transformer_init_shapes(config)
    params = load_params(transformer_rules(config), open_diffusers(path, source), flat_shapes(abstract),
                         dtype=dtype, what=f"Qwen-Image transformer checkpoint {os.fspath(path)}")  # fmt: skip
    return module, params


def load_vae(
    path: str | os.PathLike, dtype: Any = "float32", source: TensorSource | None = None
) -> tuple[QwenImageVAE, dict]:
    """Loads a Diffusers Qwen-Image `vae/` folder (`AutoencoderKLQwenImage`); see `load_transformer`."""
    config = QwenImageVAEConfig.from_diffusers(path, **dtype_overrides(dtype))
    module, abstract = vae_init_shapes(config)
    params = load_params(vae_rules(config), open_diffusers(path, source), flat_shapes(abstract), dtype=dtype,
                         what=f"Qwen-Image VAE checkpoint {os.fspath(path)}")  # fmt: skip
    return module, params


def _rules(kind: str, config) -> list[Rule]:
    if kind == "transformer":
        return transformer_rules(config)
    if kind == "vae":
        return vae_rules(config)
    raise ValueError(f"unknown Qwen-Image component {kind!r}; allowed: 'transformer', 'vae'")


def save_diffusers(
    kind: str, config: QwenImageTransformerConfig | QwenImageVAEConfig, params: dict,
    out_dir: str | os.PathLike, *, dtype: Any = None, max_shard_bytes: int = 10 * 2**30,
) -> int:  # fmt: skip
    """Writes `params` as a Diffusers folder (config.json + safetensors); returns tensor count.

    `kind` is "transformer" or "vae"; dtype None keeps each parameter's dtype.
    """
    tensors = export_params(_rules(kind, config), params, dtype=dtype)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config.to_diffusers(), f, indent=2)
    save_sharded(out_dir, tensors, WEIGHTS_PREFIX, max_shard_bytes)
    return len(tensors)


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
    path = os.fspath(path)
    if os.path.exists(os.path.join(path, "model_index.json")):
        with open(os.path.join(path, "model_index.json")) as f:
            name = json.load(f).get("_class_name")
        if name != QWEN_IMAGE_CLASSES["pipeline"]:
            raise CheckpointFormatError(
                f"{path}: not a Qwen-Image checkpoint: model_index.json _class_name is {name!r},"
                " expected 'QwenImagePipeline'"
            )
        return "pipeline"
    if not os.path.exists(os.path.join(path, "config.json")):
        raise CheckpointFormatError(
            f"{path}: not a Qwen-Image checkpoint: no model_index.json or config.json"
        )
    name = read_config(path).get("_class_name")
    for kind in ("transformer", "vae"):
        if name == QWEN_IMAGE_CLASSES[kind]:
            return kind
    raise CheckpointFormatError(
        f"{path}: not a Qwen-Image checkpoint: config.json _class_name is {name!r}, expected"
        f" {TRANSFORMER_CLASS!r} or {VAE_CLASS!r}"
    )
