"""WAN 2.1 / 2.2 (Wan team 2025) video generators: transformer, VAEs, configs,
converters and the `wan2-t2v` / `wan2-i2v` adapters (`adapter.py`).

`call_like_diffusers` is the parity-test seam: it runs our modules with the arguments
and channels-first 5-D layouts of the Diffusers classes (NumPy in, NumPy out).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# Transformer names re-exported (the `X as X` form marks a re-export).
from ffjax.models.wan.config import WanTransformerConfig as WanTransformerConfig
from ffjax.models.wan.transformer import WanTransformer as WanTransformer
from ffjax.models.wan.transformer import patchify as patchify
from ffjax.models.wan.transformer import rope_tables as rope_tables
from ffjax.models.wan.transformer import token_grid as token_grid
from ffjax.models.wan.transformer import unpatchify as unpatchify

# ---------------------------------------------------------------- transformer section

# WanTransformer3DModel.forward arguments this seam takes, and those accepted only when
# unset (LoRA scaling through attention_kwargs is ffjax's "lora_scale" collection).
_TRANSFORMER_ARGS = (
    "hidden_states",
    "timestep",
    "encoder_hidden_states",
    "encoder_hidden_states_image",
)
_TRANSFORMER_IF_NONE = ("attention_kwargs",)


@functools.lru_cache(maxsize=32)
def _jitted_transformer(module: WanTransformer):
    return jax.jit(lambda params, *args: module.apply({"params": params}, *args))


def _transformer(module: WanTransformer, params: Any, kwargs: dict) -> np.ndarray:
    """`WanTransformer3DModel.forward(**kwargs).sample` through `module`.

    hidden_states float[B, C_in, F, H, W]; timestep float[B] or float[B, L_tokens]
    (0..1000); encoder_hidden_states float[B, S, text_dim]; encoder_hidden_states_image
    float[B, S_img, image_dim] (Wan 2.1 I2V). Returns float32[B, C_out, F, H, W].
    """
    for k in _TRANSFORMER_IF_NONE:
        if kwargs.pop(k, None) is not None:
            raise ValueError(f"call_like_diffusers: {k} is not supported for WAN")
    kwargs.pop("return_dict", None)
    unknown = sorted(set(kwargs) - set(_TRANSFORMER_ARGS))
    if unknown:
        raise TypeError(f"unexpected WanTransformer3DModel.forward arguments {unknown}")
    for k in ("hidden_states", "timestep", "encoder_hidden_states"):
        if kwargs.get(k) is None:
            raise TypeError(f"call_like_diffusers('transformer'): {k} is required")
    x = np.asarray(kwargs["hidden_states"], np.float32)
    if x.ndim != 5:
        raise ValueError(
            f"hidden_states must be (batch, channels, frames, height, width), got {x.shape}"
        )
    t = np.asarray(kwargs["timestep"], np.float32)
    if t.ndim == 1 and t.shape[0] == 1:
        t = np.broadcast_to(t, (x.shape[0],))  # Diffusers broadcasts one timestep
    img = kwargs.get("encoder_hidden_states_image")
    args = [
        jnp.asarray(x.transpose(0, 2, 3, 4, 1)),
        jnp.asarray(t),
        jnp.asarray(np.asarray(kwargs["encoder_hidden_states"], np.float32)),
    ]
    if img is not None:
        args.append(jnp.asarray(np.asarray(img, np.float32)))
    out = _jitted_transformer(module)(params, *args)
    return np.asarray(out, np.float32).transpose(0, 4, 1, 2, 3)


# ---------------------------------------------------------------- vae section

# VAE names re-exported.
from ffjax.models.wan.config import WanVAEConfig as WanVAEConfig  # noqa: E402
from ffjax.models.wan.vae import WanVAE as WanVAE  # noqa: E402

# The seam compiles with LLVM's backend optimisation off: parity tests compile a dozen
# frame counts of tiny VAEs, where LLVM's passes take ~2/3 of the compile time and the
# run time does not matter. (HLO optimisation, fusion and buffer assignment, so the
# numerics and `memory_analysis`, are unchanged; adapters jit the modules themselves.)
_SEAM_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}


@functools.lru_cache(maxsize=32)
def _jitted_vae(module: WanVAE, method: str):
    return jax.jit(
        lambda params, x: module.apply({"params": params}, x, method=method),
        compiler_options=_SEAM_COMPILER_OPTIONS,
    )


def _vae(kind: str, module: WanVAE, params: Any, kwargs: dict) -> np.ndarray:
    """`AutoencoderKLWan.encode(x).latent_dist.mean` or `.decode(z).sample` through `module`.

    "vae_encode": x float[B, C, T, H, W] in [-1, 1] (T = 1 + 4k) -> float32[B, z_dim,
    t, h, w]. "vae_decode": z float[B, z_dim, t, h, w] (raw VAE latents, not the
    transformer's normalised ones) -> float32[B, C, T, H, W] in [-1, 1].
    """
    name = "x" if kind == "vae_encode" else "z"
    kwargs.pop("return_dict", None)
    if set(kwargs) != {name}:
        raise TypeError(f"call_like_diffusers({kind!r}) takes only {name}=, got {sorted(kwargs)}")
    a = np.asarray(kwargs[name], np.float32)
    if a.ndim != 5:
        raise ValueError(
            f"{name} must be (batch, channels, frames, height, width) as AutoencoderKLWan"
            f" takes it; got shape {a.shape}"
        )
    method = "encode" if kind == "vae_encode" else "decode"
    out = _jitted_vae(module, method)(params, jnp.asarray(a.transpose(0, 2, 3, 4, 1)))
    if kind == "vae_encode":
        out = out[0]  # the mean of (mean, logvar)
    return np.asarray(out, np.float32).transpose(0, 4, 1, 2, 3)


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


# ---------------------------------------------------------------- adapters
# Importing the adapters registers them in ffjax.registry.MODELS ("wan2-t2v", ...).
from ffjax.models.wan.adapter import WanCond as WanCond  # noqa: E402
from ffjax.models.wan.adapter import WanT2VAdapter as WanT2VAdapter  # noqa: E402
from ffjax.models.wan.adapter_i2v import WanI2VAdapter as WanI2VAdapter  # noqa: E402
from ffjax.models.wan.adapter_i2v import WanI2VCond as WanI2VCond  # noqa: E402
