"""Prompt encoding as the Diffusers pipelines' `encode_prompt` does it, in JAX.

`load_flux_text(folder)` / `encode_prompts_flux(...)` reproduce `FluxPipeline.encode_prompt`
(CLIP pooled output at 77 tokens, T5 hidden states at up to 512, zero `text_ids`);
`load_wan_text(folder)` / `encode_prompts_wan(...)` reproduce `WanPipeline._get_t5_prompt_embeds`
(UMT5 with the padding mask, states beyond each prompt's length zeroed);
`load_qwen_image_text(folder)` / `encode_prompts_qwen_image(...)` reproduce
`QwenImagePipeline.encode_prompt` (chat template, Qwen2.5-VL last hidden state with the
template's system prefix dropped, ragged rows re-padded with a mask; the language model
itself is `qwen2_5_vl.py`). Adapters call these; the on-disk cache wraps them
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
from absl import logging

from ffjax.models import text
from ffjax.models.text.tokenize import Tokens, load_tokenizer, prompt_clean, tokenize


@dataclasses.dataclass(eq=False)
class TextEncoder:
    """One tokenizer + one JAX encoder, and where both came from (for cache fingerprints).

    Attributes:
      component: "clip_text" | "t5" | "umt5" | "qwen2_5_vl".
      module, params: from `ffjax.models.text.load_pretrained`. `load_encoder` keeps the
        params on the host (NumPy) until `place` or the first call puts them on devices.
      tokenizer: a transformers tokenizer.
      encoder_path, tokenizer_path: the folders they were loaded from.
      mesh: the mesh the params are sharded on (`place`), or None (one device).
    """

    component: str
    module: Any
    params: Any
    tokenizer: Any
    encoder_path: str
    tokenizer_path: str
    mesh: Any = None

    @property
    def dtype(self) -> Any:
        return self.module.dtype

    def place(self, mesh: jax.sharding.Mesh) -> None:
        """Shards the params on `mesh` by their logical axes (`ffjax.models.text.placement`);
        later calls run jitted there, the batch and the outputs replicated on `mesh`.
        Host params go straight to their shards; device params are resharded."""
        from ffjax.models.text.placement import place_params

        self.params = place_params(self.module, self.params, mesh)
        self.mesh = mesh

    def __call__(self, tokens: Tokens, *, use_mask: bool) -> dict[str, jax.Array]:
        """Runs the encoder (jit-compiled once per module and shape) on `tokens`."""
        mask = tokens.attention_mask if use_mask else None
        if self.mesh is not None:
            from ffjax.models.text.placement import sharded_apply

            return sharded_apply(self.module, self.mesh)(self.params, tokens.input_ids, mask)
        if any(isinstance(a, np.ndarray) for a in jax.tree.leaves(self.params)):
            self.params = jax.device_put(self.params)  # once, not on every call
        return text._jitted(self.module)(self.params, tokens.input_ids, mask)


def load_encoder(
    folder: str | os.PathLike,
    component: str,
    encoder_sub: str,
    tokenizer_sub: str,
    dtype: Any = "float32",
    *,
    mesh: jax.sharding.Mesh | None = None,
) -> TextEncoder:
    """A `TextEncoder` from a pipeline folder's `encoder_sub` and `tokenizer_sub` folders.

    With `mesh`, each tensor is read onto its shard of `mesh` (`TextEncoder.place`);
    without, the params stay on the host until `place` or the first call.
    """
    folder = os.fspath(folder)
    tokenizer = load_tokenizer(folder, tokenizer_sub)
    enc_path = os.path.join(folder, encoder_sub)
    if not os.path.isdir(enc_path):
        raise FileNotFoundError(
            f"{folder}: no text encoder folder {encoder_sub!r} (for {component})"
        )
    where = {"mesh": mesh} if mesh is not None else {"host": True}
    module, params = text.load_pretrained(component, enc_path, dtype, **where)
    return TextEncoder(
        component, module, params, tokenizer, enc_path, os.path.join(folder, tokenizer_sub), mesh
    )


# --------------------------------------------------------------------------- FLUX.1

FLUX_MAX_SEQUENCE_LENGTH = 512  # FluxPipeline.check_inputs rejects longer


@dataclasses.dataclass(frozen=True, eq=False)
class FluxText:
    """FLUX.1's two encoders: CLIP-L (`text_encoder`, pooled) and T5 (`text_encoder_2`)."""

    clip: TextEncoder
    t5: TextEncoder


