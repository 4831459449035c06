"""Key tables between transformers text-encoder checkpoints and our params, and loaders.

Each table is read top to bottom like the checkpoint: one row per tensor (layers
stacked for `nn.scan` with `layers=N`), run by the strict engine in
`ffjax.models.weights`. Two things the engine does not know are handled here, both
explicitly:

* keys a checkpoint may carry that are not parameters of the encoder: CLIP's
  `position_ids` buffer (old saves) and T5's `encoder.embed_tokens.weight` (tied to
  `shared.weight`; checked for shape, then hidden from the strict table);
* the CLIP key prefix: transformers 5 saves `CLIPTextModel` without `text_model.`,
  older saves (and FLUX's `text_encoder/`) with it; the prefix is read from the keys.

The loaders also check `config.json` against the component, so a checkpoint of the
wrong model fails with a message naming both before any tensor is compared.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ffjax.models import weights as W
from ffjax.models.text.clip import CLIPTextConfig, CLIPTextModel
from ffjax.models.text.t5 import T5Config, T5Encoder
from ffjax.models.weights import LINEAR, Rule, dense, norm

# --------------------------------------------------------------------------- tables


def clip_rules(cfg: CLIPTextConfig, prefix: str = "") -> list[Rule]:
    """CLIPTextModel (prefix "" or "text_model.") [+ text_projection] <-> `CLIPTextModel`."""
    n, p, L = cfg.num_hidden_layers, prefix, f"{prefix}encoder.layers.{{i}}"
    rules = [
        Rule("token_embedding/embedding", f"{p}embeddings.token_embedding.weight"),
        Rule("position_embedding/embedding", f"{p}embeddings.position_embedding.weight"),
        *dense("layers/self_attn/q_proj", f"{L}.self_attn.q_proj", layers=n),
        *dense("layers/self_attn/k_proj", f"{L}.self_attn.k_proj", layers=n),
        *dense("layers/self_attn/v_proj", f"{L}.self_attn.v_proj", layers=n),
        *dense("layers/self_attn/out_proj", f"{L}.self_attn.out_proj", layers=n),
        *norm("layers/layer_norm1", f"{L}.layer_norm1", layers=n),
        *dense("layers/mlp/fc1", f"{L}.mlp.fc1", layers=n),
        *dense("layers/mlp/fc2", f"{L}.mlp.fc2", layers=n),
        *norm("layers/layer_norm2", f"{L}.layer_norm2", layers=n),
        *norm("final_layer_norm", f"{p}final_layer_norm"),
    ]
    if cfg.projection_dim is not None:
        rules.append(Rule("text_projection/kernel", "text_projection.weight", LINEAR))
    return rules


def t5_rules(cfg: T5Config) -> list[Rule]:
    """T5EncoderModel / UMT5EncoderModel <-> `T5Encoder`."""
    n, B = cfg.num_layers, "encoder.block.{i}.layer"
    bias_key = "SelfAttention.relative_attention_bias.weight"
    if cfg.bias_per_layer:  # UMT5: a table in every block
        bias = [
            Rule(
                "block/SelfAttention/relative_attention_bias/embedding",
                f"{B}.0.{bias_key}",
                layers=n,
            )
        ]
    else:  # T5: block 0 owns the shared table
        bias = [Rule("relative_attention_bias/embedding", f"encoder.block.0.layer.0.{bias_key}")]
    ff = ["wi_0", "wi_1", "wo"] if cfg.is_gated else ["wi", "wo"]
    return [
        Rule("shared/embedding", "shared.weight"),
        *bias,
        *[
            r
            for m in "qkvo"
            for r in dense(
                f"block/SelfAttention/{m}", f"{B}.0.SelfAttention.{m}", layers=n, bias=False
            )
        ],
        *norm("block/attention_norm", f"{B}.0.layer_norm", layers=n, bias=False),
        *[
            r
            for m in ff
            for r in dense(
                f"block/DenseReluDense/{m}", f"{B}.1.DenseReluDense.{m}", layers=n, bias=False
            )
        ],
        *norm("block/ff_norm", f"{B}.1.layer_norm", layers=n, bias=False),
        *norm("final_layer_norm", "encoder.final_layer_norm", bias=False),
    ]


# --------------------------------------------------------------------------- sources


class HiddenKeys:
    """A TensorSource that hides named non-parameter keys (buffers, tied copies) of another."""

    def __init__(self, source: W.TensorSource, hidden: Iterable[str]):
        self._source, self._hidden = source, set(hidden)

    def keys(self) -> list[str]:
        return [k for k in self._source.keys() if k not in self._hidden]

    def shape(self, key: str) -> W.Shape:
        return self._source.shape(key)

    def read(self, key: str) -> np.ndarray:
        return self._source.read(key)


def clip_prefix(keys: Iterable[str]) -> str:
    """ "text_model." if the checkpoint nests the text model under it, else ""."""
    return "text_model." if any(k.startswith("text_model.") for k in keys) else ""


def clip_source(source: W.TensorSource) -> tuple[W.TensorSource, str]:
    """(source without the `position_ids` buffer, key prefix) of a CLIP text checkpoint."""
    prefix = clip_prefix(source.keys())
    return HiddenKeys(source, [f"{prefix}embeddings.position_ids"]), prefix


def t5_source(source: W.TensorSource) -> W.TensorSource:
    """The source without `encoder.embed_tokens.weight`, a tied copy of `shared.weight`."""
    tied, keys = "encoder.embed_tokens.weight", set(source.keys())
    if (
        tied in keys
        and "shared.weight" in keys
        and tuple(source.shape(tied)) != tuple(source.shape("shared.weight"))
    ):
        raise W.ConversionError(
            f"tied tensor {tied!r} has shape {tuple(source.shape(tied))} but 'shared.weight' has"
            f" {tuple(source.shape('shared.weight'))}"
        )
    return HiddenKeys(source, [tied] if "shared.weight" in keys else [])


# --------------------------------------------------------------------------- loading

# component -> (accepted config.json model_type values, human name)
MODEL_TYPES: dict[str, tuple[tuple[str, ...], str]] = {
    "clip_text": (("clip_text_model",), "a CLIP text encoder (CLIPTextModel[WithProjection])"),
    "t5": (("t5",), "a T5 encoder (T5EncoderModel)"),
    "umt5": (("umt5",), "a UMT5 encoder (UMT5EncoderModel)"),
    "qwen2_5_vl": (("qwen2_5_vl",), "a Qwen2.5-VL model (Qwen2_5_VLForConditionalGeneration)"),
}


def read_config(path: str | os.PathLike, component: str) -> dict[str, Any]:
    """`config.json` of a transformers checkpoint folder, checked against `component`.

    Raises:
      FileNotFoundError if there is no config.json; CheckpointFormatError if its
      model_type belongs to another model.
    """
    file = os.path.join(os.fspath(path), "config.json")
    if not os.path.isfile(file):
        raise FileNotFoundError(
            f"{path}: no config.json; expected a transformers checkpoint folder for {component!r}"
        )
    with open(file) as f:
        cfg = json.load(f)
    allowed, what = MODEL_TYPES[component]
    got = cfg.get("model_type")
    if got not in allowed:
        raise W.CheckpointFormatError(
            f"{path}: config.json says model_type {got!r} (architectures {cfg.get('architectures')}), but"
            f" component {component!r} expects {what}, model_type one of {list(allowed)}"
        )
    return cfg


def _expected(module, length: int = 1) -> dict[str, W.Shape]:
    ids = jax.ShapeDtypeStruct((1, length), jnp.int32)
    return W.flat_shapes(jax.eval_shape(module.init, jax.random.key(0), ids)["params"])


def convert_clip(
    source: W.TensorSource,
    cfg: CLIPTextConfig,
    *,
    dtype: Any = None,
    what: str = "CLIP checkpoint",
    place: Placer = None,
) -> dict[str, Any]:
    """A CLIP text checkpoint's tensors -> params of `CLIPTextModel(cfg)` (strict).

    `place(path, array)` puts each parameter where it goes (`placer`); default: the
    default device."""
    source, prefix = clip_source(source)
    expected = _expected(CLIPTextModel(cfg))
    return W.load_params(
        clip_rules(cfg, prefix), source, expected, dtype=dtype, place=place or _place, what=what
    )


def convert_t5(
    source: W.TensorSource,
    cfg: T5Config,
    *,
    dtype: Any = None,
    what: str = "T5 checkpoint",
    place: Placer = None,
) -> dict[str, Any]:
    """A T5 / UMT5 encoder checkpoint's tensors -> params of `T5Encoder(cfg)` (strict);
    `place` as for `convert_clip`."""
    expected = _expected(T5Encoder(cfg))
    return W.load_params(
        t5_rules(cfg), t5_source(source), expected, dtype=dtype, place=place or _place, what=what
    )


Placer = Callable[[str, np.ndarray], Any] | None


def _place(path: str, a: np.ndarray) -> jax.Array:
    return jnp.asarray(a)


def _on_host(path: str, a: np.ndarray) -> np.ndarray:
    return a


def placer(module: Any, mesh: jax.sharding.Mesh | None = None, host: bool = False) -> Placer:
    """Where a loader puts each tensor of `module`'s params: with `host`, nowhere (NumPy,
    for placing later in one step); on `mesh`, straight onto its sharding by the
    module's logical axes (`ffjax.models.text.placement`); else on the default device."""
    if host and mesh is not None:
        raise ValueError("a text encoder loads onto a mesh or onto the host, not both")
    if host:
        return _on_host
    if mesh is not None:
        from ffjax.models.text.placement import flat_placer

        return flat_placer(module, mesh)
    return _place


