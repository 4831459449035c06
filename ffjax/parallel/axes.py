"""Logical axis names, defined once, and the default logical -> mesh axis rules.

Model code annotates parameters and activations with these names only
(`nn.with_logical_partitioning`, `nn.with_logical_constraint`); which mesh axis
(`data`, `fsdp`, `tensor`, `sequence`) each maps to is a config choice (a rules table
like `DEFAULT_RULES`), so one model definition shards any way the run asks for.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax

# Activation axes.
BATCH = "batch"  # samples in a batch
LENGTH = "length"  # tokens of a sequence (image patches, text tokens, video patches)
# Parameter (and activation feature) axes.
EMBED = "embed"  # model width (hidden size)
HEADS = "heads"  # attention heads
KV = "kv"  # per-head feature dimension
MLP = "mlp"  # feed-forward hidden width (and other "wide" projections, e.g. AdaLN outputs)
LAYERS = "layers"  # stacked layers of an `nn.scan`
VOCAB = "vocab"  # token embedding table rows
CONV_IN = "conv_in"  # input channels of a convolution kernel
CONV_OUT = "conv_out"  # output channels of a convolution kernel

ALL = (BATCH, LENGTH, EMBED, HEADS, KV, MLP, LAYERS, VOCAB, CONV_IN, CONV_OUT)

# FSDP over `fsdp`, tensor parallelism over `tensor`, batch over `data` (+ `fsdp`),
# sequence parallelism over `sequence`. An axis absent from the mesh is ignored by Flax.
DEFAULT_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    (BATCH, ("data", "fsdp")),
    (LENGTH, "sequence"),
    (EMBED, "fsdp"),
    (HEADS, "tensor"),
    (KV, None),
    (MLP, "tensor"),
    (LAYERS, None),
    (VOCAB, "tensor"),
    (CONV_IN, None),
    (CONV_OUT, None),
)


def param_shardings(
    abstract_params, mesh: jax.sharding.Mesh, rules: Sequence[tuple[str, object]] = DEFAULT_RULES
):
    """NamedShardings for a (boxed, e.g. `jax.eval_shape(module.init, ...)`) param tree.

    Leaves without logical annotations are replicated.
    """
    specs = nn.get_partition_spec(abstract_params)
    return nn.logical_to_mesh_sharding(specs, mesh, list(rules))
