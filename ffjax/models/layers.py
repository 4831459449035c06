"""Linen layers shared by the model families: Dense, norms, MLP, RoPE, modulation, attention.

Conventions: activations are (batch, length, features) with heads split as
(batch, length, heads, head_dim); parameters carry logical axis names from
`ffjax.parallel.axes`; numerically sensitive reductions (norms, softmax, RoPE) run in
float32 whatever the activation dtype, as the Diffusers references do.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import PartitionSpec as P

from ffjax.parallel import axes

Dtype = Any

# --------------------------------------------------------------------------- dense / norms


class Dense(nn.Module):
    """y = x @ kernel + bias, kernel (in, out) annotated with logical `kernel_axes`.

    Parameter names match `nn.Dense` (kernel, bias), so key tables stay uniform.

    LoRA (Hu et al. 2021): when the variables passed to `apply` hold `a` [in, r] and
    `b` [r, out] in collection "lora" and `scale` in collection "lora_scale" at this
    module's path, y += scale * (x @ a) @ b, in the activation dtype like the main
    matmul. Without a "lora" entry the layer is exactly the plain Dense. The adapters
    are made by `ffjax.models.lora.init_lora`; they are never created here.
    """

    features: int
    kernel_axes: tuple[str | None, str | None] = (axes.EMBED, axes.MLP)
    use_bias: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(nn.initializers.lecun_normal(), self.kernel_axes),
            (x.shape[-1], self.features),
            self.param_dtype,
        )
        y = jnp.dot(x.astype(self.dtype), kernel.astype(self.dtype))
        if self.use_bias:
            bias = self.param(
                "bias",
                nn.with_logical_partitioning(nn.initializers.zeros_init(), self.kernel_axes[1:]),
                (self.features,),
                self.param_dtype,
            )
            y = y + bias.astype(self.dtype)
        if self.has_variable("lora", "a"):
            y = y + self._lora(x)
        return y

    def _lora(self, x: jax.Array) -> jax.Array:
        a, b = self.get_variable("lora", "a"), self.get_variable("lora", "b")
        if not self.has_variable("lora_scale", "scale"):
            raise ValueError(
                f"Dense {'/'.join(self.scope.path)} has LoRA 'a' but no 'lora_scale/scale': "
                "pass both collections made by ffjax.models.lora.init_lora"
            )
        scale = self.get_variable("lora_scale", "scale")
        dt = self.dtype
        h = jnp.dot(jnp.dot(x.astype(dt), a.astype(dt)), b.astype(dt))
        return h * jnp.asarray(scale).astype(dt)


def layer_norm(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    """LayerNorm over the last axis without affine parameters, computed in float32."""
    x32 = x.astype(jnp.float32)
    mean = x32.mean(-1, keepdims=True)
    var = jnp.square(x32 - mean).mean(-1, keepdims=True)
    return ((x32 - mean) * jax.lax.rsqrt(var + eps)).astype(x.dtype)


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * scale over the last axis (torch.nn.RMSNorm)."""

    eps: float = 1e-6
    scale_axes: tuple[str | None] = (axes.KV,)
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param(
            "scale",
            nn.with_logical_partitioning(nn.initializers.ones_init(), self.scale_axes),
            (x.shape[-1],),
            self.param_dtype,
        )
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.square(x32).mean(-1, keepdims=True) + self.eps)
        return (y * scale.astype(jnp.float32)).astype(x.dtype)


def modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
    """AdaLN modulation x * (1 + scale) + shift; x (B, L, D), shift/scale (B, D)."""
    return x * (1 + scale[:, None]) + shift[:, None]


# --------------------------------------------------------------------------- MLP

