"""Sequence parallelism of the FLUX.1, Qwen-Image and WAN transformers; prints JSON.

Run by tests/parallel/test_sequence_parallel.py in a fresh process with 8 fake CPU
devices:

    XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu \
        python -m tests.parallel.sequence_parallel

For each tiny transformer (random weights, random inputs, batch 2) and each token
layout ("even": every stream's length divisible by 4; "odd": none is), the forward
output and the gradient of loss = mean(out^2) w.r.t. all params, computed

- on one device, no context mesh ("1 device"), and
- under `jax.set_mesh(data=2 x sequence=4)`, batch rows over `data` ("sequence=4"),

and, for the even layout only, the compiled forward + backward's temporary memory
(`memory_analysis().temp_size_in_bytes`) at the same per-device batch: 8 devices
data=2 x sequence=4 against 2 devices data=2 x sequence=1, and the sharding spec of
the compiled output (its length axis over `sequence` only if the constraints act).

Also the fused-attention wrapper `layers._per_device` around the XLA kernel against
the plain kernel (see `per_device_attention`).

Output: {model: {layout: {"max_err_out", "max_err_grad", "max_out", "max_grad",
["temp_sp4", "temp_sp1", "out_spec"]}}, "per_device_attention": {"mask", "no mask"}}.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from ffjax.models import layers
from ffjax.models.flux.config import FluxTransformerConfig
from ffjax.models.flux.transformer import FluxTransformer
from ffjax.models.qwen_image.config import QwenImageTransformerConfig
from ffjax.models.qwen_image.transformer import QwenImageTransformer, rope_ids
from ffjax.models.wan.config import WanTransformerConfig
from ffjax.models.wan.transformer import WanTransformer
from ffjax.parallel import axes
from ffjax.parallel import mesh as mesh_lib

B = 2
# (txt tokens, image grid): even = 8 text + 16x16 image tokens (all divisible by 4),
# odd = 5 text + 3x5 image tokens: neither stream splits over sequence=4 (it stays
# whole on each device), FLUX's joint 20 tokens and the joint attention queries do.
LAYOUTS = {"even": (8, (16, 16)), "odd": (5, (3, 5))}


def flux_case(txt_len, grid):
    c = FluxTransformerConfig(
        in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=16, pooled_projection_dim=16,
        guidance_embeds=True, axes_dims_rope=(4, 6, 6), attention="xla",
    )  # fmt: skip
    n = grid[0] * grid[1]
    r = np.random.default_rng(1)
    img_ids = np.stack(np.meshgrid(np.zeros(1), *map(np.arange, grid), indexing="ij"), -1)
    args = (
        r.normal(size=(B, n, 16)),
        r.normal(size=(B, txt_len, 16)),
        r.normal(size=(B, 16)),
        r.uniform(size=(B,)),
        img_ids.reshape(-1, 3),
        np.zeros((txt_len, 3)),
        np.full((B,), 3.5),
    )
    return FluxTransformer(c), tuple(jnp.asarray(a, jnp.float32) for a in args)


def qwen_case(txt_len, grid):
    c = QwenImageTransformerConfig(
        patch_size=2, in_channels=16, out_channels=4, num_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=24, axes_dims_rope=(4, 6, 6), attention="xla",
    )  # fmt: skip
    img_ids, txt_ids = rope_ids((1, *grid), txt_len)
    r = np.random.default_rng(2)
    mask = np.ones((B, txt_len), bool)
    mask[1, -2:] = False  # padded text keys of the second sample
    f32 = lambda a: jnp.asarray(a, jnp.float32)
    args = (
        f32(r.normal(size=(B, grid[0] * grid[1], 16))),
        f32(r.normal(size=(B, txt_len, 24))),
        jnp.asarray(mask),
        f32(r.uniform(size=(B,))),
        f32(img_ids),
        f32(txt_ids),
    )
    return QwenImageTransformer(c), args


def wan_case(txt_len, grid):
    c = WanTransformerConfig(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4,
        out_channels=4, text_dim=20, freq_dim=32, ffn_dim=36, num_layers=1,
        cross_attn_norm=True, rope_max_seq_len=32, attention="xla",
    )  # fmt: skip
    r = np.random.default_rng(3)
    f32 = lambda a: jnp.asarray(a, jnp.float32)
    # (B, F=1, H, W, C) latents: grid rows x cols tokens of 2x2 patches.
    x = r.normal(size=(B, 1, 2 * grid[0], 2 * grid[1], 4))
    args = (f32(x), f32(r.uniform(0, 1000, size=(B,))), f32(r.normal(size=(B, txt_len, 20))))
    return WanTransformer(c), args


CASES = {"flux": flux_case, "qwen-image": qwen_case, "wan": wan_case}


def random_params(module, args):
    """Seeded random params of the module's shapes (no init computation: fast to make);
    norm scales near 1, everything else N(0, 0.1^2), so no zero-init hides a bug."""
    abstract = jax.eval_shape(lambda *a: module.init(jax.random.key(0), *a), *args)["params"]
    r = np.random.default_rng(0)

    def one(path, leaf):
        noise = 0.1 * r.normal(size=leaf.shape).astype(np.float32)
        return jnp.asarray(noise + (jax.tree_util.keystr(path).endswith("'scale']")))

    unboxed = jax.tree.map(lambda a: a.value if hasattr(a, "value") else a, abstract,
                           is_leaf=lambda a: hasattr(a, "value"))  # fmt: skip
    return jax.tree_util.tree_map_with_path(one, unboxed)


def fwd_bwd(module):
    def f(params, args):
        def loss(p):
            out = module.apply({"params": p}, *args)
            return jnp.mean(jnp.square(out.astype(jnp.float32))), out

        (_, out), grad = jax.value_and_grad(loss, has_aux=True)(params)
        return out, grad

    return f


def run_on(mesh, module, params, args):
    """(compiled, out, grad) of fwd_bwd under `jax.set_mesh(mesh)`: params replicated,
    batch rows over `data`, both outputs left to the compiler."""
    rep = NamedSharding(mesh, PartitionSpec())
    rows = NamedSharding(mesh, PartitionSpec("data"))
    arg_shardings = tuple(rows if a.ndim and a.shape[0] == B else rep for a in args)
    params = jax.device_put(params, rep)
    args = tuple(jax.device_put(a, s) for a, s in zip(args, arg_shardings, strict=True))
    with jax.set_mesh(mesh):
        step = jax.jit(fwd_bwd(module), in_shardings=(rep, arg_shardings))
        compiled = step.lower(params, args).compile()
        out, grad = compiled(params, args)
    return compiled, out, grad


def max_err(a, b):
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in
               zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))  # fmt: skip


def per_device_attention(mesh):
    """Max error of `layers._per_device` (the fused kernels' shard_map wrapper, here around
    the XLA kernel so it runs on CPU) against the plain kernel: output and d/d(q, k, v),
    cross-attention shapes (16 queries, 12 keys), with and without a padding mask."""
    r = np.random.default_rng(4)
    q, k, v, w = (jnp.asarray(r.normal(size=s), jnp.float32)
                  for s in ((B, 16, 2, 8), (B, 12, 2, 8), (B, 12, 2, 8), (B, 16, 2, 8)))  # fmt: skip
    mask = np.ones((B, 1, 1, 12), bool)
    mask[0, ..., -3:] = False
    errs = {}
    for name, m in (("mask", jnp.asarray(mask)), ("no mask", None)):

        def loss(q, k, v, wrap, m=m):
            if wrap:
                spec = axes.fitted_spec(layers.Q_AXES, q.shape)
                o = layers._per_device(layers._xla_masked_attention, q, k, v, m, spec)
            else:
                o = layers._xla_masked_attention(q, k, v, m)
            return jnp.sum(o * w), o

        grad = jax.grad(loss, argnums=(0, 1, 2), has_aux=True)
        ref = jax.jit(grad, static_argnums=3)(q, k, v, False)
        with jax.set_mesh(mesh):
            got = jax.jit(grad, static_argnums=3)(q, k, v, True)
        errs[name] = max_err(got, ref)
    return errs


def main():
    devices = jax.devices()
    assert len(devices) == 8, f"needs 8 (fake) devices, got {len(devices)}"
    sp4 = mesh_lib.make_mesh({"data": 2, "sequence": 4}, devices)
    sp1 = mesh_lib.make_mesh({"data": 2}, devices[:2])
    results = {}
    for name, case in CASES.items():
        results[name] = {}
        for layout, (txt_len, grid) in LAYOUTS.items():
            module, args = case(txt_len, grid)
            params = random_params(module, args)
            ref_out, ref_grad = jax.jit(fwd_bwd(module))(params, args)
            compiled, out, grad = run_on(sp4, module, params, args)
            r = dict(
                max_err_out=max_err(out, ref_out),
                max_err_grad=max_err(grad, ref_grad),
                max_out=float(jnp.max(jnp.abs(ref_out))),
                max_grad=max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(ref_grad)),
            )
            if layout == "even":
                r["temp_sp4"] = compiled.memory_analysis().temp_size_in_bytes
                r["temp_sp1"] = (
                    run_on(sp1, module, params, args)[0].memory_analysis().temp_size_in_bytes
                )
                r["out_spec"] = [None if e is None else e if isinstance(e, str) else list(e)
                                 for e in compiled.output_shardings[0].spec]  # fmt: skip
            results[name][layout] = r
    results["per_device_attention"] = per_device_attention(sp4)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
