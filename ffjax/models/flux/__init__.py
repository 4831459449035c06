"""FLUX.1 (Black Forest Labs): transformer, VAE, converters and the `flux1` adapter.

`call_like_diffusers` is the parity-test seam: it runs our modules with the arguments
and array layouts of the Diffusers classes (NumPy in, NumPy out).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ffjax.models.flux.adapter import Flux1Adapter, FluxCond, pack_latents, unpack_latents
from ffjax.models.flux.config import FluxTransformerConfig, FluxVAEConfig
from ffjax.models.flux.transformer import FluxTransformer
from ffjax.models.flux.vae import FluxVAE

__all__ = [
    "Flux1Adapter",
    "FluxCond",
    "FluxTransformer",
    "FluxTransformerConfig",
    "FluxVAE",
    "FluxVAEConfig",
    "call_like_diffusers",
    "pack_latents",
    "unpack_latents",
]

_TRANSFORMER_ARGS = (
    "hidden_states",
    "encoder_hidden_states",
    "pooled_projections",
    "timestep",
    "img_ids",
    "txt_ids",
    "guidance",
)
# Accepted for signature compatibility with FluxTransformer2DModel.forward when unset.
_IGNORED_IF_NONE = (
    "joint_attention_kwargs",
    "controlnet_block_samples",
    "controlnet_single_block_samples",
)


@functools.lru_cache(maxsize=32)
def _jitted(module: Any, method: str):
    return jax.jit(lambda params, *args: module.apply({"params": params}, *args, method=method))


def _nchw_to_nhwc(a) -> jax.Array:
    return jnp.asarray(np.asarray(a, np.float32).transpose(0, 2, 3, 1))


def call_like_diffusers(kind: str, module: Any, params: Any, **kwargs) -> np.ndarray:
    """Runs an ffjax FLUX module as the corresponding Diffusers call would.

    kinds:
      "transformer": keyword args of `FluxTransformer2DModel.forward` (hidden_states,
        encoder_hidden_states, pooled_projections, timestep, img_ids, txt_ids,
        guidance); returns its `.sample`, float32[B, L_img, C_out].
      "vae_encode": `sample` float[B, 3, H, W]; returns the latent distribution's
        mean, float32[B, C_lat, H/f, W/f].
      "vae_decode": `z` float[B, C_lat, h, w]; returns the decoded sample
        float32[B, 3, h*f, w*f].
    """
    if kind == "transformer":
        for k in _IGNORED_IF_NONE:
            if kwargs.pop(k, None) is not None:
                raise ValueError(f"call_like_diffusers: {k} is not supported")
        kwargs.pop("return_dict", None)
        unknown = sorted(set(kwargs) - set(_TRANSFORMER_ARGS))
        if unknown:
            raise TypeError(f"unexpected FluxTransformer2DModel.forward arguments {unknown}")
        args = [
            None if kwargs.get(k) is None else jnp.asarray(np.asarray(kwargs[k], np.float32))
            for k in _TRANSFORMER_ARGS
        ]
        return np.asarray(_jitted(module, "__call__")(params, *args), np.float32)
    if kind == "vae_encode":
        mean, _ = _jitted(module, "encode")(params, _nchw_to_nhwc(kwargs.pop("sample")))
        return np.asarray(mean, np.float32).transpose(0, 3, 1, 2)
    if kind == "vae_decode":
        out = _jitted(module, "decode")(params, _nchw_to_nhwc(kwargs.pop("z")))
        return np.asarray(out, np.float32).transpose(0, 3, 1, 2)
    raise ValueError(f"unknown kind {kind!r}; allowed: 'transformer', 'vae_encode', 'vae_decode'")
