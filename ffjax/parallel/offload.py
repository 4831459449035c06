"""Weights kept in host memory between uses (`config.ema.offload`, `config.train.offload_ref`).

A NamedSharding with memory kind `pinned_host` keeps each device's shard in the host
RAM of its process, laid out as on the device, so moving it to the device and back is a
DMA of the same shards (no gather, no re-layout). Inside a jitted function
`to_device(tree, shardings)` is the transfer (XLA schedules it, and can overlap it with
compute); outside, it is an ordinary `jax.device_put`.

    host = host_shardings(shardings)         # the same specs, in pinned host memory
    ema = jax.device_put(ema, host)           # resident in host RAM
    weights = to_device(ema, shardings)       # a device copy for one use
"""

from __future__ import annotations

from typing import Any

import jax
from jax.sharding import NamedSharding

from ffjax.configs import ConfigError

HOST = "pinned_host"


def supports_host_memory(mesh: jax.sharding.Mesh) -> bool:
    """Whether every device of `mesh` can address pinned host memory."""
    return all(
        HOST in {m.kind for m in d.addressable_memories()}
        for d in mesh.devices.flat
        if d.process_index == jax.process_index()
    )


def check_host_memory(mesh: jax.sharding.Mesh, key: str) -> None:
    """ConfigError naming `key` when the mesh's devices have no pinned host memory."""
    if not supports_host_memory(mesh):
        kinds = sorted({m.kind for m in mesh.devices.flat[0].addressable_memories()})
        raise ConfigError(
            f"config.{key}=True keeps weights in {HOST!r} memory, which the"
            f" {mesh.devices.flat[0].platform} devices do not have (memory kinds: {kinds});"
            f" set config.{key}=False"
        )


def host_shardings(shardings: Any) -> Any:
    """`shardings` (a tree of NamedShardings) with their shards in pinned host memory."""
    return jax.tree.map(lambda s: s.with_memory_kind(HOST), shardings)


def device_shardings(shardings: Any) -> Any:
    """`shardings` with their shards in the devices' default memory."""

    def one(s: NamedSharding) -> NamedSharding:
        kind = s.mesh.devices.flat[0].default_memory().kind
        return s.with_memory_kind(kind)

    return jax.tree.map(one, shardings)


def on_host(shardings: Any) -> bool:
    """Whether any sharding of the tree keeps its shards in host memory."""
    return any(getattr(s, "memory_kind", None) == HOST for s in jax.tree.leaves(shardings))


def to_device(tree: Any, shardings: Any) -> Any:
    """`tree` moved to the devices' memory with `shardings`' specs (traceable in jit)."""
    return jax.device_put(tree, device_shardings(shardings))


def to_host(tree: Any, shardings: Any) -> Any:
    """`tree` moved to pinned host memory with `shardings`' specs (traceable in jit)."""
    return jax.device_put(tree, host_shardings(shardings))
