"""The `qwen-image` model adapter: what samplers and algorithms see of Qwen-Image.

Latent layout: the VAE gives (B, h, w, z_dim) latents (h = H / 8 for Qwen-Image); the
transformer sees them *packed* in 2x2 patches, (B, h/2 * w/2, 4 z_dim), channel index
c * 4 + 2 * dy + dx as in `QwenImagePipeline._pack_latents`. Latents are in the
transformer's space, (z - latents_mean) / latents_std per channel; `decode` undoes that
before the VAE. Everything the adapter returns to a sampler is float32 and packed.

Time: samplers use sigma in [0, 1] (DESIGN.md); `QwenImagePipeline` passes the
scheduler's `t / 1000`, which is that sigma, and the transformer scales it by 1000
itself.

Guidance: Qwen-Image has no guidance embedding; it uses *true* classifier-free
guidance with norm rescaling (`QwenImagePipeline.__call__`, `true_cfg_scale` path):

    comb = v_neg + s (v_pos - v_neg),    v = comb * ||v_pos|| / ||comb||

with norms over the channel axis of each packed token. `s` is
`config.sampling.guidance_scale` (the pipeline's `true_cfg_scale`); the negative prompt
is `config.model.negative_prompt`. As in the pipeline, guidance is on only when s > 1
and a negative prompt is given; then the conditioning carries the negative prompt's
embeddings and `velocity` runs both passes. The rollout always guides so; the training
forward guides too only with `config.algorithm.cfg_in_train=True`: with False the trainer
scores the rollout's steps with `conditional_only(cond)`, the conditional pass alone.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from ffjax.flow.schedule import QWEN_IMAGE_SCHEDULER, SchedulerConfig, qwen_image_sigmas
from ffjax.models import weights as weights_lib
from ffjax.models.adapter import AdapterBase
from ffjax.models.qwen_image.config import QwenImageTransformerConfig, QwenImageVAEConfig
from ffjax.models.qwen_image.convert import identify, load_transformer, load_vae
from ffjax.models.qwen_image.transformer import (
    QwenImageTransformer,
    pack_latents,
    packed_grid,
    rope_ids,
    unpack_latents,
)
from ffjax.models.qwen_image.transformer import init_shapes as transformer_init_shapes
from ffjax.models.qwen_image.vae import QwenImageVAE, from_transformer_space
from ffjax.models.qwen_image.vae import init_shapes as vae_init_shapes

# Default LoRA targets (regexes on Dense module paths): Flow-Factory's Qwen-Image
# `default_target_modules` (src/flow_factory/models/qwen_image/qwen_image.py) as PEFT
# matches them: attn.to_q/k/v, attn.to_out.0 (image stream), attn.add_q/k/v_proj,
# attn.to_add_out (text stream) and the MLP inputs {img,txt}_mlp.net.0.proj. Its list
# also names "{img,txt}_mlp.net.2.proj", which is no module (net.2 is the Linear
# itself), so the MLP outputs are not adapted there; QWEN_IMAGE_TARGETS_WITH_MLP_OUT adds
# them. Modulation (img_mod / txt_mod), embeddings and the output layer stay frozen.
QWEN_IMAGE_TARGETS: tuple[str, ...] = (
    r"^transformer_blocks/attn/(to_[qkv]|add_[qkv]_proj|to_out|to_add_out)$",
    r"^transformer_blocks/(img|txt)_mlp/proj_in$",
)
QWEN_IMAGE_TARGETS_WITH_MLP_OUT: tuple[str, ...] = QWEN_IMAGE_TARGETS + (
    r"^transformer_blocks/(img|txt)_mlp/proj_out$",
)
TEXT_PAD_MULTIPLE = 64  # prompt embeddings are padded (masked) to a multiple of this


@struct.dataclass
class QwenImageCond:
    """Conditioning of one batch.

    Attributes:
      prompt_embeds: float[B, S, joint_attention_dim] Qwen2.5-VL states (zeros where
        the mask is 0).
      prompt_mask: bool[B, S], True at valid text tokens.
      txt_ids: float32[B, S, 3] RoPE positions of the text tokens.
      img_ids: float32[B, L_img, 3] RoPE positions of the packed latent tokens.
      negative_prompt_embeds, negative_prompt_mask, negative_txt_ids: the same for the
        negative prompt (length S_neg), or None without classifier-free guidance.
      true_cfg_scale: float32[B] guidance scale s, or None without guidance.

    Every leaf has the batch axis first, so a trainer can index, shuffle and shard a
    QwenImageCond like any batch; the ids are the same for every row (the transformer
    reads row 0).
    """

    prompt_embeds: jax.Array
    prompt_mask: jax.Array
    txt_ids: jax.Array
    img_ids: jax.Array
    negative_prompt_embeds: jax.Array | None = None
    negative_prompt_mask: jax.Array | None = None
    negative_txt_ids: jax.Array | None = None
    true_cfg_scale: jax.Array | None = None

    @property
    def cfg(self) -> bool:
        return self.negative_prompt_embeds is not None


def true_cfg(v_pos: jax.Array, v_neg: jax.Array, scale: jax.Array) -> jax.Array:
    """QwenImagePipeline's guidance: comb = v_neg + s (v_pos - v_neg), rescaled per token
    to the norm of v_pos over the channel axis. `scale` broadcasts against v[..., 0]."""
    scale = jnp.asarray(scale, v_pos.dtype)[..., None, None]
    comb = v_neg + scale * (v_pos - v_neg)
    cond_norm = jnp.linalg.norm(v_pos, axis=-1, keepdims=True)
    comb_norm = jnp.linalg.norm(comb, axis=-1, keepdims=True)
    return comb * (cond_norm / comb_norm)


def _pad_text(embeds, mask, multiple: int, cap: int) -> tuple[jax.Array, jax.Array]:
    """Zero-pads (masked) the text axis to a multiple of `multiple` (at most `cap`, never
    shorter than it is), so that batches of different prompt lengths share compiled
    shapes. Exact: padded keys are masked and text outputs are not used."""
    s = embeds.shape[1]
    width = max(s, min(-(-s // multiple) * multiple, cap))
    extra = width - s
    embeds = jnp.pad(jnp.asarray(embeds), ((0, 0), (0, extra), (0, 0)))
    mask = jnp.pad(jnp.asarray(mask).astype(bool), ((0, 0), (0, extra)))
    return embeds, mask


def _read_scheduler(path: str) -> SchedulerConfig:
    """The pipeline folder's scheduler config, or Qwen-Image's released one if absent."""
    f = os.path.join(path, "scheduler", "scheduler_config.json")
    if not os.path.exists(f):
        return QWEN_IMAGE_SCHEDULER
    with open(f) as fh:
        return SchedulerConfig.from_diffusers(json.load(fh))


def _check_folder(path: str) -> None:
    """A clear error unless `path` is a QwenImagePipeline folder (e.g. a FLUX.1 folder)."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"model path {path!r} is not a folder (a QwenImagePipeline folder)")
    kind = identify(path)  # CheckpointFormatError naming the class found
    if kind != "pipeline":
        raise ValueError(
            f"{path}: a Qwen-Image {kind} folder; the qwen-image adapter needs the whole"
            " QwenImagePipeline folder (model_index.json, transformer/, vae/, text_encoder/,"
            " tokenizer/)"
        )


