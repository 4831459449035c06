"""The Qwen2.5-VL language model as a text encoder (Qwen-Image's `text_encoder`), in linen.

Text-only path of transformers' `Qwen2_5_VLTextModel`: token embeddings, pre-RMSNorm
decoder layers (GQA attention with q/k/v biases, rotary positions, SwiGLU MLP) under a
causal + padding mask, and the final RMSNorm; the output is the last hidden state.

Multimodal RoPE: Qwen2.5-VL rotates with three position axes (time, height, width),
each owning a section of the frequencies (`mrope_section`). For text every axis holds
the same position (transformers uses arange(L) for all three when no image grid is
given), so the sections recombine into ordinary rotate-half RoPE over arange(L); that
is what runs here, and no vision tower is needed.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ffjax.models import layers
from ffjax.models import weights as W
from ffjax.models.text import blocks
from ffjax.models.weights import Rule, dense, norm
from ffjax.parallel import axes

_ACT = (axes.BATCH, axes.LENGTH, axes.EMBED)


@dataclasses.dataclass(frozen=True)
class Qwen2_5_VLTextConfig:
    """The language-model fields of a `Qwen2_5_VLConfig` the text path uses."""

    vocab_size: int = 152064
    hidden_size: int = 3584
    intermediate_size: int = 18944
    num_hidden_layers: int = 28
    num_attention_heads: int = 28
    num_key_value_heads: int = 4
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1000000.0
    hidden_act: str = "silu"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Qwen2_5_VLTextConfig:
        """From config.json: transformers 5 nests `text_config`; older files are flat."""
        text = {**d, **(d.get("text_config") or {})}
        rope = text.get("rope_parameters") or {}
        theta = rope.get("rope_theta", text.get("rope_theta", cls.rope_theta))
        names = {f.name for f in dataclasses.fields(cls)} - {"rope_theta"}
        return cls(**{k: text[k] for k in names if k in text}, rope_theta=float(theta))


def rope_tables(length: int, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """cos, sin float32[L, head_dim] for positions arange(L), rotate-half layout."""
    inv = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim)
    ang = np.arange(length, dtype=np.float32)[:, None] * inv.astype(np.float32)[None]
    ang = np.concatenate([ang, ang], axis=-1)
    return jnp.asarray(np.cos(ang)), jnp.asarray(np.sin(ang))


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x * cos + rotate_half(x) * sin; x (B, L, H, D), cos/sin (L, D); float32 math."""
    x32 = x.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    return (x32 * cos[None, :, None] + rotated * sin[None, :, None]).astype(x.dtype)


