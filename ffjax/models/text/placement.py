"""Text-encoder parameters on a device mesh, sharded by their logical axes.

Text encoders are large (FLUX.1's T5-XXL 4.7B parameters, Qwen-Image's Qwen2.5-VL 7B,
WAN's UMT5-XXL 5.7B) and frozen: replicated, they need their whole size on every
device even when the generator beside them is FSDP-sharded. Their modules annotate
every parameter with `ffjax.parallel.axes` names, so they shard like any other weight:

    shardings = param_shardings(module, mesh)          # NamedShardings, params' tree
    params = place_params(module, params, mesh)        # device_put onto them
    encoder.place(mesh)                                # a TextEncoder (encode.py)
    place_encoders(adapter.text, mesh)                 # TextEncoder, FluxText, or None

The logical -> mesh rules are `ffjax.parallel.axes.DEFAULT_RULES` (the trainer's);
a mesh axis that does not divide a dimension is dropped for it
(`ffjax.parallel.sharding.fit_spec`), so odd tiny test sizes still run. Encoding a
placed encoder is one `jax.jit` with the batch replicated on the mesh and the outputs
replicated (`sharded_apply`); XLA partitions each layer's matmuls over the weight
shards (on CPU: all-reduces of partial activations, no weight gathered whole), so a
34 MB UMT5 on fsdp=8 compiles to 1/8 of its weights per device plus under 1/8 of
scratch (tests/parallel/test_text_encoder_mesh.py).

Adapter contract (optional, like rewards' `place`): `adapter.place_encoders(mesh)`
shards its text encoders (the trainer calls it once the mesh exists; an adapter
without it keeps its encoders on one device), and the classmethod
`text_encoder_specs(config)` gives the logical specs of `abstract_text_encoders(config)`
(same keys) for dry runs. `load_encoder` keeps params on the host until placed, so no
device ever holds a whole encoder on the way. In a multi-process run each process
encodes its own prompts, so an encoder goes on the process-local mesh
(`ffjax.parallel.rows.local_mesh(mesh)`), as reward models do.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from ffjax.parallel.axes import DEFAULT_RULES
from ffjax.parallel.sharding import logical_shardings, replicated


def abstract_params(module: nn.Module) -> Any:
    """The boxed abstract params (logical axis metadata kept) of a text encoder module;
    every encoder here takes `(input_ids, attention_mask=None)`, so one token is enough."""
    ids = jax.ShapeDtypeStruct((1, 1), jnp.int32)
    return jax.eval_shape(module.init, jax.random.key(0), ids)["params"]


def param_shardings(
    module: nn.Module, mesh: jax.sharding.Mesh, rules: Sequence[tuple[str, Any]] = DEFAULT_RULES
) -> dict[str, Any]:
    """NamedShardings of `module`'s params (a plain nested dict, as the loaders return),
    from its logical annotations mapped through `rules` onto `mesh`."""
    abstract = abstract_params(module)
    plain = nn.unbox(_plain(abstract))
    return logical_shardings(plain, nn.get_partition_spec(abstract), mesh, rules)


def flat_placer(module: nn.Module, mesh: jax.sharding.Mesh):
    """`place(path, array)` for `ffjax.models.weights.load_params`: each tensor goes from
    the host straight onto its sharding (no device ever holds the whole tensor)."""
    flat = traverse_util.flatten_dict(param_shardings(module, mesh), sep="/")
    return lambda path, a: jax.device_put(a, flat[path])


def place_params(module: nn.Module, params: Any, mesh: jax.sharding.Mesh) -> Any:
    """`params` (host NumPy or device arrays) put onto `param_shardings(module, mesh)`."""
    return jax.device_put(params, param_shardings(module, mesh))


@functools.lru_cache(maxsize=32)
def sharded_apply(module: nn.Module, mesh: jax.sharding.Mesh):
    """One compiled apply per (module, mesh): params keep their (committed) shardings,
    the token batch comes in and the outputs go out replicated on `mesh`."""
    rep = replicated(mesh)
    fn = jax.jit(
        lambda params, ids, mask: module.apply({"params": params}, ids, mask), out_shardings=rep
    )

    def call(params, ids, mask):
        ids = jax.device_put(np.asarray(ids, np.int32), rep)
        mask = None if mask is None else jax.device_put(np.asarray(mask, np.int32), rep)
        return fn(params, ids, mask)

    call.jitted = fn  # for `.lower(...)`: memory analysis, dry runs
    return call


def place_encoders(text: Any, mesh: jax.sharding.Mesh) -> None:
    """Places every `TextEncoder` of `text` on `mesh` (in place): a TextEncoder, a
    dataclass of them (`FluxText`), or None (an adapter built without encoders)."""
    from ffjax.models.text.encode import TextEncoder

    if text is None:
        return
    if isinstance(text, TextEncoder):
        text.place(mesh)
        return
    if not dataclasses.is_dataclass(text):
        raise TypeError(f"place_encoders: {type(text).__name__} is not a TextEncoder or a bundle")
    for field in dataclasses.fields(text):
        value = getattr(text, field.name)
        if isinstance(value, TextEncoder):
            value.place(mesh)


def _plain(tree: Any) -> Any:
    if hasattr(tree, "items"):
        return {k: _plain(v) for k, v in tree.items()}
    return tree
