"""CLIP text encoder (Radford et al. 2021) in Flax linen, mirroring transformers'
`CLIPTextModel` / `CLIPTextModelWithProjection`: token + learned position embeddings,
pre-LN causal transformer layers (one `nn.scan`), final LayerNorm, and the pooled
output taken at the EOS position exactly as transformers 5 picks it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ffjax.models import layers
from ffjax.models.text import blocks
from ffjax.parallel import axes

_ACT = (axes.BATCH, axes.LENGTH, axes.EMBED)


@dataclasses.dataclass(frozen=True)
class CLIPTextConfig:
    """The fields of transformers' `CLIPTextConfig` the forward pass uses."""

    vocab_size: int = 49408
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    eos_token_id: int = 49407
    projection_dim: int | None = None  # set for CLIPTextModelWithProjection

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, with_projection: bool = False) -> CLIPTextConfig:
        """From a `config.json` dict (a bare text config, or a full CLIP config's text_config)."""
        d = d.get("text_config", d)
        names = {f.name for f in dataclasses.fields(cls)} - {"projection_dim"}
        kw = {k: d[k] for k in names if k in d}
        return cls(**kw, projection_dim=d.get("projection_dim", 512) if with_projection else None)


class CLIPAttention(nn.Module):
    """Multi-head self-attention with q/k/v/out projections (biases), scale 1/sqrt(Dh)."""

    heads: int
    dtype: Any
    param_dtype: Any

    @nn.compact
    def __call__(self, x: jax.Array, bias: jax.Array | None) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        d = x.shape[-1]
        head_dim = d // self.heads
        split = lambda t: t.reshape(*t.shape[:-1], self.heads, head_dim)
        proj = lambda n: split(layers.Dense(d, (axes.EMBED, axes.HEADS), name=n, **kw)(x))
        o = layers.xla_attention(
            proj("q_proj"), proj("k_proj"), proj("v_proj"), bias, scale=head_dim**-0.5
        )
        return layers.Dense(d, (axes.HEADS, axes.EMBED), name="out_proj", **kw)(o.reshape(x.shape))


class CLIPEncoderLayer(nn.Module):
    """x + attn(LN1(x)); x + mlp(LN2(x)), with a causal/padding additive bias."""

    config: CLIPTextConfig
    dtype: Any
    param_dtype: Any

    @nn.compact
    def __call__(self, x: jax.Array, bias: jax.Array) -> tuple[jax.Array, None]:
        c, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = blocks.layer_norm(c.layer_norm_eps, name="layer_norm1", **kw)(x)
        x = x + CLIPAttention(c.num_attention_heads, name="self_attn", **kw)(h, bias)
        h = blocks.layer_norm(c.layer_norm_eps, name="layer_norm2", **kw)(x)
        mlp = layers.MLP(c.intermediate_size, x.shape[-1], c.hidden_act, ("fc1", "fc2"), name="mlp",
                         **kw)  # fmt: skip
        x = x + mlp(h)
        return nn.with_logical_constraint(x, _ACT), None


def eos_positions(input_ids: jax.Array, eos_token_id: int) -> jax.Array:
    """int[B]: where transformers' CLIPTextModel pools.

    Legacy configs with eos_token_id == 2 pool at argmax(input_ids) (the EOS id was the
    largest id in OpenAI's vocabulary); otherwise at the first position holding
    eos_token_id (pad may equal EOS, so "first" matters). argmax returns the first
    maximum, as torch's does.
    """
    if eos_token_id == 2:
        return jnp.argmax(input_ids, axis=-1)
    return jnp.argmax((input_ids == eos_token_id).astype(jnp.int32), axis=-1)


class CLIPTextModel(nn.Module):
    """transformers' `CLIPTextModel` (+ `text_projection` when `config.projection_dim` is set).

    Attributes:
      config: the text config.
      dtype: activation dtype; param_dtype: parameter storage dtype.
      remat: rematerialise each layer in the backward pass (training the encoder).
    """

    config: CLIPTextConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    remat: bool = False

    @nn.compact
    def __call__(
        self, input_ids: jax.Array, attention_mask: jax.Array | None = None
    ) -> dict[str, jax.Array]:
        """Encodes token ids.

        Args:
          input_ids: int[B, L], L <= max_position_embeddings.
          attention_mask: optional int[B, L] (1 = token); the pipelines pass none.

        Returns:
          {"last_hidden_state": [B, L, D], "pooler_output": [B, D]} (EOS-pooled, after
          the final LayerNorm), plus "text_embeds": [B, projection_dim] with a projection.
        """
        c, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
        length = input_ids.shape[-1]
        if length > c.max_position_embeddings:
            raise ValueError(
                f"sequence length {length} > max_position_embeddings {c.max_position_embeddings}"
            )
        tok = blocks.embed(c.vocab_size, c.hidden_size, name="token_embedding", **kw)(input_ids)
        pos = blocks.embed(
            c.max_position_embeddings, c.hidden_size, name="position_embedding", **kw
        )(jnp.arange(length))
        x = nn.with_logical_constraint(tok + pos[None], _ACT)
        bias = blocks.combine(blocks.causal_bias(length), blocks.padding_bias(attention_mask))
        stack = blocks.stack(CLIPEncoderLayer, c.num_hidden_layers, 1, self.remat)
        x, _ = stack(c, self.dtype, self.param_dtype, name="layers")(x, bias)
        x = blocks.layer_norm(c.layer_norm_eps, name="final_layer_norm", **kw)(x)
        pooled = x[jnp.arange(x.shape[0]), eos_positions(input_ids, c.eos_token_id)]
        out = {"last_hidden_state": x, "pooler_output": pooled}
        if c.projection_dim is not None:
            proj = layers.Dense(
                c.projection_dim, (axes.EMBED, None), use_bias=False, name="text_projection", **kw
            )
            out["text_embeds"] = proj(pooled)
        return out
