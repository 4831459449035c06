"""Qwen-Image converters: bit-exact round trips, sharded and bf16 checkpoints, strictness."""

import json
import shutil

import jax
import numpy as np
import pytest
import safetensors.numpy
import torch

from ffjax.models import load_pretrained
from ffjax.models.qwen_image import call_like_diffusers
from ffjax.models.qwen_image.config import (
    ConfigError,
    QwenImageTransformerConfig,
    QwenImageVAEConfig,
)
from ffjax.models.qwen_image.convert import identify, save_diffusers
from ffjax.models.weights import CheckpointFormatError, ConversionError
from tests.models.flux.tiny import rel_err


def _tensors(folder):
    return safetensors.numpy.load_file(folder / "diffusion_pytorch_model.safetensors")


@pytest.mark.parametrize("kind,fixture,cfg_cls", [("transformer", "tiny_transformers", QwenImageTransformerConfig),
                                                  ("vae", "tiny_vaes", QwenImageVAEConfig)])  # fmt: skip
def test_round_trip_bit_exact(request, tmp_path, kind, fixture, cfg_cls):
    for _, path in request.getfixturevalue(fixture).values():
        _, params = load_pretrained("qwen_image", kind, path, dtype=None)
        cfg = cfg_cls.from_diffusers(path)
        n = save_diffusers(kind, cfg, params, tmp_path / path.name)
        original, back = _tensors(path), _tensors(tmp_path / path.name)
        assert n == len(original) and sorted(back) == sorted(original)
        for k, a in original.items():
            assert back[k].dtype == a.dtype and back[k].tobytes() == a.tobytes(), k
        # The written folder is a valid Diffusers checkpoint with the same config.
        saved = json.loads((tmp_path / path.name / "config.json").read_text())
        assert cfg_cls.from_diffusers(saved) == cfg


def test_export_loads_in_diffusers(tiny_transformers, tmp_path):
    from diffusers import QwenImageTransformer2DModel

    model, path = tiny_transformers["one_block"]
    _, params = load_pretrained("qwen_image", "transformer", path, dtype=None)
    save_diffusers("transformer", QwenImageTransformerConfig.from_diffusers(path), params, tmp_path)
    back = QwenImageTransformer2DModel.from_pretrained(tmp_path)
    for k, v in model.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k


def test_sharded_checkpoint_loads_identically(tiny_transformers, tmp_path):
    model, path = tiny_transformers["two_blocks"]
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "diffusion_pytorch_model.safetensors.index.json").exists()
    _, sharded = load_pretrained("qwen_image", "transformer", tmp_path)
    _, single = load_pretrained("qwen_image", "transformer", path)
    jax.tree.map(np.testing.assert_array_equal, sharded, single)


def test_bf16_checkpoint(tiny_transformers, tmp_path):
    model, _ = tiny_transformers["one_block"]
    bf16 = type(model).from_config(model.config)
    bf16.load_state_dict(model.state_dict())
    bf16.to(torch.bfloat16).save_pretrained(tmp_path)
    module, params = load_pretrained("qwen_image", "transformer", tmp_path, dtype="float32")
    assert params["proj_out"]["kernel"].dtype == np.float32
    np.testing.assert_array_equal(
        params["proj_out"]["kernel"], bf16.proj_out.weight.detach().float().numpy().T
    )
    _, raw = load_pretrained("qwen_image", "transformer", tmp_path, dtype=None)
    assert str(raw["proj_out"]["kernel"].dtype) == "bfloat16"
    # The float32 model runs on the upcast weights like the upcast torch model.
    g = torch.Generator().manual_seed(0)
    kw = dict(hidden_states=torch.randn(1, 6, 32, generator=g),
              encoder_hidden_states=torch.randn(1, 3, 12, generator=g),
              timestep=torch.tensor([0.5]), img_shapes=[[(1, 2, 3)]])  # fmt: skip
    with torch.no_grad():
        ref = bf16.float()(**kw).sample.numpy()
    np_kw = {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in kw.items()}
    assert rel_err(call_like_diffusers("transformer", module, params, **np_kw), ref) < 1e-5


def _copy(path, tmp_path):
    dst = tmp_path / "ckpt"
    shutil.copytree(path, dst)
    return dst


def test_strict_missing_unexpected_misshaped(tiny_transformers, tmp_path):
    path = _copy(tiny_transformers["two_blocks"][1], tmp_path)
    good = _tensors(path)
    file = path / "diffusion_pytorch_model.safetensors"

    key = "transformer_blocks.1.attn.norm_added_k.weight"
    safetensors.numpy.save_file({k: v for k, v in good.items() if k != key}, file)
    with pytest.raises(
        ConversionError, match=rf"missing tensor '{key}' \(expected shape \(16,\)\)"
    ):
        load_pretrained("qwen_image", "transformer", path)

    safetensors.numpy.save_file(good | {"pos_embed.freqs": np.zeros((3,), np.float32)}, file)
    with pytest.raises(
        ConversionError, match=r"unexpected tensor 'pos_embed.freqs' with shape \(3,\)"
    ):
        load_pretrained("qwen_image", "transformer", path)

    key = "transformer_blocks.0.img_mod.1.weight"
    safetensors.numpy.save_file(good | {key: np.zeros((192, 31), np.float32)}, file)
    with pytest.raises(
        ConversionError,
        match=rf"'{key}' has shape \(192, 31\), expected \(192, 32\).*transformer_blocks/img_mod",
    ):
        load_pretrained("qwen_image", "transformer", path)


