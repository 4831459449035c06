"""Key tables between transformers `CLIPModel` checkpoints and our `CLIPModel`, and loaders.

The text half is the text tower's own table (`ffjax.models.text.convert.clip_rules`,
prefix "text_model.", whose `text_projection.weight` row is already the top-level key
`CLIPModel` uses), re-rooted under our `text_model/`. The vision half is the table
below, one row per tensor, layers stacked for `nn.scan`. The strict engine
(`ffjax.models.weights`) runs both: a missing, unexpected or mis-shaped tensor is an
error naming the key and both shapes. Old saves carry `*.embeddings.position_ids`
buffers; they are not parameters and are hidden explicitly.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ffjax.models import weights as W
from ffjax.models.clip.model import CLIPConfig, CLIPModel, CLIPVisionConfig, CLIPVisionModel
from ffjax.models.text import convert as text_convert
from ffjax.models.weights import CONV2D, LINEAR, Rule, dense, norm

_BUFFERS = ("text_model.embeddings.position_ids", "vision_model.embeddings.position_ids")


def vision_rules(cfg: CLIPVisionConfig, prefix: str = "vision_model.") -> list[Rule]:
    """CLIPVisionModel[WithProjection] tensors (under `prefix`) <-> `CLIPVisionModel`."""
    n, p, L = cfg.num_hidden_layers, prefix, f"{prefix}encoder.layers.{{i}}"
    rules = [
        Rule("class_embedding", f"{p}embeddings.class_embedding"),
        Rule("patch_embedding/kernel", f"{p}embeddings.patch_embedding.weight", CONV2D),
        Rule("position_embedding/embedding", f"{p}embeddings.position_embedding.weight"),
        *norm("pre_layrnorm", f"{p}pre_layrnorm"),  # sic: transformers' spelling
        *dense("layers/self_attn/q_proj", f"{L}.self_attn.q_proj", layers=n),
        *dense("layers/self_attn/k_proj", f"{L}.self_attn.k_proj", layers=n),
        *dense("layers/self_attn/v_proj", f"{L}.self_attn.v_proj", layers=n),
        *dense("layers/self_attn/out_proj", f"{L}.self_attn.out_proj", layers=n),
        *norm("layers/layer_norm1", f"{L}.layer_norm1", layers=n),
        *dense("layers/mlp/fc1", f"{L}.mlp.fc1", layers=n),
        *dense("layers/mlp/fc2", f"{L}.mlp.fc2", layers=n),
        *norm("layers/layer_norm2", f"{L}.layer_norm2", layers=n),
        *norm("post_layernorm", f"{p}post_layernorm"),
    ]
    if cfg.projection_dim is not None:
        rules.append(Rule("visual_projection/kernel", "visual_projection.weight", LINEAR))
    return rules


def _under(root: str, rules: Sequence[Rule]) -> list[Rule]:
    return [dataclasses.replace(r, ours=f"{root}/{r.ours}") for r in rules]


def clip_model_rules(cfg: CLIPConfig) -> list[Rule]:
    """transformers `CLIPModel` <-> our `CLIPModel` (text tower, vision tower, logit_scale)."""
    return [
        *_under("text_model", text_convert.clip_rules(cfg.text, "text_model.")),
        *_under("vision_model", vision_rules(cfg.vision)),
        Rule("logit_scale", "logit_scale"),
    ]


def expected_shapes(module: CLIPModel) -> dict[str, W.Shape]:
    """{our param path: shape} of `module`, from an abstract init (no memory used)."""
    s = module.config.vision.image_size
    pixels = jax.ShapeDtypeStruct((1, s, s, module.config.vision.num_channels), jnp.float32)
    ids = jax.ShapeDtypeStruct((1, 1), jnp.int32)
    return W.flat_shapes(jax.eval_shape(module.init, jax.random.key(0), pixels, ids)["params"])


def convert_clip_model(
    source: W.TensorSource,
    cfg: CLIPConfig,
    *,
    dtype: Any = None,
    what: str = "CLIPModel checkpoint",
) -> dict[str, Any]:
    """A `CLIPModel` checkpoint's tensors -> params of `CLIPModel(cfg)` (strict).

    Args:
      source: the checkpoint's tensors (e.g. `SafetensorsCheckpoint.open(folder)`).
      cfg: the model config (`CLIPConfig.from_dict(config.json)`).
      dtype: cast every tensor to it; None keeps the stored dtypes.
      what: names the checkpoint in errors.

    Returns:
      The nested params dict for `CLIPModel(cfg).apply({"params": params}, ...)`.

    Raises:
      ConversionError naming every missing, unexpected and mis-shaped tensor.
    """
    source = text_convert.HiddenKeys(source, _BUFFERS)
    expected = expected_shapes(CLIPModel(cfg))
    return W.load_params(
        clip_model_rules(cfg), source, expected, dtype=dtype, place=_place, what=what
    )


def export_clip_model(cfg: CLIPConfig, params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Our `CLIPModel` params -> {transformers key: array} (inverse of `convert_clip_model`)."""
    return W.export_params(clip_model_rules(cfg), params)


def _place(path: str, a: np.ndarray) -> jax.Array:
    return jnp.asarray(a)


