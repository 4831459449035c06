"""WAN 2.1 / 2.2 (Wan team 2025) video generators: transformer, VAEs, configs,
converters and the `wan2-t2v` / `wan2-i2v` adapters (`adapter.py`).

`call_like_diffusers` is the parity-test seam: it runs our modules with the arguments
and channels-first 5-D layouts of the Diffusers classes (NumPy in, NumPy out).
"""

from __future__ import annotations

from typing import Any

import numpy as np

# ---------------------------------------------------------------- transformer section
# (seam helpers for WanTransformer3DModel live here)

# ---------------------------------------------------------------- vae section
# (seam helpers for AutoencoderKLWan live here)

# ---------------------------------------------------------------- dispatch


def call_like_diffusers(kind: str, module: Any, params: Any, **kwargs) -> np.ndarray:
    """Runs an ffjax WAN module as the corresponding Diffusers call would.

    kinds: "transformer" (`WanTransformer3DModel.forward` keyword args), "vae_encode"
    (`AutoencoderKLWan.encode`'s `x`), "vae_decode" (`AutoencoderKLWan.decode`'s `z`);
    see `_transformer`, `_vae` for shapes.
    """
    if kind == "transformer":
        return _transformer(module, params, dict(kwargs))  # noqa: F821 (transformer section)
    if kind in ("vae_encode", "vae_decode"):
        return _vae(kind, module, params, dict(kwargs))  # noqa: F821 (vae section)
    raise ValueError(f"unknown kind {kind!r}; allowed: 'transformer', 'vae_encode', 'vae_decode'")
