"""Shared layers: attention dispatch (xla vs a softmax reference; cuDNN / splash on their
hardware; logged fallbacks), RoPE and timestep embeddings against Diffusers."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ffjax.models import layers


def _softmax_attention(q, k, v):
    """float64 NumPy reference: softmax(q k^T / sqrt(d)) v per head; (B, L, H, D)."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("bhqk,bkhd->bqhd", p, v)


def _qkv(seed, b=2, lq=7, lk=7, h=3, d=8, dtype=jnp.float32):
    ks = jax.random.split(jax.random.key(seed), 3)
    return [
        jax.random.normal(kk, (b, n, h, d), dtype) for kk, n in zip(ks, (lq, lk, lk), strict=True)
    ]


@pytest.mark.parametrize("shape", [dict(lq=7, lk=7), dict(lq=5, lk=11, h=1, d=16)])
def test_xla_attention_matches_softmax_reference(shape):
    q, k, v = _qkv(0, **shape)
    out = layers.dot_product_attention(q, k, v, implementation="xla")
    np.testing.assert_allclose(out, _softmax_attention(q, k, v), rtol=1e-5, atol=1e-6)


def test_auto_is_xla_on_cpu():
    assert (
        layers.resolve_attention(
            "auto", dtype=jnp.bfloat16, seq_len=256, head_dim=128, platform="cpu"
        )
        == "xla"
    )


@pytest.mark.parametrize(
    "impl,platform,dtype,reason",
    [
        ("cudnn", "cpu", jnp.bfloat16, "needs an NVIDIA GPU"),
        ("cudnn", "gpu", jnp.float32, "bfloat16/float16"),
        ("splash", "cpu", jnp.bfloat16, "needs a TPU"),
        ("splash", "tpu", jnp.bfloat16, "divisible by 128"),
    ],
)
def test_fallback_is_logged(caplog, impl, platform, dtype, reason):
    layers._log_fallback.cache_clear()
    with caplog.at_level(logging.WARNING):
        got = layers.resolve_attention(
            impl, dtype=dtype, seq_len=100, head_dim=64, platform=platform
        )
    assert got == "xla"
    assert reason in caplog.text and "xla" in caplog.text


def test_unknown_implementation():
    with pytest.raises(ValueError, match="allowed"):
        layers.resolve_attention("flash", dtype=jnp.float32, seq_len=8, head_dim=8)


@pytest.mark.gpu
def test_cudnn_attention_matches_xla():
    q, k, v = _qkv(1, b=2, lq=256, lk=256, h=4, d=64, dtype=jnp.bfloat16)
    assert layers.resolve_attention("cudnn", dtype=q.dtype, seq_len=256, head_dim=64) == "cudnn"
    out = layers.dot_product_attention(q, k, v, implementation="cudnn")
    np.testing.assert_allclose(np.asarray(out, np.float32), _softmax_attention(q, k, v), atol=3e-2)


@pytest.mark.skipif(
    jax.default_backend() != "tpu", reason="splash attention is a Pallas TPU kernel; no TPU here"
)
def test_splash_attention_matches_reference():
    q, k, v = _qkv(2, b=1, lq=256, lk=256, h=2, d=128, dtype=jnp.bfloat16)
    out = layers.dot_product_attention(q, k, v, implementation="splash")
    np.testing.assert_allclose(np.asarray(out, np.float32), _softmax_attention(q, k, v), atol=3e-2)


def test_rope_and_timestep_embedding_match_diffusers():
    import torch
    from diffusers.models.embeddings import apply_rotary_emb, get_timestep_embedding
    from diffusers.models.transformers.transformer_flux import FluxPosEmbed

    ids = np.stack(
        np.meshgrid(np.arange(3), np.arange(5), np.arange(4), indexing="ij"), -1
    ).reshape(-1, 3)
    ids = ids.astype(np.float32)
    cos_t, sin_t = FluxPosEmbed(10000, [4, 6, 6])(torch.from_numpy(ids))
    cos, sin = layers.rope_frequencies(jnp.asarray(ids), (4, 6, 6), 10000.0)
    np.testing.assert_allclose(cos, cos_t.numpy(), atol=1e-6)
    np.testing.assert_allclose(sin, sin_t.numpy(), atol=1e-6)
    x = np.random.default_rng(0).normal(size=(2, len(ids), 3, 16)).astype(np.float32)
    ref = apply_rotary_emb(torch.from_numpy(x), (cos_t, sin_t), sequence_dim=1).numpy()
    np.testing.assert_allclose(layers.apply_rope(jnp.asarray(x), cos, sin), ref, atol=1e-5)

    t = np.array([0.0, 1.5, 250.0, 999.0], np.float32)
    ref = get_timestep_embedding(
        torch.from_numpy(t), 256, flip_sin_to_cos=True, downscale_freq_shift=0
    ).numpy()
    # Frequencies within 1 ulp of torch's exp; at t = 999 one ulp moves sin/cos by ~3e-5.
    np.testing.assert_allclose(layers.timestep_embedding(jnp.asarray(t), 256), ref, atol=6e-5)
