"""LoRA adapters (Hu et al. 2021) as linen variable collections beside frozen `params`.

A targeted Dense kernel W [in, out] gains A [in, r] and B [r, out] in collection
"lora" and a frozen float32 `scale` = alpha / r in collection "lora_scale", at the
Dense's own module path, so `ffjax.models.layers.Dense` computes

    y = x W + bias + scale * (x A) B.

The trainer differentiates the "lora" tree only; `params` and `lora_scale` stay
frozen. Under an `nn.scan` stack the kernel is [layers, in, out], so A, B and scale
carry the same leading layer axis and the scan slices them per layer.

    lora, lora_scale = init_lora(params, rank=32, alpha=64.0, targets=FLUX_TARGETS, ...)
    y = module.apply({"params": params, "lora": lora, "lora_scale": lora_scale}, ...)
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

PyTree = Any

LORA_INITS = ("gaussian", "kaiming")

# FLUX.1 transformer targets: Flow-GRPO (`scripts/train_flux.py`) and Flow-Factory
# (`Flux1Adapter.default_target_modules`) adapt the same twelve Diffusers modules of
# `FluxTransformer2DModel`, matched by PEFT as name suffixes; "attn.to_[qkv]" therefore
# also hits the single blocks' q/k/v. Our module paths for those Diffusers names:
FLUX_TARGETS: tuple[str, ...] = (
    # {transformer,single_transformer}_blocks.N.attn.to_q / to_k / to_v
    r"^(double|single)_blocks/attn/to_[qkv]$",
    # transformer_blocks.N.attn.add_q_proj / add_k_proj / add_v_proj
    r"^double_blocks/attn_context/add_[qkv]_proj$",
    # transformer_blocks.N.attn.to_out.0 / attn.to_add_out
    r"^double_blocks/to_(add_)?out$",
    # transformer_blocks.N.{ff,ff_context}.net.0.proj / net.2
    r"^double_blocks/ff(_context)?/proj_(in|out)$",
)
# Also the single blocks' MLP-in and fused output projections (Diffusers
# single_transformer_blocks.N.proj_mlp / proj_out), which the two references leave out.
FLUX_TARGETS_WITH_SINGLE_MLP: tuple[str, ...] = FLUX_TARGETS + (r"^single_blocks/proj_(mlp|out)$",)


def dense_kernels(params: PyTree) -> dict[str, tuple[int, ...]]:
    """'/'-joined module path -> kernel shape of every Dense kernel in `params`.

    A Dense kernel is a leaf named "kernel" of rank 2 ([in, out]) or 3 ([layers, in,
    out] under an `nn.scan` stack); convolution kernels (rank 4/5) are not.
    """
    flat = traverse_util.flatten_dict(_unbox(params))
    return {
        "/".join(path[:-1]): tuple(leaf.shape)
        for path, leaf in flat.items()
        if path[-1] == "kernel" and len(leaf.shape) in (2, 3)
    }


def init_lora(
    params: PyTree,
    *,
    rank: int,
    alpha: float,
    targets: Iterable[str],
    init: str = "gaussian",
    key: jax.Array,
) -> tuple[dict, dict]:
    """Fresh LoRA adapters for every Dense kernel whose module path matches a target.

    Args:
      params: the frozen parameter tree (arrays or `jax.ShapeDtypeStruct`s are fine
        for shapes; values are never read).
      rank: r > 0.
      alpha: scale numerator; scale = alpha / r.
      targets: regexes, each `re.search`ed against '/'-joined module paths such as
        "double_blocks/attn/to_q"; every pattern must match at least one Dense.
      init: A's init. "gaussian": N(0, (1/r)^2), as PEFT's init_lora_weights="gaussian";
        "kaiming": U(-1/sqrt(in), 1/sqrt(in)), PEFT's default kaiming_uniform_(a=sqrt(5))
        on A (bound = gain * sqrt(3 / fan_in) with gain = sqrt(2 / (1 + 5))).
        B = 0 either way, so a fresh adapter leaves the model unchanged.
      key: PRNG key. The draws are a function of (key, the chosen paths and shapes);
        call inside `jax.jit(..., out_shardings=...)` to create sharded adapters
        (only shapes of `params` are read, so abstract params work).

    Returns:
      (lora, lora_scale): nested dicts mirroring `params`' module paths, with
      {"a": f32[..., in, r], "b": f32[..., r, out]} and {"scale": f32[...]} (the
      leading `...` is the layer axis of scanned stacks, absent otherwise).
    """
    if not isinstance(rank, int) or rank <= 0:
        raise ValueError(f"LoRA rank must be a positive int, got {rank!r}")
    if init not in LORA_INITS:
        raise ValueError(f"LoRA init {init!r} is not allowed; allowed: {', '.join(LORA_INITS)}")
    targets = tuple(targets)
    if not targets:
        raise ValueError("LoRA targets are empty: give at least one module-path regex")
    kernels = dense_kernels(params)
    patterns = [(t, re.compile(t)) for t in targets]
    unmatched = [t for t, rx in patterns if not any(rx.search(p) for p in kernels)]
    if unmatched:
        shown = sorted(kernels)
        listing = ", ".join(shown[:12]) + (
            f", ... ({len(shown)} in all)" if len(shown) > 12 else ""
        )
        raise ValueError(
            f"LoRA target pattern(s) {unmatched} match no Dense module; "
            f"available Dense paths: {listing or '(none)'}"
        )
    chosen = tuple(
        (p, s) for p, s in sorted(kernels.items()) if any(rx.search(p) for _, rx in patterns)
    )
    return _draw(key, chosen, rank, float(alpha), init)


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4))
def _draw(key, chosen, rank, alpha, init) -> tuple[dict, dict]:
    # All A's come from one draw, sliced in sorted-path order: a single RNG op to
    # compile however many adapters there are (one threefry per path compiles slowly).
    sizes = [math.prod((*lead, n_in, rank)) for _, (*lead, n_in, _) in chosen]
    if init == "gaussian":
        flat = jax.random.normal(key, (sum(sizes),), jnp.float32)
    else:
        flat = jax.random.uniform(key, (sum(sizes),), jnp.float32, -1.0, 1.0)
    lora, scales, offset = {}, {}, 0
    for (path, (*lead, n_in, n_out)), size in zip(chosen, sizes, strict=True):
        a = flat[offset : offset + size].reshape(*lead, n_in, rank)
        offset += size
        a = a / rank if init == "gaussian" else a / math.sqrt(n_in)
        names = tuple(path.split("/"))
        lora[names] = {"a": a, "b": jnp.zeros((*lead, rank, n_out), jnp.float32)}
        scales[names] = {"scale": jnp.full(tuple(lead), alpha / rank, jnp.float32)}
    return _unflatten(lora), _unflatten(scales)


def lora_paths(lora: PyTree) -> list[str]:
    """Sorted '/'-joined module paths that carry an adapter."""
    flat = traverse_util.flatten_dict(_unbox(lora))
    return sorted({"/".join(path[:-1]) for path in flat if path[-1] == "a"})


def merge_lora(params: PyTree, lora: PyTree, lora_scale: PyTree) -> dict:
    """`params` with every adapted kernel replaced by W + scale * A B (export / eval).

    The product is formed in float32 and cast to the kernel's dtype. Returns a new
    nested dict; `params` is not modified. An adapter whose path or shapes do not fit
    `params` is an error naming the path.
    """
    flat = traverse_util.flatten_dict(_unbox(params))
    flat_scale = traverse_util.flatten_dict(_unbox(lora_scale))
    adapters = traverse_util.flatten_dict(_unbox(lora))
    for path in lora_paths(lora):
        names = tuple(path.split("/"))
        kernel = flat.get((*names, "kernel"))
        if kernel is None:
            raise ValueError(f"LoRA adapter {path!r} has no kernel in params")
        scale = flat_scale.get((*names, "scale"))
        if scale is None:
            raise ValueError(f"LoRA adapter {path!r} has no lora_scale entry")
        a, b = adapters[(*names, "a")], adapters[(*names, "b")]
        delta = jnp.matmul(a.astype(jnp.float32), b.astype(jnp.float32))
        delta = delta * jnp.asarray(scale, jnp.float32)[..., None, None]
        if delta.shape != kernel.shape:
            raise ValueError(
                f"LoRA adapter {path!r}: a @ b has shape {delta.shape}, kernel {kernel.shape}"
            )
        flat[(*names, "kernel")] = (kernel.astype(jnp.float32) + delta).astype(kernel.dtype)
    return traverse_util.unflatten_dict(flat)


def lora_partition_specs(kernel_specs: PyTree, lora: PyTree) -> tuple[dict, dict]:
    """Logical specs of (lora, lora_scale) from the adapted kernels' specs.

    `kernel_specs` is a params-shaped tree of `PartitionSpec`s / name tuples, e.g.
    `nn.get_partition_spec(jax.eval_shape(module.init, ...))["params"]`. For a kernel
    spec (*lead, in, out): A gets (*lead, in, None), B (*lead, None, out) and the
    scale (*lead,), so A and B shard like the kernel they adapt and r is replicated.
    """
    P = jax.sharding.PartitionSpec
    flat = traverse_util.flatten_dict(_to_dict(kernel_specs))
    adapters = traverse_util.flatten_dict(_unbox(lora))
    specs, scale_specs = {}, {}
    for path in lora_paths(lora):
        names = tuple(path.split("/"))
        spec = flat.get((*names, "kernel"))
        if spec is None:
            raise ValueError(f"LoRA adapter {path!r} has no kernel spec")
        ndim = len(adapters[(*names, "a")].shape)
        *lead, n_in, n_out = tuple(spec) + (None,) * (ndim - len(spec))  # P() = replicated
        specs[names] = {"a": P(*lead, n_in, None), "b": P(*lead, None, n_out)}
        scale_specs[names] = {"scale": P(*lead)}
    return _unflatten(specs), _unflatten(scale_specs)


def _unbox(tree: PyTree) -> PyTree:
    """Plain nested dicts (FrozenDicts and `nn.Partitioned` boxes removed)."""
    return _to_dict(nn.unbox(tree))


def _to_dict(tree: PyTree) -> PyTree:
    if isinstance(tree, Mapping):
        return {k: _to_dict(v) for k, v in tree.items()}
    return tree


def _unflatten(flat: dict[tuple[str, ...], dict]) -> dict:
    out = {}
    for names, leaves in flat.items():
        for leaf, value in leaves.items():
            out[(*names, leaf)] = value
    return traverse_util.unflatten_dict(out)
