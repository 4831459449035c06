"""CLIP (Radford et al. 2021) in Flax linen: the vision tower and the two-tower `CLIPModel`.

Mirrors transformers' `CLIPVisionModel` / `CLIPVisionModelWithProjection` / `CLIPModel`:

    x   = [class_embedding; conv_patch(pixels)] + position_embedding     (B, 1 + N, D)
    x   = encoder(pre_layrnorm(x))             pre-LN layers, the text tower's layer
    img = visual_projection(post_layernorm(x[:, 0]))        (B, P)
    txt = text_projection(text_tower(ids)[EOS])              (B, P)
    logits_per_image = exp(logit_scale) * cos(img_i, txt_j)  (B_img, B_txt)

The text tower is `ffjax.models.text.clip.CLIPTextModel` unchanged; the vision tower
reuses its `CLIPEncoderLayer` (transformers uses one `CLIPEncoderLayer` class for both
towers, so do we). Pixels are channels-last, (B, H, W, 3), the JAX convention; the
parity tests transpose transformers' (B, 3, H, W).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ffjax.models import layers
from ffjax.models.text import blocks
from ffjax.models.text.clip import CLIPEncoderLayer, CLIPTextConfig, CLIPTextModel
from ffjax.parallel import axes

_ACT = (axes.BATCH, axes.LENGTH, axes.EMBED)

# transformers' CLIPTextConfig defaults: config.json files written by old transformers
# versions may omit fields at their defaults, and ours (CLIPTextConfig) are ViT-L's.
_TEXT_DEFAULTS = dict(
    vocab_size=49408,
    hidden_size=512,
    intermediate_size=2048,
    num_hidden_layers=12,
    num_attention_heads=8,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
    eos_token_id=49407,
)


@dataclasses.dataclass(frozen=True)
class CLIPVisionConfig:
    """The fields of transformers' `CLIPVisionConfig` the forward pass uses (its defaults).

    Field names match `CLIPTextConfig` where the encoder layer reads them, so one
    `CLIPEncoderLayer` serves both towers. `projection_dim` None: no visual projection.
    """

    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_channels: int = 3
    image_size: int = 224
    patch_size: int = 32
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    projection_dim: int | None = None

    @classmethod
    def from_dict(
        cls, d: Mapping[str, Any], *, projection_dim: int | None = None
    ) -> CLIPVisionConfig:
        """From a vision config dict (or a full CLIP config's `vision_config`)."""
        d = d.get("vision_config", d)
        names = {f.name for f in dataclasses.fields(cls)} - {"projection_dim"}
        return cls(**{k: d[k] for k in names if k in d}, projection_dim=projection_dim)

    @property
    def num_patches(self) -> int:
        """N = (image_size // patch_size)^2, the patch tokens after the class token."""
        return (self.image_size // self.patch_size) ** 2


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
    """transformers' `CLIPConfig`: both towers, each with its projection to `projection_dim`."""

    text: CLIPTextConfig
    vision: CLIPVisionConfig
    projection_dim: int = 512
    logit_scale_init_value: float = 2.6592

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CLIPConfig:
        """From a `CLIPModel` config.json dict (model_type "clip").

        The top-level `projection_dim` sizes both projections (the towers' own
        `projection_dim` fields are ignored by `CLIPModel`, and so here).
        """
        proj = int(d.get("projection_dim", 512))
        text = CLIPTextConfig.from_dict({**_TEXT_DEFAULTS, **d.get("text_config", {})})
        text = dataclasses.replace(text, projection_dim=proj)
        vision = CLIPVisionConfig.from_dict(d.get("vision_config", {}), projection_dim=proj)
        return cls(text, vision, proj, float(d.get("logit_scale_init_value", 2.6592)))


class _EmittingLayer(CLIPEncoderLayer):
    """`CLIPEncoderLayer` that also emits its output, so the scan stacks every layer's
    (same parameters and names: a subclass, not a wrapper)."""

    def __call__(self, x: jax.Array, bias: jax.Array) -> tuple[jax.Array, jax.Array]:
        x, _ = super().__call__(x, bias)
        return x, x


class CLIPVisionModel(nn.Module):
    """transformers' `CLIPVisionModel` (+ `visual_projection` when `config.projection_dim`).

    Attributes:
      config: the vision config.
      dtype: activation dtype; param_dtype: parameter storage dtype.
      remat: rematerialise each layer in the backward pass.
    """

    config: CLIPVisionConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    remat: bool = False

    @nn.compact
    def __call__(
        self, pixel_values: jax.Array, output_hidden_states: bool = False
    ) -> dict[str, jax.Array]:
        """Encodes preprocessed images.

        Args:
          pixel_values: float[B, S, S, C], S = config.image_size, normalised as the
            CLIP image processor does (see `ffjax.models.clip.preprocess`).
          output_hidden_states: also return every layer's input and the last output.

        Returns:
          {"last_hidden_state": [B, 1 + N, D], "pooler_output": [B, D]} (class token
          after post_layernorm), plus "image_embeds": [B, projection_dim] (unnormalised,
          = transformers' `get_image_features`) with a projection, plus with
          `output_hidden_states` "hidden_states": [num_layers + 1, B, 1 + N, D], as
          transformers' tuple (index 0 after pre_layrnorm, i after layer i; WAN I2V
          conditions on index -2).
        """
        c, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
        b, h, w, ch = pixel_values.shape
        if (h, w, ch) != (c.image_size, c.image_size, c.num_channels):
            # transformers raises too unless asked to interpolate position embeddings,
            # which no CLIP reward does: resize in preprocessing instead.
            raise ValueError(
                f"pixel_values {(h, w, ch)} do not match the model's"
                f" ({c.image_size}, {c.image_size}, {c.num_channels}) (H, W, C)"
            )
        p, d = c.patch_size, c.hidden_size
        patches = nn.Conv(
            d,
            (p, p),
            strides=(p, p),
            padding="VALID",
            use_bias=False,
            kernel_init=nn.with_logical_partitioning(
                nn.initializers.lecun_normal(), (None, None, axes.CONV_IN, axes.EMBED)
            ),
            name="patch_embedding",
            **kw,
        )(pixel_values.astype(self.dtype))
        patches = patches.reshape(b, -1, d)  # row-major over the grid, as torch's flatten(2)
        cls_emb = self.param(
            "class_embedding",
            nn.with_logical_partitioning(nn.initializers.normal(d**-0.5), (axes.EMBED,)),
            (d,),
            self.param_dtype,
        )
        cls_tok = jnp.broadcast_to(cls_emb.astype(self.dtype), (b, 1, d))
        x = jnp.concatenate([cls_tok, patches], axis=1)
        pos = blocks.embed(c.num_patches + 1, d, name="position_embedding", **kw)
        x = nn.with_logical_constraint(x + pos(jnp.arange(x.shape[1]))[None], _ACT)
        x = blocks.layer_norm(c.layer_norm_eps, name="pre_layrnorm", **kw)(x)
        layer = _EmittingLayer if output_hidden_states else CLIPEncoderLayer
        stack = blocks.stack(layer, c.num_hidden_layers, 1, self.remat)
        x0 = x
        x, per_layer = stack(c, self.dtype, self.param_dtype, name="layers")(x, None)  # no mask
        pooled = blocks.layer_norm(c.layer_norm_eps, name="post_layernorm", **kw)(x[:, 0])
        out = {"last_hidden_state": x, "pooler_output": pooled}
        if output_hidden_states:
            out["hidden_states"] = jnp.concatenate([x0[None], per_layer])
        if c.projection_dim is not None:
            proj = layers.Dense(
                c.projection_dim,
                (axes.EMBED, None),
                use_bias=False,
                name="visual_projection",
                **kw,
            )
            out["image_embeds"] = proj(pooled)
        return out


def l2_normalize(x: jax.Array) -> jax.Array:
    """x / ||x||_2 over the last axis, in float32 (transformers' `_get_vector_norm`)."""
    x = x.astype(jnp.float32)
    return x / jnp.sqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True))


