"""Prompt encoding as the Diffusers pipelines' `encode_prompt` does it, in JAX.

`load_flux_text(folder)` / `encode_prompts_flux(...)` reproduce `FluxPipeline.encode_prompt`
(CLIP pooled output at 77 tokens, T5 hidden states at up to 512, zero `text_ids`);
`load_wan_text(folder)` / `encode_prompts_wan(...)` reproduce `WanPipeline._get_t5_prompt_embeds`
(UMT5 with the padding mask, states beyond each prompt's length zeroed). The Qwen-Image
piece lives in `qwen2_5_vl.py`. Adapters call these; the on-disk cache wraps them
(`ffjax.data.embed_cache`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ffjax.models import text
from ffjax.models.text.tokenize import Tokens, load_tokenizer, prompt_clean, tokenize


@dataclasses.dataclass(frozen=True, eq=False)
class TextEncoder:
    """One tokenizer + one JAX encoder, and where both came from (for cache fingerprints).

    Attributes:
      component: "clip_text" | "t5" | "umt5" | "qwen2_5_vl".
      module, params: from `ffjax.models.text.load_pretrained`.
      tokenizer: a transformers tokenizer.
      encoder_path, tokenizer_path: the folders they were loaded from.
    """

    component: str
    module: Any
    params: Any
    tokenizer: Any
    encoder_path: str
    tokenizer_path: str

    @property
    def dtype(self) -> Any:
        return self.module.dtype

    def __call__(self, tokens: Tokens, *, use_mask: bool) -> dict[str, jax.Array]:
        """Runs the encoder (jit-compiled once per module and shape) on `tokens`."""
        mask = tokens.attention_mask if use_mask else None
        return text._jitted(self.module)(self.params, tokens.input_ids, mask)


def load_encoder(
    folder: str | os.PathLike,
    component: str,
    encoder_sub: str,
    tokenizer_sub: str,
    dtype: Any = "float32",
) -> TextEncoder:
    """A `TextEncoder` from a pipeline folder's `encoder_sub` and `tokenizer_sub` folders."""
    folder = os.fspath(folder)
    tokenizer = load_tokenizer(folder, tokenizer_sub)
    enc_path = os.path.join(folder, encoder_sub)
    if not os.path.isdir(enc_path):
        raise FileNotFoundError(
            f"{folder}: no text encoder folder {encoder_sub!r} (for {component})"
        )
    module, params = text.load_pretrained(component, enc_path, dtype)
    return TextEncoder(
        component, module, params, tokenizer, enc_path, os.path.join(folder, tokenizer_sub)
    )


# --------------------------------------------------------------------------- FLUX.1

FLUX_MAX_SEQUENCE_LENGTH = 512  # FluxPipeline.check_inputs rejects longer


@dataclasses.dataclass(frozen=True, eq=False)
class FluxText:
    """FLUX.1's two encoders: CLIP-L (`text_encoder`, pooled) and T5 (`text_encoder_2`)."""

    clip: TextEncoder
    t5: TextEncoder


def load_flux_text(folder: str | os.PathLike, dtype: Any = "float32") -> FluxText:
    """Both FLUX.1 text encoders and tokenizers from a FluxPipeline folder."""
    return FluxText(
        clip=load_encoder(folder, "clip_text", "text_encoder", "tokenizer", dtype),
        t5=load_encoder(folder, "t5", "text_encoder_2", "tokenizer_2", dtype),
    )


