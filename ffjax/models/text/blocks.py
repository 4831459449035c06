"""Pieces the text encoders share: masked attention, embeddings, LayerNorm, layer stacks.

`ffjax.models.layers.dot_product_attention` is unmasked (image/video tokens never are);
text encoders need padding and causal masks, so attention here takes an additive bias
(B or 1, H or 1, Lq, Lk), the way transformers' eager attention adds its masks.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ffjax.models import layers
from ffjax.parallel import axes

# Additive mask value: transformers uses finfo(dtype).min; our logits are float32.
MASK_VALUE = float(np.finfo(np.float32).min)

# The activation table is the model families' (`layers.ACTIVATIONS`); re-exported here.
ACTIVATIONS = layers.ACTIVATIONS
activation = layers.activation


def padding_bias(attention_mask: jax.Array | None) -> jax.Array | None:
    """int[B, L] mask (1 = token, 0 = padding) -> float32[B, 1, 1, L] additive key bias."""
    if attention_mask is None:
        return None
    return jnp.where(attention_mask[:, None, None, :] > 0, 0.0, MASK_VALUE).astype(jnp.float32)


def causal_bias(length: int) -> jax.Array:
    """float32[1, 1, L, L]: 0 where key <= query, `MASK_VALUE` above the diagonal."""
    keep = np.tril(np.ones((length, length), bool))
    return jnp.asarray(np.where(keep, 0.0, MASK_VALUE), jnp.float32)[None, None]


def combine(*biases: jax.Array | None) -> jax.Array | None:
    """Sum of the given additive biases, clipped so two masks never overflow to -inf."""
    present = [b for b in biases if b is not None]
    if not present:
        return None
    total = present[0]
    for b in present[1:]:
        total = total + b
    return jnp.maximum(total, MASK_VALUE) if len(present) > 1 else total


def embed(num: int, features: int, *, dtype, param_dtype, name: str, std: float = 0.02) -> nn.Embed:
    """nn.Embed with a (vocab, embed) logical annotation (table stored as `embedding`)."""
    init = nn.with_logical_partitioning(nn.initializers.normal(std), (axes.VOCAB, axes.EMBED))
    return nn.Embed(
        num, features, dtype=dtype, param_dtype=param_dtype, embedding_init=init, name=name
    )


def layer_norm(eps: float, *, dtype, param_dtype, name: str) -> nn.LayerNorm:
    """torch.nn.LayerNorm (two-pass variance, float32 statistics) with logical axes."""
    return nn.LayerNorm(
        epsilon=eps,
        dtype=dtype,
        param_dtype=param_dtype,
        use_fast_variance=False,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), (axes.EMBED,)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (axes.EMBED,)),
        name=name,
    )


def stack(
    block: type[nn.Module], length: int, n_broadcast: int, remat: bool = False
) -> type[nn.Module]:
    """`block` scanned `length` times; params gain a leading `layers` axis.

    The block's `__call__(x, *broadcast) -> (x, None)` takes `n_broadcast` arguments
    shared by every layer (masks, position biases, RoPE tables).
    """
    if remat:
        block = nn.remat(block, prevent_cse=False)
    return nn.scan(
        block,
        variable_axes={"params": 0, "lora": 0, "lora_scale": 0},
        split_rngs={"params": True},
        in_axes=(nn.broadcast,) * n_broadcast,
        length=length,
        metadata_params={nn.PARTITION_NAME: axes.LAYERS},
    )
