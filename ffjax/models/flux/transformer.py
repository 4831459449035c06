"""FLUX.1 transformer (Black Forest Labs 2024) in Flax linen, mirroring Diffusers'
`FluxTransformer2DModel`: an MMDiT with double-stream blocks (separate image / text
weights, joint attention) followed by single-stream blocks (parallel attention + MLP
over the concatenated sequence), AdaLN-Zero modulation from (timestep, guidance,
pooled CLIP) and 3-axis RoPE from `txt_ids` / `img_ids`.

Each block stack is one `nn.scan` (parameters gain a leading `layers` axis), wrapped
in `nn.remat` per the config's policy. Parameter names follow Diffusers' module names
so the key table in `convert.py` reads one-to-one.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from ffjax.models import layers
from ffjax.models.flux.config import FluxTransformerConfig
from ffjax.parallel import axes

Dtype = jnp.dtype


def _gelu_tanh(x: jax.Array) -> jax.Array:
    return jax.nn.gelu(x, approximate=True)


class AdaLNLinear(nn.Module):
    """silu(temb) -> Dense(n * D) -> n chunks of (B, D): the AdaLN modulation parameters."""

    n: int
    dtype: Dtype
    param_dtype: Dtype

    @nn.compact
    def __call__(self, temb: jax.Array) -> list[jax.Array]:
        d = temb.shape[-1]
        y = layers.Dense(
            self.n * d,
            (axes.EMBED, axes.MLP),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="linear",
        )(nn.silu(temb))
        return jnp.split(y, self.n, axis=-1)


class QKV(nn.Module):
    """q, k, v projections split into heads, with RMSNorm on q and k: 3 x (B, L, H, Dh)."""

    heads: int
    head_dim: int
    dtype: Dtype
    param_dtype: Dtype
    names: tuple[str, str, str, str, str] = ("to_q", "to_k", "to_v", "norm_q", "norm_k")

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        inner = self.heads * self.head_dim
        split = lambda t: t.reshape(*t.shape[:-1], self.heads, self.head_dim)
        q, k, v = (
            split(layers.Dense(inner, (axes.EMBED, axes.HEADS), name=n, **kw)(x))
            for n in self.names[:3]
        )
        q = layers.RMSNorm(1e-6, param_dtype=self.param_dtype, name=self.names[3])(q)
        k = layers.RMSNorm(1e-6, param_dtype=self.param_dtype, name=self.names[4])(k)
        return q, k, v


class DoubleBlock(nn.Module):
    """MMDiT block: image and text streams with their own weights, one joint attention."""

    heads: int
    head_dim: int
    attention: str
    dtype: Dtype
    param_dtype: Dtype

    @nn.compact
    def __call__(self, carry, temb, cos, sin):
        img, txt = carry
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        d = self.heads * self.head_dim
        i_shift, i_scale, i_gate, i_shift2, i_scale2, i_gate2 = AdaLNLinear(6, name="norm1", **kw)(
            temb
        )
        t_shift, t_scale, t_gate, t_shift2, t_scale2, t_gate2 = AdaLNLinear(
            6, name="norm1_context", **kw
        )(temb)

        img_n = layers.modulate(layers.layer_norm(img), i_shift, i_scale)
        txt_n = layers.modulate(layers.layer_norm(txt), t_shift, t_scale)
        qi, ki, vi = QKV(self.heads, self.head_dim, name="attn", **kw)(img_n)
        qt, kt, vt = QKV(self.heads, self.head_dim, name="attn_context", **kw,
                         names=("add_q_proj", "add_k_proj", "add_v_proj", "norm_added_q", "norm_added_k"))(txt_n)  # fmt: skip
        # Joint attention over [text; image], as Diffusers concatenates (text first).
        q, k, v = (jnp.concatenate(p, axis=1) for p in ((qt, qi), (kt, ki), (vt, vi)))
        q, k = layers.apply_rope(q, cos, sin), layers.apply_rope(k, cos, sin)
        o = layers.dot_product_attention(q, k, v, implementation=self.attention)
        o = o.reshape(*o.shape[:2], d)
        txt_o, img_o = o[:, : txt.shape[1]], o[:, txt.shape[1] :]
        img_o = layers.Dense(d, (axes.HEADS, axes.EMBED), name="to_out", **kw)(img_o)
        txt_o = layers.Dense(d, (axes.HEADS, axes.EMBED), name="to_add_out", **kw)(txt_o)

        img = img + i_gate[:, None] * img_o
        ff = layers.MLP(4 * d, d, "gelu_tanh", name="ff", **kw)
        img = img + i_gate2[:, None] * ff(
            layers.modulate(layers.layer_norm(img), i_shift2, i_scale2)
        )
        txt = txt + t_gate[:, None] * txt_o
        ff_c = layers.MLP(4 * d, d, "gelu_tanh", name="ff_context", **kw)
        txt = txt + t_gate2[:, None] * ff_c(
            layers.modulate(layers.layer_norm(txt), t_shift2, t_scale2)
        )
        img = axes.constrain(img, axes.TOKENS)
        txt = axes.constrain(txt, axes.TOKENS)
        return (img, txt), None


class SingleBlock(nn.Module):
    """Single-stream block over x = [text; image]: x + gate * W_out [attn(x'); gelu(W_mlp x')]."""

    heads: int
    head_dim: int
    attention: str
    dtype: Dtype
    param_dtype: Dtype
    mlp_ratio: float = 4.0

    @nn.compact
    def __call__(self, x, temb, cos, sin):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        d = self.heads * self.head_dim
        shift, scale, gate = AdaLNLinear(3, name="norm", **kw)(temb)
        xn = layers.modulate(layers.layer_norm(x), shift, scale)
        mlp = _gelu_tanh(
            layers.Dense(int(d * self.mlp_ratio), (axes.EMBED, axes.MLP), name="proj_mlp", **kw)(xn)
        )
        q, k, v = QKV(self.heads, self.head_dim, name="attn", **kw)(xn)
        q, k = layers.apply_rope(q, cos, sin), layers.apply_rope(k, cos, sin)
        o = layers.dot_product_attention(q, k, v, implementation=self.attention)
        o = jnp.concatenate([o.reshape(*o.shape[:2], d), mlp], axis=-1)
        x = x + gate[:, None] * layers.Dense(d, (axes.MLP, axes.EMBED), name="proj_out", **kw)(o)
        return axes.constrain(x, axes.TOKENS), None


_REMAT_POLICY = {
    "full": None,  # save nothing: recompute the whole block in the backward pass
    "save_dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # keep matmul outputs
}


def _stack(block: type[nn.Module], length: int, remat: str) -> type[nn.Module]:
    """`block` scanned `length` times (params stacked on a leading `layers` axis)."""
    if remat != "none":
        block = nn.remat(block, policy=_REMAT_POLICY[remat], prevent_cse=False)
    return nn.scan(
        block,
        variable_axes={"params": 0, "lora": 0, "lora_scale": 0},
        split_rngs={"params": True},
        in_axes=(nn.broadcast, nn.broadcast, nn.broadcast),
        length=length,
        metadata_params={nn.PARTITION_NAME: axes.LAYERS},
    )


class FluxTransformer(nn.Module):
    """The FLUX.1 transformer; `__call__` takes `FluxTransformer2DModel.forward`'s arguments."""

    config: FluxTransformerConfig

    @nn.compact
    def __call__(
        self,
        hidden_states: jax.Array,
        encoder_hidden_states: jax.Array,
        pooled_projections: jax.Array,
        timestep: jax.Array,
        img_ids: jax.Array,
        txt_ids: jax.Array,
        guidance: jax.Array | None = None,
    ) -> jax.Array:
        """Predicts the velocity of packed latents.

        Args:
          hidden_states: float[B, L_img, in_channels] packed latents.
          encoder_hidden_states: float[B, L_txt, joint_attention_dim] T5 states.
          pooled_projections: float[B, pooled_projection_dim] CLIP pooled output.
          timestep: float[B], sigma in [0, 1] (Diffusers passes t / 1000); scaled by
            1000 here, as `FluxTransformer2DModel.forward` does.
          img_ids: float[L_img, 3] and txt_ids: float[L_txt, 3] RoPE positions
            (a leading batch axis is accepted and dropped, as in Diffusers).
          guidance: float[B] guidance scale; required iff `config.guidance_embeds`.

        Returns:
          float[B, L_img, patch_size^2 * out_channels] in the activation dtype.
        """
        c = self.config
        dtype, pdtype = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
        kw = dict(dtype=dtype, param_dtype=pdtype)
        d = c.inner_dim

        img = layers.Dense(d, (None, axes.EMBED), name="x_embedder", **kw)(hidden_states)
        txt = layers.Dense(d, (None, axes.EMBED), name="context_embedder", **kw)(
            encoder_hidden_states
        )
        img = axes.constrain(img, axes.TOKENS)
        txt = axes.constrain(txt, axes.TOKENS)

        # Conditioning vector: MLP(sinusoid(1000 t)) [+ MLP(sinusoid(1000 g))] + MLP(pooled).
        def embed_scalar(value, name):
            e = layers.timestep_embedding(value.astype(jnp.float32) * 1000, 256)
            return layers.MLP(d, d, "silu", ("linear_1", "linear_2"), name=name, **kw)(
                e.astype(dtype)
            )

        temb = embed_scalar(timestep, "timestep_embedder")
        if c.guidance_embeds:
            if guidance is None:
                raise ValueError(
                    "this FLUX.1 transformer has guidance_embeds=True: pass `guidance` (float[B])"
                )
            temb = temb + embed_scalar(guidance, "guidance_embedder")
        temb = temb + layers.MLP(
            d, d, "silu", ("linear_1", "linear_2"), name="text_embedder", **kw
        )(pooled_projections.astype(dtype))

        txt_ids = txt_ids[0] if txt_ids.ndim == 3 else txt_ids
        img_ids = img_ids[0] if img_ids.ndim == 3 else img_ids
        ids = jnp.concatenate([txt_ids, img_ids], axis=0)
        cos, sin = layers.rope_frequencies(ids, tuple(c.axes_dims_rope), theta=10000.0)

        block_kw = dict(
            heads=c.num_attention_heads, head_dim=c.attention_head_dim, attention=c.attention, **kw
        )
        if c.num_layers:
            stack = _stack(DoubleBlock, c.num_layers, c.remat)
            (img, txt), _ = stack(name="double_blocks", **block_kw)((img, txt), temb, cos, sin)
        n_txt = txt.shape[1]
        x = axes.constrain(jnp.concatenate([txt, img], axis=1), axes.TOKENS)
        if c.num_single_layers:
            x, _ = _stack(SingleBlock, c.num_single_layers, c.remat)(
                name="single_blocks", **block_kw
            )(x, temb, cos, sin)
        img = x[:, n_txt:]

        scale, shift = AdaLNLinear(2, name="norm_out", **kw)(
            temb
        )  # (scale, shift): Diffusers' order
        img = layers.modulate(layers.layer_norm(img), shift, scale)
        out = layers.Dense(c.output_channels, (axes.EMBED, None), name="proj_out", **kw)(img)
        return axes.constrain(out, axes.TOKENS)