def load_flux_text(
    folder: str | os.PathLike, dtype: Any = "float32", *, mesh: jax.sharding.Mesh | None = None
) -> FluxText:
    """Both FLUX.1 text encoders and tokenizers from a FluxPipeline folder (`mesh` as for
    `load_encoder`)."""
    return FluxText(
        clip=load_encoder(folder, "clip_text", "text_encoder", "tokenizer", dtype, mesh=mesh),
        t5=load_encoder(folder, "t5", "text_encoder_2", "tokenizer_2", dtype, mesh=mesh),
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


def load_wan_text(
    folder: str | os.PathLike, dtype: Any = "float32", *, mesh: jax.sharding.Mesh | None = None
) -> TextEncoder:
    """WAN's UMT5 encoder (`text_encoder`) and tokenizer (`tokenizer`) from a WanPipeline
    folder (`mesh` as for `load_encoder`)."""
    return load_encoder(folder, "umt5", "text_encoder", "tokenizer", dtype, mesh=mesh)


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


# --------------------------------------------------------------------------- Qwen-Image

# QwenImagePipeline.__init__'s constants (diffusers 0.42); the folder does not store them.
QWEN_IMAGE_TEMPLATE = (
    "<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture,"
    " quantity, text, spatial relationships of the objects and background:<|im_end|>\n"
    "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
)
QWEN_IMAGE_DROP_IDX = 34  # prompt_template_encode_start_idx: the system part's token count
QWEN_IMAGE_TOKENIZER_MAX_LENGTH = 1024  # tokenizer_max_length; the tokenizer gets + drop_idx
QWEN_IMAGE_MAX_SEQUENCE_LENGTH = 1024  # encode_prompt's default; check_inputs rejects longer
_PAD_BUCKET = 64  # right-padded batches are padded up to a multiple of this (fewer compiles)


def load_qwen_image_text(
    folder: str | os.PathLike, dtype: Any = "float32", *, mesh: jax.sharding.Mesh | None = None
) -> TextEncoder:
    """Qwen-Image's Qwen2.5-VL language model (`text_encoder`) and Qwen2 tokenizer
    (`tokenizer`) (`mesh` as for `load_encoder`)."""
    return load_encoder(folder, "qwen2_5_vl", "text_encoder", "tokenizer", dtype, mesh=mesh)


def _qwen_tokens(tokenizer: Any, texts: list[str], max_length: int) -> Tokens:
    """`tokenizer(texts, max_length=..., padding=True, truncation=True)`, as the pipeline calls it.

    Padding is to the batch's longest (not to `max_length`). Where the tokenizer pads on
    the right the batch is padded further to a multiple of `_PAD_BUCKET` (capped at
    `max_length`) so that a jit-compiled encoder sees few distinct lengths: under the
    causal mask no valid token attends to a later position, so trailing padding cannot
    change a valid token's state. Left padding is kept exact (it shifts the RoPE positions).
    """
    enc = tokenizer(
        texts, max_length=max_length, padding=True, truncation=True, return_tensors="np"
    )
    ids = np.asarray(enc["input_ids"], np.int32)
    mask = np.asarray(enc["attention_mask"], np.int32)
    lengths = [len(x) for x in tokenizer(texts)["input_ids"]]
    if max(lengths) > max_length:
        logging.warning(
            "Qwen-Image prompt truncated by the tokenizer to %d tokens (template included):"
            " %d of %d prompts were longer (up to %d tokens)",
            max_length,
            sum(n > max_length for n in lengths),
            len(lengths),
            max(lengths),
        )
    if tokenizer.padding_side == "right":
        width = min(-(-ids.shape[1] // _PAD_BUCKET) * _PAD_BUCKET, max_length)
        extra = max(width - ids.shape[1], 0)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        ids = np.pad(ids, ((0, 0), (0, extra)), constant_values=pad_id)
        mask = np.pad(mask, ((0, 0), (0, extra)))
    return Tokens(ids, mask)


def _cached_rows(cache: Any, items: list[str], run, parts: dict | None) -> list[np.ndarray]:
    """Like `embed_cache.cached_encode`, for rows of different lengths (one entry per prompt)."""
    if cache is None:
        return run(items)
    from ffjax.data.embed_cache import cache_key

    keys = [cache_key(item=item, **parts) for item in items]
    rows = [cache.load(k) for k in keys]
    todo: dict[str, int] = {}  # key -> first missing item with it (repeats encode once)
    for i, r in enumerate(rows):
        if r is None:
            todo.setdefault(keys[i], i)
    if todo:
        fresh = dict(zip(todo, run([items[i] for i in todo.values()]), strict=True))
        for key, row in fresh.items():
            cache.save(key, {"hidden_states": row})
        rows = [
            {"hidden_states": fresh[k]} if r is None else r for r, k in zip(rows, keys, strict=True)
        ]
    return [r["hidden_states"] for r in rows]


def encode_prompts_qwen_image(
    encoder: TextEncoder,
    prompts: Sequence[str],
    *,
    max_sequence_length: int = QWEN_IMAGE_MAX_SEQUENCE_LENGTH,
    num_images_per_prompt: int = 1,
    cache: Any = None,
    template: str = QWEN_IMAGE_TEMPLATE,
    drop_idx: int = QWEN_IMAGE_DROP_IDX,
) -> tuple[jax.Array, jax.Array]:
    """`QwenImagePipeline.encode_prompt`: (prompt_embeds, prompt_embeds_mask).

    Each prompt p becomes `template.format(p)`, tokenized (padding to the batch's
    longest, truncation at 1024 + drop_idx tokens) and run through the Qwen2.5-VL
    language model with the padding mask (RoPE positions arange(L), as transformers
    uses for text without images). Per prompt, the states of its valid tokens are kept
    and the first `drop_idx` (the system part of the template) dropped: n_i states.
    Rows are zero-padded to S = min(max_i n_i, max_sequence_length), longer rows cut to
    S, and the mask is 1 on each row's first min(n_i, S) positions.

    Args:
      encoder: from `load_qwen_image_text`.
      prompts: B prompts (negative prompts go through the same function).
      max_sequence_length: S cap (<= 1024). The pipeline's `__call__` passes 512;
        `encode_prompt`'s default is 1024.
      num_images_per_prompt: repeats each prompt's rows (p0, p0, p1, p1, ...).
      cache: an optional `ffjax.data.embed_cache.EmbedCache`; an entry holds one
        prompt's valid states (template prefix included), keyed by the encoder, the
        tokenizer, the template and the tokenizer length, so every `max_sequence_length`
        shares it.
      template, drop_idx: the pipeline's `prompt_template_encode` and
        `prompt_template_encode_start_idx` (other Qwen-Image pipelines use others).

    Returns:
      prompt_embeds [B*n, S, hidden] (encoder dtype) with zeros where the mask is 0, and
      prompt_embeds_mask int32[B*n, S]. Where Diffusers returns a None mask (every
      position valid) this is all ones, which the transformer treats the same. Diffusers
      0.42 tiles the mask (p0, p1, p0, p1) while it interleaves the embeddings for
      num_images_per_prompt > 1 (diffusers PR #14147); here both are interleaved.
    """
    if isinstance(prompts, str):
        raise TypeError("prompts must be a sequence of strings, not a string")
    if max_sequence_length > QWEN_IMAGE_MAX_SEQUENCE_LENGTH:
        raise ValueError(
            f"`max_sequence_length` cannot be greater than 1024 but is {max_sequence_length}"
        )
    if max_sequence_length < 1:
        raise ValueError(f"`max_sequence_length` must be positive, got {max_sequence_length}")
    prompts = list(prompts)
    if not prompts:
        raise ValueError("encode_prompts_qwen_image needs at least one prompt")
    tokenizer_length = QWEN_IMAGE_TOKENIZER_MAX_LENGTH + drop_idx

    def run(texts: list[str]) -> list[np.ndarray]:
        tokens = _qwen_tokens(encoder.tokenizer, texts, tokenizer_length)
        states = np.asarray(encoder(tokens, use_mask=True)["last_hidden_state"])
        return [s[m.astype(bool)] for s, m in zip(states, tokens.attention_mask, strict=True)]

    parts = (
        None if cache is None else _cache_parts("qwen-image", [encoder], tokenizer_length, template)
    )
    rows = [
        r[drop_idx:] for r in _cached_rows(cache, [template.format(p) for p in prompts], run, parts)
    ]
    lengths = np.array([len(r) for r in rows])
    if lengths.max() > max_sequence_length:
        logging.warning(
            "Qwen-Image prompt embeddings truncated to max_sequence_length=%d: %d of %d prompts"
            " were longer (up to %d tokens after the template's %d-token prefix)",
            max_sequence_length,
            int((lengths > max_sequence_length).sum()),
            len(rows),
            int(lengths.max()),
            drop_idx,
        )
    width = int(min(lengths.max(), max_sequence_length))
    embeds = np.zeros((len(rows), width, rows[0].shape[-1]), rows[0].dtype)
    for b, r in enumerate(rows):
        embeds[b, : min(len(r), width)] = r[:width]
    mask = (np.arange(width)[None, :] < lengths[:, None]).astype(np.int32)
    n = num_images_per_prompt
    return (
        jnp.repeat(jnp.asarray(embeds), n, axis=0),
        jnp.repeat(jnp.asarray(mask), n, axis=0),
    )