# Activations by name, so that modules keep hashable string fields: transformers'
# `ACT2FN` names, and Diffusers' "gelu_tanh" (`PixArtAlphaTextProjection`).
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
}


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """The activation called `name` (transformers' `ACT2FN[name]`); unknown names are an error."""
    if name not in ACTIVATIONS:
        raise ValueError(f"activation {name!r} is not supported; allowed: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


class MLP(nn.Module):
    """names[1](act(names[0](x))): two Dense layers with an activation between.

    The one definition behind Diffusers' `TimestepEmbedding` (linear_1 / linear_2, silu),
    `PixArtAlphaTextProjection` (linear_1 / linear_2, tanh GELU) and `FeedForward`
    (proj_in / proj_out for `net.0.proj` / `net.2`, GELU), and CLIP's MLP (fc1 / fc2).
    Kernels are (in_axis, MLP) then (MLP, EMBED): the second keeps one logical name per
    dimension when it is square; `in_axis` None leaves an input that is not the model
    width (a sinusoidal embedding, a text encoder's states) unsharded.
    """

    hidden: int
    features: int
    act: str  # a key of ACTIVATIONS
    names: tuple[str, str] = ("proj_in", "proj_out")
    in_axis: str | None = axes.EMBED
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = Dense(self.hidden, (self.in_axis, axes.MLP), name=self.names[0], **kw)(x)
        return Dense(self.features, (axes.MLP, axes.EMBED), name=self.names[1], **kw)(
            activation(self.act)(h)
        )


# --------------------------------------------------------------------------- embeddings


def timestep_embedding(
    t: jax.Array,
    dim: int,
    *,
    flip_sin_to_cos: bool = True,
    freq_shift: float = 0.0,
    max_period: float = 10000.0,
    scale: float = 1.0,
) -> jax.Array:
    """Sinusoidal embedding of float32[B] timesteps -> float32[B, dim] (DDPM, Ho et al. 2020).

    freq_j = exp(-log(max_period) j / (dim/2 - freq_shift)); angles scale * (t freq_j)
    (the product first, as Diffusers rounds it); output [sin, cos] (or [cos, sin] with
    flip_sin_to_cos), as Diffusers' `get_timestep_embedding`.
    """
    half = dim // 2
    # The exponent in float32 in Diffusers' order of operations (bit-equal to its), then
    # exp correctly rounded: within 1 ulp of torch's exp, where exp of the float64
    # exponent was 10 ulps off, which t * 1000 magnifies to ~1e-5 in the embedding.
    exponent = np.float32(-math.log(max_period)) * np.arange(half, dtype=np.float32)
    exponent = exponent / np.float32(half - freq_shift)
    freqs = np.exp(exponent.astype(np.float64)).astype(np.float32)
    args = t.astype(jnp.float32)[:, None] * jnp.asarray(freqs, jnp.float32)[None]
    if scale != 1.0:
        args = args * jnp.float32(scale)
    sin, cos = jnp.sin(args), jnp.cos(args)
    emb = jnp.concatenate([cos, sin] if flip_sin_to_cos else [sin, cos], axis=-1)
    return jnp.pad(emb, ((0, 0), (0, dim % 2)))


def rope_frequencies(
    ids: jax.Array, axes_dim: tuple[int, ...], theta: float
) -> tuple[jax.Array, jax.Array]:
    """Multi-axis rotary frequencies: ids float[L, n_axes] -> (cos, sin) float32[L, sum(axes_dim)].

    Axis a contributes angles ids[:, a] * theta^(-2j / axes_dim[a]), j < axes_dim[a]/2,
    each repeated twice (interleaved pairs), as FLUX's `FluxPosEmbed` (Su et al. 2021).
    """
    cos, sin = [], []
    for a, d in enumerate(axes_dim):
        inv = 1.0 / theta ** (np.arange(0, d, 2, dtype=np.float64) / d)  # exact on host
        ang = ids[:, a].astype(jnp.float32)[:, None] * jnp.asarray(inv, jnp.float32)[None]
        cos.append(jnp.repeat(jnp.cos(ang), 2, axis=-1))
        sin.append(jnp.repeat(jnp.sin(ang), 2, axis=-1))
    return jnp.concatenate(cos, -1), jnp.concatenate(sin, -1)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotates interleaved pairs: x (B, L, H, D), cos/sin (L, D); float32 math."""
    x32 = x.astype(jnp.float32)
    pairs = x32.reshape(*x.shape[:-1], -1, 2)
    rotated = jnp.stack([-pairs[..., 1], pairs[..., 0]], axis=-1).reshape(x.shape)
    out = x32 * cos[None, :, None, :] + rotated * sin[None, :, None, :]
    return out.astype(x.dtype)


# --------------------------------------------------------------------------- attention

ATTENTION_IMPLEMENTATIONS = ("auto", "xla", "cudnn", "splash")


@functools.cache
def _log_fallback(message: str) -> None:
    # Traced once per compile anyway; the cache keeps a re-trace from repeating it.
    logging.warning("attention: %s", message)


def resolve_attention(
    implementation: str, *, dtype: Dtype, seq_len: int, head_dim: int, platform: str | None = None
) -> str:
    """The attention kernel that will run: `implementation`, or a logged fallback to xla.

    `auto` picks cudnn on GPU, splash on TPU, xla elsewhere. A requested kernel that
    cannot run here (wrong platform, float32 for cuDNN, a length splash cannot tile)
    falls back to xla with an absl warning naming the reason; never silently. The
    platform, unless given, is the context mesh's devices' (what the function is being
    compiled for), else JAX's default backend.
    """
    if implementation not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(
            f"attention implementation {implementation!r}; allowed: {ATTENTION_IMPLEMENTATIONS}"
        )
    platform = platform or _mesh_platform() or jax.default_backend()
    auto = implementation == "auto"
    if auto:
        implementation = {"gpu": "cudnn", "cuda": "cudnn", "tpu": "splash"}.get(platform, "xla")
    why = None
    if implementation == "cudnn":
        if platform not in ("gpu", "cuda"):
            why = f"cudnn needs an NVIDIA GPU, platform is {platform!r}"
        elif jnp.dtype(dtype) not in (jnp.bfloat16, jnp.float16):
            why = f"cudnn needs bfloat16/float16 inputs, got {jnp.dtype(dtype).name}"
        elif head_dim % 8 or head_dim > 256:
            why = f"cudnn needs head_dim a multiple of 8 and <= 256, got {head_dim}"
    elif implementation == "splash":
        if platform != "tpu":
            why = f"splash needs a TPU, platform is {platform!r}"
        elif seq_len % 128:
            why = f"splash needs a sequence length divisible by 128, got {seq_len}"
    if why is not None:
        _log_fallback(f"{'auto chose' if auto else 'falling back to'} xla: {why}")
        return "xla"
    return implementation


def _mesh_platform() -> str | None:
    """The platform of the context mesh's devices (`jax.set_mesh`), None without one.

    A function is compiled for its mesh's devices, which need not be the default
    backend's: the dry run traces on a CPU host for a GPU or TPU topology.
    """
    device = getattr(jax.sharding.get_abstract_mesh(), "abstract_device", None)
    return None if device is None else device.platform


def xla_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    bias: jax.Array | None = None,
    *,
    scale: float | None = None,
) -> jax.Array:
    """softmax(scale * q k^T + bias) v with float32 logits.

    Args:
      q: (B, Lq, H, D); k, v: (B, Lk, H, D) in the activation dtype.
      bias: additive, broadcastable to (B, H, Lq, Lk) (masks as large negatives), or None.
      scale: logit scale; None means 1/sqrt(D) (T5 passes 1.0: its bias absorbs it).

    Returns:
      (B, Lq, H, D) in q's dtype.
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
    if bias is not None:
        logits = logits + bias.astype(jnp.float32)
    probs = jax.nn.softmax(logits, axis=-1)
    return jnp.einsum(
        "bhqk,bkhd->bqhd", probs.astype(v.dtype), v, preferred_element_type=jnp.float32
    ).astype(q.dtype)


def _splash_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: None = None) -> jax.Array:
    # Pallas TPU kernel, single-device form over (H, L, D) per sample; under a mesh,
    # `dot_product_attention` runs it per device (`_per_device`).
    from jax.experimental.pallas.ops.tpu import splash_attention as sa

    _, length, heads, head_dim = q.shape
    kv_length = k.shape[1]
    # Blocks must divide the lengths (both multiples of 128: see dot_product_attention).
    tile = lambda n: n if n <= 512 else next(b for b in (512, 256, 128) if n % b == 0)
    block, block_kv = tile(length), tile(kv_length)
    mask_ = sa.MultiHeadMask([sa.FullMask((length, kv_length)) for _ in range(heads)])
    kernel = sa.make_splash_mha_single_device(
        mask_,
        block_sizes=sa.BlockSizes(
            block_q=block,
            block_kv=block_kv,
            block_q_dkv=block,
            block_kv_dkv=block_kv,
            block_q_dq=block,
            block_kv_dq=block_kv,
        ),
    )
    to_hld = lambda x: jnp.swapaxes(x, 1, 2)
    q = q * (1.0 / math.sqrt(head_dim))  # the kernel applies no softmax scale
    return to_hld(jax.vmap(kernel)(to_hld(q), to_hld(k), to_hld(v)))


