"""T5 and UMT5 encoders (Raffel et al. 2020; Chung et al. 2023) in Flax linen, mirroring
transformers' `T5EncoderModel` and `UMT5EncoderModel`.

Pre-RMSNorm blocks of unscaled attention plus a (gated) feed-forward, with bucketed
relative position biases: T5 learns one bias table, in block 0, and shares the bias
with every block; UMT5 learns a table in every block. All blocks are one `nn.scan`;
for T5 the shared bias is computed once outside the scan (identical numbers, and the
scanned blocks stay homogeneous), its table stored at top level.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ffjax.models import layers
from ffjax.models.text import blocks
from ffjax.parallel import axes

_ACT = (axes.BATCH, axes.LENGTH, axes.EMBED)


@dataclasses.dataclass(frozen=True)
class T5Config:
    """The fields of transformers' `T5Config` / `UMT5Config` the encoder uses."""

    vocab_size: int = 32128
    d_model: int = 512
    d_kv: int = 64
    d_ff: int = 2048
    num_layers: int = 6
    num_heads: int = 8
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    feed_forward_proj: str = "relu"  # "relu" | "gated-gelu" | "gated-<act>" | "<act>"
    bias_per_layer: bool = False  # UMT5: every block owns a relative position bias

    @property
    def is_gated(self) -> bool:
        return self.feed_forward_proj.startswith("gated-")

    @property
    def act(self) -> str:
        # transformers maps "gated-gelu" to the tanh approximation ("gelu_new").
        if self.feed_forward_proj == "gated-gelu":
            return "gelu_new"
        return self.feed_forward_proj.split("-")[-1]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, umt5: bool = False) -> T5Config:
        """From a `config.json` dict of a T5 / UMT5 checkpoint."""
        names = {f.name for f in dataclasses.fields(cls)} - {"bias_per_layer"}
        return cls(**{k: d[k] for k in names if k in d}, bias_per_layer=umt5)


def relative_position_buckets(length: int, num_buckets: int, max_distance: int) -> np.ndarray:
    """int32[L, L] bidirectional relative-position buckets of (key - query), on host.

    Half the buckets per direction are exact offsets, the rest log-spaced up to
    max_distance (Raffel et al. 2020, Sec. 2.1); the log runs in float32 with the same
    operation order as transformers, so bucket edges match bit for bit.
    """
    pos = np.arange(length, dtype=np.int64)
    rel = pos[None, :] - pos[:, None]
    half = num_buckets // 2
    buckets = (rel > 0).astype(np.int64) * half
    rel = np.abs(rel)
    max_exact = half // 2
    # log(0) would only feed the "small" branch; clamp so the unused values stay finite.
    ratio = np.log(np.maximum(rel, 1).astype(np.float32) / np.float32(max_exact)) / np.float32(
        math.log(max_distance / max_exact)
    )
    large = max_exact + (ratio * np.float32(half - max_exact)).astype(np.int64)
    large = np.minimum(large, half - 1)
    return (buckets + np.where(rel < max_exact, rel, large)).astype(np.int32)


class RelativeBias(nn.Module):
    """Learned (num_buckets, heads) table -> float32[1, H, L, L] additive position bias."""

    num_buckets: int
    heads: int
    param_dtype: Any

    @nn.compact
    def __call__(self, buckets: jax.Array) -> jax.Array:
        init = nn.with_logical_partitioning(nn.initializers.normal(1.0), (None, axes.HEADS))
        table = self.param("embedding", init, (self.num_buckets, self.heads), self.param_dtype)
        return jnp.transpose(table.astype(jnp.float32)[buckets], (2, 0, 1))[None]


