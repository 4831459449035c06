"""LoRA as linen collections: Dense formula, identity at init, merge equivalence,
gradients through scanned FLUX stacks, shapes and init statistics, error messages."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ffjax.models import layers, lora
from ffjax.models.flux import FluxTransformer, FluxTransformerConfig
from tests.models.flux.tiny import TRANSFORMER_CONFIGS, image_ids, rel_err

RANK, ALPHA = 4, 6.0
# Test-only: cheaper XLA:CPU compiles of the tiny FLUX model (about half the time).
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


# --------------------------------------------------------------------------- Dense


def _dense_vars(seed, n_in=5, n_out=7, r=3, scale=0.7):
    ks = jax.random.split(jax.random.key(seed), 5)
    params = {
        "kernel": jax.random.normal(ks[0], (n_in, n_out)),
        "bias": jax.random.normal(ks[1], (n_out,)),
    }
    adapter = {"a": jax.random.normal(ks[2], (n_in, r)), "b": jax.random.normal(ks[3], (r, n_out))}
    x = jax.random.normal(ks[4], (2, 3, n_in))
    return params, adapter, jnp.float32(scale), x


def test_dense_lora_matches_float64_formula():
    params, adapter, scale, x = _dense_vars(0)
    y = layers.Dense(7).apply(
        {"params": params, "lora": adapter, "lora_scale": {"scale": scale}}, x
    )
    f64 = lambda t: np.asarray(t, np.float64)
    ref = f64(x) @ f64(params["kernel"]) + f64(params["bias"])
    ref = ref + float(scale) * (f64(x) @ f64(adapter["a"])) @ f64(adapter["b"])
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


def test_dense_without_lora_is_unchanged():
    params, _, _, x = _dense_vars(1)
    plain = layers.Dense(7).apply({"params": params}, x)
    # Other modules' adapters (empty collections here) leave this Dense alone.
    empty = layers.Dense(7).apply({"params": params, "lora": {}, "lora_scale": {}}, x)
    np.testing.assert_array_equal(plain, empty)
    np.testing.assert_array_equal(plain, x @ params["kernel"] + params["bias"])


def test_dense_lora_needs_scale():
    params, adapter, _, x = _dense_vars(2)
    with pytest.raises(ValueError, match="lora_scale"):
        layers.Dense(7).apply({"params": params, "lora": adapter}, x)


# --------------------------------------------------------------------------- FLUX


@functools.cache
def _flux(name="guided", remat="full"):
    """(module, params, inputs, jitted apply) of a tiny FluxTransformer (our module only).

    "guided" has both scanned stacks (2 double, 1 single block); remat="full" makes
    the lora collections also pass through `nn.remat` inside the scans.

    Parameters are seeded random draws of the shapes `module.init` gives (cheaper than
    compiling init, and no zero-initialised AdaLN / bias hides a bug).
    """
    cfg = FluxTransformerConfig.from_diffusers(
        TRANSFORMER_CONFIGS[name], attention="xla", remat=remat
    )
    module = FluxTransformer(cfg)
    h, w, lt, b = 2, 3, 5, 2
    rng = np.random.default_rng(7)
    f32 = lambda *shape: jnp.asarray(rng.standard_normal(shape), jnp.float32)
    args = [
        f32(b, h * w, cfg.in_channels),
        f32(b, lt, cfg.joint_attention_dim),
        f32(b, cfg.pooled_projection_dim),
        jnp.asarray(rng.uniform(size=b), jnp.float32),
        jnp.asarray(image_ids(h, w)),
        jnp.zeros((lt, 3)),
    ]
    if cfg.guidance_embeds:
        args.append(jnp.asarray(1 + 4 * rng.uniform(size=b), jnp.float32))
    shapes = nn.unbox(jax.eval_shape(module.init, jax.random.key(0), *args))["params"]

    def draw(path, s):
        n = rng.standard_normal(s.shape).astype(np.float32)
        kind = path[-1].key
        if kind == "kernel":
            return jnp.asarray(n / np.sqrt(s.shape[-2]))
        return jnp.asarray(1 + 0.1 * n if kind == "scale" else 0.1 * n)

    params = jax.tree_util.tree_map_with_path(draw, shapes)
    apply = jax.jit(lambda variables: module.apply(variables, *args), compiler_options=FAST_COMPILE)
    return module, params, tuple(args), apply


def _fresh(params, targets=lora.FLUX_TARGETS_WITH_SINGLE_MLP, **kw):
    return lora.init_lora(
        params, rank=RANK, alpha=ALPHA, targets=targets, key=jax.random.key(3), **kw
    )


def _randomise_b(adapters, seed=5, std=0.1):
    rng = np.random.default_rng(seed)
    return {
        k: _randomise_b(v, seed + i + 1, std)
        if "b" not in v
        else {"a": v["a"], "b": v["b"] + std * rng.standard_normal(v["b"].shape, np.float32)}
        for i, (k, v) in enumerate(sorted(adapters.items()))
    }


def test_fresh_dense_lora_is_bit_identical_under_jit():
    params, adapter, scale, x = _dense_vars(3)
    adapter = {"a": adapter["a"], "b": jnp.zeros_like(adapter["b"])}
    f = jax.jit(layers.Dense(7).apply)
    plain = f({"params": params}, x)
    np.testing.assert_array_equal(
        f({"params": params, "lora": adapter, "lora_scale": {"scale": scale}}, x), plain
    )


def test_fresh_lora_leaves_flux_unchanged():
    """B = 0: the adapter term is exactly 0 and every Dense output is unchanged.

    The whole model agrees to a few float32 ulps, not bitwise: XLA:CPU's fusion
    emitters generate slightly different code for a fusion with the extra (zero) add
    (the results are bit-identical with XLA_FLAGS=--xla_cpu_use_fusion_emitters=false,
    and per Dense above).
    """
    _, params, _, apply = _flux()
    adapters, scales = _fresh(params)
    plain = apply({"params": params})
    with_lora = apply({"params": params, "lora": adapters, "lora_scale": scales})
    np.testing.assert_allclose(with_lora, plain, rtol=0, atol=1e-6 * float(np.abs(plain).max()))


def test_lora_equals_merged_params():
    _, params, _, apply = _flux()
    adapters, scales = _fresh(params)
    adapters = _randomise_b(adapters)
    out = apply({"params": params, "lora": adapters, "lora_scale": scales})
    merged = apply({"params": lora.merge_lora(params, adapters, scales)})
    plain = apply({"params": params})
    assert rel_err(out, plain) > 1e-3  # the adapters do change the output
    np.testing.assert_allclose(out, merged, rtol=1e-5, atol=1e-5 * float(np.abs(merged).max()))


def test_gradients_reach_every_adapter_and_layer():
    module, params, args, _ = _flux()
    adapters, scales = _fresh(params)

    def loss(ad):
        out = module.apply({"params": params, "lora": ad, "lora_scale": scales}, *args)
        return jnp.mean(out**2)

    grad = jax.jit(jax.grad(loss), compiler_options=FAST_COMPILE)
    g0 = grad(adapters)  # taken w.r.t. the lora tree only: params get no gradient
    assert jax.tree.structure(g0) == jax.tree.structure(adapters)
    for path in lora.lora_paths(adapters):
        node = functools.reduce(dict.__getitem__, path.split("/"), g0)
        assert not np.any(node["a"]), path  # B = 0 blocks the gradient to A ...
        assert _nonzero_per_layer(node["b"]), path  # ... but not to B
    # One SGD step on B: now both factors of every adapter, in every layer, learn.
    stepped = jax.tree.map(lambda p, g: p - 1.0 * g, adapters, g0)
    g1 = grad(stepped)
    for path in lora.lora_paths(adapters):
        node = functools.reduce(dict.__getitem__, path.split("/"), g1)
        assert _nonzero_per_layer(node["a"]) and _nonzero_per_layer(node["b"]), path


def _nonzero_per_layer(g):
    g = np.asarray(g)
    return bool(np.all(np.abs(g).reshape(g.shape[0], -1).max(-1) > 0))


def test_scanned_and_plain_shapes():
    _, params, _, _ = _flux()
    targets = lora.FLUX_TARGETS + (r"^x_embedder$",)
    adapters, scales = _fresh(params, targets=targets)
    q = adapters["double_blocks"]["attn"]["to_q"]
    assert q["a"].shape == (2, 32, RANK) and q["b"].shape == (2, RANK, 32)
    assert q["a"].dtype == q["b"].dtype == jnp.float32
    ff = adapters["double_blocks"]["ff"]["proj_out"]
    assert ff["a"].shape == (2, 128, RANK) and ff["b"].shape == (2, RANK, 32)
    s = scales["double_blocks"]["attn"]["to_q"]["scale"]
    assert s.shape == (2,) and s.dtype == jnp.float32
    np.testing.assert_array_equal(s, np.full(2, ALPHA / RANK, np.float32))
    single = adapters["single_blocks"]["attn"]["to_k"]
    assert single["a"].shape == (1, 32, RANK)
    x = adapters["x_embedder"]
    assert x["a"].shape == (16, RANK) and x["b"].shape == (RANK, 32)
    assert scales["x_embedder"]["scale"].shape == ()
    # FLUX_TARGETS: the twelve Diffusers modules of Flow-GRPO / Flow-Factory (q/k/v
    # also in single blocks); not the final proj_out, AdaLN or embedders.
    paths = lora.lora_paths(adapters)
    assert "proj_out" not in paths and "double_blocks/norm1/linear" not in paths
    assert "single_blocks/proj_mlp" not in paths and len(paths) == 12 + 3 + 1


def test_init_statistics():
    params = {"blk": {"kernel": jnp.zeros((3, 400, 300))}}
    for init, check in [
        ("gaussian", lambda a: abs(float(a.std()) * 16 - 1) < 0.02),
        ("kaiming", lambda a: float(np.abs(a).max()) <= 1 / 20 and float(a.std()) > 0.028),
    ]:
        adapters, _ = lora.init_lora(
            params, rank=16, alpha=16.0, targets=["blk"], init=init, key=jax.random.key(0)
        )
        a, b = adapters["blk"]["a"], adapters["blk"]["b"]
        assert check(np.asarray(a)), init
        assert not np.any(b)
        assert not np.array_equal(a[0], a[1])  # each stacked layer has its own draw


def test_unmatched_pattern_is_an_error():
    _, params, _, _ = _flux()
    with pytest.raises(ValueError) as e:
        _fresh(params, targets=(r"attn/to_q", r"ff\.net\.0\.proj"))
    msg = str(e.value)
    assert r"ff\\.net\\.0\\.proj" in msg and "attn/to_q'" not in msg
    assert "double_blocks/attn/to_k" in msg  # lists available Dense paths


@pytest.mark.parametrize("rank", [0, -2])
def test_bad_rank_is_an_error(rank):
    with pytest.raises(ValueError, match="rank"):
        lora.init_lora(
            {"d": {"kernel": jnp.zeros((2, 2))}},
            rank=rank,
            alpha=1.0,
            targets=["d"],
            key=jax.random.key(0),
        )


def test_partition_specs_follow_the_kernel():
    P = jax.sharding.PartitionSpec
    specs = {"blk": {"kernel": P("layers", "embed", "heads"), "bias": P("layers", "heads")}}
    adapters, _ = lora.init_lora(
        {"blk": {"kernel": jnp.zeros((2, 4, 6))}},
        rank=2,
        alpha=2.0,
        targets=["blk"],
        key=jax.random.key(0),
    )
    a_specs, s_specs = lora.lora_partition_specs(specs, adapters)
    assert a_specs["blk"] == {"a": P("layers", "embed", None), "b": P("layers", None, "heads")}
    assert s_specs["blk"] == {"scale": P("layers")}
    a_specs, _ = lora.lora_partition_specs({"blk": {"kernel": P()}}, adapters)
    assert a_specs["blk"] == {"a": P(None, None, None), "b": P(None, None, None)}
