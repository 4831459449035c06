"""The `wan2-i2v` model adapter: WAN image-to-video (Diffusers `WanImageToVideoPipeline`).

It holds a `WanT2VAdapter` (the core: UMT5 prompts, CFG, schedule, A14B experts, shapes,
decode) and adds the image condition, the way `WanImageToVideoPipeline` does:

Wan 2.1 I2V (14B 480P / 720P; Wan 2.2 I2V A14B without the CLIP part):
  * `context_image`: the CLIP vision encoder's hidden_states[-2] of the image (the
    folder's `image_encoder` + `image_processor`, on the image as loaded), for the
    transformer's image cross-attention (only when the transformer has `image_dim`).
  * the video condition: [image resized to H x W, zeros for the other frames] through
    the VAE encoder (its mean), in transformer space, after a 4-channel mask (1 on the
    first latent frame, the 4 video frames it covers; 0 elsewhere); concatenated to
    the latents on the channel axis at every step: model input [x, mask, latents]
    (16 + 4 + 16 = in_channels 36 for the real models).

Wan 2.1 FLF2V (the transformer has `pos_embed_seq_len`): the prompt's "image" lists
[first, last]; the video condition is [first, zeros, last], the mask also marks the
last video frame (the last channel of the last latent frame), and `context_image` is
both images' CLIP states side by side, [B, 2 S, image_dim] (the pipeline's [2B, S, D]).

Wan 2.2 TI2V-5B (`expand_timesteps=True`): the image's latent frame replaces latent
frame 0 of the model input (mask 0 on frame 0: (1 - m) c + m x), whose tokens get
timestep 0 (per-token timesteps m * t); the final latents get the same blend
(`finish_latents`). The pipeline steps frame 0 of its own latents with the model's
output there, and discards them at the end. Here frame 0's velocity is instead the
exact one of a known clean frame, v = (x - c) / sigma (= noise - c on the path
x = (1 - sigma) c + sigma noise): the same video, an ODE rollout already ends on c,
and frame 0 no longer adds policy-dependent terms to log-probs or NFT / AWM losses
(it cannot change the reward). Frames >= 1 match the pipeline step for step.

The conditioning image of each prompt comes from its metadata: the `IMAGE_FIELD`
("image") of a Flow-Factory jsonl row (a one-element list counts as its image), a path,
absolute or relative to `config.data.image_dir` (default: the data folder's `images/`,
Flow-Factory's default, then the data folder itself); a PIL image or uint8[H, W, 3]
array in the metadata is used as it is. Images are converted to RGB (as Flow-Factory loads them) and resized to
H x W with Pillow's Lanczos filter, exactly `video_processor.preprocess(image, H, W)`
(a plain resize: the aspect ratio is not kept, nothing is cropped); the CLIP encoder
gets the RGB image at its own size, as the pipeline's `image_processor` does.

The trainer passes the prompts' metadata to `encode_prompts` because the adapter
declares `wants_metadata`. The VAE params `load` returns are also kept by the adapter
for encoding conditions in `encode_prompts` (the VAE is a few hundred MB). Encoded
conditions stay in an in-memory LRU across epochs (`encode_images`): a prompt's image
goes through the VAE and CLIP encoders once per run, in batches with the others.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import json
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from ffjax.data.embed_cache import cached_encode
from ffjax.models.adapter import AdapterBase
from ffjax.models.wan.adapter import WanCond, WanT2VAdapter
from ffjax.models.wan.vae import to_transformer_space

IMAGE_FIELD = "image"  # metadata key of a prompt's conditioning image (Flow-Factory jsonl)
_PIPELINES = ("WanImageToVideoPipeline",)
I2V_TEXT_LENGTH = 512  # text tokens of image-attention models (hard-coded in Diffusers)
_MIN_SIGMA = 1e-12  # floor of sigma in frame 0's exact velocity (sigma > 0 in use)
_ENCODE_BATCH = 4  # conditioning videos per VAE / CLIP call (bounds the encoders' memory)
_IMAGE_CACHE_BYTES = 2 << 30  # host memory for encoded image conditions (~10 MB each at 81x480x832)


@struct.dataclass
class WanI2VCond:
    """Conditioning of one image-to-video batch; every leaf batch-first (until
    `prepare_cond` fills `text.kv`).

    Attributes:
      text: the prompts' WanCond (UMT5 states, negative prompt, CFG scales, K/V).
      condition: float32 transformer-space image condition: [B, f, h, w, 4 + z_dim]
        (mask then latents, Wan 2.1) or [B, 1, h, w, z_dim] (the first latent frame,
        Wan 2.2 TI2V).
      image_embeds: float[B, S_img, image_dim] CLIP hidden_states[-2], or None for
        transformers without image cross-attention.
    """

    text: WanCond
    condition: jax.Array
    image_embeds: jax.Array | None = None


def image_mask(num_frames: int, temporal: int = 4, last: bool = False) -> np.ndarray:
    """float32[f, temporal]: `prepare_latents`' mask of the given frames in latent frames.

    The video-frame mask (1 on frame 0, and on frame num_frames - 1 with `last` (FLF2V),
    0 elsewhere) with frame 0 repeated `temporal` times, grouped by `temporal`: 1 on
    every channel of latent frame 0 (and on the last channel of the last latent frame).
    """
    frames = np.zeros(num_frames, np.float32)
    frames[0] = 1.0
    if last:
        frames[-1] = 1.0
    return np.concatenate([np.repeat(frames[:1], temporal), frames[1:]]).reshape(-1, temporal)


def resolve_image(value: Any, roots: Sequence[str]) -> Any:
    """A metadata image value -> PIL image in RGB: a path (absolute, or the first of
    `roots` joined with it that exists), a PIL image or a uint8[H, W, 3|4] array."""
    from PIL import Image

    if isinstance(value, Image.Image):
        return value.convert("RGB")
    if isinstance(value, np.ndarray):
        if value.dtype != np.uint8 or value.ndim != 3 or value.shape[-1] not in (3, 4):
            raise ValueError(
                f"a conditioning image array must be uint8[H, W, 3 or 4]; got {value.dtype}"
                f" {value.shape}"
            )
        return Image.fromarray(value).convert("RGB")
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(
            f"a conditioning image must be a path, a PIL image or a uint8 array; got"
            f" {type(value).__name__}"
        )
    path = os.fspath(value)
    tried = [path] if os.path.isabs(path) else [os.path.join(r, path) for r in roots]
    for p in tried:
        if os.path.isfile(p):
            with Image.open(p) as im:
                return im.convert("RGB")
    raise FileNotFoundError(f"conditioning image {path!r} not found; looked at {tried}")


def video_condition_pixels(image: Any, height: int, width: int) -> np.ndarray:
    """`video_processor.preprocess(image, height, width)`, channels last: float32[H, W, 3]
    in [-1, 1] (Pillow Lanczos resize to width x height, / 255, * 2 - 1)."""
    from PIL import Image

    resized = image.resize((width, height), resample=Image.Resampling.LANCZOS)
    return np.asarray(resized, np.float32) / np.float32(255.0) * np.float32(2) - np.float32(1)


def image_roots(config: Any) -> tuple[str, ...]:
    """Folders relative image paths are looked up in (see the module docstring)."""
    d = config.data
    if d.get("image_dir"):
        return (os.path.expanduser(d.image_dir),)
    path = d.get("path")
    if not path or str(path).startswith("tfds:"):
        return (os.getcwd(),)
    folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    return (os.path.join(folder, "images"), folder)


class WanI2VAdapter(AdapterBase):
    """WAN image-to-video around a `WanT2VAdapter` core (see the module docstring), behind
    `ffjax.models.adapter.ModelAdapter` (registered as `wan2-i2v`).

    Args:
      core: the text-to-video adapter built from the I2V folder (its transformer takes
        the image condition's channels).
      image_encoder: (CLIPVisionModel module, params), or None (no image attention).
      image_processor: its CLIPImageProcessorConfig (with image_encoder).
      vae_params: VAE params to encode conditions with (set by `load`).
      image_roots: folders relative image paths are looked up in.
    """

    supports_cfg = True
    denoiser = "transformer"
    wants_metadata = True  # the trainer passes the prompts' metadata to encode_prompts

    def __init__(
        self,
        core: WanT2VAdapter,
        image_encoder: tuple[Any, Any] | None = None,
        image_processor: Any = None,
        vae_params: Any = None,
        image_roots: Sequence[str] = (),
    ):
        self.core = core
        self.image_encoder = image_encoder
        self.image_processor = image_processor
        self.vae_params = vae_params
        self.image_roots = tuple(image_roots) or (os.getcwd(),)
        # Encoded image conditions (`encode_images`): a holder, the adapter's one mutable part.
        self._images = _ImageConditions()
        c, z = core.config, core.vae_config.z_dim
        self.expand_timesteps = core.expand_timesteps
        want = z if self.expand_timesteps else 2 * z + core.vae_config.temporal_factor
        if c.in_channels != want:
            what = "latents" if self.expand_timesteps else "latents + mask + image latents"
            raise ValueError(
                f"transformer in_channels={c.in_channels}, but a WAN I2V model with z_dim={z}"
                f" takes {want} ({what})"
            )
        if c.has_image_attention and image_encoder is None:
            raise ValueError(
                "the transformer has image cross-attention: an image encoder is needed"
            )
        # Wan 2.1 FLF2V: first and last frame given (a learned position embedding over
        # both images' CLIP tokens marks the layout).
        self.flf2v = c.pos_embed_seq_len is not None
        if self.flf2v and (self.expand_timesteps or core.num_frames < 2):
            raise ValueError("FLF2V needs num_frames >= 2 and no expand_timesteps")

    # ----------------------------------------------------------------- the core's API

    lora_targets = property(lambda self: self.core.lora_targets)
    do_cfg = property(lambda self: self.core.do_cfg)
    config = property(lambda self: self.core.config)
    # optional ffjax.data.embed_cache.EmbedCache of the prompt embeddings: the core's
    # (set with `replace(core=adapter.core.replace(embed_cache=...))`)
    embed_cache = property(lambda self: self.core.embed_cache)

    def latent_shape(self, batch: int, height: int, width: int) -> tuple[int, ...]:
        return self.core.latent_shape(batch, height, width)

    def init_noise(self, key: jax.Array, batch: int, height: int, width: int) -> jax.Array:
        return self.core.init_noise(key, batch, height, width)

    def sigmas(self, num_steps: int, height: int, width: int) -> np.ndarray:
        return self.core.sigmas(num_steps, height, width)

    def unipc_sigmas(
        self, num_steps: int, height: int, width: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """WanImageToVideoPipeline's UniPC solver sigmas and model sigmas (the core's)."""
        return self.core.unipc_sigmas(num_steps, height, width)

    def decode_latents(self, vae_params, x, height: int, width: int) -> jax.Array:
        return self.core.decode_latents(vae_params, x, height, width)

    def decode(self, vae_params, x, height: int, width: int) -> jax.Array:
        return self.core.decode(vae_params, x, height, width)

    # ----------------------------------------------------------------- loading

    @staticmethod
    def _has_image_encoder(path: str) -> bool:
        """Whether the folder's model_index.json lists an `image_encoder` (Wan 2.1)."""
        with open(os.path.join(path, "model_index.json")) as f:
            entry = json.load(f).get("image_encoder")
        return bool(entry) and entry[0] is not None

    @classmethod
    def load(cls, config: Any) -> tuple[WanI2VAdapter, dict[str, Any]]:
        """From a run config: `WanT2VAdapter.load` of the WanImageToVideoPipeline folder
        `config.model.path` (same keys), plus its CLIP image encoder when present.
        Returns (adapter, {"transformer": params, "vae": params})."""
        core, weights = WanT2VAdapter.load(config, pipelines=_PIPELINES)
        return cls._with_image_encoder(core, weights, config), weights

    @classmethod
    def from_pretrained(cls, path, dtype: Any = "float32", **kwargs):
        """Without the text encoder (velocities and conditions from given embeddings)."""
        core, weights = WanT2VAdapter.from_pretrained(path, dtype, pipelines=_PIPELINES, **kwargs)
        return cls._with_image_encoder(core, weights, None, os.fspath(path), dtype), weights

    @classmethod
    def _with_image_encoder(cls, core, weights, config, path=None, dtype=None):
        from ffjax.models.clip.convert import load_clip_vision
        from ffjax.models.clip.preprocess import CLIPImageProcessorConfig

        path = path or config.model.path
        dtype = dtype or config.model.dtype
        encoder = processor = None
        if cls._has_image_encoder(path):
            encoder = load_clip_vision(os.path.join(path, "image_encoder"), dtype=dtype)
            processor = CLIPImageProcessorConfig.from_pretrained(
                os.path.join(path, "image_processor")
            )
        roots = image_roots(config) if config is not None else ()
        return cls(core, encoder, processor, weights["vae"], roots)

    @classmethod
    def abstract_load(cls, config: Any) -> tuple[WanI2VAdapter, dict[str, Any]]:
        """`load` from config.json files alone (for `--dry_run`)."""
        core, weights = WanT2VAdapter.abstract_load(config, pipelines=_PIPELINES)
        encoder = None
        if cls._has_image_encoder(config.model.path):
            encoder = _abstract_image_encoder(config)  # (module, params as shapes)
        return cls(core, encoder, None, None, image_roots(config)), weights

    @classmethod
    def abstract_text_encoders(cls, config: Any) -> dict[str, Any]:
        """The UMT5 encoder (and the CLIP image encoder) as `jax.ShapeDtypeStruct`s."""
        out = WanT2VAdapter.abstract_text_encoders(config)
        if cls._has_image_encoder(config.model.path):
            out["image_encoder (CLIP vision)"] = _abstract_image_encoder(config)[1]
        return out

    def logical_specs(self) -> dict[str, Any]:
        return self.core.logical_specs()

    @classmethod
    def text_encoder_specs(cls, config: Any) -> dict[str, Any]:
        """Logical specs of the UMT5 encoder (`WanT2VAdapter.text_encoder_specs`); the
        CLIP image encoder is absent: it stays replicated."""
        return WanT2VAdapter.text_encoder_specs(config)

    def place_encoders(self, mesh: jax.sharding.Mesh) -> None:
        """Shards the UMT5 text encoder on `mesh` (`WanT2VAdapter.place_encoders`); the
        CLIP image encoder (~0.6B) stays on one device."""
        self.core.place_encoders(mesh)

    # ----------------------------------------------------------------- conditioning

    def _condition_shape(self, batch: int, height: int, width: int) -> tuple[int, ...]:
        b, f, h, w, z = self.core.latent_shape(batch, height, width)
        if self.expand_timesteps:
            return b, 1, h, w, z
        return b, f, h, w, z + self.core.vae_config.temporal_factor

    def _check_text_length(self) -> None:
        n = self.core.max_sequence_length
        if self.config.has_image_attention and n != I2V_TEXT_LENGTH:
            raise ValueError(
                f"config.model.max_sequence_length={n}: Wan 2.1 I2V models take"
                f" {I2V_TEXT_LENGTH} text tokens (Diffusers' image cross-attention reads all"
                f" but the last {I2V_TEXT_LENGTH} context tokens as the image's)"
            )

    def abstract_cond(self, batch: int, height: int, width: int) -> WanI2VCond:
        """The `encode_prompts` result for `batch` prompts as `jax.ShapeDtypeStruct`s."""
        self._check_text_length()
        text = self.core.abstract_cond(batch, height, width)
        cond = jax.ShapeDtypeStruct(self._condition_shape(batch, height, width), jnp.float32)
        img = None
        if self.config.has_image_attention:
            vc = self.image_encoder[0].config
            n = ((vc.image_size // vc.patch_size) ** 2 + 1) * (2 if self.flf2v else 1)
            img = jax.ShapeDtypeStruct((batch, n, vc.hidden_size), jnp.dtype(self.config.dtype))
        return WanI2VCond(text=text, condition=cond, image_embeds=img)

    def images_of(self, prompts: Sequence[str], metadata: Sequence[Any] | None) -> list[Any]:
        """The RGB conditioning image of every prompt, from its metadata's IMAGE_FIELD
        (FLF2V: a (first, last) pair, from a list of two there)."""
        if metadata is None or len(metadata) != len(prompts):
            got = "none" if metadata is None else f"{len(metadata)} entries"
            raise ValueError(
                f"wan2-i2v needs one metadata dict per prompt (with an {IMAGE_FIELD!r} field);"
                f" got {got} for {len(prompts)} prompts"
            )
        images = []
        for i, (p, meta) in enumerate(zip(prompts, metadata, strict=True)):
            value = (meta or {}).get(IMAGE_FIELD)
            if isinstance(value, (list, tuple)) and len(value) == 1:
                value = value[0]  # Flow-Factory's "images": [path] form, one image
            if value is None or (isinstance(value, (list, tuple)) and not value):
                raise ValueError(
                    f"prompt {i} ({p!r}) has no {IMAGE_FIELD!r} in its metadata; wan2-i2v"
                    f' needs a conditioning image per prompt (jsonl rows {{"prompt": ...,'
                    f' "{IMAGE_FIELD}": "path/to/image.png"}})'
                )
            n = len(value) if isinstance(value, (list, tuple)) else 1
            if n != (2 if self.flf2v else 1):
                want = "two: the first and the last frame (FLF2V)" if self.flf2v else (
                    "one (the first frame)")  # fmt: skip
                raise ValueError(
                    f"prompt {i} ({p!r}): {IMAGE_FIELD!r} lists {n} image(s); this wan2-i2v"
                    f" model conditions on {want}"
                )
            try:
                if self.flf2v:
                    images.append(tuple(resolve_image(v, self.image_roots) for v in value))
                else:
                    images.append(resolve_image(value, self.image_roots))
            except (OSError, ValueError, TypeError) as e:
                raise type(e)(f"prompt {i} ({p!r}): {e}") from None
        return images

    def encode_images(self, images: Sequence[Any], height: int, width: int) -> dict[str, Any]:
        """RGB PIL images (FLF2V: (first, last) pairs) -> {"condition": float32[B, ...],
        "image_embeds": [B, S, D] (FLF2V: both images' S tokens, 2S) | None}.

        Each image is encoded once per adapter: results are kept in an in-memory LRU
        (`_IMAGE_CACHE_BYTES`) keyed by its pixels, the video size and frame count, so
        later epochs skip the VAE and CLIP encoders; the images missing from it are
        encoded together, `_ENCODE_BATCH` at a time (`encode_image_batch`).
        """
        if self.vae_params is None:
            raise ValueError("this wan2-i2v adapter has no VAE params; build it with .load(config)")
        encoders = (self.vae_params, None if self.image_encoder is None else self.image_encoder[1])
        cache = self._images.for_weights(encoders)
        pairs = [tuple(item) if self.flf2v else (item,) for item in images]
        digests = [_digest(pair) for pair in pairs]
        by_digest = dict(zip(digests, pairs, strict=True))
        encode = lambda ds: self.encode_image_batch([by_digest[d] for d in ds], height, width)
        parts = dict(height=height, width=width, num_frames=self.core.num_frames)
        out = cached_encode(cache, digests, encode, parts)
        embeds = out.get("image_embeds")
        return {"condition": jnp.asarray(out["condition"]),
                "image_embeds": None if embeds is None else jnp.asarray(embeds)}  # fmt: skip

    def encode_image_batch(
        self, pairs: Sequence[tuple[Any, ...]], height: int, width: int
    ) -> dict[str, np.ndarray]:
        """The encoders on `pairs` (tuples of 1 or 2 RGB images): {"condition":
        float32[n, ...], "image_embeds": [n, S, D] (if image attention)} on the host.

        `_ENCODE_BATCH` pairs per jitted call, the last call padded to a power of two
        (a few compiled shapes); each row depends on its own images alone."""
        n, temporal = self.core.num_frames, self.core.vae_config.temporal_factor
        conds, embeds = [], []
        for start in range(0, len(pairs), _ENCODE_BATCH):
            part = list(pairs[start : start + _ENCODE_BATCH])
            k = len(part)
            part += part[-1:] * (_padded(k) - k)  # padding rows, dropped below
            videos = []
            for pair in part:
                frames = [video_condition_pixels(im, height, width)[None] for im in pair]
                if not self.expand_timesteps:  # the image, zero frames (, the last image)
                    gap = np.zeros((n - len(pair), height, width, 3), np.float32)
                    frames = [frames[0], gap, *frames[1:]]
                videos.append(np.concatenate(frames))
            latents = np.asarray(_encode_fn(self.core)(self.vae_params, np.stack(videos)))[:k]
            if not self.expand_timesteps:
                m = image_mask(n, temporal, last=self.flf2v)[None, :, None, None, :]
                mask = np.broadcast_to(m, latents.shape[:-1] + (temporal,))
                latents = np.concatenate([mask, latents], axis=-1)
            conds.append(latents)
            if self.config.has_image_attention:
                from ffjax.models.clip.preprocess import preprocess_pil

                pv = np.stack([preprocess_pil(im, self.image_processor) for p in part for im in p])
                states = _clip_fn(self.image_encoder[0])(self.image_encoder[1], pv)
                states = states.astype(jnp.dtype(self.config.dtype))
                # [len(part) * len(pair), S, D] -> [len(part), len(pair) S, D]
                embeds.append(np.asarray(states.reshape(len(part), -1, states.shape[-1]))[:k])
        out = {"condition": np.concatenate(conds)}
        if embeds:
            out["image_embeds"] = np.concatenate(embeds)
        return out

    def make_cond(self, text: WanCond, condition, image_embeds=None) -> WanI2VCond:
        return WanI2VCond(text=text, condition=jnp.asarray(condition, jnp.float32),
                          image_embeds=image_embeds)  # fmt: skip

    def encode_prompts(
        self, prompts: list[str], height: int, width: int, metadata: Sequence[Any] | None = None
    ) -> WanI2VCond:
        """Prompts + their metadata's images -> WanI2VCond (`load` first).

        Raises ValueError naming the prompt and the field when a prompt has no image,
        FileNotFoundError naming the paths looked at when its file is missing.
        """
        if isinstance(prompts, str):
            raise TypeError("prompts must be a sequence of strings, not a string")
        self.core.latent_hw(height, width)  # size errors before any encoding
        self._check_text_length()
        images = self.images_of(list(prompts), metadata)
        text = self.core.encode_prompts(list(prompts), height, width)
        return self.make_cond(text, **self.encode_images(images, height, width))

    def conditional_only(self, cond: WanI2VCond) -> WanI2VCond:
        """`cond` without the negative prompt (config.algorithm.cfg_in_train=False)."""
        return cond.replace(text=self.core.conditional_only(cond.text))

    def experts_of(self, sigma: np.ndarray) -> np.ndarray | None:
        """As WanT2VAdapter.experts_of (I2V A14B: two experts; else None)."""
        return self.core.experts_of(sigma)

    def with_expert(self, cond: WanI2VCond, expert: int) -> WanI2VCond:
        """`cond` whose rows all use expert `expert` (WanCond.expert)."""
        return cond.replace(text=self.core.with_expert(cond.text, expert))

    # ----------------------------------------------------------------- the contract

    def prepare_cond(self, variables: Any, cond: WanI2VCond) -> WanI2VCond:
        """Cross-attention K/V of prompt and image, once per rollout."""
        return cond.replace(text=self.core.prepare_cond(variables, cond.text, cond.image_embeds))

    def _token_timesteps(self, x: jax.Array, sigma: jax.Array) -> jax.Array:
        """float32[B, L]: the pipeline's mask * t per token (0 on latent frame 0)."""
        _, f, h, w, _ = x.shape
        pt, ph, pw = self.config.patch_size
        m = np.ones((f, h, w), np.float32)
        m[0] = 0.0
        per_token = m[::pt, ::ph, ::pw].reshape(-1)
        return sigma[:, None] * 1000.0 * jnp.asarray(per_token)[None]

    def velocity(
        self, variables: Any, x: jax.Array, sigma: jax.Array, cond: WanI2VCond
    ) -> jax.Array:
        """v = noise - x0 at x_sigma given the image (module docstring), with CFG.

        x: float32[B, f, h, w, z_dim]; sigma float32[B]; returns float32 like x.
        """
        sigma = jnp.broadcast_to(jnp.asarray(sigma, jnp.float32), (x.shape[0],))
        c = cond.condition.astype(x.dtype)
        if self.expand_timesteps:
            xin = jnp.concatenate([c, x[:, 1:]], axis=1)
            t = self._token_timesteps(x, sigma)
        else:
            xin = jnp.concatenate([x, c], axis=-1)
            t = None
        v = self.core.denoise(
            variables, xin, sigma, cond.text, timestep=t, context_image=cond.image_embeds
        )
        if self.expand_timesteps:  # frame 0 is known: its exact velocity (x - c) / sigma
            s = jnp.maximum(sigma, _MIN_SIGMA).reshape(-1, 1, 1, 1, 1)
            v = jnp.concatenate([(x[:, :1] - c) / s, v[:, 1:]], axis=1)
        return v

    def finish_latents(self, x: jax.Array, cond: WanI2VCond) -> jax.Array:
        """The pipeline's last blend: TI2V final latents with frame 0 = the image's."""
        if not self.expand_timesteps:
            return x
        return jnp.concatenate([cond.condition.astype(x.dtype), x[:, 1:]], axis=1)


def _padded(k: int) -> int:
    """Rows of a call encoding k items: the next power of two (at most _ENCODE_BATCH)."""
    return min(1 << (k - 1).bit_length(), _ENCODE_BATCH)


def _digest(pair: tuple[Any, ...]) -> str:
    """sha256 of RGB images' sizes and pixels: a cache key part that stands for the file
    contents (and for images given in memory)."""
    h = hashlib.sha256()
    for im in pair:
        h.update(f"{im.mode}:{im.width}x{im.height};".encode())
        h.update(im.tobytes())
    return h.hexdigest()


class _ImageConditions:
    """The encoded image conditions of one adapter: an `_LRUCache`, kept while the encoder
    weights it was filled with are the ones in use (compared by identity)."""

    def __init__(self):
        self.cache: _LRUCache | None = None
        self.weights: tuple[Any, ...] | None = None

    def for_weights(self, weights: tuple[Any, ...]) -> _LRUCache:
        """The cache for conditions encoded with `weights`; a fresh one for new weights."""
        if self.weights is None or any(
            a is not b for a, b in zip(weights, self.weights, strict=True)
        ):  # new weights: what was cached is stale
            self.cache, self.weights = _LRUCache(_IMAGE_CACHE_BYTES), weights
        return self.cache


class _LRUCache:
    """In-memory `EmbedCache` stand-in for `cached_encode` (same `load` / `save`):
    entries of numpy arrays, least recently used dropped beyond `max_bytes`."""

    def __init__(self, max_bytes: int):
        self.max_bytes, self.nbytes = max_bytes, 0
        self.entries: collections.OrderedDict[str, dict[str, np.ndarray]] = (
            collections.OrderedDict()
        )

    def load(self, key: str) -> dict[str, np.ndarray] | None:
        if key not in self.entries:
            return None
        self.entries.move_to_end(key)
        return self.entries[key]

    def save(self, key: str, arrays: dict[str, np.ndarray]) -> None:
        arrays = {k: np.array(v) for k, v in arrays.items()}  # own copies, not views
        if key in self.entries:
            self.nbytes -= sum(a.nbytes for a in self.entries.pop(key).values())
        self.entries[key] = arrays
        self.nbytes += sum(a.nbytes for a in arrays.values())
        while self.nbytes > self.max_bytes and len(self.entries) > 1:
            self.nbytes -= sum(a.nbytes for a in self.entries.popitem(last=False)[1].values())


@functools.lru_cache(maxsize=8)
def _encode_fn(core: WanT2VAdapter):
    """jit: pixels float32[B, T, H, W, 3] -> transformer-space VAE means."""
    vae, cfg = core.vae, core.vae_config

    def encode(params, pixels):
        mean, _ = vae.apply({"params": params}, pixels.astype(vae.config.dtype), method="encode")
        return to_transformer_space(mean.astype(jnp.float32), cfg)

    return jax.jit(encode)


@functools.lru_cache(maxsize=8)
def _clip_fn(module):
    """jit: CLIP pixel values [B, S, S, 3] -> hidden_states[-2] (the pipeline's encode_image)."""
    return jax.jit(
        lambda params, pv: module.apply({"params": params}, pv, output_hidden_states=True)[
            "hidden_states"
        ][-2]
    )


def _abstract_image_encoder(config: Any):
    """(CLIPVisionModel, params as `jax.ShapeDtypeStruct`s) of the folder's image encoder."""
    import flax.linen as nn

    from ffjax.models.clip.model import CLIPVisionConfig, CLIPVisionModel

    with open(os.path.join(config.model.path, "image_encoder", "config.json")) as f:
        d = json.load(f)
    proj = d.get("projection_dim") if "CLIPVisionModelWithProjection" in (
        d.get("architectures") or ()) else None  # fmt: skip
    vc = CLIPVisionConfig.from_dict(d, projection_dim=proj)
    dt = jnp.dtype(config.model.param_dtype)
    module = CLIPVisionModel(vc, dtype=jnp.dtype(config.model.dtype), param_dtype=dt)
    px = jax.ShapeDtypeStruct((1, vc.image_size, vc.image_size, vc.num_channels), jnp.float32)
    shapes = nn.unbox(jax.eval_shape(module.init, jax.random.key(0), px)["params"])
    return module, jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, dt), shapes)
