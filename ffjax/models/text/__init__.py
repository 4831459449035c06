"""JAX text encoders: CLIP text, T5, UMT5 and the Qwen2.5-VL language model.

Entry points:
  load_pretrained(component, path, dtype) -> (module, params) for components
    "clip_text", "t5", "umt5", "qwen2_5_vl" (also reachable as
    `ffjax.models.load_pretrained("text", component, path)`);
  call_like_transformers(component, module, params, input_ids=..., attention_mask=...)
    -> {transformers output name: NumPy array}, the parity-test seam.

Prompt tokenization and pipeline-exact `encode_prompts` live in `tokenize.py` /
`encode.py`; sharding encoders on a mesh in `placement.py`; this package imports
nothing heavy until a component is used.
"""

from __future__ import annotations

import functools
import importlib
import os
from typing import Any

import jax
import numpy as np

# component -> "module:function" taking (path, dtype) -> (module, params).
_LOADERS: dict[str, str] = {
    "clip_text": "ffjax.models.text.convert:load_clip",
    "t5": "ffjax.models.text.convert:load_t5",
    "umt5": "ffjax.models.text.convert:load_umt5",
    "qwen2_5_vl": "ffjax.models.text.qwen2_5_vl:load_qwen2_5_vl",
}
COMPONENTS = tuple(_LOADERS)


def load_pretrained(
    component: str, path: str | os.PathLike, dtype: Any = "float32", **where: Any
) -> tuple[Any, Any]:
    """Loads a transformers text-encoder folder (config.json + safetensors, sharded or not).

    Args:
      component: one of `COMPONENTS`.
      path: the checkpoint folder, e.g. `<pipeline>/text_encoder_2`.
      dtype: parameter and activation dtype ("float32", "bfloat16"); None keeps the
        checkpoint's stored dtype.
      **where: `mesh=` a Mesh to read each tensor straight onto its shard (by the
        module's logical axes, `placement.py`), or `host=True` to keep NumPy arrays;
        default: the default device.

    Returns:
      (module, params) for `module.apply({"params": params}, input_ids, attention_mask)`.

    Raises:
      ValueError for an unknown component; FileNotFoundError / CheckpointFormatError /
      ConversionError (from `ffjax.models.weights`) naming what is wrong with the folder.
    """
    if component not in _LOADERS:
        raise ValueError(f"unknown text component {component!r}; known: {list(COMPONENTS)}")
    module_name, fn = _LOADERS[component].split(":")
    return getattr(importlib.import_module(module_name), fn)(path, dtype=dtype, **where)


def load_clip_text(path: str | os.PathLike, dtype: Any = "float32") -> tuple[Any, Any]:
    """`load_pretrained("clip_text", ...)` (the form `ffjax.models.LOADERS` rows name)."""
    return load_pretrained("clip_text", path, dtype)


def load_t5(path: str | os.PathLike, dtype: Any = "float32") -> tuple[Any, Any]:
    """`load_pretrained("t5", ...)`."""
    return load_pretrained("t5", path, dtype)


def load_umt5(path: str | os.PathLike, dtype: Any = "float32") -> tuple[Any, Any]:
    """`load_pretrained("umt5", ...)`."""
    return load_pretrained("umt5", path, dtype)


def load_qwen2_5_vl(path: str | os.PathLike, dtype: Any = "float32") -> tuple[Any, Any]:
    """`load_pretrained("qwen2_5_vl", ...)`."""
    return load_pretrained("qwen2_5_vl", path, dtype)


@functools.lru_cache(maxsize=32)
def _jitted(module) -> Any:
    # One compiled apply per module (modules are frozen, hashable dataclasses).
    return jax.jit(lambda params, ids, mask: module.apply({"params": params}, ids, mask))


def call_like_transformers(
    component: str, module: Any, params: Any, *, input_ids: Any, attention_mask: Any = None
) -> dict[str, np.ndarray]:
    """Runs an encoder and names its outputs as the transformers model does.

    Args:
      component: one of `COMPONENTS`.
      module, params: from `load_pretrained`.
      input_ids: int[B, L] (NumPy, torch-converted or jax).
      attention_mask: optional int[B, L], 1 = token.

    Returns:
      NumPy arrays: CLIPTextModel {"last_hidden_state", "pooler_output"};
      CLIPTextModelWithProjection {"last_hidden_state", "text_embeds"}; T5 / UMT5
      {"last_hidden_state"}; Qwen2.5-VL {"last_hidden_state"} of the language model.
    """
    if component not in _LOADERS:
        raise ValueError(f"unknown text component {component!r}; known: {list(COMPONENTS)}")
    ids = np.asarray(input_ids, np.int32)
    mask = None if attention_mask is None else np.asarray(attention_mask, np.int32)
    out = {k: np.asarray(v) for k, v in _jitted(module)(params, ids, mask).items()}
    if "text_embeds" in out:  # CLIPTextModelWithProjection returns no pooler_output
        out.pop("pooler_output")
    return out


__all__ = [
    "COMPONENTS",
    "call_like_transformers",
    "load_pretrained",
    "load_clip_text",
    "load_t5",
    "load_umt5",
    "load_qwen2_5_vl",
]
