"""Qwen-Image transformer (Qwen team 2025) in Flax linen, mirroring Diffusers'
`QwenImageTransformer2DModel`: an MMDiT of dual-stream blocks only (separate image /
text weights for modulation, q/k/v, output projections and MLPs; one joint attention
over [text; image] with padded text keys masked), AdaLN-Zero modulation from the
timestep alone, and a 3-axis (frame, row, col) RoPE whose image positions are centred
on the grid and whose text positions start after the largest image half-size.

The block stack is one `nn.scan` (parameters gain a leading `layers` axis), wrapped in
`nn.remat` per the config's policy. Parameter names follow Diffusers' module names so
the key table in `convert.py` reads one-to-one. The module takes RoPE position ids
(`rope_ids(img_shapes, txt_len)` makes them from Diffusers' `img_shapes`) so the
forward stays a pure array function under `jax.jit`.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ffjax.models import layers
from ffjax.models.qwen_image.config import QwenImageTransformerConfig
from ffjax.parallel import axes

Dtype = jnp.dtype
_EPS = 1e-6  # every LayerNorm / RMSNorm of the transformer

# --------------------------------------------------------------------------- layout helpers


def pack_latents(z: jax.Array, patch_size: int = 2) -> jax.Array:
    """(B, h, w, C) latents -> (B, h/p * w/p, p*p*C) tokens, as `QwenImagePipeline._pack_latents`.

    Channel order within a token is c*p*p + p*dy + dx. Raises ValueError naming the
    size when h or w is not divisible by the patch size p.
    """
    b, h, w, c = z.shape
    if h % patch_size or w % patch_size:
        raise ValueError(
            f"latent grid {h}x{w} is not divisible by the packing factor {patch_size}"
            f" (the image height and width must be multiples of {8 * patch_size} pixels)"
        )
    p = patch_size
    z = z.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 5, 2, 4)
    return z.reshape(b, (h // p) * (w // p), p * p * c)


def unpack_latents(x: jax.Array, h: int, w: int, patch_size: int = 2) -> jax.Array:
    """(B, h/p * w/p, p*p*C) tokens -> (B, h, w, C) latents; inverse of `pack_latents`."""
    b, n, cp = x.shape
    p = patch_size
    if h % p or w % p or n != (h // p) * (w // p) or cp % (p * p):
        raise ValueError(
            f"cannot unpack {n} tokens of {cp} channels into a {h}x{w} latent grid with"
            f" packing factor {p}"
        )
    c = cp // (p * p)
    x = x.reshape(b, h // p, w // p, c, p, p).transpose(0, 1, 4, 2, 5, 3)
    return x.reshape(b, h, w, c)


def packed_grid(
    height: int, width: int, *, vae_scale_factor: int = 8, patch_size: int = 2
) -> tuple[int, int]:
    """Pixel size -> the (rows, cols) token grid of `img_shapes`; ValueError if not divisible."""
    f = vae_scale_factor * patch_size
    if height % f or width % f:
        raise ValueError(
            f"image size {height}x{width} is not divisible by {f} (VAE factor"
            f" {vae_scale_factor} x packing factor {patch_size})"
        )
    return height // f, width // f


def _image_list(img_shapes) -> list[tuple[int, int, int]]:
    # Diffusers accepts (f, h, w), [(f, h, w)] * B or [[(f, h, w), ...]] * B (several
    # images per sample, e.g. Edit's condition image) and uses the first sample's entry.
    # ffjax refuses batches whose entries differ instead of computing wrong positions.
    if (
        isinstance(img_shapes, tuple)
        and len(img_shapes) == 3
        and all(isinstance(v, (int, np.integer)) for v in img_shapes)
    ):
        return [tuple(int(v) for v in img_shapes)]
    samples = list(img_shapes)
    if not samples:
        raise ValueError("img_shapes is empty")
    if any(s != samples[0] for s in samples):
        raise ValueError(
            f"img_shapes differ across the batch ({samples}); Qwen-Image's RoPE needs one"
            " image layout per batch"
        )
    first = samples[0]
    images = [first] if len(first) == 3 and isinstance(first[0], (int, np.integer)) else first
    out = [tuple(int(v) for v in fhw) for fhw in images]
    if any(len(fhw) != 3 or min(fhw) < 1 for fhw in out):
        raise ValueError(f"img_shapes entries must be (frames, rows, cols) >= 1, got {out}")
    return out


def rope_ids(img_shapes, txt_len: int) -> tuple[np.ndarray, np.ndarray]:
    """RoPE positions of Diffusers' `QwenEmbedRope` (scale_rope=True) for one batch layout.

    Image i of the sample (frames f, rows h, cols w, in packed tokens) gets positions
    (i + t, r - ceil(h/2), c - ceil(w/2)) for each token (t, r, c) in row-major order:
    rows and columns centred on the grid. Text token j gets (m + j, m + j, m + j) with
    m = max over images of max(h // 2, w // 2), so text sits after every image position.

    Args:
      img_shapes: Diffusers' `img_shapes` (see `QwenImageTransformer2DModel.forward`).
      txt_len: the (padded) text length L_txt of `encoder_hidden_states`.

    Returns:
      (img_ids float32[L_img, 3], txt_ids float32[L_txt, 3]).
    """
    ids, m = [], 0
    for i, (f, h, w) in enumerate(_image_list(img_shapes)):
        t, r, c = np.meshgrid(np.arange(f), np.arange(h), np.arange(w), indexing="ij")
        ids.append(np.stack([i + t, r - (h - h // 2), c - (w - w // 2)], -1).reshape(-1, 3))
        m = max(m, h // 2, w // 2)
    txt = np.repeat((m + np.arange(txt_len))[:, None], 3, axis=1)
    return np.concatenate(ids).astype(np.float32), txt.astype(np.float32)


# --------------------------------------------------------------------------- blocks


class JointAttention(nn.Module):
    """Diffusers `Attention` + `QwenDoubleStreamAttnProcessor2_0`: one attention over [text; image].

    Image and text streams have their own q/k/v (RMS-normed q, k) and output
    projections; RoPE is applied to the joint sequence, padded text keys are masked.
    """

    heads: int
    head_dim: int
    attention: str
    dtype: Dtype
    param_dtype: Dtype

    @nn.compact
    def __call__(self, img, txt, cos, sin, mask):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        d = self.heads * self.head_dim

        def qkv(x, names):
            split = lambda t: t.reshape(*t.shape[:-1], self.heads, self.head_dim)
            q, k, v = (
                split(layers.Dense(d, (axes.EMBED, axes.HEADS), name=n, **kw)(x)) for n in names[:3]
            )
            q = layers.RMSNorm(_EPS, param_dtype=self.param_dtype, name=names[3])(q)
            k = layers.RMSNorm(_EPS, param_dtype=self.param_dtype, name=names[4])(k)
            return q, k, v

        qi, ki, vi = qkv(img, ("to_q", "to_k", "to_v", "norm_q", "norm_k"))
        qt, kt, vt = qkv(txt, ("add_q_proj", "add_k_proj", "add_v_proj", "norm_added_q",
                               "norm_added_k"))  # fmt: skip
        q, k, v = (jnp.concatenate(p, axis=1) for p in ((qt, qi), (kt, ki), (vt, vi)))
        q, k = layers.apply_rope(q, cos, sin), layers.apply_rope(k, cos, sin)
        o = layers.dot_product_attention(q, k, v, implementation=self.attention, mask=mask)
        o = o.reshape(*o.shape[:2], d)
        n_txt = txt.shape[1]
        img_o = layers.Dense(d, (axes.HEADS, axes.EMBED), name="to_out", **kw)(o[:, n_txt:])
        txt_o = layers.Dense(d, (axes.HEADS, axes.EMBED), name="to_add_out", **kw)(o[:, :n_txt])
        return img_o, txt_o


class DualStreamBlock(nn.Module):
    """`QwenImageTransformerBlock`: per stream x += g1 * attn(mod1(LN x)); x += g2 * MLP(mod2(LN x))."""

    heads: int
    head_dim: int
    attention: str
    dtype: Dtype
    param_dtype: Dtype

    @nn.compact
    def __call__(self, carry, temb, cos, sin, mask):
        img, txt = carry
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        d = self.heads * self.head_dim

        def mod(name):  # silu -> Linear(D, 6D): (shift, scale, gate) for norm1, then norm2
            y = layers.Dense(6 * d, (axes.EMBED, axes.MLP), name=name, **kw)(nn.silu(temb))
            return jnp.split(y, 6, axis=-1)

        i_shift, i_scale, i_gate, i_shift2, i_scale2, i_gate2 = mod("img_mod")
        t_shift, t_scale, t_gate, t_shift2, t_scale2, t_gate2 = mod("txt_mod")

        img_n = layers.modulate(layers.layer_norm(img, _EPS), i_shift, i_scale)
        txt_n = layers.modulate(layers.layer_norm(txt, _EPS), t_shift, t_scale)
        img_o, txt_o = JointAttention(self.heads, self.head_dim, self.attention, name="attn", **kw)(
            img_n, txt_n, cos, sin, mask
        )
        img = img + i_gate[:, None] * img_o
        txt = txt + t_gate[:, None] * txt_o

        img_n = layers.modulate(layers.layer_norm(img, _EPS), i_shift2, i_scale2)
        # FeedForward(dim, activation_fn="gelu-approximate"): D -> 4D -> D
        mlp = lambda name: layers.MLP(4 * d, d, "gelu_tanh", name=name, **kw)
        img = img + i_gate2[:, None] * mlp("img_mlp")(img_n)
        txt_n = layers.modulate(layers.layer_norm(txt, _EPS), t_shift2, t_scale2)
        txt = txt + t_gate2[:, None] * mlp("txt_mlp")(txt_n)
        img = axes.constrain(img, axes.TOKENS)
        txt = axes.constrain(txt, axes.TOKENS)
        return (img, txt), None


_REMAT_POLICY = {
    "full": None,  # save nothing: recompute the whole block in the backward pass
    "save_dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # keep matmul outputs
}


def _stack(length: int, remat: str) -> type[nn.Module]:
    """`DualStreamBlock` scanned `length` times (params stacked on a leading `layers` axis)."""
    block = DualStreamBlock
    if remat != "none":
        block = nn.remat(block, policy=_REMAT_POLICY[remat], prevent_cse=False)
    return nn.scan(
        block,
        variable_axes={"params": 0, "lora": 0, "lora_scale": 0},
        split_rngs={"params": True},
        in_axes=(nn.broadcast,) * 4,
        length=length,
        metadata_params={nn.PARTITION_NAME: axes.LAYERS},
    )


class QwenImageTransformer(nn.Module):
    """The Qwen-Image transformer; `__call__` takes `QwenImageTransformer2DModel.forward`'s
    arguments, with `img_shapes` replaced by the position ids `rope_ids` makes from it."""

    config: QwenImageTransformerConfig

    @nn.compact
    def __call__(
        self,
        hidden_states: jax.Array,
        encoder_hidden_states: jax.Array,
        encoder_hidden_states_mask: jax.Array | None,
        timestep: jax.Array,
        img_ids: jax.Array,
        txt_ids: jax.Array,
    ) -> jax.Array:
        """Predicts the velocity of packed latents.

        Args:
          hidden_states: float[B, L_img, in_channels] packed latents (`pack_latents`).
          encoder_hidden_states: float[B, L_txt, joint_attention_dim] Qwen2.5-VL states.
          encoder_hidden_states_mask: bool or 0/1 [B, L_txt], False / 0 at padded text
            tokens (any pattern); None attends to every token.
          timestep: float[B], sigma in [0, 1] (the pipeline passes t / 1000); the
            sinusoidal embedding scales it by 1000, as Diffusers does.
          img_ids: float[L_img, 3], txt_ids: float[L_txt, 3] RoPE positions from
            `rope_ids(img_shapes, L_txt)`.

        Returns:
          float[B, L_img, patch_size^2 * out_channels] in the activation dtype.
        """
        c = self.config
        dtype, pdtype = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
        kw = dict(dtype=dtype, param_dtype=pdtype)
        d = c.inner_dim
        n_img, n_txt = hidden_states.shape[1], encoder_hidden_states.shape[1]
        if img_ids.shape != (n_img, 3) or txt_ids.shape != (n_txt, 3):
            raise ValueError(
                f"position ids {img_ids.shape} / {txt_ids.shape} do not match {n_img} image"
                f" and {n_txt} text tokens (expected ({n_img}, 3) / ({n_txt}, 3))"
            )

        img = layers.Dense(d, (None, axes.EMBED), name="img_in", **kw)(hidden_states)
        txt = layers.RMSNorm(_EPS, (axes.EMBED,), param_dtype=pdtype, name="txt_norm")(
            encoder_hidden_states.astype(dtype)
        )
        txt = layers.Dense(d, (None, axes.EMBED), name="txt_in", **kw)(txt)
        img = axes.constrain(img, axes.TOKENS)
        txt = axes.constrain(txt, axes.TOKENS)

        # temb = MLP(sinusoid(1000 t)); Diffusers' Timesteps(scale=1000) multiplies after
        # t * freq, which `scale` reproduces to the rounding.
        e = layers.timestep_embedding(timestep, 256, flip_sin_to_cos=True, scale=1000.0)
        temb = layers.MLP(
            d, d, "silu", ("linear_1", "linear_2"), in_axis=None, name="timestep_embedder", **kw
        )(e.astype(dtype))  # TimestepEmbedding

        ids = jnp.concatenate([txt_ids, img_ids], axis=0)  # joint order: [text; image]
        cos, sin = layers.rope_frequencies(ids, tuple(c.axes_dims_rope), theta=10000.0)

        mask = None
        if encoder_hidden_states_mask is not None:
            keep = jnp.concatenate(
                [encoder_hidden_states_mask.astype(bool), jnp.ones((img.shape[0], n_img), bool)],
                axis=1,
            )
            mask = keep[:, None, None, :]  # (B, 1, 1, L): drop padded text keys

        if c.num_layers:
            stack = _stack(c.num_layers, c.remat)(
                heads=c.num_attention_heads, head_dim=c.attention_head_dim,
                attention=c.attention, name="transformer_blocks", **kw,
            )  # fmt: skip
            (img, txt), _ = stack((img, txt), temb, cos, sin, mask)

        # AdaLayerNormContinuous: Linear(silu(temb)) -> (scale, shift), in that order.
        scale, shift = jnp.split(
            layers.Dense(2 * d, (axes.EMBED, axes.MLP), name="norm_out", **kw)(nn.silu(temb)),
            2,
            axis=-1,
        )
        img = layers.modulate(layers.layer_norm(img, _EPS), shift, scale)
        out = layers.Dense(c.output_channels, (axes.EMBED, None), name="proj_out", **kw)(img)
        return axes.constrain(out, axes.TOKENS)


def init_shapes(config: QwenImageTransformerConfig, txt_len: int = 2):
    """(module, abstract boxed params) of `QwenImageTransformer(config)`, nothing allocated."""
    module = QwenImageTransformer(config)
    img_ids, txt_ids = rope_ids((1, 2, 2), txt_len)
    f32 = lambda *s: jax.ShapeDtypeStruct(s, jnp.float32)
    args = (
        f32(1, 4, config.in_channels),
        f32(1, txt_len, config.joint_attention_dim),
        jax.ShapeDtypeStruct((1, txt_len), jnp.bool_),
        f32(1),
        f32(*img_ids.shape),
        f32(*txt_ids.shape),
    )
    abstract = jax.eval_shape(lambda *a: module.init(jax.random.key(0), *a), *args)
    return module, abstract["params"]
