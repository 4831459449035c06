"""WAN VAE converter: bit-exact round trips (Wan 2.1 / 2.2), strictness, family checks,
config validation."""

import json
import re
import shutil

import numpy as np
import pytest
import safetensors.numpy
import torch

from ffjax.models import load_pretrained
from ffjax.models.wan.config import ConfigError, WanVAEConfig
from ffjax.models.wan.convert import identify, save_diffusers
from ffjax.models.weights import ConversionError
from tests.models.wan.tiny_vae import save_tiny_vaes


@pytest.fixture(scope="module")
def tiny_vaes(tmp_path_factory):
    return save_tiny_vaes(tmp_path_factory)


def _tensors(folder):
    return safetensors.numpy.load_file(folder / "diffusion_pytorch_model.safetensors")


@pytest.mark.parametrize("name", ["wan21", "wan22"])
def test_round_trip_bit_exact(tiny_vaes, tmp_path, name):
    _, path = tiny_vaes[name]
    _, params = load_pretrained("wan", "vae", path, dtype=None)
    cfg = WanVAEConfig.from_diffusers(path)
    n = save_diffusers("vae", cfg, params, tmp_path)
    original, back = _tensors(path), _tensors(tmp_path)
    assert n == len(original) and sorted(back) == sorted(original)
    for k, a in original.items():
        assert back[k].dtype == a.dtype and back[k].tobytes() == a.tobytes(), k
    saved = json.loads((tmp_path / "config.json").read_text())
    assert WanVAEConfig.from_diffusers(saved) == cfg
    assert identify(tmp_path) == "vae"


def test_export_loads_in_diffusers(tiny_vaes, tmp_path):
    from diffusers import AutoencoderKLWan

    model, path = tiny_vaes["wan22"]
    _, params = load_pretrained("wan", "vae", path, dtype=None)
    save_diffusers("vae", WanVAEConfig.from_diffusers(path), params, tmp_path)
    back = AutoencoderKLWan.from_pretrained(tmp_path)

    def public(c):  # without the _name_or_path / _diffusers_version metadata
        return {k: v for k, v in c.items() if not k.startswith("_")}

    assert public(back.config) == public(model.config)
    for k, v in model.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k


def test_bf16_params(tiny_vaes):
    _, path = tiny_vaes["wan21"]
    module, params = load_pretrained("wan", "vae", path, dtype="bfloat16")
    assert module.config.dtype == module.config.param_dtype == "bfloat16"
    assert str(params["encoder"]["conv_in"]["kernel"].dtype) == "bfloat16"


def _copy(path, tmp_path):
    dst = tmp_path / "ckpt"
    shutil.copytree(path, dst)
    return dst


@pytest.mark.parametrize(
    "name,missing,misshaped",
    [
        # Wan 2.1: a flat list of down blocks, `upsamplers.0`; the skipped-for-the-first-
        # frame time_conv is still required.
        ("wan21", "decoder.up_blocks.0.upsamplers.0.time_conv.weight",
         "encoder.down_blocks.3.time_conv.weight"),
        # Wan 2.2: residual blocks, `downsampler` / `upsampler`.
        ("wan22", "encoder.down_blocks.1.downsampler.time_conv.bias",
         "decoder.up_blocks.3.resnets.0.conv_shortcut.weight"),
    ],
)  # fmt: skip
def test_strict_missing_unexpected_misshaped(tiny_vaes, tmp_path, name, missing, misshaped):
    path = _copy(tiny_vaes[name][1], tmp_path)
    good = _tensors(path)
    file = path / "diffusion_pytorch_model.safetensors"

    safetensors.numpy.save_file({k: v for k, v in good.items() if k != missing}, file)
    want = tuple(good[missing].shape)
    with pytest.raises(
        ConversionError, match=re.escape(f"missing tensor '{missing}' (expected shape {want})")
    ):
        load_pretrained("wan", "vae", path)

    extra = "decoder.up_blocks.0.avg_shortcut.weight"
    safetensors.numpy.save_file(good | {extra: np.zeros((3,), np.float32)}, file)
    with pytest.raises(ConversionError, match=rf"unexpected tensor '{extra}' with shape \(3,\)"):
        load_pretrained("wan", "vae", path)

    bad = np.zeros((1, *good[misshaped].shape[1:]), np.float32)
    safetensors.numpy.save_file(good | {misshaped: bad}, file)
    with pytest.raises(ConversionError, match=rf"'{misshaped}' has shape \(1, "):
        load_pretrained("wan", "vae", path)


def test_other_family_folders_are_refused(tmp_path):
    from diffusers import AutoencoderKLQwenImage

    from tests.models.qwen_image.tiny import VAE_CONFIGS

    qwen = tmp_path / "qwen_vae"
    AutoencoderKLQwenImage(**VAE_CONFIGS["small"]).save_pretrained(qwen)
    with pytest.raises(
        ConfigError, match="'AutoencoderKLQwenImage', expected 'AutoencoderKLWan'.*WAN VAE"
    ):
        load_pretrained("wan", "vae", qwen)
    # Without its class name, a Qwen-Image VAE config still fails on its own key.
    cfg = json.loads((qwen / "config.json").read_text())
    del cfg["_class_name"]
    with pytest.raises(ConfigError, match=r"unknown keys \['input_channels'\]"):
        WanVAEConfig.from_diffusers(cfg)


def test_config_defaults_and_the_real_layouts():
    wan21 = WanVAEConfig.from_diffusers({"_class_name": "AutoencoderKLWan"})
    assert (wan21.spatial_factor, wan21.temporal_factor, wan21.z_dim) == (8, 4, 16)
    # The Wan 2.2 TI2V-5B VAE's config.json (latent statistics elided).
    wan22 = WanVAEConfig.from_diffusers(
        dict(base_dim=160, decoder_base_dim=256, z_dim=48, is_residual=True, patch_size=2,
             in_channels=12, out_channels=12, scale_factor_spatial=16, scale_factor_temporal=4,
             latents_mean=[0.0] * 48, latents_std=[1.0] * 48)
    )  # fmt: skip
    assert (wan22.spatial_factor, wan22.temporal_factor, wan22.pixel_channels) == (16, 4, 3)
    assert wan22.to_diffusers()["decoder_base_dim"] == 256


@pytest.mark.parametrize(
    "cfg,match",
    [
        ({"bogus": 1}, r"unknown keys \['bogus'\]"),
        ({"attn_scales": [0.5]}, r"attn_scales=\(0.5,\) is invalid"),
        ({"dim_mult": [1, 2]}, "temperal_downsample"),
        ({"dim_mult": [1, 2, 4, 4, 4], "temperal_downsample": [True] * 4}, "at most 2 temporal"),
        ({"scale_factor_spatial": 16}, "scale_factor_spatial=16 is invalid; expected None or 8"),
        ({"scale_factor_temporal": 8}, "scale_factor_temporal=8 is invalid; expected None or 4"),
        ({"z_dim": 4}, "latents_mean"),
        ({"patch_size": 2, "scale_factor_spatial": 16}, "in_channels=3 is invalid"),
        ({"is_residual": True, "dim_mult": [1, 3, 4, 4]}, "dim_mult=.*encoder stage 1"),
        ({"base_dim": 0}, "base_dim=0"),
    ],
)
def test_vae_config_validation_names_the_key(cfg, match):
    with pytest.raises(ConfigError, match=match):
        WanVAEConfig.from_diffusers(cfg)