def test_flux_transformer_folder_is_refused(tmp_path):
    from diffusers import FluxTransformer2DModel

    from tests.models.flux.tiny import TRANSFORMER_CONFIGS

    flux = tmp_path / "flux_transformer"
    FluxTransformer2DModel(**TRANSFORMER_CONFIGS["unguided"]).save_pretrained(flux)
    with pytest.raises(
        ConfigError,
        match="_class_name is 'FluxTransformer2DModel', expected 'QwenImageTransformer2DModel'",
    ):
        load_pretrained("qwen_image", "transformer", flux)
    with pytest.raises(
        CheckpointFormatError, match="not a Qwen-Image checkpoint.*'FluxTransformer2DModel'"
    ):
        identify(flux)
    # Without its class name, a FLUX config still fails on FLUX-only keys.
    cfg = json.loads((flux / "config.json").read_text())
    del cfg["_class_name"]
    with pytest.raises(ConfigError, match="unknown keys .*'num_single_layers'"):
        QwenImageTransformerConfig.from_diffusers(cfg)


def test_identify(tiny_transformers, tmp_path):
    assert identify(tiny_transformers["one_block"][1]) == "transformer"
    with pytest.raises(CheckpointFormatError, match="no model_index.json or config.json"):
        identify(tmp_path)
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    with pytest.raises(CheckpointFormatError, match="'FluxPipeline', expected 'QwenImagePipeline'"):
        identify(tmp_path)


def test_config_validation_names_the_key():
    with pytest.raises(ConfigError, match="axes_dims_rope"):
        QwenImageTransformerConfig.from_diffusers(
            {"attention_head_dim": 16, "axes_dims_rope": [4, 4, 4]}
        )
    with pytest.raises(ConfigError, match="unknown keys \\['bogus'\\]"):
        QwenImageTransformerConfig.from_diffusers({"bogus": 1})
    for key in ("zero_cond_t", "use_additional_t_cond", "use_layer3d_rope", "guidance_embeds"):
        with pytest.raises(ConfigError, match=f"{key}=True is not supported"):
            QwenImageTransformerConfig.from_diffusers({key: True})
    with pytest.raises(ConfigError, match="remat='some'"):
        QwenImageTransformerConfig.from_diffusers({}, remat="some")
    full = QwenImageTransformerConfig.from_diffusers({"_class_name": "QwenImageTransformer2DModel"})
    assert full.inner_dim == 3072 and full.output_channels == 64 and full.num_layers == 60


def test_vae_strictness_and_family(tiny_vaes, tmp_path):
    path = _copy(tiny_vaes["small"][1], tmp_path)
    good = _tensors(path)
    file = path / "diffusion_pytorch_model.safetensors"
    key = "decoder.up_blocks.0.upsamplers.0.time_conv.weight"  # unused on images, still required
    safetensors.numpy.save_file({k: v for k, v in good.items() if k != key}, file)
    with pytest.raises(
        ConversionError, match=rf"missing tensor '{key}' \(expected shape \(32, 16, 3, 1, 1\)\)"
    ):
        load_pretrained("qwen_image", "vae", path)
    key = "encoder.mid_block.attentions.0.norm.gamma"
    safetensors.numpy.save_file(good | {key: np.ones((16, 1, 1, 1), np.float32)}, file)
    with pytest.raises(
        ConversionError, match=rf"'{key}' has shape \(16, 1, 1, 1\), expected \(16, 1, 1\)"
    ):
        load_pretrained("qwen_image", "vae", path)


def test_flux_vae_folder_is_refused(tmp_path):
    from diffusers import AutoencoderKL

    from tests.models.flux.tiny import VAE_CONFIGS

    AutoencoderKL(**VAE_CONFIGS["quant"]).save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="'AutoencoderKL', expected 'AutoencoderKLQwenImage'"):
        load_pretrained("qwen_image", "vae", tmp_path)


def test_vae_config_validation_names_the_key():
    with pytest.raises(ConfigError, match="attn_scales=\\(0.5,\\) is invalid"):
        QwenImageVAEConfig.from_diffusers({"attn_scales": [0.5]})
    with pytest.raises(ConfigError, match="temperal_downsample"):
        QwenImageVAEConfig.from_diffusers({"dim_mult": [1, 2]})
    with pytest.raises(ConfigError, match="latents_mean"):
        QwenImageVAEConfig.from_diffusers({"z_dim": 4})
    assert QwenImageVAEConfig.from_diffusers({}).downsample_factor == 8