class QwenImageAdapter(AdapterBase):
    """Qwen-Image (text-to-image) behind the model-adapter contract
    (`ffjax.models.adapter.ModelAdapter`; registered as `qwen-image`).

    Args:
      transformer: the QwenImageTransformer module.
      vae: the QwenImageVAE module (None if only velocities are needed).
      vae_config: its config (latents_mean / latents_std, downsampling factor).
      true_cfg_scale: guidance scale s (the pipeline's `true_cfg_scale`); <= 1 disables
        classifier-free guidance.
      negative_prompt: prompt of the unconditional pass; None disables guidance.
      scheduler: the pipeline's scheduler config (shapes `sigmas`).
      text: TextEncoder (Qwen2.5-VL + tokenizer), as `load` builds it; None: prompts
        cannot be encoded (`make_cond` from given embeddings still works).
      embed_cache: optional ffjax.data.embed_cache.EmbedCache of prompt embeddings.
      max_sequence_length: prompt tokens (QwenImagePipeline.__call__'s default 512).
    """

    # True CFG in `velocity`, so config.algorithm.cfg_in_train applies (`conditional_only`).
    supports_cfg = True
    denoiser = "transformer"  # the weights RL trains (key in the `load` weights dict)

    def __init__(
        self,
        transformer: QwenImageTransformer,
        vae: QwenImageVAE | None = None,
        vae_config: QwenImageVAEConfig | None = None,
        true_cfg_scale: float = 4.0,
        negative_prompt: str | None = " ",
        scheduler: SchedulerConfig = QWEN_IMAGE_SCHEDULER,
        *,
        text: Any = None,
        embed_cache: Any = None,
        max_sequence_length: int = 512,
    ):
        self.transformer = transformer
        self.config = transformer.config
        self.vae = vae
        self.vae_config = vae_config or (vae.config if vae is not None else QwenImageVAEConfig())
        self.true_cfg_scale = float(true_cfg_scale)
        self.negative_prompt = negative_prompt
        self.scheduler = scheduler
        self.vae_scale_factor = self.vae_config.downsample_factor
        self.patch_size = self.config.patch_size
        self.text = text
        self.embed_cache = embed_cache
        self.max_sequence_length = max_sequence_length
        self.text_pad_multiple = TEXT_PAD_MULTIPLE

    @property
    def lora_targets(self) -> tuple[str, ...]:
        """Default LoRA target regexes on Dense module paths (`QWEN_IMAGE_TARGETS`)."""
        return QWEN_IMAGE_TARGETS

    @property
    def do_cfg(self) -> bool:
        """Whether `encode_prompts` adds the negative prompt (s > 1 and a negative prompt)."""
        return self.true_cfg_scale > 1 and self.negative_prompt is not None

    @classmethod
    def load(cls, config: Any) -> tuple[QwenImageAdapter, dict[str, Any]]:
        """From a run config (`config.model`, `config.sampling`): adapter with text encoder.

        `config.model.path` is a Diffusers QwenImagePipeline folder; anything else (a
        FLUX.1 folder, a lone transformer folder) is an error naming what was found.
        `config.sampling.guidance_scale` is the true-CFG scale, `config.model.negative_prompt`
        the negative prompt. Returns (adapter, {"transformer": params, "vae": params});
        weights are stored in `config.model.param_dtype`, activations run in `config.model.dtype`.
        """
        m = config.model
        adapter, weights = cls.from_pretrained(
            m.path,
            dtype=m.param_dtype,
            true_cfg_scale=config.sampling.guidance_scale,
            negative_prompt=m.get("negative_prompt", " "),
            attention=m.attention,
            remat=m.remat,
        )
        from ffjax.models.text.encode import load_qwen_image_text

        # Weights stay in param_dtype; activations run in dtype (cast inside the layers).
        vae = QwenImageVAE(dataclasses.replace(adapter.vae_config, dtype=m.dtype))
        adapter = adapter.replace(
            transformer=QwenImageTransformer(dataclasses.replace(adapter.config, dtype=m.dtype)),
            vae=vae,
            vae_config=vae.config,
            text=load_qwen_image_text(m.path, dtype=m.dtype),
            max_sequence_length=m.max_sequence_length,
        )
        return adapter, weights

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        dtype: Any = "float32",
        true_cfg_scale: float = 4.0,
        negative_prompt: str | None = " ",
        **runtime,
    ) -> tuple[QwenImageAdapter, dict[str, Any]]:
        """From a QwenImagePipeline folder, without the text encoder (see `load`):
        (adapter, {"transformer": params, "vae": params})."""
        path = os.fspath(path)
        _check_folder(path)
        transformer, tp = load_transformer(
            os.path.join(path, "transformer"), dtype=dtype, **runtime
        )
        vae, vp = load_vae(os.path.join(path, "vae"), dtype=dtype)
        adapter = cls(
            transformer, vae, vae.config, true_cfg_scale, negative_prompt, _read_scheduler(path)
        )
        return adapter, {"transformer": tp, "vae": vp}

    @classmethod
    def abstract_load(cls, config: Any) -> tuple[QwenImageAdapter, dict[str, Any]]:
        """`load` from the config.json files alone (for `--dry_run`): weights as
        `jax.ShapeDtypeStruct`s in `config.model.param_dtype`; no text encoder."""
        m = config.model
        _check_folder(m.path)
        tc = QwenImageTransformerConfig.from_diffusers(
            os.path.join(m.path, "transformer"), dtype=m.dtype, param_dtype=m.param_dtype,
            attention=m.attention, remat=m.remat,
        )  # fmt: skip
        vc = QwenImageVAEConfig.from_diffusers(
            os.path.join(m.path, "vae"), dtype=m.dtype, param_dtype=m.param_dtype
        )
        adapter = cls(
            QwenImageTransformer(tc), QwenImageVAE(vc), vc, config.sampling.guidance_scale,
            m.get("negative_prompt", " "), _read_scheduler(m.path),
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
        """{name: params as `jax.ShapeDtypeStruct`s} of the Qwen2.5-VL language model `load`
        sets up (`text_encoder`, in `config.model.dtype`), from its config.json alone."""
        from ffjax.models.text.convert import read_config
        from ffjax.models.text.qwen2_5_vl import Qwen2_5_VLTextConfig, Qwen2_5_VLTextEncoder

        m = config.model
        path = os.path.join(m.path, "text_encoder")
        dt = jnp.dtype(m.dtype)
        module = Qwen2_5_VLTextEncoder(
            Qwen2_5_VLTextConfig.from_dict(read_config(path, "qwen2_5_vl")),
            dtype=dt,
            param_dtype=dt,
        )
        ids = jax.ShapeDtypeStruct((1, 1), jnp.int32)
        params = nn.unbox(jax.eval_shape(module.init, jax.random.key(0), ids, None)["params"])
        return {"text_encoder (Qwen2.5-VL)": jax.tree.map(
            lambda a: jax.ShapeDtypeStruct(a.shape, dt), params)}  # fmt: skip

    @classmethod
    def text_encoder_specs(cls, config: Any) -> dict[str, Any]:
        """Logical `PartitionSpec`s of `abstract_text_encoders(config)` (same keys): the
        shardings `place_encoders` gives them, through `logical_shardings`."""
        from ffjax.models.text.convert import logical_specs

        path = os.path.join(config.model.path, "text_encoder")
        return {"text_encoder (Qwen2.5-VL)": logical_specs("qwen2_5_vl", path, config.model.dtype)}

    def place_encoders(self, mesh: jax.sharding.Mesh) -> None:
        """Shards the Qwen2.5-VL params on `mesh` by their logical axes; prompts are then
        encoded there (`ffjax.models.text.placement`). Nothing to do without the encoder."""
        from ffjax.models.text.placement import place_encoders

        place_encoders(self.text, mesh)

    def abstract_cond(self, batch: int, height: int, width: int) -> QwenImageCond:
        """The `encode_prompts` result for `batch` prompts at the longest text
        (`max_sequence_length` tokens), as `jax.ShapeDtypeStruct`s; with guidance the
        negative prompt is one padding bucket long (a short prompt such as " ")."""
        dtype = jnp.dtype(self.config.dtype)
        d = self.config.joint_attention_dim

        def text(s):
            return (jax.ShapeDtypeStruct((batch, s, d), dtype),
                    jax.ShapeDtypeStruct((batch, s), jnp.int32))  # fmt: skip

        pos = text(self.max_sequence_length)
        neg = text(min(self.text_pad_multiple, self.max_sequence_length)) if self.do_cfg else None
        return jax.eval_shape(
            lambda p, n: self.make_cond(*p, height, width, *(n or (None, None))), pos, neg
        )

    def logical_specs(self) -> dict[str, Any]:
        """Logical `PartitionSpec`s (ffjax.parallel.axes names) of the `load` weights, by
        weights key; the trainer maps them to mesh shardings. Shapes only, nothing allocated."""
        specs = {"transformer": nn.get_partition_spec(transformer_init_shapes(self.config)[1])}
        if self.vae is not None:
            specs["vae"] = nn.get_partition_spec(vae_init_shapes(self.vae_config)[1])
        return specs

    # ----------------------------------------------------------------- shapes and ids

    def latent_hw(self, height: int, width: int) -> tuple[int, int]:
        """Unpacked latent (h, w) of an H x W image; ValueError unless both divide f * p."""
        if height <= 0 or width <= 0:
            raise ValueError(f"image size must be positive; got height={height}, width={width}")
        rows, cols = packed_grid(
            height, width, vae_scale_factor=self.vae_scale_factor, patch_size=self.patch_size
        )
        return rows * self.patch_size, cols * self.patch_size

    def latent_shape(self, batch: int, height: int, width: int) -> tuple[int, int, int]:
        """Packed latent shape (B, L_img, p^2 * z_dim) for an H x W image."""
        h, w = self.latent_hw(height, width)
        p = self.patch_size
        return batch, (h // p) * (w // p), self.config.in_channels

    def img_shapes(self, height: int, width: int) -> tuple[int, int, int]:
        """The pipeline's `img_shapes` entry (1 frame, token rows, token cols)."""
        h, w = self.latent_hw(height, width)
        return 1, h // self.patch_size, w // self.patch_size

    def init_noise(self, key: jax.Array, batch: int, height: int, width: int) -> jax.Array:
        """Standard normal packed latents float32[B, L_img, p^2 z_dim] (sigma = 1)."""
        return jax.random.normal(key, self.latent_shape(batch, height, width), jnp.float32)

    def sigmas(self, num_steps: int, height: int, width: int) -> np.ndarray:
        """The QwenImagePipeline schedule float32[num_steps + 1] for this resolution
        (dynamic shift from the packed token count, terminal stretch)."""
        return qwen_image_sigmas(num_steps, self.latent_shape(1, height, width)[1], self.scheduler)

    def pack(self, z: jax.Array) -> jax.Array:
        """(B, h, w, z_dim) transformer-space latents -> packed (B, L_img, p^2 z_dim)."""
        return pack_latents(z, self.patch_size)

    def unpack(self, x: jax.Array, height: int, width: int) -> jax.Array:
        """Packed latents -> (B, h, w, z_dim); inverse of `pack`."""
        h, w = self.latent_hw(height, width)
        return unpack_latents(x, h, w, self.patch_size)

    # ----------------------------------------------------------------- conditioning

    def _text_part(self, embeds, mask, height: int, width: int):
        embeds, mask = _pad_text(embeds, mask, self.text_pad_multiple, self.max_sequence_length)
        b, s = mask.shape
        _, txt_ids = rope_ids(self.img_shapes(height, width), s)
        return embeds, mask, jnp.broadcast_to(jnp.asarray(txt_ids), (b,) + txt_ids.shape)

    def make_cond(
        self,
        prompt_embeds,
        prompt_mask,
        height: int,
        width: int,
        negative_prompt_embeds=None,
        negative_prompt_mask=None,
        true_cfg_scale: float | None = None,
    ) -> QwenImageCond:
        """Bundles prompt embeddings (and, for guidance, the negative prompt's) with ids.

        A None mask means every token is valid. Negative embeddings with one row are
        broadcast to the batch. Guidance is on when negative embeddings are given and
        the scale (default: the adapter's) is > 1, as in the pipeline.
        """
        prompt_embeds = jnp.asarray(prompt_embeds)
        b = prompt_embeds.shape[0]
        if prompt_mask is None:
            prompt_mask = np.ones(prompt_embeds.shape[:2], bool)
        img_ids, _ = rope_ids(self.img_shapes(height, width), 1)
        embeds, mask, txt_ids = self._text_part(prompt_embeds, prompt_mask, height, width)
        cond = QwenImageCond(
            prompt_embeds=embeds,
            prompt_mask=mask,
            txt_ids=txt_ids,
            img_ids=jnp.broadcast_to(jnp.asarray(img_ids), (b,) + img_ids.shape),
        )
        scale = self.true_cfg_scale if true_cfg_scale is None else float(true_cfg_scale)
        if negative_prompt_embeds is None or scale <= 1:
            return cond
        neg = jnp.asarray(negative_prompt_embeds)
        if negative_prompt_mask is None:
            negative_prompt_mask = np.ones(neg.shape[:2], bool)
        neg_mask = jnp.asarray(negative_prompt_mask)
        if neg.shape[0] == 1 and b > 1:
            neg = jnp.broadcast_to(neg, (b,) + neg.shape[1:])
            neg_mask = jnp.broadcast_to(neg_mask, (b,) + neg_mask.shape[1:])
        if neg.shape[0] != b:
            raise ValueError(f"{neg.shape[0]} negative prompt rows for a batch of {b} prompts")
        neg, neg_mask, neg_ids = self._text_part(neg, neg_mask, height, width)
        return cond.replace(
            negative_prompt_embeds=neg,
            negative_prompt_mask=neg_mask,
            negative_txt_ids=neg_ids,
            true_cfg_scale=jnp.full((b,), scale, jnp.float32),
        )

    def _encode(self, prompts: list[str]) -> tuple[jax.Array, jax.Array]:
        from ffjax.models.text.encode import encode_prompts_qwen_image

        return encode_prompts_qwen_image(
            self.text, prompts, max_sequence_length=self.max_sequence_length, cache=self.embed_cache
        )

    def encode_prompts(self, prompts: list[str], height: int, width: int) -> QwenImageCond:
        """Prompts -> QwenImageCond with the pipeline's Qwen2.5-VL encoding (`load` first).

        Embeddings and masks are exactly `QwenImagePipeline.encode_prompt`'s at
        `self.max_sequence_length` (then padded, masked, to a multiple of 64 tokens);
        with guidance the negative prompt is encoded once and shared by every row. An
        embedding cache set on the adapter is used.
        """
        if self.text is None:
            raise ValueError(
                "this qwen-image adapter has no text encoder; build it with QwenImageAdapter.load"
            )
        if isinstance(prompts, str):
            raise TypeError("prompts must be a sequence of strings, not a string")
        self.latent_hw(height, width)  # size errors before any encoding
        embeds, mask = self._encode(list(prompts))
        neg = neg_mask = None
        if self.do_cfg:
            neg, neg_mask = self._encode([self.negative_prompt])
        return self.make_cond(embeds, mask, height, width, neg, neg_mask)

    def conditional_only(self, cond: QwenImageCond) -> QwenImageCond:
        """`cond` without the negative prompt: `velocity` then makes the conditional pass
        alone (one transformer call, no guidance). The trainer's training-time
        conditioning when `config.algorithm.cfg_in_train=False`."""
        return cond.replace(
            negative_prompt_embeds=None, negative_prompt_mask=None, negative_txt_ids=None,
            true_cfg_scale=None,
        )  # fmt: skip

    # ----------------------------------------------------------------- the contract

    def _forward(self, variables, x, sigma, embeds, mask, txt_ids, img_ids) -> jax.Array:
        dtype = jnp.dtype(self.config.dtype)
        v = self.transformer.apply(
            variables,
            x.astype(dtype),
            embeds.astype(dtype),
            mask,
            sigma,  # = the pipeline's timestep / 1000; the module multiplies by 1000
            img_ids[0] if img_ids.ndim == 3 else img_ids,
            txt_ids[0] if txt_ids.ndim == 3 else txt_ids,
        )
        return v.astype(jnp.float32)

    def velocity(
        self, variables: Any, x: jax.Array, sigma: jax.Array, cond: QwenImageCond
    ) -> jax.Array:
        """v = noise - x0 predicted at x_sigma, with true CFG when `cond` carries it.

        Args:
          variables: transformer variables {"params": ...} plus, when training LoRA,
            the "lora" and "lora_scale" collections (ffjax.models.lora).
          x: float32[B, L_img, p^2 z_dim] packed latents at noise level sigma.
          sigma: float32[B] in [0, 1].
          cond: QwenImageCond of the batch.

        Returns:
          float32[B, L_img, p^2 z_dim]: the transformer's prediction, or with guidance
          `true_cfg(v_pos, v_neg, s)` (two transformer passes).
        """
        sigma = jnp.broadcast_to(jnp.asarray(sigma, jnp.float32), (x.shape[0],))
        v = self._forward(
            variables, x, sigma, cond.prompt_embeds, cond.prompt_mask, cond.txt_ids, cond.img_ids
        )
        if not cond.cfg:
            return v
        v_neg = self._forward(
            variables, x, sigma, cond.negative_prompt_embeds, cond.negative_prompt_mask,
            cond.negative_txt_ids, cond.img_ids,
        )  # fmt: skip
        return true_cfg(v, v_neg, cond.true_cfg_scale)

    def decode_latents(self, vae_params: Any, x: jax.Array, height: int, width: int) -> jax.Array:
        """Packed transformer-space latents -> float32[B, H, W, 3] images in [-1, 1]."""
        if self.vae is None:
            raise ValueError("this adapter was built without a VAE")
        z = from_transformer_space(
            self.unpack(x.astype(jnp.float32), height, width), self.vae_config
        )
        img = self.vae.apply({"params": vae_params}, z, method="decode")
        return img.astype(jnp.float32)

    def decode(self, vae_params: Any, x: jax.Array, height: int, width: int) -> jax.Array:
        """Packed latents -> uint8[B, H, W, 3], as Diffusers' image post-processing rounds."""
        img = self.decode_latents(vae_params, x, height, width)
        return jnp.round(jnp.clip(img / 2 + 0.5, 0.0, 1.0) * 255).astype(jnp.uint8)