def encode_prompts_flux(
    encoders: FluxText,
    prompts: Sequence[str],
    prompts_2: Sequence[str] | None = None,
    *,
    max_sequence_length: int = FLUX_MAX_SEQUENCE_LENGTH,
    num_images_per_prompt: int = 1,
    cache: Any = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """`FluxPipeline.encode_prompt`: (prompt_embeds, pooled_prompt_embeds, text_ids).

    Args:
      encoders: from `load_flux_text`.
      prompts: B prompts for CLIP (and T5 unless `prompts_2` is given).
      prompts_2: optional B prompts for T5.
      max_sequence_length: T5 length L (<= 512); CLIP uses its tokenizer's
        model_max_length (77).
      num_images_per_prompt: repeats each prompt's rows, as the pipeline does.
      cache: an optional `ffjax.data.embed_cache.EmbedCache`; prompts found there skip
        both encoders.

    Returns:
      prompt_embeds [B*n, L, d_t5] (T5 dtype), pooled_prompt_embeds [B*n, d_clip]
      (CLIP dtype), text_ids zeros [L, 3] (CLIP dtype). Neither encoder gets a mask.
    """
    if isinstance(prompts, str) or isinstance(prompts_2, str):
        raise TypeError("prompts must be a sequence of strings, not a string")
    if max_sequence_length > FLUX_MAX_SEQUENCE_LENGTH:
        raise ValueError(
            f"max_sequence_length cannot be greater than 512, got {max_sequence_length}"
        )
    prompts_2 = list(prompts_2) if prompts_2 is not None else list(prompts)
    if len(prompts_2) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(prompts_2)} prompts_2")

    def run(pairs: list[Sequence[str]]) -> dict[str, jax.Array]:
        clip_len = encoders.clip.tokenizer.model_max_length
        clip_tokens = tokenize(
            encoders.clip.tokenizer,
            [p for p, _ in pairs],
            clip_len,
            warn_truncation=f"CLIP prompt (max {clip_len})",
        )
        t5_tokens = tokenize(
            encoders.t5.tokenizer,
            [p for _, p in pairs],
            max_sequence_length,
            warn_truncation="T5 prompt",
        )
        return {
            "prompt_embeds": encoders.t5(t5_tokens, use_mask=False)["last_hidden_state"],
            "pooled_prompt_embeds": encoders.clip(clip_tokens, use_mask=False)["pooler_output"],
        }

    parts = (
        None
        if cache is None
        else _cache_parts("flux1", [encoders.clip, encoders.t5], max_sequence_length)
    )
    out = _maybe_cached(
        cache, [[p, p2] for p, p2 in zip(prompts, prompts_2, strict=True)], run, parts
    )
    n = num_images_per_prompt
    embeds, pooled = out["prompt_embeds"], out["pooled_prompt_embeds"]
    text_ids = jnp.zeros((embeds.shape[1], 3), encoders.clip.dtype)
    return jnp.repeat(embeds, n, axis=0), jnp.repeat(pooled, n, axis=0), text_ids


def _cache_parts(
    kind: str, encoders: Sequence[TextEncoder], max_length: int, template: str | None = None
) -> dict:
    """What a cached embedding depends on besides the prompt (see ffjax.data.embed_cache)."""
    from ffjax.data.embed_cache import tokenizer_fingerprint, weights_fingerprint

    return {
        "kind": kind,
        "encoders": [
            [
                e.component,
                weights_fingerprint(e.encoder_path),
                tokenizer_fingerprint(e.tokenizer_path),
                jnp.dtype(e.dtype).name,
            ]
            for e in encoders
        ],
        "max_length": max_length,
        "template": template,
    }


def _maybe_cached(cache: Any, items: list, run, parts: dict | None) -> dict[str, jax.Array]:
    if cache is None:
        return run(items)
    from ffjax.data.embed_cache import cached_encode

    return {k: jnp.asarray(v) for k, v in cached_encode(cache, items, run, parts).items()}


# --------------------------------------------------------------------------- WAN

WAN_MAX_SEQUENCE_LENGTH = 512  # WanPipeline.__call__'s default


def load_wan_text(folder: str | os.PathLike, dtype: Any = "float32") -> TextEncoder:
    """WAN's UMT5 encoder (`text_encoder`) and tokenizer (`tokenizer`) from a WanPipeline folder."""
    return load_encoder(folder, "umt5", "text_encoder", "tokenizer", dtype)


def zero_beyond_length(embeds: jax.Array, mask: np.ndarray) -> jax.Array:
    """Zeroes rows at positions >= each prompt's token count (sum of its mask).

    WAN slices `u[:len]` and pads back with zeros; with right padding that is this mask.
    """
    lengths = np.asarray(mask).sum(axis=1)
    keep = np.arange(embeds.shape[1])[None, :] < lengths[:, None]
    return jnp.where(jnp.asarray(keep)[..., None], embeds, jnp.zeros((), embeds.dtype))


def encode_prompts_wan(
    encoder: TextEncoder,
    prompts: Sequence[str],
    *,
    max_sequence_length: int = WAN_MAX_SEQUENCE_LENGTH,
    num_videos_per_prompt: int = 1,
    cache: Any = None,
) -> jax.Array:
    """`WanPipeline._get_t5_prompt_embeds`: float[B*n, L, d] prompt embeddings.

    Prompts are cleaned (`prompt_clean`), padded/truncated to L with the mask passed to
    UMT5, and positions beyond each prompt's length set to zero. Negative prompts go
    through the same function. `cache` as for `encode_prompts_flux`.
    """
    if isinstance(prompts, str):
        raise TypeError("prompts must be a sequence of strings, not a string")

    def run(items: list[str]) -> dict[str, jax.Array]:
        tokens = tokenize(
            encoder.tokenizer, items, max_sequence_length, warn_truncation="UMT5 prompt"
        )
        embeds = encoder(tokens, use_mask=True)["last_hidden_state"]
        return {"prompt_embeds": zero_beyond_length(embeds, tokens.attention_mask)}

    parts = None if cache is None else _cache_parts("wan", [encoder], max_sequence_length)
    embeds = _maybe_cached(cache, [prompt_clean(p) for p in prompts], run, parts)["prompt_embeds"]
    return jnp.repeat(embeds, num_videos_per_prompt, axis=0)
