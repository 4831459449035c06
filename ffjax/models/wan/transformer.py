"""WAN 2.1 / 2.2 transformer (Wan team 2025) in Flax linen, mirroring Diffusers'
`WanTransformer3DModel`: a video DiT over (frame, row, col) patches whose blocks are
self-attention (RMS q/k norm across heads, 3-D RoPE) -> cross-attention to the UMT5
text states (and, for Wan 2.1 I2V, to CLIP image states through separate K/V) -> MLP,
with AdaLN modulation from the timestep alone (a learned `scale_shift_table` plus a
projection of the timestep embedding). Wan 2.2 TI2V passes one timestep per token; the
modulation then varies along the sequence.

The interface is channels-last: latents (B, F, H, W, C) in, velocity (B, F, H, W, C)
out. The block stack is one `nn.scan` (parameters gain a leading `layers` axis),
wrapped in `nn.remat` per the config's policy. Everything a block reads from the
context (its cross-attention keys and values) is available as one pytree from
`context_kv`, so a rollout computes it once and every denoising step passes it as
`kv=`. Parameter names follow Diffusers' module names (the condition embedder's
children sit at the top level), so the key table in `convert.py` reads one-to-one.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ffjax.models import layers
from ffjax.models.wan.config import WanTransformerConfig
from ffjax.parallel import axes

Dtype = jnp.dtype
_F32 = jnp.float32
_LINEAR_12 = ("linear_1", "linear_2")  # Diffusers' TimestepEmbedding / text projection names
_IMAGE_EPS = 1e-5  # the image embedder's LayerNorms (torch's default eps)
_ROPE_THETA = 10000.0

# --------------------------------------------------------------------------- pure helpers


def token_grid(shape: tuple[int, ...], patch_size: tuple[int, int, int]) -> tuple[int, int, int]:
    """(F, H, W) latent sizes -> the (F/pt, H/ph, W/pw) token grid; ValueError if not divisible."""
    f, h, w = (int(s) for s in shape)
    pt, ph, pw = patch_size
    if f % pt or h % ph or w % pw:
        raise ValueError(
            f"latent frames x height x width {f}x{h}x{w} is not divisible by the patch size"
            f" {pt}x{ph}x{pw} (frames by {pt}, height by {ph}, width by {pw})"
        )
    return f // pt, h // ph, w // pw


def patchify(x: jax.Array, patch_size: tuple[int, int, int]) -> jax.Array:
    """(B, F, H, W, C) latents -> (B, F'H'W', pt*ph*pw*C) tokens, row-major over (f, h, w).

    Channel order within a token is (dt, dy, dx, c), c fastest; the patch embedding's
    Conv3d kernel is laid out to match (see `convert.py`).
    """
    b, c = x.shape[0], x.shape[-1]
    (gf, gh, gw), (pt, ph, pw) = token_grid(x.shape[1:4], patch_size), patch_size
    x = x.reshape(b, gf, pt, gh, ph, gw, pw, c).transpose(0, 1, 3, 5, 2, 4, 6, 7)
    return x.reshape(b, gf * gh * gw, pt * ph * pw * c)


def unpatchify(
    tokens: jax.Array, grid: tuple[int, int, int], patch_size: tuple[int, int, int]
) -> jax.Array:
    """(B, F'H'W', pt*ph*pw*C) tokens -> (B, F, H, W, C); inverse of `patchify`.

    This is the channels-last form of `WanTransformer3DModel`'s final reshape / permute.
    """
    (gf, gh, gw), (pt, ph, pw) = grid, patch_size
    b, n, cp = tokens.shape
    if n != gf * gh * gw or cp % (pt * ph * pw):
        raise ValueError(
            f"cannot unpatchify {n} tokens of {cp} channels into a {gf}x{gh}x{gw} grid of"
            f" {pt}x{ph}x{pw} patches"
        )
    c = cp // (pt * ph * pw)
    x = tokens.reshape(b, gf, gh, gw, pt, ph, pw, c).transpose(0, 1, 4, 2, 5, 3, 6, 7)
    return x.reshape(b, gf * pt, gh * ph, gw * pw, c)


def rope_axis_tables(
    grid: tuple[int, int, int], dims: tuple[int, int, int], max_seq_len: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per-axis RoPE tables of `WanRotaryPosEmbed`: [(cos, sin) float32[n_a, d_a]] for
    the frame, row and column axes (n_a tokens along axis a, d_a its share of the head).

    Angle of position p, pair j: p * theta^(-2j / d_a), theta = 10000, each value
    repeated for the two entries of its pair (Su et al. 2021). Computed in float64 and
    rounded once, as Diffusers' float64 buffers are. Positions start at 0 on each axis
    (no centring); Diffusers' table stops at `rope_max_seq_len`, so a longer axis is a
    ValueError here instead of a silent truncation.
    """
    if max(grid) > max_seq_len:
        raise ValueError(
            f"token grid {grid[0]}x{grid[1]}x{grid[2]} exceeds rope_max_seq_len={max_seq_len}"
            " positions along an axis"
        )
    out = []
    for n, d in zip(grid, dims, strict=True):
        inv = 1.0 / _ROPE_THETA ** (np.arange(0, d, 2, dtype=np.float64) / d)
        ang = np.arange(n, dtype=np.float64)[:, None] * inv[None]
        out.append(tuple(np.repeat(f(ang), 2, axis=1).astype(np.float32) for f in (np.cos, np.sin)))
    return out


def rope_tables(
    grid: tuple[int, int, int], dims: tuple[int, int, int], max_seq_len: int = 1024
) -> tuple[jax.Array, jax.Array]:
    """(cos, sin) float32[F'H'W', head_dim]: token (f, h, w) takes the frame table's row f,
    the row table's row h and the column table's row w, concatenated (frame dims first)."""
    gf, gh, gw = grid
    tables = rope_axis_tables(grid, dims, max_seq_len)

    def full(i: int) -> jax.Array:
        parts = []
        for a, (n, t) in enumerate(zip(grid, tables, strict=True)):
            shape = [1, 1, 1, t[i].shape[1]]
            shape[a] = n
            parts.append(jnp.broadcast_to(jnp.asarray(t[i]).reshape(shape), (gf, gh, gw, shape[3])))
        return jnp.concatenate(parts, axis=-1).reshape(gf * gh * gw, -1)

    return full(0), full(1)


# --------------------------------------------------------------------------- layers


class LayerNorm(nn.Module):
    """Affine LayerNorm in float32 (Diffusers' `FP32LayerNorm`), cast back to the input dtype."""

    eps: float
    param_dtype: Dtype = _F32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        d = x.shape[-1]
        part = lambda init: nn.with_logical_partitioning(init, (axes.EMBED,))
        scale = self.param("scale", part(nn.initializers.ones_init()), (d,), self.param_dtype)
        bias = self.param("bias", part(nn.initializers.zeros_init()), (d,), self.param_dtype)
        y = layers.layer_norm(x.astype(_F32), self.eps) * scale.astype(_F32) + bias.astype(_F32)
        return y.astype(x.dtype)


def _norm(x: jax.Array, eps: float) -> jax.Array:
    """Non-affine LayerNorm in float32 (`FP32LayerNorm(elementwise_affine=False)`); float32 out."""
    return layers.layer_norm(x.astype(_F32), eps)


class ImageEmbedding(nn.Module):
    """`WanImageEmbedding`: [+ pos_embed] -> LayerNorm -> GELU MLP -> LayerNorm (CLIP -> D)."""

    features: int
    pos_embed_seq_len: int | None
    dtype: Dtype
    param_dtype: Dtype

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        d_in = x.shape[-1]
        if self.pos_embed_seq_len is not None:
            # FLF2V: the pipeline stacks first- and last-frame CLIP states along the batch
            # ([2B, S, Din]); Diffusers views them as [B, 2S, Din] and adds a learned
            # position embedding of 2S rows. Any (B', S') with B' S' = B * 2S reshapes the same.
            n = self.pos_embed_seq_len
            if (x.shape[0] * x.shape[1]) % n:
                raise ValueError(
                    f"context_image of shape {x.shape} does not split into samples of"
                    f" pos_embed_seq_len={n} image tokens"
                )
            pos = self.param(
                "pos_embed",
                nn.with_logical_partitioning(
                    nn.initializers.zeros_init(), (None, None, axes.EMBED)
                ),
                (1, n, d_in),
                self.param_dtype,
            )
            x = x.reshape(-1, n, d_in) + pos.astype(x.dtype)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = LayerNorm(_IMAGE_EPS, param_dtype=self.param_dtype, name="norm1")(x)
        h = layers.MLP(d_in, self.features, "gelu", name="ff", **kw)(h)  # FeedForward("gelu")
        return LayerNorm(_IMAGE_EPS, param_dtype=self.param_dtype, name="norm2")(h)


def _heads(x: jax.Array, heads: int) -> jax.Array:
    return x.reshape(*x.shape[:-1], heads, x.shape[-1] // heads)


def _rows(a: jax.Array, batch: int) -> jax.Array:
    """`a` with its leading axis broadcast to `batch` (a context shared by every sample
    is held, projected and stored once, batch 1, and only broadcast where it is read)."""
    return a if a.shape[0] == batch else jnp.broadcast_to(a, (batch, *a.shape[1:]))


class SelfAttention(nn.Module):
    """`WanAttention` as attn1: q, k RMS-normed over all heads (one scale of H*Dh), RoPE."""

    heads: int
    eps: float
    attention: str
    dtype: Dtype
    param_dtype: Dtype

    @nn.compact
    def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        d = x.shape[-1]
        proj = lambda n: layers.Dense(d, (axes.EMBED, axes.HEADS), name=n, **kw)(x)
        rms = lambda n: layers.RMSNorm(
            self.eps, (axes.HEADS,), param_dtype=self.param_dtype, name=n
        )
        q = _heads(rms("norm_q")(proj("to_q")), self.heads)
        k = _heads(rms("norm_k")(proj("to_k")), self.heads)
        v = _heads(proj("to_v"), self.heads)
        q, k = layers.apply_rope(q, cos, sin), layers.apply_rope(k, cos, sin)
        o = layers.dot_product_attention(q, k, v, implementation=self.attention)
        o = o.reshape(*o.shape[:2], d)
        return layers.Dense(d, (axes.HEADS, axes.EMBED), name="to_out", **kw)(o)


def _cross_implementation(implementation: str, dtype, lq: int, head_dim: int) -> str:
    # The splash kernel in `layers` is built for square (self-)attention; queries over a
    # different number of keys take the XLA path (cuDNN handles them).
    impl = layers.resolve_attention(implementation, dtype=dtype, seq_len=lq, head_dim=head_dim)
    return "xla" if impl == "splash" else impl


class CrossAttention(nn.Module):
    """`WanAttention` as attn2: queries from the video, keys / values from the context.

    Text keys are RMS-normed over all heads (`norm_k`); with image attention (Wan 2.1
    I2V) image keys come from `add_k_proj` + `norm_added_k`, values from `add_v_proj`,
    and the two attention outputs are summed before `to_out`.

    `__call__(None, None, context, context_image)` returns the keys / values
    {"k", "v"[, "k_img", "v_img"]}, each (B, S, H, Dh); `__call__(x, kv)` attends with
    them; `__call__(x, None, context, context_image)` does both. An entry of batch 1
    (a context shared by every sample, e.g. the CFG negative prompt) serves all B
    queries: it is broadcast at the attention only.
    """

    dim: int  # D = inner_dim: every projection is D -> D
    heads: int
    eps: float
    image: bool  # Wan 2.1 I2V image cross-attention
    attention: str
    dtype: Dtype
    param_dtype: Dtype

    @nn.compact
    def __call__(self, x, kv, context=None, context_image=None):
        """x (B, L, D) or None; returns the (B, L, D) output, or the K/V pytree if x is None."""
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        rms = lambda n: layers.RMSNorm(
            self.eps, (axes.HEADS,), param_dtype=self.param_dtype, name=n
        )
        dense = lambda n, ax: layers.Dense(self.dim, ax, name=n, **kw)
        if kv is None:
            k = dense("to_k", (axes.EMBED, axes.HEADS))(context)
            v = dense("to_v", (axes.EMBED, axes.HEADS))(context)
            kv = {"k": _heads(rms("norm_k")(k), self.heads), "v": _heads(v, self.heads)}
            if self.image:
                add_k = dense("add_k_proj", (axes.EMBED, axes.HEADS))
                add_v = dense("add_v_proj", (axes.EMBED, axes.HEADS))
                kv["k_img"] = _heads(rms("norm_added_k")(add_k(context_image)), self.heads)
                kv["v_img"] = _heads(add_v(context_image), self.heads)
            kv = {k: axes.constrain(v, axes.TOKEN_HEADS) for k, v in kv.items()}
        if x is None:
            return kv
        q = _heads(rms("norm_q")(dense("to_q", (axes.EMBED, axes.HEADS))(x)), self.heads)
        impl = _cross_implementation(self.attention, q.dtype, q.shape[1], q.shape[-1])
        kv = {n: _rows(a, q.shape[0]).astype(q.dtype) for n, a in kv.items()}
        o = layers.dot_product_attention(q, kv["k"], kv["v"], implementation=impl)
        if self.image:
            o = o + layers.dot_product_attention(q, kv["k_img"], kv["v_img"], implementation=impl)
        return dense("to_out", (axes.HEADS, axes.EMBED))(o.reshape(*o.shape[:2], -1))


class WanBlock(nn.Module):
    """`WanTransformerBlock`, with the modulation (shift, scale, gate) x 2 = table + temb:

        x += gate1 * attn1(LN(x) (1 + scale1) + shift1)
        x += attn2(LN_affine(x), context)          (LN_affine only with cross_attn_norm)
        x += gate2 * MLP(LN(x) (1 + scale2) + shift2)

    Modulation, norms and residual sums run in float32, as Diffusers does under bf16.
    With `kv_only`, the block returns its cross-attention K/V (the scan stacks them)
    and computes nothing else.
    """

    dim: int
    heads: int
    ffn_dim: int
    eps: float
    cross_attn_norm: bool
    image: bool
    attention: str
    kv_only: bool
    dtype: Dtype
    param_dtype: Dtype

    @nn.compact
    def __call__(self, x, temb_proj, cos, sin, kv, context, context_image):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        attn2 = CrossAttention(
            self.dim, self.heads, self.eps, self.image, self.attention, name="attn2", **kw
        )
        if self.kv_only:
            return x, attn2(None, None, context, context_image)
        d = self.dim
        table = self.param(
            "scale_shift_table",
            nn.with_logical_partitioning(nn.initializers.normal(d**-0.5), (None, axes.EMBED)),
            (6, d),
            self.param_dtype,
        )
        # temb_proj (B, 1 | L, 6, D): one modulation per sample, or per token (TI2V).
        mod = table.astype(_F32) + temb_proj.astype(_F32)
        shift1, scale1, gate1, shift2, scale2, gate2 = (mod[..., i, :] for i in range(6))

        h = (_norm(x, self.eps) * (1 + scale1) + shift1).astype(self.dtype)
        a = SelfAttention(self.heads, self.eps, self.attention, name="attn1", **kw)(h, cos, sin)
        x = (x.astype(_F32) + a * gate1).astype(self.dtype)

        h = (
            LayerNorm(self.eps, param_dtype=self.param_dtype, name="norm2")(x)
            if self.cross_attn_norm
            else x
        )
        x = x + attn2(h, kv, context, context_image)

        h = (_norm(x, self.eps) * (1 + scale2) + shift2).astype(self.dtype)
        f = layers.MLP(self.ffn_dim, d, "gelu_tanh", name="ffn", **kw)(h)
        x = (x.astype(_F32) + f.astype(_F32) * gate2).astype(self.dtype)
        return axes.constrain(x, axes.TOKENS), None


_REMAT_POLICY = {
    "full": None,  # save nothing: recompute the whole block in the backward pass
    "save_dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # keep matmul outputs
}


def _stack(length: int, remat: str) -> type[nn.Module]:
    """`WanBlock` scanned `length` times (params stacked on a leading `layers` axis).

    Scanned inputs: the per-layer K/V (axis 0, or None); everything else is broadcast.
    """
    block = WanBlock
    if remat != "none":
        block = nn.remat(block, policy=_REMAT_POLICY[remat], prevent_cse=False)
    b = nn.broadcast
    return nn.scan(
        block,
        variable_axes={"params": 0, "lora": 0, "lora_scale": 0},
        split_rngs={"params": True},
        in_axes=(b, b, b, 0, b, b),
        length=length,
        metadata_params={nn.PARTITION_NAME: axes.LAYERS},
    )


# --------------------------------------------------------------------------- the model


class WanTransformer(nn.Module):
    """The WAN transformer, channels-last.

    `__call__(x, timestep, context, context_image=None, kv=None)` predicts the
    velocity; `context_kv(context, context_image=None)` returns what the blocks read
    from the context, for `kv=` (a rollout computes it once for all its steps).
    """

    config: WanTransformerConfig

    def __call__(
        self,
        x: jax.Array,
        timestep: jax.Array,
        context: jax.Array | None,
        context_image: jax.Array | None = None,
        kv: dict[str, jax.Array] | None = None,
    ) -> jax.Array:
        """The `WanTransformer3DModel` forward, channels-last.

        Args:
          x: float[B, F, H, W, in_channels] latents (F, H, W divisible by patch_size).
          timestep: float[B], or float[B, L] with L = (F/pt)(H/ph)(W/pw) one per token
            in row-major (frame, row, col) order (Wan 2.2 TI2V, `expand_timesteps`), in
            Diffusers units 0..1000 (what `WanPipeline` passes: sigma * 1000).
          context: float[B, S, text_dim] UMT5 states (the pipeline zero-pads to 512; no
            mask), or float[1, S, text_dim] shared by every sample (projected once,
            broadcast at the attention). Unused (may be None) when `kv` is given.
          context_image: float[B, S_img, image_dim] CLIP image states, required by
            image-attention (Wan 2.1 I2V) models when `kv` is None; with
            pos_embed_seq_len (FLF2V) the pipeline's [2B, S_img, image_dim] (first and
            last frame per sample). Refused for models without image attention.
          kv: `context_kv(context, context_image)` of the same params, or None; each
            entry of batch B or 1 (shared by every sample).

        Returns:
          float[B, F, H, W, out_channels] in the activation dtype.
        """
        return self._run(x, timestep, context, context_image, kv, kv_only=False)

    def context_kv(
        self, context: jax.Array, context_image: jax.Array | None = None
    ) -> dict[str, jax.Array]:
        """Per-layer cross-attention keys / values: {"k", "v"} (+ {"k_img", "v_img"} for
        image attention), each float[num_layers, B, S, heads, head_dim] (S_img for the
        image ones) in the activation dtype, layers axis first. Pass it as `kv=`."""
        return self._run(None, None, context, context_image, None, kv_only=True)

    def _embed_context(self, context, context_image, kw):
        c = self.config
        if context is None:
            raise ValueError("WanTransformer: context (the text states) is required without kv")
        if context.ndim != 3 or context.shape[-1] != c.text_dim:
            raise ValueError(
                f"context must be (batch, length, text_dim={c.text_dim}), got {context.shape}"
            )
        # PixArtAlphaTextProjection(act_fn="gelu_tanh"), from text_dim (not sharded as embed).
        ctx = layers.MLP(c.inner_dim, c.inner_dim, "gelu_tanh", _LINEAR_12, in_axis=None,
                         name="text_embedder", **kw)(context.astype(kw["dtype"]))  # fmt: skip
        ctx = axes.constrain(ctx, axes.TOKENS)
        img = None
        if c.has_image_attention:
            if context_image is None:
                raise ValueError(
                    "WanTransformer: this model has image cross-attention (Wan 2.1 I2V,"
                    f" image_dim={c.image_dim}): context_image is required"
                )
            if context_image.ndim != 3 or context_image.shape[-1] != c.image_dim:
                raise ValueError(
                    f"context_image must be (batch, length, image_dim={c.image_dim}), got"
                    f" {context_image.shape}"
                )
            img = ImageEmbedding(c.inner_dim, c.pos_embed_seq_len, name="image_embedder", **kw)(
                context_image.astype(kw["dtype"])
            )
            if img.shape[0] != ctx.shape[0] and ctx.shape[0] != 1:  # 1: a shared context
                raise ValueError(
                    f"context_image gives {img.shape[0]} samples, context {ctx.shape[0]}"
                )
        elif context_image is not None:
            raise ValueError(
                "WanTransformer: context_image given, but this model has no image"
                " cross-attention (image_dim is None)"
            )
        return ctx, img

    def _check_kv(self, kv, batch: int) -> None:
        want = {"k", "v", "k_img", "v_img"} if self.config.has_image_attention else {"k", "v"}
        if set(kv) != want:
            raise ValueError(f"kv has entries {sorted(kv)}, expected {sorted(want)} (context_kv)")
        for name, a in sorted(kv.items()):
            n, b = a.shape[:2]
            if n != self.config.num_layers or b not in (1, batch):
                raise ValueError(
                    f"kv[{name!r}] is for {n} layers x batch {b}; this call needs"
                    f" {self.config.num_layers} layers x batch {batch} (or 1, shared)"
                )

    @nn.compact
    def _run(self, x, timestep, context, context_image, kv, *, kv_only: bool):
        c = self.config
        dtype, pdtype = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
        kw = dict(dtype=dtype, param_dtype=pdtype)
        block_kw = dict(dim=c.inner_dim, heads=c.num_attention_heads, ffn_dim=c.ffn_dim, eps=c.eps,
                        cross_attn_norm=c.cross_attn_norm, image=c.has_image_attention,
                        attention=c.attention, name="blocks", **kw)  # fmt: skip

        ctx = img = None
        if kv is None:
            ctx, img = self._embed_context(context, context_image, kw)
        if kv_only:
            if not c.num_layers:
                return {}
            _, kv = _stack(c.num_layers, "none")(kv_only=True, **block_kw)(
                jnp.zeros((), dtype), None, None, None, None, ctx, img
            )
            return kv

        if x.ndim != 5 or x.shape[-1] != c.in_channels:
            raise ValueError(
                f"x must be (batch, frames, height, width, in_channels={c.in_channels}),"
                f" got {x.shape}"
            )
        b = x.shape[0]
        grid = token_grid(x.shape[1:4], c.patch_size)
        n_tok = grid[0] * grid[1] * grid[2]
        if kv is not None and c.num_layers:
            self._check_kv(kv, b)

        tokens = patchify(x.astype(dtype), c.patch_size)
        h = layers.Dense(c.inner_dim, (None, axes.EMBED), name="patch_embedding", **kw)(tokens)
        h = axes.constrain(h, axes.TOKENS)
        cos, sin = rope_tables(grid, c.rope_dims, c.rope_max_seq_len)

        # temb = MLP(sinusoid(t)) with t in 0..1000; one per sample (B, 1, D) or per token
        # (B, L, D). The embedding MLP runs in float32 (Diffusers keeps it in fp32).
        t = jnp.asarray(timestep)
        if t.shape not in ((b,), (b, n_tok)):
            raise ValueError(
                f"timestep must be ({b},) or ({b}, {n_tok}) (one per token of the"
                f" {grid[0]}x{grid[1]}x{grid[2]} grid), got {t.shape}"
            )
        t = t.astype(_F32).reshape(b, -1)
        e = layers.timestep_embedding(t.reshape(-1), c.freq_dim, flip_sin_to_cos=True)
        e = e.reshape(b, t.shape[1], c.freq_dim)
        temb = layers.MLP(c.inner_dim, c.inner_dim, "silu", _LINEAR_12, in_axis=None, dtype=_F32,
                          param_dtype=pdtype, name="time_embedder")(e).astype(dtype)  # fmt: skip
        temb_proj = layers.Dense(6 * c.inner_dim, (axes.EMBED, axes.MLP), name="time_proj", **kw)(
            nn.silu(temb)
        )
        temb_proj = temb_proj.reshape(b, t.shape[1], 6, c.inner_dim)
        # Per-token modulation (TI2V) splits over `length` like the tokens it modulates.
        temb_proj = axes.constrain(temb_proj, (axes.BATCH, axes.LENGTH, None, axes.ACT_EMBED))

        if c.num_layers:
            stack = _stack(c.num_layers, c.remat)(kv_only=False, **block_kw)
            h, _ = stack(h, temb_proj, cos, sin, kv, ctx, img)

        table = self.param(
            "scale_shift_table",
            nn.with_logical_partitioning(
                nn.initializers.normal(c.inner_dim**-0.5), (None, axes.EMBED)
            ),
            (2, c.inner_dim),
            pdtype,
        )
        mod = table.astype(_F32) + temb.astype(_F32)[:, :, None, :]  # (B, 1 | L, 2, D)
        shift, scale = mod[..., 0, :], mod[..., 1, :]
        h = (_norm(h, c.eps) * (1 + scale) + shift).astype(dtype)
        p = c.patch_size
        out = layers.Dense(p[0] * p[1] * p[2] * c.output_channels, (axes.EMBED, None),
                           name="proj_out", **kw)(h)  # fmt: skip
        out = axes.constrain(out, axes.TOKENS)
        return unpatchify(out, grid, c.patch_size)


def init_shapes(config: WanTransformerConfig, context_len: int = 2):
    """(module, abstract boxed params) of `WanTransformer(config)`, nothing allocated."""
    module = WanTransformer(config)
    pt, ph, pw = config.patch_size
    f32 = lambda *s: jax.ShapeDtypeStruct(s, jnp.float32)
    args = [f32(1, pt, ph, pw, config.in_channels), f32(1), f32(1, context_len, config.text_dim)]
    if config.has_image_attention:
        args.append(f32(1, config.pos_embed_seq_len or context_len, config.image_dim))
    abstract = jax.eval_shape(lambda *a: module.init(jax.random.key(0), *a), *args)
    return module, abstract["params"]
