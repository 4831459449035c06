"""Qwen-Image (Qwen team 2025): transformer, VAE, configs, converters and the
`qwen-image` adapter (prompt encoding, true CFG, schedule; `adapter.py`).

`call_like_diffusers` is the parity-test seam: it runs our modules with the arguments
and array layouts of the Diffusers classes (NumPy in, NumPy out).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ffjax.models.qwen_image.adapter import QwenImageAdapter, QwenImageCond
from ffjax.models.qwen_image.config import QwenImageTransformerConfig, QwenImageVAEConfig
from ffjax.models.qwen_image.transformer import (
    QwenImageTransformer,
    pack_latents,
    packed_grid,
    rope_ids,
    unpack_latents,
)
from ffjax.models.qwen_image.vae import QwenImageVAE

__all__ = [
    "QwenImageAdapter",
    "QwenImageCond",
    "QwenImageTransformer",
    "QwenImageTransformerConfig",
    "QwenImageVAE",
    "QwenImageVAEConfig",
    "call_like_diffusers",
    "pack_latents",
    "packed_grid",
    "rope_ids",
    "unpack_latents",
]

# QwenImageTransformer2DModel.forward arguments this seam takes, and those accepted only
# when unset (features of other Qwen-Image variants that ffjax does not implement).
_TRANSFORMER_ARGS = (
    "hidden_states",
    "encoder_hidden_states",
    "encoder_hidden_states_mask",
    "timestep",
    "img_shapes",
)
_IGNORED_IF_NONE = (
    "guidance",
    "attention_kwargs",
    "controlnet_block_samples",
    "additional_t_cond",
)


@functools.lru_cache(maxsize=32)
def _jitted(module: Any, method: str):
    return jax.jit(lambda params, *args: module.apply({"params": params}, *args, method=method))


def _transformer(module: QwenImageTransformer, params: Any, kwargs: dict) -> np.ndarray:
    for k in _IGNORED_IF_NONE:
        if kwargs.pop(k, None) is not None:
            raise ValueError(f"call_like_diffusers: {k} is not supported for Qwen-Image")
    kwargs.pop("return_dict", None)
    # Older Diffusers took txt_seq_lens for the text RoPE length; it had to equal the
    # padded length, which is what the installed version (and ffjax) use.
    txt_seq_lens = kwargs.pop("txt_seq_lens", None)
    unknown = sorted(set(kwargs) - set(_TRANSFORMER_ARGS))
    if unknown:
        raise TypeError(f"unexpected QwenImageTransformer2DModel.forward arguments {unknown}")
    for k in ("hidden_states", "encoder_hidden_states", "timestep", "img_shapes"):
        if kwargs.get(k) is None:
            raise TypeError(f"call_like_diffusers('transformer'): {k} is required")
    x = jnp.asarray(np.asarray(kwargs["hidden_states"], np.float32))
    txt = jnp.asarray(np.asarray(kwargs["encoder_hidden_states"], np.float32))
    n_txt = txt.shape[1]
    if txt_seq_lens is not None and max(int(n) for n in txt_seq_lens) != n_txt:
        raise ValueError(f"max(txt_seq_lens)={max(txt_seq_lens)} != text length {n_txt}")
    mask = kwargs.get("encoder_hidden_states_mask")
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != tuple(txt.shape[:2]):
            raise ValueError(
                f"encoder_hidden_states_mask shape {mask.shape} must be (batch, text length)"
                f" = {tuple(txt.shape[:2])}"
            )
        mask = jnp.asarray(mask.astype(bool))
    img_ids, txt_ids = rope_ids(kwargs["img_shapes"], n_txt)
    if img_ids.shape[0] != x.shape[1]:
        raise ValueError(
            f"img_shapes {kwargs['img_shapes']} describe {img_ids.shape[0]} image tokens,"
            f" hidden_states has {x.shape[1]}"
        )
    t = jnp.asarray(np.asarray(kwargs["timestep"], np.float32).reshape(-1))
    args = (x, txt, mask, t, jnp.asarray(img_ids), jnp.asarray(txt_ids))
    return np.asarray(_jitted(module, "__call__")(params, *args), np.float32)


def _frame_to_nhwc(a, name: str) -> jax.Array:
    a = np.asarray(a, np.float32)
    if a.ndim != 5 or a.shape[2] != 1:
        raise ValueError(
            f"{name} must be (batch, channels, 1, height, width) as AutoencoderKLQwenImage takes"
            f" an image; got shape {a.shape} (ffjax's Qwen-Image VAE runs single frames only)"
        )
    return jnp.asarray(a[:, :, 0].transpose(0, 2, 3, 1))


def _nhwc_to_frame(a) -> np.ndarray:
    return np.asarray(a, np.float32).transpose(0, 3, 1, 2)[:, :, None]


def call_like_diffusers(kind: str, module: Any, params: Any, **kwargs) -> np.ndarray:
    """Runs an ffjax Qwen-Image module as the corresponding Diffusers call would.

    kinds:
      "transformer": keyword args of `QwenImageTransformer2DModel.forward`:
        hidden_states float[B, L_img, in_channels] (packed latents),
        encoder_hidden_states float[B, L_txt, joint_attention_dim],
        encoder_hidden_states_mask (optional) 0/1 or bool [B, L_txt],
        timestep float[B] (t / 1000, i.e. sigma), img_shapes as Diffusers takes them
        (e.g. `[[(1, h, w)]] * B`, packed-token grid); `txt_seq_lens` of older
        Diffusers is accepted if it equals the padded length. Returns its `.sample`,
        float32[B, L_img, patch_size^2 * out_channels].
      "vae_encode": `x` float[B, C_in, 1, H, W] (`AutoencoderKLQwenImage.encode`'s
        argument name and layout); returns the latent distribution's mean,
        float32[B, z_dim, 1, H/8, W/8].
      "vae_decode": `z` float[B, z_dim, 1, h, w]; returns the decoded `.sample`,
        float32[B, C_in, 1, 8h, 8w], clamped to [-1, 1].
    """
    if kind == "transformer":
        return _transformer(module, params, dict(kwargs))
    if kind in ("vae_encode", "vae_decode"):
        name = "x" if kind == "vae_encode" else "z"
        kwargs.pop("return_dict", None)
        unknown = sorted(set(kwargs) - {name})
        if unknown or name not in kwargs:
            raise TypeError(
                f"call_like_diffusers({kind!r}) takes only {name}=, got {sorted(kwargs)}"
            )
        x = _frame_to_nhwc(kwargs[name], name)
        if kind == "vae_encode":
            return _nhwc_to_frame(_jitted(module, "encode")(params, x)[0])
        return _nhwc_to_frame(_jitted(module, "decode")(params, x))
    raise ValueError(f"unknown kind {kind!r}; allowed: 'transformer', 'vae_encode', 'vae_decode'")