def _cudnn_attention(q, k, v, mask=None):
    if mask is not None:
        # cuDNN wants the mask's query and key axes spelled out (batch/heads broadcast).
        mask = mask.reshape((1,) * (4 - mask.ndim) + mask.shape)
        mask = jnp.broadcast_to(mask, (*mask.shape[:2], q.shape[1], k.shape[1]))
    return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="cudnn")


def _xla_masked_attention(q, k, v, mask=None):
    bias = None
    if mask is not None:
        bias = jnp.where(mask, 0.0, jnp.finfo(jnp.float32).min).astype(jnp.float32)
    return xla_attention(q, k, v, bias)


# Sequence parallelism: queries (and the output) keep their split over `length`,
# keys / values are gathered over it (no causal mask, so each query block needs all keys).
Q_AXES = (axes.BATCH, axes.LENGTH, axes.HEADS, axes.KV)
KV_AXES = (axes.BATCH, None, axes.HEADS, axes.KV)


def _per_device(kernel: Callable, q, k, v, mask, q_spec: P | None):
    """`kernel(q, k, v, mask)` on each device's block under the context mesh (`shard_map`).

    The fused kernels are single-device custom calls: cuDNN's partitioner refuses a
    query split over its length, splash has none. Each device gets its (batch,
    query-length, heads) block of q as `q_spec` (`Q_AXES` fitted to q) and the whole
    length of k, v; a mask is split like q where its dims are not broadcast. Without
    a context mesh (q_spec None) or with nothing to split, the kernel runs as is.
    """
    if q_spec is None or not any(q_spec):
        return kernel(q, k, v, mask)
    q_spec = P(*(tuple(q_spec) + (None,) * 4)[:4])
    b, lq, h, _ = q.shape
    kv_spec = P(q_spec[0], None, q_spec[2], None)
    args, specs = [q, k, v], [q_spec, kv_spec, kv_spec]
    if mask is not None:
        mask = mask.reshape((1,) * (4 - mask.ndim) + mask.shape)
        split = lambda i, n, entry: entry if mask.shape[i] == n else None
        args.append(mask)
        specs.append(P(split(0, b, q_spec[0]), split(1, h, q_spec[2]), split(2, lq, q_spec[1])))
    body = (lambda *a: kernel(*a)) if mask is not None else (lambda *a: kernel(*a, None))
    manual = set(jax.sharding.get_abstract_mesh().auto_axes)  # not those already manual
    return jax.shard_map(
        body, in_specs=tuple(specs), out_specs=q_spec, axis_names=manual, check_vma=False
    )(*args)


