"""Shardings of the trainer's pytrees from the model's logical parameter axes.

- Weights (frozen params, full fine-tuning's trainable params, reference copy, EMA):
  each leaf's logical spec (from the model's annotations) mapped through the rules of
  `ffjax.parallel.axes`.
- LoRA: A [.., in, r] shards like its kernel's `in` axis, B [.., r, out] like its
  `out` axis, r replicated (`ffjax.models.lora.lora_partition_specs`); so `x A` and
  `(x A) B` need the same collectives as `x W`, and the adapters' memory is split the
  same way as the kernels'.
- Optimizer state: every copy of the trainable tree inside it (Adam's mu / nu,
  MultiSteps' accumulated gradients) gets the trainable shardings
  (`optax.tree_map_params`); counters and other leaves are replicated.
- Batches: the leading (row) axis over ("data", "fsdp"), everything else replicated.

A mesh axis that does not divide a leaf's dimension is dropped for that dimension
(that dimension is replicated): tiny test models and odd sizes (e.g. FLUX's 64
output channels on fsdp=128) still run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import optax
from flax import traverse_util
from jax.sharding import NamedSharding, PartitionSpec

from ffjax.parallel.axes import DEFAULT_RULES, fit_spec  # fit_spec re-exported

BATCH_AXES = ("data", "fsdp")  # mesh axes of the rows of a batch (axes.BATCH's rule)


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def _key(entry) -> Any:
    return getattr(entry, "key", getattr(entry, "name", getattr(entry, "idx", entry)))


def logical_shardings(
    tree: Any,
    logical_specs: Any,
    mesh: jax.sharding.Mesh,
    rules: Sequence[tuple[str, Any]] = DEFAULT_RULES,
) -> Any:
    """NamedShardings for the arrays of `tree` (same structure as `tree`).

    `logical_specs` is a nested dict of logical `PartitionSpec`s matched to `tree` by
    key path (e.g. `nn.get_partition_spec(abstract_params)`); leaves it lacks, or a
    `logical_specs` of None, are replicated.
    """
    flat = {} if logical_specs is None else traverse_util.flatten_dict(_plain(logical_specs))

    def one(path, leaf):
        spec = flat.get(tuple(_key(p) for p in path))
        mesh_spec = PartitionSpec() if spec is None else nn.logical_to_mesh_axes(spec, rules)
        return NamedSharding(mesh, fit_spec(mesh_spec, leaf.shape, mesh))

    return jax.tree_util.tree_map_with_path(one, tree)


def batch_shardings(tree: Any, mesh: jax.sharding.Mesh) -> Any:
    """Leading axis of every leaf over ("data", "fsdp"), where it divides."""
    spec = PartitionSpec(BATCH_AXES)
    return jax.tree.map(lambda a: NamedSharding(mesh, fit_spec(spec, a.shape[:1], mesh)), tree)


def opt_state_shardings(
    optimizer: optax.GradientTransformation, opt_state: Any, trainable_shardings: Any, mesh
) -> Any:
    """The trainable shardings for each copy of the trainable tree in `opt_state`."""
    rep = replicated(mesh)
    return optax.tree_map_params(
        optimizer,
        lambda _, s: s,
        opt_state,
        trainable_shardings,
        transform_non_params=lambda leaf: jax.tree.map(lambda _: rep, leaf),
    )


def _plain(tree: Any) -> Any:
    if hasattr(tree, "items"):
        return {k: _plain(v) for k, v in tree.items()}
    return tree