def read_clip_config(path: str | os.PathLike) -> dict[str, Any]:
    """`config.json` of a transformers `CLIPModel` folder (model_type "clip").

    Raises:
      FileNotFoundError without config.json; CheckpointFormatError for another model
      type (a bare CLIPTextModel / CLIPVisionModel, an open_clip folder, ...).
    """
    file = os.path.join(os.fspath(path), "config.json")
    if not os.path.isfile(file):
        raise FileNotFoundError(
            f"{path}: no config.json; expected a transformers CLIPModel folder"
            " (config.json + model.safetensors, as CLIPModel.save_pretrained writes)"
        )
    with open(file) as f:
        cfg = json.load(f)
    if cfg.get("model_type") != "clip":
        raise W.CheckpointFormatError(
            f"{path}: config.json says model_type {cfg.get('model_type')!r} (architectures"
            f" {cfg.get('architectures')}), expected 'clip' (a CLIPModel with both towers)"
        )
    return cfg


def load_clip_model(
    path: str | os.PathLike, dtype: Any = "float32"
) -> tuple[CLIPModel, dict[str, Any]]:
    """(module, params) from a transformers `CLIPModel` folder (config.json + safetensors).

    Args:
      path: the folder (e.g. a local copy of openai/clip-vit-large-patch14 or
        yuvalkirstain/PickScore_v1); shards are read lazily.
      dtype: parameter and activation dtype; None keeps the checkpoint's.
    """
    cfg = CLIPConfig.from_dict(read_clip_config(path))
    source = open_tensors(path)
    if isinstance(source, W.SafetensorsCheckpoint):
        dt = text_convert._dtype(dtype, source)  # the text loaders' rule for None
    else:  # a torch file, read as float32
        dt = jnp.dtype(dtype or "float32")
    module = CLIPModel(cfg, dtype=dt, param_dtype=dt)
    return module, convert_clip_model(source, cfg, dtype=dt, what=os.fspath(path))


_VISION_TYPES = ("clip_vision_model", "clip")


def load_clip_vision(
    path: str | os.PathLike, dtype: Any = "float32"
) -> tuple[CLIPVisionModel, dict[str, Any]]:
    """(module, params) from a transformers `CLIPVisionModel` / `CLIPVisionModelWithProjection`
    folder (e.g. the `image_encoder/` of a Wan 2.1 I2V pipeline); strict like `load_clip_model`.

    The visual projection is part of the module exactly when config.json's architectures
    name `CLIPVisionModelWithProjection`.

    Raises:
      FileNotFoundError without config.json; CheckpointFormatError for another model type.
    """
    path = os.fspath(path)
    file = os.path.join(path, "config.json")
    if not os.path.isfile(file):
        raise FileNotFoundError(f"{path}: no config.json; expected a transformers CLIPVisionModel")
    with open(file) as f:
        d = json.load(f)
    if d.get("model_type") not in _VISION_TYPES:
        raise W.CheckpointFormatError(
            f"{path}: config.json says model_type {d.get('model_type')!r} (architectures"
            f" {d.get('architectures')}), expected 'clip_vision_model' (a CLIPVisionModel)"
        )
    with_projection = "CLIPVisionModelWithProjection" in (d.get("architectures") or ())
    proj = int(d.get("projection_dim", 512)) if with_projection else None
    cfg = CLIPVisionConfig.from_dict(d, projection_dim=proj)
    raw = open_tensors(path)
    # Hub folders nest the tower under "vision_model."; transformers 5 saves it bare.
    prefix = "vision_model." if any(k.startswith("vision_model.") for k in raw.keys()) else ""
    source = text_convert.HiddenKeys(raw, (*_BUFFERS, "embeddings.position_ids"))
    dt = jnp.dtype(dtype or "float32")
    module = CLIPVisionModel(cfg, dtype=dt, param_dtype=dt)
    s = cfg.image_size
    pixels = jax.ShapeDtypeStruct((1, s, s, cfg.num_channels), jnp.float32)
    expected = W.flat_shapes(jax.eval_shape(module.init, jax.random.key(0), pixels)["params"])
    params = W.load_params(
        vision_rules(cfg, prefix), source, expected, dtype=dt, place=_place, what=path
    )
    return module, params


def open_tensors(path: str | os.PathLike) -> W.TensorSource:
    """The tensors of a transformers folder: `model*.safetensors`, else `pytorch_model.bin`.

    Hub folders saved before safetensors (some CLIP reward checkpoints) hold only the
    torch pickle; it is read with `torch.load(weights_only=True)` (tensors only, no
    code), floating tensors as float32. transformers 5 itself writes safetensors only.
    """
    path = os.fspath(path)
    names = os.listdir(path)
    if any(n.startswith("model") and ".safetensors" in n for n in names):
        return W.SafetensorsCheckpoint.open(path, prefix="model")
    if "pytorch_model.bin" not in names:
        raise W.CheckpointFormatError(
            f"{path}: no model.safetensors (or shards + index), nor pytorch_model.bin"
        )
    import torch  # only for this legacy format

    state = torch.load(
        os.path.join(path, "pytorch_model.bin"), map_location="cpu", weights_only=True
    )
    return W.ArraySource(
        {k: (v.float() if v.is_floating_point() else v).numpy() for k, v in state.items()}
    )


__all__ = [
    "clip_model_rules",
    "convert_clip_model",
    "export_clip_model",
    "expected_shapes",
    "load_clip_model",
    "load_clip_vision",
    "open_tensors",
    "read_clip_config",
    "vision_rules",
]