def _split_size(entry) -> int:
    mesh = jax.sharding.get_abstract_mesh()
    names = (entry,) if isinstance(entry, str) else tuple(entry or ())
    return math.prod(mesh.shape[n] for n in names)


def dot_product_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    implementation: str = "auto",
    mask: jax.Array | None = None,
) -> jax.Array:
    """Multi-head attention, scale 1/sqrt(head_dim), optionally masked.

    Under a context mesh (`jax.set_mesh`), q is pinned to `Q_AXES` (query length over
    `sequence`) and k, v to `KV_AXES` (gathered over `sequence`): the XLA kernel is then
    partitioned by GSPMD, the fused ones run per device (`_per_device`). Without one,
    nothing changes.

    Args:
      q, k, v: (B, L, H, D) in the activation dtype.
      implementation: "xla" | "cudnn" | "splash" | "auto" (see `resolve_attention`).
      mask: bool, broadcastable to (B, H, Lq, Lk); False drops that key for that query
        (e.g. padded text tokens, (B, 1, 1, Lk)). Every query must keep at least one
        key. None: full attention.

    Returns:
      (B, L, H, D) in q's dtype.
    """
    impl = resolve_attention(
        implementation, dtype=q.dtype, seq_len=q.shape[1], head_dim=q.shape[-1]
    )
    if mask is not None and impl == "splash":
        # The splash kernel here is built with a static full mask; a data-dependent one
        # would need segment ids. Masked calls take the XLA path, and say so once.
        _log_fallback("falling back to xla: splash is used unmasked only, a mask was given")
        impl = "xla"
    q_spec = axes.fitted_spec(Q_AXES, q.shape)
    if impl == "splash" and q_spec is not None and len(q_spec) > 1:
        local = q.shape[1] // _split_size(q_spec[1])
        if local % 128:
            _log_fallback(
                f"falling back to xla: splash needs the per-device query length ({local} of"
                f" {q.shape[1]} tokens split over {q_spec[1]}) divisible by 128"
            )
            impl = "xla"
    q = axes.constrain(q, Q_AXES)
    k, v = axes.constrain(k, KV_AXES), axes.constrain(v, KV_AXES)
    if impl == "xla":
        return _xla_masked_attention(q, k, v, mask)
    kernel = _cudnn_attention if impl == "cudnn" else _splash_attention
    return _per_device(kernel, q, k, v, mask, q_spec)
