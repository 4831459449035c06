"""Model families (FLUX.1, Qwen-Image, WAN, text encoders) and the one loading entry point.

`load_pretrained(family, component, path)` is the seam tests and tools use for every
family: it dispatches through `LOADERS`, a table of lazily imported loader functions,
so adding a family or component is one row here and importing one family never pulls
in another.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

# family -> component -> "module:function" with signature (path, dtype=...) -> (module, params).
# Each family's convert.py provides its loaders.
LOADERS: dict[str, dict[str, str]] = {
    "flux": {
        "transformer": "ffjax.models.flux.convert:load_transformer",
        "vae": "ffjax.models.flux.convert:load_vae",
    },
    "qwen_image": {
        "transformer": "ffjax.models.qwen_image.convert:load_transformer",
        "vae": "ffjax.models.qwen_image.convert:load_vae",
    },
    "wan": {
        "transformer": "ffjax.models.wan.convert:load_transformer",
        "vae": "ffjax.models.wan.convert:load_vae",
    },
    "text": {c: f"ffjax.models.text:load_{c}" for c in ("clip_text", "t5", "umt5", "qwen2_5_vl")},
    "clip": {"model": "ffjax.models.clip.convert:load_clip_model"},
}


def load_pretrained(
    family: str, component: str, path: str | os.PathLike, dtype: Any = "float32"
) -> tuple[Any, Any]:
    """Loads one component of a Diffusers / transformers checkpoint folder.

    Args:
      family: e.g. "flux" (see `LOADERS`).
      component: e.g. "transformer", "vae".
      path: the component's folder (config.json + safetensors, sharded or not).
      dtype: parameter / activation dtype ("float32", "bfloat16"); None keeps the
        checkpoint's dtype.

    Returns:
      (module, params): a Flax linen module and its params (nested dict of arrays),
      ready for `module.apply({"params": params}, ...)`.
    """
    if family not in LOADERS:
        raise ValueError(f"unknown model family {family!r}; known: {sorted(LOADERS)}")
    if component not in LOADERS[family]:
        raise ValueError(
            f"family {family!r} has no component {component!r}; known: {sorted(LOADERS[family])}"
        )
    module_name, fn = LOADERS[family][component].split(":")
    return getattr(importlib.import_module(module_name), fn)(path, dtype=dtype)


def _register_adapters() -> None:
    # Importing a family registers its adapter in ffjax.registry.MODELS (e.g. "flux1").
    importlib.import_module("ffjax.models.flux")
    importlib.import_module("ffjax.models.qwen_image")
    importlib.import_module("ffjax.models.wan")


_register_adapters()