class DecoderLayer(nn.Module):
    """x + o(attn(rope(q), rope(k), v)) of RMSNorm(x); x + down(silu(gate) * up) of RMSNorm(x)."""

    config: Qwen2_5_VLTextConfig
    dtype: Any
    param_dtype: Any

    @nn.compact
    def __call__(
        self, x: jax.Array, bias: jax.Array, cos: jax.Array, sin: jax.Array
    ) -> tuple[jax.Array, None]:
        c, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
        heads, kv_heads = c.num_attention_heads, c.num_key_value_heads
        head_dim = c.hidden_size // heads
        rms = lambda n: layers.RMSNorm(c.rms_norm_eps, (axes.EMBED,), self.param_dtype, name=n)

        h = rms("input_layernorm")(x)
        proj = lambda n, width, bias_: layers.Dense(
            width, (axes.EMBED, axes.HEADS), use_bias=bias_, name=n, **kw
        )
        q = proj("q_proj", heads * head_dim, True)(h).reshape(*h.shape[:2], heads, head_dim)
        k = proj("k_proj", kv_heads * head_dim, True)(h).reshape(*h.shape[:2], kv_heads, head_dim)
        v = proj("v_proj", kv_heads * head_dim, True)(h).reshape(*h.shape[:2], kv_heads, head_dim)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        # Grouped-query attention: each k/v head serves heads // kv_heads query heads.
        k, v = jnp.repeat(k, heads // kv_heads, axis=2), jnp.repeat(v, heads // kv_heads, axis=2)
        o = layers.xla_attention(q, k, v, bias, scale=head_dim**-0.5).reshape(
            *h.shape[:2], heads * head_dim
        )
        x = x + layers.Dense(
            c.hidden_size, (axes.HEADS, axes.EMBED), use_bias=False, name="o_proj", **kw
        )(o)

        h = rms("post_attention_layernorm")(x)
        mlp = lambda n, width, ax: layers.Dense(width, ax, use_bias=False, name=n, **kw)
        gate = mlp("gate_proj", c.intermediate_size, (axes.EMBED, axes.MLP))(h)
        up = mlp("up_proj", c.intermediate_size, (axes.EMBED, axes.MLP))(h)
        h = blocks.activation(c.hidden_act)(gate) * up
        x = x + mlp("down_proj", c.hidden_size, (axes.MLP, axes.EMBED))(h)
        return nn.with_logical_constraint(x, _ACT), None


class Qwen2_5_VLTextEncoder(nn.Module):
    """The Qwen2.5-VL language model, text only; returns the final-normed hidden states."""

    config: Qwen2_5_VLTextConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    remat: bool = False

    @nn.compact
    def __call__(
        self, input_ids: jax.Array, attention_mask: jax.Array | None = None
    ) -> dict[str, jax.Array]:
        """input_ids, attention_mask int[B, L] -> {"last_hidden_state": [B, L, hidden_size]}."""
        c, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
        length = input_ids.shape[-1]
        x = blocks.embed(c.vocab_size, c.hidden_size, name="embed_tokens", **kw)(input_ids)
        bias = blocks.combine(blocks.causal_bias(length), blocks.padding_bias(attention_mask))
        cos, sin = rope_tables(length, c.hidden_size // c.num_attention_heads, c.rope_theta)
        stack = blocks.stack(DecoderLayer, c.num_hidden_layers, 3, self.remat)
        x, _ = stack(c, self.dtype, self.param_dtype, name="layers")(x, bias, cos, sin)
        x = layers.RMSNorm(c.rms_norm_eps, (axes.EMBED,), self.param_dtype, name="norm")(x)
        return {"last_hidden_state": x}


# --------------------------------------------------------------------------- weights


def qwen_rules(cfg: Qwen2_5_VLTextConfig, prefix: str) -> list[Rule]:
    """Language-model keys under `prefix` ("model." or "model.language_model.") <-> ours."""
    n, L = cfg.num_hidden_layers, f"{prefix}layers.{{i}}"
    return [
        Rule("embed_tokens/embedding", f"{prefix}embed_tokens.weight"),
        *dense("layers/q_proj", f"{L}.self_attn.q_proj", layers=n),
        *dense("layers/k_proj", f"{L}.self_attn.k_proj", layers=n),
        *dense("layers/v_proj", f"{L}.self_attn.v_proj", layers=n),
        *dense("layers/o_proj", f"{L}.self_attn.o_proj", layers=n, bias=False),
        *dense("layers/gate_proj", f"{L}.mlp.gate_proj", layers=n, bias=False),
        *dense("layers/up_proj", f"{L}.mlp.up_proj", layers=n, bias=False),
        *dense("layers/down_proj", f"{L}.mlp.down_proj", layers=n, bias=False),
        *norm("layers/input_layernorm", f"{L}.input_layernorm", layers=n, bias=False),
        *norm(
            "layers/post_attention_layernorm", f"{L}.post_attention_layernorm", layers=n, bias=False
        ),
        *norm("norm", f"{prefix}norm", bias=False),
    ]


class _TextOnly:
    """A TensorSource without the vision tower and LM head, which the text path never uses."""

    _UNUSED = ("visual.", "model.visual.", "lm_head.")

    def __init__(self, source: W.TensorSource):
        self._source = source

    def keys(self) -> list[str]:
        return [k for k in self._source.keys() if not k.startswith(self._UNUSED)]

    def shape(self, key: str) -> W.Shape:
        return self._source.shape(key)

    def read(self, key: str) -> np.ndarray:
        return self._source.read(key)


def qwen_prefix(keys: list[str]) -> str:
    """ "model.language_model." (transformers >= 4.52 layout) or "model." (older)."""
    return (
        "model.language_model."
        if any(k.startswith("model.language_model.") for k in keys)
        else "model."
    )


def convert_qwen(
    source: W.TensorSource,
    cfg: Qwen2_5_VLTextConfig,
    *,
    dtype: Any = None,
    what: str = "checkpoint",
    place: Any = None,
):
    """Qwen2.5-VL checkpoint tensors (either layout) -> params of `Qwen2_5_VLTextEncoder` (strict);
    `place` as for `ffjax.models.text.convert.convert_clip`."""
    from ffjax.models.text.convert import _expected, _place

    src = _TextOnly(source)
    rules = qwen_rules(cfg, qwen_prefix(src.keys()))
    expected = _expected(Qwen2_5_VLTextEncoder(cfg))
    return W.load_params(rules, src, expected, dtype=dtype, place=place or _place, what=what)


def load_qwen2_5_vl(
    path: str | os.PathLike,
    dtype: Any = "float32",
    *,
    mesh: jax.sharding.Mesh | None = None,
    host: bool = False,
) -> tuple[Qwen2_5_VLTextEncoder, dict]:
    """(module, params) from a Qwen2_5_VLForConditionalGeneration folder (e.g. Qwen-Image's
    text_encoder); `mesh` / `host` as for `ffjax.models.text.convert.load_clip`."""
    from ffjax.models.text.convert import _dtype, placer, read_config

    cfg = Qwen2_5_VLTextConfig.from_dict(read_config(path, "qwen2_5_vl"))
    source = W.SafetensorsCheckpoint.open(path, prefix="model")
    dt = _dtype(dtype, source)
    module = Qwen2_5_VLTextEncoder(cfg, dtype=dt, param_dtype=dt)
    place = placer(module, mesh, host)
    return module, convert_qwen(source, cfg, dtype=dt, what=os.fspath(path), place=place)
