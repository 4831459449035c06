"""The `flux1` model adapter: what samplers and algorithms see of FLUX.1.

Latent layout: the VAE gives (B, h, w, 16) latents (h = H / 8 for FLUX.1); the
transformer sees them *packed* in 2x2 patches, (B, h/2 * w/2, 64), channel index
c * 4 + 2 * dy + dx as in Diffusers' `FluxPipeline._pack_latents`. Everything the
adapter returns to a sampler is float32 and packed.

Time: samplers use sigma in [0, 1] (DESIGN.md); the transformer takes the same sigma
as `timestep` and scales it by 1000 itself, exactly as `FluxPipeline` passes
`t / 1000`. Guidance-distilled checkpoints (FLUX.1-dev) get the guidance scale as an
input embedding; there is no classifier-free guidance pass.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from ffjax.flow.schedule import flux_sigmas
from ffjax.models import weights as weights_lib
from ffjax.models.adapter import AdapterBase
from ffjax.models.flux.config import FluxTransformerConfig, FluxVAEConfig
from ffjax.models.flux.convert import load_transformer, load_vae, transformer_init_shapes
from ffjax.models.flux.transformer import FluxTransformer
from ffjax.models.flux.vae import FluxVAE, from_transformer_space
from ffjax.models.flux.vae import init_shapes as vae_init_shapes


@struct.dataclass
class FluxCond:
    """Conditioning of one batch.

    Attributes:
      prompt_embeds: float[B, L_txt, joint_attention_dim] T5 last hidden states.
      pooled_prompt_embeds: float[B, pooled_projection_dim] CLIP pooled output.
      txt_ids: float32[B, L_txt, 3] zeros (text tokens share RoPE position 0).
      img_ids: float32[B, L_img, 3] (0, row, col) of each packed latent patch.
      guidance: float32[B] guidance scale, or None for models without guidance embedding.

    Every leaf has the batch axis first, so a trainer can index, shuffle and shard a
    FluxCond like any batch; the ids are the same for every row (the transformer
    reads row 0).
    """

    prompt_embeds: jax.Array
    pooled_prompt_embeds: jax.Array
    txt_ids: jax.Array
    img_ids: jax.Array
    guidance: jax.Array | None = None


def pack_latents(z: jax.Array) -> jax.Array:
    """(B, h, w, C) -> (B, h/2 * w/2, 4C), 2x2 patches, channel c*4 + 2*dy + dx."""
    b, h, w, c = z.shape
    z = z.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 5, 2, 4)
    return z.reshape(b, (h // 2) * (w // 2), 4 * c)


def unpack_latents(x: jax.Array, h: int, w: int) -> jax.Array:
    """(B, h/2 * w/2, 4C) -> (B, h, w, C); inverse of `pack_latents`."""
    b, _, c4 = x.shape
    c = c4 // 4
    x = x.reshape(b, h // 2, w // 2, c, 2, 2).transpose(0, 1, 4, 2, 5, 3)
    return x.reshape(b, h, w, c)


class Flux1Adapter(AdapterBase):
    """FLUX.1 (dev / schnell / any size) behind the model-adapter contract
    (`ffjax.models.adapter.ModelAdapter`; registered as `flux1`).

    Args:
      transformer: the FluxTransformer module.
      vae: the FluxVAE module (None if only velocities are needed).
      vae_config: its config (scaling / shift factors, downsampling factor).
      guidance_scale: default embedded guidance for guidance-distilled checkpoints.
      text: FluxText (CLIP + T5 with tokenizers), as `load` builds it; None: prompts
        cannot be encoded (`make_cond` from given embeddings still works).
      embed_cache: optional ffjax.data.embed_cache.EmbedCache of prompt embeddings.
      max_sequence_length: T5 tokens (FluxPipeline's default 512).
    """

    def __init__(
        self,
        transformer: FluxTransformer,
        vae: FluxVAE | None = None,
        vae_config: FluxVAEConfig | None = None,
        guidance_scale: float = 3.5,
        *,
        text: Any = None,
        embed_cache: Any = None,
        max_sequence_length: int = 512,
    ):
        self.transformer = transformer
        self.config = transformer.config
        self.vae = vae
        self.vae_config = vae_config or (vae.config if vae is not None else FluxVAEConfig())
        self.guidance_scale = guidance_scale
        self.latent_channels = self.config.in_channels // 4
        self.vae_scale_factor = self.vae_config.downsample_factor
        self.text = text
        self.embed_cache = embed_cache
        self.max_sequence_length = max_sequence_length

    denoiser = "transformer"  # the weights RL trains (key in the `load` weights dict)

    @property
    def lora_targets(self) -> tuple[str, ...]:
        """Default LoRA target regexes on Dense module paths (Flow-GRPO's FLUX targets)."""
        from ffjax.models.lora import FLUX_TARGETS

        return FLUX_TARGETS

    @classmethod
    def load(cls, config: Any) -> tuple[Flux1Adapter, dict[str, Any]]:
        """From a run config (`config.model`, `config.sampling`): adapter with text encoders.

        Returns (adapter, {"transformer": params, "vae": params}); weights are stored
        in `config.model.param_dtype`, activations run in `config.model.dtype`.
        """
        m = config.model
        transformer, tp = load_transformer(
            os.path.join(m.path, "transformer"),
            dtype=m.param_dtype,
            attention=m.attention,
            remat=m.remat,
        )
        # Weights stay in param_dtype; activations run in dtype (cast inside the layers).
        transformer = FluxTransformer(dataclasses.replace(transformer.config, dtype=m.dtype))
        vae, vp = load_vae(os.path.join(m.path, "vae"), dtype=m.param_dtype)
        vae = FluxVAE(dataclasses.replace(vae.config, dtype=m.dtype))
        from ffjax.models.text.encode import load_flux_text

        adapter = cls(
            transformer, vae, vae.config, config.sampling.guidance_scale,
            text=load_flux_text(m.path, dtype=m.dtype), max_sequence_length=m.max_sequence_length,
        )  # fmt: skip
        return adapter, {"transformer": tp, "vae": vp}

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike, dtype: Any = "float32", guidance_scale: float = 3.5, **runtime
    ) -> tuple[Flux1Adapter, dict[str, Any]]:
        """From a Diffusers FluxPipeline folder: (adapter, {"transformer": p, "vae": p})."""
        transformer, tp = load_transformer(
            os.path.join(path, "transformer"), dtype=dtype, **runtime
        )
        vae, vp = load_vae(os.path.join(path, "vae"), dtype=dtype)
        return cls(transformer, vae, vae.config, guidance_scale), {"transformer": tp, "vae": vp}

    @classmethod
    def abstract_load(cls, config: Any) -> tuple[Flux1Adapter, dict[str, Any]]:
        """`load` from the config.json files alone, for `--dry_run` (ffjax/dry_run.py).

        Returns (adapter, weights) like `load`, with `jax.ShapeDtypeStruct` leaves in
        `config.model.param_dtype` (what `load` stores); no weight is read or allocated,
        so a 12B FLUX.1-dev needs only its config files. The adapter has no text
        encoders; `abstract_text_encoders` gives their shapes.
        """
        m = config.model
        tc = FluxTransformerConfig.from_diffusers(
            os.path.join(m.path, "transformer"), dtype=m.dtype, param_dtype=m.param_dtype,
            attention=m.attention, remat=m.remat,
        )  # fmt: skip
        vc = FluxVAEConfig.from_diffusers(
            os.path.join(m.path, "vae"), dtype=m.dtype, param_dtype=m.param_dtype
        )
        adapter = cls(
            FluxTransformer(tc), FluxVAE(vc), vc, config.sampling.guidance_scale,
            max_sequence_length=m.max_sequence_length,
        )  # fmt: skip
        as_stored = lambda tree: weights_lib.as_stored(tree, m.param_dtype)
        weights = {
            "transformer": as_stored(transformer_init_shapes(tc)[1]),
            "vae": as_stored(vae_init_shapes(vc)[1]),
        }
        return adapter, weights

    @classmethod
    def abstract_text_encoders(cls, config: Any) -> dict[str, Any]:
        """{name: params as `jax.ShapeDtypeStruct`s} of the text encoders `load` sets up
        (CLIP `text_encoder`, T5 `text_encoder_2`, in `config.model.dtype`), from their
        config.json files alone."""
        from ffjax.models.text.convert import abstract_clip, abstract_t5

        m = config.model
        return {
            "text_encoder (CLIP)": abstract_clip(os.path.join(m.path, "text_encoder"), m.dtype),
            "text_encoder_2 (T5)": abstract_t5(os.path.join(m.path, "text_encoder_2"), m.dtype),
        }

    @classmethod
    def text_encoder_specs(cls, config: Any) -> dict[str, Any]:
        """Logical `PartitionSpec`s of `abstract_text_encoders(config)` (same keys): the
        shardings `place_encoders` gives them, through `logical_shardings`."""
        from ffjax.models.text.convert import logical_specs

        m = config.model
        return {
            "text_encoder (CLIP)": logical_specs(
                "clip_text", os.path.join(m.path, "text_encoder"), m.dtype
            ),
            "text_encoder_2 (T5)": logical_specs(
                "t5", os.path.join(m.path, "text_encoder_2"), m.dtype
            ),
        }

    def place_encoders(self, mesh: jax.sharding.Mesh) -> None:
        """Shards the CLIP and T5 params on `mesh` by their logical axes; prompts are then
        encoded there (`ffjax.models.text.placement`). Nothing to do without encoders."""
        from ffjax.models.text.placement import place_encoders

        place_encoders(self.text, mesh)

    def abstract_cond(self, batch: int, height: int, width: int) -> FluxCond:
        """The `encode_prompts` result for `batch` prompts, as `jax.ShapeDtypeStruct`s
        (embeddings in the activation dtype, as the encoders `load` builds return them)."""
        dtype = jnp.dtype(self.config.dtype)
        embeds = jax.ShapeDtypeStruct(
            (batch, self.max_sequence_length, self.config.joint_attention_dim), dtype
        )
        pooled = jax.ShapeDtypeStruct((batch, self.config.pooled_projection_dim), dtype)
        return jax.eval_shape(lambda e, p: self.make_cond(e, p, height, width), embeds, pooled)

    def logical_specs(self) -> dict[str, Any]:
        """Logical `PartitionSpec`s (ffjax.parallel.axes names) of the `load` weights, by
        weights key; the trainer maps them to mesh shardings. Shapes only, nothing allocated."""
        specs = {"transformer": nn.get_partition_spec(transformer_init_shapes(self.config)[1])}
        if self.vae is not None:
            specs["vae"] = nn.get_partition_spec(vae_init_shapes(self.vae_config)[1])
        return specs

    # ----------------------------------------------------------------- shapes and ids

    def latent_hw(self, height: int, width: int) -> tuple[int, int]:
        """Unpacked latent (h, w) of an H x W image; ValueError unless both divide 2 * f."""
        m = 2 * self.vae_scale_factor  # 16 for FLUX.1: VAE factor 8, then 2x2 packing
        if height <= 0 or width <= 0 or height % m or width % m:
            raise ValueError(
                f"FLUX.1 image size must be positive multiples of {m} (VAE factor"
                f" {self.vae_scale_factor} x 2x2 packing); got height={height}, width={width}"
            )
        return height // self.vae_scale_factor, width // self.vae_scale_factor

    def latent_shape(self, batch: int, height: int, width: int) -> tuple[int, int, int]:
        """Packed latent shape (B, L_img, 4 * latent_channels) for an H x W image."""
        h, w = self.latent_hw(height, width)
        return batch, (h // 2) * (w // 2), self.config.in_channels

    def image_ids(self, height: int, width: int) -> np.ndarray:
        """float32[(h/2)(w/2), 3] RoPE ids (0, row, col) of the packed patches, row-major."""
        h, w = self.latent_hw(height, width)
        rows, cols = np.meshgrid(np.arange(h // 2), np.arange(w // 2), indexing="ij")
        return np.stack([np.zeros_like(rows), rows, cols], -1).reshape(-1, 3).astype(np.float32)

    def init_noise(self, key: jax.Array, batch: int, height: int, width: int) -> jax.Array:
        """Standard normal packed latents float32[B, L_img, 4C] (sigma = 1)."""
        return jax.random.normal(key, self.latent_shape(batch, height, width), jnp.float32)

    def sigmas(self, num_steps: int, height: int, width: int) -> np.ndarray:
        """The FluxPipeline schedule float32[num_steps + 1] for this resolution."""
        return flux_sigmas(num_steps, self.latent_shape(1, height, width)[1])

    def make_cond(
        self,
        prompt_embeds,
        pooled_prompt_embeds,
        height: int,
        width: int,
        guidance_scale: float | None = None,
    ) -> FluxCond:
        """Bundles prompt embeddings (from the T5 / CLIP encoders) with ids and guidance."""
        b, l_txt = prompt_embeds.shape[:2]
        guidance = None
        if self.config.guidance_embeds:
            g = self.guidance_scale if guidance_scale is None else guidance_scale
            guidance = jnp.full((b,), g, jnp.float32)
        img_ids = self.image_ids(height, width)
        return FluxCond(
            prompt_embeds=jnp.asarray(prompt_embeds),
            pooled_prompt_embeds=jnp.asarray(pooled_prompt_embeds),
            txt_ids=jnp.zeros((b, l_txt, 3), jnp.float32),
            img_ids=jnp.broadcast_to(jnp.asarray(img_ids), (b,) + img_ids.shape),
            guidance=guidance,
        )

    def encode_prompts(
        self, prompts: list[str], height: int, width: int, guidance_scale: float | None = None
    ) -> FluxCond:
        """Prompts -> FluxCond with the pipeline's own CLIP / T5 encoders (`load` them first).

        Embeddings are exactly `FluxPipeline.encode_prompt`'s (T5 length
        `self.max_sequence_length`); an embedding cache set on the adapter is used.
        """
        if self.text is None:
            raise ValueError(
                "this flux1 adapter has no text encoders; build it with Flux1Adapter.load"
            )
        from ffjax.models.text.encode import encode_prompts_flux

        embeds, pooled, _ = encode_prompts_flux(
            self.text,
            list(prompts),
            max_sequence_length=self.max_sequence_length,
            cache=self.embed_cache,
        )
        return self.make_cond(embeds, pooled, height, width, guidance_scale)

    # ----------------------------------------------------------------- the contract

    def velocity(self, variables: Any, x: jax.Array, sigma: jax.Array, cond: FluxCond) -> jax.Array:
        """v = noise - x0 predicted at x_sigma.

        Args:
          variables: transformer variables {"params": ...} plus, when training LoRA,
            the "lora" and "lora_scale" collections (ffjax.models.lora).
          x: float32[B, L_img, 4C] packed latents at noise level sigma.
          sigma: float32[B] in [0, 1].
          cond: FluxCond of the batch.

        Returns:
          float32[B, L_img, 4C].
        """
        dtype = jnp.dtype(self.config.dtype)
        sigma = jnp.broadcast_to(jnp.asarray(sigma, jnp.float32), (x.shape[0],))
        v = self.transformer.apply(
            variables,
            x.astype(dtype),
            cond.prompt_embeds.astype(dtype),
            cond.pooled_prompt_embeds.astype(dtype),
            sigma,  # the module multiplies by 1000: Diffusers' timestep convention
            cond.img_ids[0] if cond.img_ids.ndim == 3 else cond.img_ids,
            cond.txt_ids[0] if cond.txt_ids.ndim == 3 else cond.txt_ids,
            cond.guidance,
        )
        return v.astype(jnp.float32)

    def decode_latents(self, vae_params: Any, x: jax.Array, height: int, width: int) -> jax.Array:
        """Packed transformer-space latents -> float32[B, H, W, 3] images in ~[-1, 1]."""
        if self.vae is None:
            raise ValueError("this adapter was built without a VAE")
        h, w = self.latent_hw(height, width)
        z = from_transformer_space(unpack_latents(x.astype(jnp.float32), h, w), self.vae_config)
        img = self.vae.apply({"params": vae_params}, z, method="decode")
        return img.astype(jnp.float32)

    def decode(self, vae_params: Any, x: jax.Array, height: int, width: int) -> jax.Array:
        """Packed latents -> uint8[B, H, W, 3], as Diffusers' image post-processing rounds."""
        img = self.decode_latents(vae_params, x, height, width)
        return jnp.round(jnp.clip(img / 2 + 0.5, 0.0, 1.0) * 255).astype(jnp.uint8)