def _dtype(dtype: Any, source: W.SafetensorsCheckpoint) -> np.dtype:
    # None keeps the checkpoint's dtype (that of its first floating tensor).
    if dtype is not None:
        return jnp.dtype(dtype)
    stored = [
        source.dtype(k)
        for k in source.keys()
        if np.issubdtype(source.dtype(k), np.inexact) or source.dtype(k) == jnp.bfloat16
    ]
    return jnp.dtype(stored[0] if stored else np.float32)


def load_clip(
    path: str | os.PathLike,
    dtype: Any = "float32",
    *,
    mesh: jax.sharding.Mesh | None = None,
    host: bool = False,
) -> tuple[CLIPTextModel, dict[str, Any]]:
    """(module, params) from a CLIPTextModel / CLIPTextModelWithProjection folder; the
    params on the default device, sharded on `mesh`, or NumPy with `host` (`placer`)."""
    cfg_dict = read_config(path, "clip_text")
    source = W.SafetensorsCheckpoint.open(path, prefix="model")
    with_proj = "CLIPTextModelWithProjection" in (cfg_dict.get("architectures") or []) or (
        "text_projection.weight" in source.keys()
    )
    cfg = CLIPTextConfig.from_dict(cfg_dict, with_projection=with_proj)
    dt = _dtype(dtype, source)
    module = CLIPTextModel(cfg, dtype=dt, param_dtype=dt)
    place = placer(module, mesh, host)
    return module, convert_clip(source, cfg, dtype=dt, what=os.fspath(path), place=place)


