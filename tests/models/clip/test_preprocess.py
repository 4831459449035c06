"""The JAX CLIP image preprocessing against PIL and transformers' CLIPImageProcessor (PIL backend)."""

import json

import jax
import numpy as np
import pytest
from PIL import Image

from ffjax.models.clip import preprocess as P

# (H, W) of real-sized generations and odd photos; 100 x 80 upsamples, 224 x 300 keeps H.
# 1000 x 400 is tall enough for Pillow 13 to resample vertically first.
SIZES = [(512, 512), (768, 512), (333, 500), (1024, 1024), (100, 80), (224, 300), (1000, 400)]


def _images(h, w, n=2, seed=0):
    rng = np.random.default_rng(seed + h * w)
    img = rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)
    # A smooth half too: random noise alone hides little, smooth images saturate less.
    yy, xx = np.mgrid[0:h, 0:w]
    img[-1, ..., 0] = (127.5 + 127.5 * np.sin(xx / 7.0) * np.cos(yy / 11.0)).astype(np.uint8)
    return img


@pytest.mark.parametrize("resample", [Image.Resampling.BICUBIC, Image.Resampling.BILINEAR])
@pytest.mark.parametrize("h,w,oh,ow", [(512, 512, 224, 224), (768, 512, 336, 224),
                                       (333, 500, 224, 336), (100, 80, 224, 179),
                                       (37, 53, 19, 101)])  # fmt: skip
def test_resize_equals_pil_bit_for_bit(resample, h, w, oh, ow):
    images = _images(h, w)
    ours = np.asarray(
        jax.jit(P.resize_like_pil, static_argnums=(1, 2, 3))(images, oh, ow, int(resample))
    )
    for img, got in zip(images, ours, strict=True):
        want = np.asarray(Image.fromarray(img).resize((ow, oh), resample))
        np.testing.assert_array_equal(got, want)


def test_pass_order_matches_installed_pillow():
    # Random size changes in all four up/down combinations, with both orders' outputs
    # different (noise images): equality with PIL pins the order rule for this Pillow.
    rng = np.random.default_rng(3)
    resize = jax.jit(P.resize_like_pil, static_argnums=(1, 2, 3))
    vertical_first = 0
    for _ in range(24):
        h, w, oh, ow = (int(v) for v in rng.integers(6, 90, 4))
        img = rng.integers(0, 256, (1, h, w, 3), dtype=np.uint8)
        want = np.asarray(Image.fromarray(img[0]).resize((ow, oh), Image.Resampling.BICUBIC))
        np.testing.assert_array_equal(
            np.asarray(resize(img, oh, ow, 3))[0], want, err_msg=str((h, w, oh, ow))
        )
        vertical_first += P.pillow_vertical_first(h, w, oh, ow)
    assert vertical_first > 0 or P._installed_pillow_major() < 13  # both orders exercised
    assert P.pillow_vertical_first(1000, 400, 560, 224) == (P._installed_pillow_major() >= 13)
    assert not P.pillow_vertical_first(1000, 400, 560, 224, pillow_major=12)


def _processor(**kwargs):
    from transformers import CLIPImageProcessorPil

    return CLIPImageProcessorPil(**kwargs)


# Processor settings: the CLIP default, and one changing every field we read.
PROCESSORS = {
    "default": {},
    "custom": dict(size={"shortest_edge": 256}, crop_size={"height": 240, "width": 200},
                   resample=2, image_mean=[0.5, 0.4, 0.3], image_std=[0.2, 0.3, 0.25],
                   rescale_factor=1 / 200.0),
    "no_resize": dict(do_resize=False, crop_size={"height": 240, "width": 300}),
}  # fmt: skip


@pytest.mark.parametrize("setting", list(PROCESSORS))
@pytest.mark.parametrize("h,w", SIZES)
def test_preprocess_equals_clip_image_processor(tmp_path, setting, h, w):
    proc = _processor(**PROCESSORS[setting])
    proc.save_pretrained(tmp_path)
    cfg = P.CLIPImageProcessorConfig.from_pretrained(tmp_path)
    images = _images(h, w)
    want = proc(images=list(images), return_tensors="np")["pixel_values"].transpose(0, 2, 3, 1)
    ours = np.asarray(jax.jit(P.preprocess, static_argnums=1)(images, cfg))
    assert ours.shape == want.shape == (2, *cfg.output_size(h, w), 3)
    assert ours.dtype == np.float32
    # Bit-exact: Pillow's integer resampling replayed, the value map tabulated.
    np.testing.assert_array_equal(ours, want)


def test_config_forms(tmp_path):
    legacy = {"size": 224, "crop_size": 224, "resample": 3, "do_center_crop": True}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(legacy))
    assert P.CLIPImageProcessorConfig.from_pretrained(tmp_path) == P.CLIPImageProcessorConfig()
    joint = tmp_path / "joint"
    joint.mkdir()
    (joint / "processor_config.json").write_text(
        json.dumps({"image_processor": {**legacy, "crop_size": {"height": 100, "width": 90}}})
    )
    cfg = P.CLIPImageProcessorConfig.from_pretrained(joint)
    assert (cfg.crop_height, cfg.crop_width) == (100, 90)


def test_missing_config_and_unsupported_settings(tmp_path):
    with pytest.raises(FileNotFoundError, match="no preprocessor_config.json"):
        P.CLIPImageProcessorConfig.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="resample=1"):
        P.CLIPImageProcessorConfig.from_dict({"resample": 1})
    with pytest.raises(ValueError, match="longest_edge"):
        P.CLIPImageProcessorConfig.from_dict({"size": {"shortest_edge": 224, "longest_edge": 300}})
