"""Model families (FLUX.1, Qwen-Image, WAN, text encoders) and the one loading entry point.

`load_pretrained(family, component, path)` is the seam tests and tools use for every
family: it dispatches through `LOADERS`, a table of lazily imported loader functions
derived from the family table (`ffjax.registry.FAMILIES`), plus the text and CLIP
encoders. Importing this package imports every family (so `ffjax.models.flux` etc. are
attributes) and registers each family's adapters in `ffjax.registry.MODELS`.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from ffjax import registry
from ffjax.models.adapter import AdapterBase, ModelAdapter

__all__ = ["LOADERS", "AdapterBase", "ModelAdapter", "load_pretrained"]

# family -> component -> "module:function" with signature (path, dtype=...) -> (module, params).
# Each family's convert.py provides its loaders.
LOADERS: dict[str, dict[str, str]] = {
    **{
        f.name: {c: f"{f.converter}:load_{c}" for c in f.components}
        for f in registry.FAMILIES.values()
    },
    "text": {c: f"ffjax.models.text:load_{c}" for c in ("clip_text", "t5", "umt5", "qwen2_5_vl")},
    "clip": {"model": "ffjax.models.clip.convert:load_clip_model"},
}


def load_pretrained(
    family: str, component: str, path: str | os.PathLike, dtype: Any = "float32"
) -> tuple[Any, Any]:
    """Loads one component of a Diffusers / transformers checkpoint folder.

    Args:
      family: e.g. "flux" (see `LOADERS`); a model name of the family ("flux1",
        "qwen-image", "wan2-t2v", ...) is taken too.
      component: e.g. "transformer", "vae".
      path: the component's folder (config.json + safetensors, sharded or not).
      dtype: parameter / activation dtype ("float32", "bfloat16"); None keeps the
        checkpoint's dtype.

    Returns:
      (module, params): a Flax linen module and its params (nested dict of arrays),
      ready for `module.apply({"params": params}, ...)`.
    """
    if family not in LOADERS and any(family in f.spellings for f in registry.FAMILIES.values()):
        family = registry.family_of(family).name
    if family not in LOADERS:
        raise ValueError(f"unknown model family {family!r}; known: {sorted(LOADERS)}")
    if component not in LOADERS[family]:
        raise ValueError(
            f"family {family!r} has no component {component!r}; known: {sorted(LOADERS[family])}"
        )
    module_name, fn = LOADERS[family][component].split(":")
    return getattr(importlib.import_module(module_name), fn)(path, dtype=dtype)


def _register_adapters() -> None:
    """Imports every family's package and registers its adapters in `registry.MODELS`
    under their model names (e.g. "flux1")."""
    for family in registry.FAMILIES.values():
        importlib.import_module(family.package)
        for model in family.models:
            registry.MODELS.register(model.name, registry.MODELS.get(model.adapter))


_register_adapters()