def load_t5(
    path: str | os.PathLike,
    dtype: Any = "float32",
    *,
    umt5: bool = False,
    mesh: jax.sharding.Mesh | None = None,
    host: bool = False,
) -> tuple[T5Encoder, dict[str, Any]]:
    """(module, params) from a T5EncoderModel (or, with umt5, UMT5EncoderModel) folder;
    `mesh` / `host` as for `load_clip`."""
    cfg = T5Config.from_dict(read_config(path, "umt5" if umt5 else "t5"), umt5=umt5)
    source = W.SafetensorsCheckpoint.open(path, prefix="model")
    dt = _dtype(dtype, source)
    module = T5Encoder(cfg, dtype=dt, param_dtype=dt)
    place = placer(module, mesh, host)
    return module, convert_t5(source, cfg, dtype=dt, what=os.fspath(path), place=place)


def load_umt5(
    path: str | os.PathLike, dtype: Any = "float32", **where: Any
) -> tuple[T5Encoder, dict[str, Any]]:
    """(module, params) from a UMT5EncoderModel folder (WAN's text encoder); `where`:
    `mesh` / `host` as for `load_clip`."""
    return load_t5(path, dtype, umt5=True, **where)


def module_from_config(component: str, path: str | os.PathLike, dtype: Any = "float32") -> Any:
    """The module `load_pretrained(component, path, dtype)` would build, from config.json
    alone (CLIP's projection is taken from `architectures`; dtype None: config.json's)."""
    cfg_dict = read_config(path, component)
    dt = jnp.dtype(dtype or cfg_dict.get("dtype") or "float32")
    if component == "clip_text":
        with_proj = "CLIPTextModelWithProjection" in (cfg_dict.get("architectures") or [])
        cfg = CLIPTextConfig.from_dict(cfg_dict, with_projection=with_proj)
        return CLIPTextModel(cfg, dtype=dt, param_dtype=dt)
    if component in ("t5", "umt5"):
        cfg = T5Config.from_dict(cfg_dict, umt5=component == "umt5")
        return T5Encoder(cfg, dtype=dt, param_dtype=dt)
    from ffjax.models.text.qwen2_5_vl import Qwen2_5_VLTextConfig, Qwen2_5_VLTextEncoder

    return Qwen2_5_VLTextEncoder(Qwen2_5_VLTextConfig.from_dict(cfg_dict), dtype=dt, param_dtype=dt)