class CLIPModel(nn.Module):
    """transformers' `CLIPModel`: vision and text towers with projections and logit_scale.

    Use `get_image_features` / `get_text_features` through `apply(..., method=...)`, or
    call the module for both embeddings and the similarity logits.
    """

    config: CLIPConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def setup(self):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.text_model = CLIPTextModel(self.config.text, **kw)
        self.vision_model = CLIPVisionModel(self.config.vision, **kw)
        self.logit_scale = self.param(
            "logit_scale",
            nn.initializers.constant(self.config.logit_scale_init_value),
            (),
            self.param_dtype,
        )

    def get_image_features(self, pixel_values: jax.Array) -> jax.Array:
        """float[B, S, S, C] preprocessed pixels -> [B, projection_dim] (unnormalised)."""
        return self.vision_model(pixel_values)["image_embeds"]

    def get_text_features(
        self, input_ids: jax.Array, attention_mask: jax.Array | None = None
    ) -> jax.Array:
        """int[B, L] ids (+ int[B, L] mask, 1 = token) -> [B, projection_dim] (unnormalised)."""
        return self.text_model(input_ids, attention_mask)["text_embeds"]

    def __call__(
        self,
        pixel_values: jax.Array,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
    ) -> dict[str, jax.Array]:
        """Both towers and the contrastive logits, as transformers' `CLIPOutput`.

        Args:
          pixel_values: float[Bi, S, S, C]; input_ids, attention_mask: int[Bt, L].

        Returns:
          float32 arrays: "image_embeds" [Bi, P] and "text_embeds" [Bt, P], both
          L2-normalised; "logits_per_image" [Bi, Bt] = exp(logit_scale) * image_embeds
          @ text_embeds.T and its transpose "logits_per_text"; "logit_scale" [] the
          learned log-temperature (the logits use its exp).
        """
        image = l2_normalize(self.get_image_features(pixel_values))
        text = l2_normalize(self.get_text_features(input_ids, attention_mask))
        scale = self.logit_scale.astype(jnp.float32)
        logits_per_text = jnp.exp(scale) * (text @ image.T)
        return {
            "image_embeds": image,
            "text_embeds": text,
            "logits_per_image": logits_per_text.T,
            "logits_per_text": logits_per_text,
            "logit_scale": scale,
        }
