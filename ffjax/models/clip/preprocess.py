"""transformers' `CLIPImageProcessor` in JAX: resize, centre crop, rescale, normalise.

uint8[B, H, W, 3] images in, float32[B, crop_h, crop_w, 3] pixel values out, equal
to the processor's (PIL backend, the one transformers uses without torchvision) bit
for bit: the tests compare with `==`. Two things make that possible:

* Resampling is Pillow's own algorithm, not a textbook bicubic. Pillow's
  `Image.resize(BICUBIC)` convolves with the Keys cubic (a = -0.5) stretched by the
  downscale factor (so it antialiases), one axis at a time (in the order
  `pillow_vertical_first` gives), with weights normalised per output pixel, rounded
  to 22-bit fixed point, integer accumulation, and the intermediate image rounded
  and clipped to uint8 between the two passes. The taps and fixed-point weights depend only on the sizes, so they are
  computed once on the host in float64 exactly as Pillow computes them
  (`_pil_taps`); the device does the integer multiply-adds (int32 never overflows:
  |sum| <= 255 * 1.2 * 2^22 < 2^31).
* Rescale and normalise map each uint8 value v to
  float32((float32(float64(v) * rescale_factor) - mean) / std), the processor's NumPy
  order of operations; there are only 256 x 3 such values, so they are tabulated on
  the host and looked up on the device, independent of the device's float rounding.

Everything is shape-static: one compile per input size (resolutions are fixed in a
run). Sizes follow `get_resize_output_image_size`: the shortest side becomes
`shortest_edge`, the other int(shortest_edge * long / short) (truncated, as there).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_PRECISION_BITS = 32 - 8 - 2  # Pillow's fixed point for 8-bit images (Resample.c)


def _bicubic(x: float) -> float:
    # Keys (1981) cubic convolution with a = -0.5, Pillow's bicubic_filter, support 2.
    a = -0.5
    x = abs(x)
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    if x < 2.0:
        return (((x - 5) * x + 8) * x - 4) * a
    return 0.0


def _bilinear(x: float) -> float:
    # The triangle filter, Pillow's bilinear_filter, support 1.
    x = abs(x)
    return 1.0 - x if x < 1.0 else 0.0


# PIL.Image.Resampling value -> (filter, support). NEAREST, BOX, HAMMING and LANCZOS
# are not implemented: CLIP processors use BICUBIC, and a few others BILINEAR.
_FILTERS = {3: (_bicubic, 2.0), 2: (_bilinear, 1.0)}
_FILTER_NAMES = {3: "BICUBIC", 2: "BILINEAR"}


@functools.lru_cache(maxsize=64)
def _pil_taps(in_size: int, out_size: int, resample: int) -> tuple[np.ndarray, np.ndarray]:
    """Pillow's resampling taps for one axis: (int32[out, K] source index, int32[out, K] weight).

    Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc`, step by step in float64
    (Python floats, sequential sums, C's truncating int casts), so that every
    fixed-point weight is Pillow's. Unused taps point at a valid pixel with weight 0.
    """
    filt, base_support = _FILTERS[resample]
    scale = in_size / out_size
    filterscale = max(scale, 1.0)  # widen the kernel when shrinking: antialiasing
    support = base_support * filterscale
    ksize = int(math.ceil(support)) * 2 + 1
    index = np.zeros((out_size, ksize), np.int32)
    weight = np.zeros((out_size, ksize), np.int32)
    one = 1 << _PRECISION_BITS
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size) - xmin
        k = [filt((x + xmin - center + 0.5) / filterscale) for x in range(xmax)]
        total = 0.0
        for v in k:
            total += v
        if total != 0.0:
            k = [v / total for v in k]
        index[xx, :] = xmin
        index[xx, :xmax] = np.arange(xmin, xmin + xmax)
        weight[xx, :xmax] = [int(v * one - 0.5) if v < 0 else int(v * one + 0.5) for v in k]
    return index, weight


def _resample_axis(x: jax.Array, axis: int, out_size: int, resample: int) -> jax.Array:
    """One Pillow resampling pass along `axis` of int32 pixels -> int32 in [0, 255]."""
    index, weight = _pil_taps(x.shape[axis], out_size, resample)
    shape = [1] * x.ndim
    shape[axis] = out_size
    acc = jnp.full((), 1 << (_PRECISION_BITS - 1), jnp.int32)  # round half up
    for k in range(index.shape[1]):  # K taps, unrolled: XLA fuses them into one loop
        tap = jnp.take(x, jnp.asarray(index[:, k]), axis=axis)
        acc = acc + tap * jnp.asarray(weight[:, k]).reshape(shape)
    # Pillow's clip8: arithmetic shift, then clamp (negative sums -> 0, >= 256 -> 255).
    return jnp.clip(acc >> _PRECISION_BITS, 0, 255)


def resize_like_pil(images: jax.Array, height: int, width: int, resample: int = 3) -> jax.Array:
    """uint8[B, H, W, C] -> uint8[B, height, width, C], equal to PIL `Image.resize`.

    Args:
      images: uint8 images, channels last.
      height, width: the output size.
      resample: a `PIL.Image.Resampling` value: 3 (BICUBIC) or 2 (BILINEAR).

    Returns:
      What `Image.fromarray(img).resize((width, height), resample)` gives per image.
    """
    if resample not in _FILTERS:
        raise ValueError(
            f"resample={resample}: only {sorted(_FILTER_NAMES.items())} (PIL values) are implemented"
        )
    x = images.astype(jnp.int32)
    # Two passes in Pillow's order (the uint8 rounding in between makes order matter);
    # a pass is skipped at equal size (it would be the identity: weight 1 on the pixel).
    passes = [(2, width), (1, height)]
    if pillow_vertical_first(x.shape[1], x.shape[2], height, width):
        passes.reverse()
    for axis, size in passes:
        if size != x.shape[axis]:
            x = _resample_axis(x, axis, size, resample)
    return x.astype(jnp.uint8)


def pillow_vertical_first(
    in_h: int, in_w: int, out_h: int, out_w: int, pillow_major: int | None = None
) -> bool:
    """Whether Pillow resamples vertically before horizontally for this size change.

    Pillow <= 12 (`ImagingResampleInner` in its published Resample.c) always does the
    horizontal pass first. Pillow 13 chooses: vertical first iff the height shrinks
    and by more than twice what the width shrinks, out_h < in_h and
    in_h - out_h > 2 (in_w - out_w). That rule is measured, not read from its source
    (13.0.0: 1,500 random size pairs of 4-260 px and 60 of 100-1300 px, every output
    equal to exactly one order and always the one this rule names); the tests re-check
    it against the installed Pillow. For CLIP's aspect-preserving resize it matters
    only for images more than about twice as tall as wide.

    Args:
      in_h, in_w, out_h, out_w: the sizes; pillow_major: the Pillow major version
        (default: the installed one).
    """
    if pillow_major is None:
        pillow_major = _installed_pillow_major()
    if pillow_major < 13:
        return False
    return out_h < in_h and (in_h - out_h) > 2 * (in_w - out_w)


@functools.cache
def _installed_pillow_major() -> int:
    import PIL

    return int(PIL.__version__.split(".")[0])


@dataclasses.dataclass(frozen=True)
class CLIPImageProcessorConfig:
    """The fields of a `preprocessor_config.json` that `CLIPImageProcessor` uses.

    `shortest_edge` set: resize so the shorter side is that long; else `height` x
    `width` exactly (a `size: {height, width}` config). Defaults are OpenAI CLIP's.
    """

    do_resize: bool = True
    shortest_edge: int | None = 224
    height: int | None = None
    width: int | None = None
    resample: int = 3
    do_center_crop: bool = True
    crop_height: int = 224
    crop_width: int = 224
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: tuple[float, ...] = OPENAI_CLIP_MEAN
    image_std: tuple[float, ...] = OPENAI_CLIP_STD

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CLIPImageProcessorConfig:
        """From a preprocessor config dict (new `{shortest_edge}` / old int `size` forms).

        Raises ValueError for settings the processor has that this does not implement
        (`shortest_edge` with `longest_edge`, an unsupported resample filter).
        """
        size = d.get("size", 224)
        if isinstance(size, int):  # old configs: an int size is the shortest edge
            size = {"shortest_edge": size}
        if "longest_edge" in size:
            raise ValueError(f"image processor size {size}: longest_edge is not supported")
        crop = d.get("crop_size", 224)
        if isinstance(crop, int):
            crop = {"height": crop, "width": crop}
        resample = int(d.get("resample", 3))
        if resample not in _FILTERS:
            raise ValueError(
                f"image processor resample={resample}: only {sorted(_FILTER_NAMES.items())} are"
                " implemented"
            )
        return cls(
            do_resize=bool(d.get("do_resize", True)),
            shortest_edge=size.get("shortest_edge"),
            height=size.get("height"),
            width=size.get("width"),
            resample=resample,
            do_center_crop=bool(d.get("do_center_crop", True)),
            crop_height=int(crop["height"]),
            crop_width=int(crop["width"]),
            do_rescale=bool(d.get("do_rescale", True)),
            rescale_factor=float(d.get("rescale_factor", 1 / 255)),
            do_normalize=bool(d.get("do_normalize", True)),
            image_mean=tuple(float(m) for m in d.get("image_mean", OPENAI_CLIP_MEAN)),
            image_std=tuple(float(s) for s in d.get("image_std", OPENAI_CLIP_STD)),
        )

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> CLIPImageProcessorConfig:
        """From a folder's `preprocessor_config.json`, or the `image_processor` entry of
        the `processor_config.json` that transformers 5's `CLIPProcessor` writes.

        Raises:
          FileNotFoundError naming the folder when it holds neither.
        """
        path = os.fspath(path)
        single = os.path.join(path, "preprocessor_config.json")
        joint = os.path.join(path, "processor_config.json")
        if os.path.isfile(single):
            with open(single) as f:
                return cls.from_dict(json.load(f))
        if os.path.isfile(joint):
            with open(joint) as f:
                d = json.load(f)
            if "image_processor" in d:
                return cls.from_dict(d["image_processor"])
        raise FileNotFoundError(
            f"{path}: no preprocessor_config.json (or processor_config.json with an"
            " 'image_processor' entry); expected the folder a CLIPProcessor was saved to"
        )

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) after the resize step, as `get_resize_output_image_size`."""
        if not self.do_resize:
            return height, width
        if self.shortest_edge is None:
            return int(self.height), int(self.width)
        s = self.shortest_edge
        short, long = (width, height) if width <= height else (height, width)
        new_long = int(s * long / short)
        return (new_long, s) if width <= height else (s, new_long)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) of the pixel values for an input of `height` x `width`."""
        if self.do_center_crop:
            return self.crop_height, self.crop_width
        return self.resized_size(height, width)


def _value_table(cfg: CLIPImageProcessorConfig, channels: int) -> np.ndarray:
    """float32[256, C]: the processor's rescale + normalise of each uint8 value, per channel."""
    v = np.arange(256, dtype=np.uint8)[:, None].repeat(channels, axis=1)
    x = v.astype(np.float64) * cfg.rescale_factor if cfg.do_rescale else v
    x = x.astype(np.float32)  # np_rescale's final downcast; np_normalize's float32 cast
    if cfg.do_normalize:
        x = (x - np.array(cfg.image_mean, np.float32)) / np.array(cfg.image_std, np.float32)
    return x.astype(np.float32)


def center_crop(images: jax.Array, height: int, width: int) -> jax.Array:
    """[B, H, W, C] -> [B, height, width, C] centred, zero-padding a too-small image.

    As transformers' `center_crop`: top = (H - height) // 2, and an image smaller than
    the crop is first padded with zeros, ceil of the excess before.
    """
    _, h, w, _ = images.shape
    pad_h, pad_w = max(height - h, 0), max(width - w, 0)
    top_pad, left_pad = math.ceil(pad_h / 2), math.ceil(pad_w / 2)
    if pad_h or pad_w:
        images = jnp.pad(
            images, ((0, 0), (top_pad, pad_h - top_pad), (left_pad, pad_w - left_pad), (0, 0))
        )
    top = max((h - height) // 2 + top_pad, 0)
    left = max((w - width) // 2 + left_pad, 0)
    return images[:, top : top + height, left : left + width]


def preprocess(images: jax.Array, cfg: CLIPImageProcessorConfig) -> jax.Array:
    """uint8[B, H, W, 3] images -> float32[B, h, w, 3] CLIP pixel values (channels last).

    Equal to `CLIPImageProcessor(...)(images=list(images), return_tensors="np")
    ["pixel_values"]` transposed to channels last; (h, w) = `cfg.output_size(H, W)`.
    Traceable (sizes are static), so it can share one jit with the model.
    """
    if images.dtype != jnp.uint8 or images.ndim != 4:
        raise ValueError(f"images must be uint8[B, H, W, C], got {images.dtype} {images.shape}")
    _, h, w, c = images.shape
    if cfg.do_resize:
        images = resize_like_pil(images, *cfg.resized_size(h, w), resample=cfg.resample)
    if cfg.do_center_crop:
        images = center_crop(images, cfg.crop_height, cfg.crop_width)
    table = jnp.asarray(_value_table(cfg, c))
    return table[images.astype(jnp.int32), jnp.arange(c)]


def load_image_processor(path: str | os.PathLike) -> CLIPImageProcessorConfig:
    """`CLIPImageProcessorConfig.from_pretrained(path)` (the loader the rewards call)."""
    return CLIPImageProcessorConfig.from_pretrained(path)


def preprocess_pil(image: Any, cfg: CLIPImageProcessorConfig) -> np.ndarray:
    """One PIL image -> float32[h, w, 3] pixel values on the host, for images of any size.

    The processor's own steps with Pillow itself (RGB conversion, transparency composited
    onto white as transformers' `convert_to_rgb`; `Image.resize` with `cfg.resample`;
    centre crop; the rescale + normalise table), so equal to
    `CLIPImageProcessor(images=image)` bit for bit; no compile per input size (the
    conditioning images of image-to-video prompts come in many sizes).
    """
    from PIL import Image

    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    image = image.convert("RGB")
    if cfg.do_resize:
        h, w = cfg.resized_size(image.height, image.width)
        image = image.resize((w, h), resample=cfg.resample)
    a = np.asarray(image, np.uint8)[None]
    if cfg.do_center_crop:
        a = np.asarray(center_crop(a, cfg.crop_height, cfg.crop_width))
    return _value_table(cfg, 3)[a[0].astype(np.int64), np.arange(3)]