def abstract_clip(path: str | os.PathLike, dtype: Any = "float32") -> dict[str, Any]:
    """The params `load_clip(path, dtype)` would return, as `jax.ShapeDtypeStruct`s, from
    config.json alone (nothing is read or allocated)."""
    module = module_from_config("clip_text", path, dtype)
    return _abstract(module, module.param_dtype)


def abstract_t5(
    path: str | os.PathLike, dtype: Any = "float32", *, umt5: bool = False
) -> dict[str, Any]:
    """The params `load_t5(path, dtype)` would return, as `jax.ShapeDtypeStruct`s, from
    config.json alone."""
    module = module_from_config("umt5" if umt5 else "t5", path, dtype)
    return _abstract(module, module.param_dtype)


def logical_specs(component: str, path: str | os.PathLike, dtype: Any = "float32") -> Any:
    """Logical `PartitionSpec`s (ffjax.parallel.axes names) of the params of
    `module_from_config(...)`, the tree `abstract_clip` / `abstract_t5` return: with
    `ffjax.parallel.sharding.logical_shardings` they give the shardings `place` uses."""
    from ffjax.models.text.placement import abstract_params

    return nn.get_partition_spec(abstract_params(module_from_config(component, path, dtype)))


def _abstract(module, dtype) -> dict[str, Any]:
    ids = jax.ShapeDtypeStruct((1, 1), jnp.int32)
    params = nn.unbox(jax.eval_shape(module.init, jax.random.key(0), ids)["params"])
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, dtype), params)


def export_clip(
    cfg: CLIPTextConfig, params: Mapping[str, Any], prefix: str = ""
) -> dict[str, np.ndarray]:
    """Our CLIP params -> {transformers key: array} (inverse of `convert_clip`)."""
    return W.export_params(clip_rules(cfg, prefix), params)


def export_t5(cfg: T5Config, params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Our T5 / UMT5 params -> {transformers key: array} (inverse of `convert_t5`)."""
    return W.export_params(t5_rules(cfg), params)


__all__: Sequence[str] = [
    "clip_rules",
    "t5_rules",
    "convert_clip",
    "convert_t5",
    "load_clip",
    "load_t5",
    "load_umt5",
    "export_clip",
    "export_t5",
    "read_config",
    "module_from_config",
    "logical_specs",
    "placer",
]
