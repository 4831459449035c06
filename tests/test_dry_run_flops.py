"""Model FLOPs of the dry run (`ffjax.flops`): counted from the jaxpr, checked by hand on
small programs and against XLA's own cost analysis of a FLUX.1 transformer on CPU."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ffjax import flops
from tests import flux_dev_configs


def _xla_flops(fn, *args) -> float:
    analysis = jax.jit(fn).lower(*args).compile().cost_analysis()
    return (analysis if isinstance(analysis, dict) else analysis[0])["flops"]


def test_counts_by_hand():
    w, x = jnp.ones((64, 48)), jnp.ones((128, 64))
    h, k = jnp.ones((2, 64, 8, 8)), jnp.ones((32, 64, 3, 3))
    q = jnp.ones((2, 40, 4, 16))
    conv = lambda h, k: jax.lax.conv_general_dilated(h, k, (1, 1), "SAME")
    attention = lambda q: jax.nn.dot_product_attention(q, q, q)
    scan = lambda v, x: jax.lax.scan(lambda c, _: (c @ v, None), x, None, length=3)[0]
    fori = lambda v, x: jax.lax.fori_loop(0, 5, lambda i, c: c @ v, x)
    cond = lambda v, x: jax.lax.cond(x[0, 0] > 0, lambda: x @ v @ v, lambda: x @ v)
    v = jnp.ones((64, 64))
    assert flops.count(lambda w, x: x @ w, w, x).flops == 2 * 128 * 64 * 48
    # Every output position x (64 input channels x 3 x 3 taps), padding included.
    assert flops.count(conv, h, k).flops == 2 * (2 * 32 * 8 * 8) * 64 * 9
    assert flops.count(attention, q).flops == 2 * (2 * 2 * 4 * 40 * 40 * 16)  # QK^T, PV
    assert flops.count(scan, v, x).flops == 3 * 2 * 128 * 64 * 64
    assert flops.count(fori, v, x).flops == 5 * 2 * 128 * 64 * 64
    assert flops.count(cond, v, x).flops == 2 * 2 * 128 * 64 * 64  # the costlier branch
    # XLA counts a loop's body once: the count multiplies it.
    assert _xla_flops(scan, v, x) < 0.4 * flops.count(scan, v, x).flops


def test_while_without_a_counted_trip_is_flagged():
    v, x = jnp.ones((8, 8)), jnp.ones((4, 8))
    f = lambda v, x: jax.lax.while_loop(lambda c: c[0, 0] < 10.0, lambda c: c @ v, x)
    count = flops.count(f, v, x)
    assert (count.flops, count.uncounted_loops) == (2 * 4 * 8 * 8, 1)


@pytest.fixture(scope="module")
def flux_block():
    """A FLUX.1 transformer of one double and one single block (its layer scans run
    once, as XLA's cost analysis counts them), 256 wide, 256 image + 64 text tokens."""
    from ffjax.models.flux.config import FluxTransformerConfig
    from ffjax.models.flux.convert import transformer_init_shapes

    cfg = FluxTransformerConfig.from_diffusers(dict(
        flux_dev_configs.TRANSFORMER, num_layers=1, num_single_layers=1, num_attention_heads=4,
        attention_head_dim=64, joint_attention_dim=256, pooled_projection_dim=64,
        axes_dims_rope=[8, 28, 28],
    ))  # fmt: skip
    module, abstract = transformer_init_shapes(cfg)
    params = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), abstract)
    ids = np.stack(np.meshgrid(np.arange(1), np.arange(16), np.arange(16), indexing="ij"), -1)
    inputs = (jnp.ones((1, 256, 64)), jnp.ones((1, 64, 256)), jnp.ones((1, 64)),
              jnp.ones((1,)), jnp.asarray(ids.reshape(-1, 3), jnp.float32),
              jnp.zeros((64, 3)), jnp.ones((1,)))  # fmt: skip
    forward = lambda p, *a: module.apply({"params": p}, *a)
    return forward, params, inputs


def test_transformer_count_matches_xla_cost_analysis(flux_block):
    forward, params, inputs = flux_block
    count = flops.count(forward, params, *inputs)
    xla = _xla_flops(forward, params, *inputs)
    # XLA adds the elementwise work (norms, GELU, softmax, RoPE), a few percent here.
    print(f"counted {count.flops:.4g}, XLA {xla:.4g}")
    assert count.uncounted_loops == 0
    assert count.flops <= xla <= 1.1 * count.flops

    loss = lambda p, *a: jnp.sum(forward(p, *a) ** 2)
    grad = flops.count(jax.grad(loss), params, *inputs)
    xla_grad = _xla_flops(jax.grad(loss), params, *inputs)
    print(f"gradient: counted {grad.flops:.4g}, XLA {xla_grad:.4g}")
    # Forward + the input and weight gradients of every matmul: ~3x the forward.
    assert 2.7 * count.flops <= grad.flops <= 3.1 * count.flops
    assert grad.flops <= xla_grad <= 1.15 * grad.flops


def test_pallas_kernels_count_their_estimate_or_are_flagged():
    from jax.experimental import pallas as pl

    def kernel(x_ref, o_ref):
        o_ref[...] = x_ref[...] @ x_ref[...]

    x = jnp.ones((8, 8))
    shape = jax.ShapeDtypeStruct(x.shape, x.dtype)
    plain = lambda x: pl.pallas_call(kernel, out_shape=shape, interpret=True)(x)
    estimate = pl.CostEstimate(flops=1024, transcendentals=0, bytes_accessed=512)
    costed = lambda x: pl.pallas_call(kernel, out_shape=shape, interpret=True,
                                      cost_estimate=estimate)(x)  # fmt: skip
    assert flops.count(plain, x) == flops.Count(0, 0, uncounted_kernels=1)
    assert flops.count(costed, x) == flops.Count(1024)