class T5Attention(nn.Module):
    """Unscaled multi-head self-attention (q, k, v, o without biases)."""

    config: T5Config
    dtype: Any
    param_dtype: Any

    @nn.compact
    def __call__(self, x: jax.Array, bias: jax.Array, buckets: jax.Array) -> jax.Array:
        c, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
        inner = c.num_heads * c.d_kv
        split = lambda t: t.reshape(*t.shape[:-1], c.num_heads, c.d_kv)
        proj = lambda n: split(
            layers.Dense(inner, (axes.EMBED, axes.HEADS), use_bias=False, name=n, **kw)(x)
        )
        if c.bias_per_layer:
            rel = RelativeBias(
                c.relative_attention_num_buckets,
                c.num_heads,
                self.param_dtype,
                name="relative_attention_bias",
            )
            bias = blocks.combine(rel(buckets), bias)
        o = layers.xla_attention(proj("q"), proj("k"), proj("v"), bias, scale=1.0)
        o = o.reshape(*o.shape[:2], inner)
        return layers.Dense(c.d_model, (axes.HEADS, axes.EMBED), use_bias=False, name="o", **kw)(o)


class T5FeedForward(nn.Module):
    """wo(act(wi(x))) or, gated, wo(act(wi_0(x)) * wi_1(x))."""

    config: T5Config
    dtype: Any
    param_dtype: Any

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype, use_bias=False)
        act = blocks.activation(c.act)
        dense = lambda n: layers.Dense(c.d_ff, (axes.EMBED, axes.MLP), name=n, **kw)(x)
        h = act(dense("wi_0")) * dense("wi_1") if c.is_gated else act(dense("wi"))
        return layers.Dense(c.d_model, (axes.MLP, axes.EMBED), name="wo", **kw)(h)


class T5Block(nn.Module):
    """x + attn(norm(x)); x + ff(norm(x))."""

    config: T5Config
    dtype: Any
    param_dtype: Any

    @nn.compact
    def __call__(self, x: jax.Array, bias: jax.Array, buckets: jax.Array) -> tuple[jax.Array, None]:
        c, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
        norm = lambda n: layers.RMSNorm(
            c.layer_norm_epsilon, (axes.EMBED,), self.param_dtype, name=n
        )
        x = x + T5Attention(c, name="SelfAttention", **kw)(norm("attention_norm")(x), bias, buckets)
        x = x + T5FeedForward(c, name="DenseReluDense", **kw)(norm("ff_norm")(x))
        return nn.with_logical_constraint(x, _ACT), None


class T5Encoder(nn.Module):
    """transformers' `T5EncoderModel` (or `UMT5EncoderModel` with `config.bias_per_layer`).

    Attributes:
      config: the encoder config.
      dtype: activation dtype; param_dtype: parameter storage dtype.
      remat: rematerialise each block in the backward pass.
    """

    config: T5Config
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    remat: bool = False

    @nn.compact
    def __call__(
        self, input_ids: jax.Array, attention_mask: jax.Array | None = None
    ) -> dict[str, jax.Array]:
        """Encodes token ids.

        Args:
          input_ids: int[B, L] (any L; FLUX / WAN use 512).
          attention_mask: optional int[B, L] (1 = token); FLUX passes none, WAN does.

        Returns:
          {"last_hidden_state": [B, L, d_model]} after the final RMSNorm.
        """
        c, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
        length = input_ids.shape[-1]
        x = blocks.embed(c.vocab_size, c.d_model, name="shared", std=1.0, **kw)(input_ids)
        x = nn.with_logical_constraint(x, _ACT)
        buckets = jnp.asarray(
            relative_position_buckets(
                length, c.relative_attention_num_buckets, c.relative_attention_max_distance
            )
        )
        bias = blocks.padding_bias(attention_mask)
        if not c.bias_per_layer:
            rel = RelativeBias(
                c.relative_attention_num_buckets,
                c.num_heads,
                self.param_dtype,
                name="relative_attention_bias",
            )
            bias = blocks.combine(rel(buckets), bias)
        stack = blocks.stack(T5Block, c.num_layers, 2, self.remat)
        x, _ = stack(c, self.dtype, self.param_dtype, name="block")(x, bias, buckets)
        x = layers.RMSNorm(
            c.layer_norm_epsilon, (axes.EMBED,), self.param_dtype, name="final_layer_norm"
        )(x)
        return {"last_hidden_state": x}
