"""WAN transformer converter: bit-exact round trips, strictness, other families refused,
`identify`, and config validation."""

import json
import shutil

import numpy as np
import pytest
import safetensors.numpy
import torch

from ffjax.models import load_pretrained
from ffjax.models.wan.config import ConfigError, WanTransformerConfig
from ffjax.models.wan.convert import identify, load_transformer, save_diffusers
from ffjax.models.weights import CheckpointFormatError, ConversionError
from tests.models.wan.tiny import save_tiny_transformers

WEIGHTS = "diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """{name: (torch WanTransformer3DModel, saved folder)}."""
    return save_tiny_transformers(tmp_path_factory)


def _tensors(folder):
    return safetensors.numpy.load_file(folder / WEIGHTS)


def test_round_trip_bit_exact_and_loads_in_diffusers(tiny, tmp_path):
    from diffusers import WanTransformer3DModel

    for name, (model, path) in tiny.items():
        _, params = load_pretrained("wan", "transformer", path, dtype=None)
        cfg = WanTransformerConfig.from_diffusers(path)
        out = tmp_path / name
        n = save_diffusers("transformer", cfg, params, out)
        original, back = _tensors(path), _tensors(out)
        assert n == len(original) and sorted(back) == sorted(original), name
        for k, a in original.items():
            assert back[k].dtype == a.dtype and back[k].tobytes() == a.tobytes(), (name, k)
        saved = json.loads((out / "config.json").read_text())
        assert WanTransformerConfig.from_diffusers(saved) == cfg
        # Diffusers reads the written folder back to the same state dict.
        again = WanTransformer3DModel.from_pretrained(out)
        ref = model.state_dict()
        assert sorted(again.state_dict()) == sorted(ref), name
        for k, v in again.state_dict().items():
            assert torch.equal(v, ref[k]), (name, k)


def test_patch_embedding_layout(tiny):
    """The Conv3d kernel becomes a Dense over patchified tokens in (dt, dy, dx, c) order."""
    model, path = tiny["ti2v"]
    _, params = load_transformer(path)
    w = model.patch_embedding.weight.detach().numpy()  # (D, C, pt, ph, pw)
    k = params["patch_embedding"]["kernel"]  # (pt*ph*pw*C, D)
    c = w.shape[1]
    # Row (dt, dy, dx, c) = ((1 * 2 + 0) * 2 + 1) * C + 3 is the tap w[:, 3, 1, 0, 1].
    np.testing.assert_array_equal(k[((1 * 2 + 0) * 2 + 1) * c + 3], w[:, 3, 1, 0, 1])


def _copy(path, tmp_path):
    dst = tmp_path / "ckpt"
    shutil.copytree(path, dst)
    return dst


def test_strict_missing_unexpected_misshaped(tiny, tmp_path):
    path = _copy(tiny["i2v"][1], tmp_path)
    good = _tensors(path)
    file = path / WEIGHTS

    key = "blocks.1.attn2.norm_added_k.weight"
    safetensors.numpy.save_file({k: v for k, v in good.items() if k != key}, file)
    with pytest.raises(
        ConversionError, match=rf"missing tensor '{key}' \(expected shape \(16,\)\)"
    ):
        load_transformer(path)

    safetensors.numpy.save_file(good | {"rope.freqs": np.zeros((3,), np.float32)}, file)
    with pytest.raises(ConversionError, match=r"unexpected tensor 'rope.freqs' with shape \(3,\)"):
        load_transformer(path)

    key = "blocks.0.scale_shift_table"
    safetensors.numpy.save_file(good | {key: np.zeros((1, 5, 16), np.float32)}, file)
    with pytest.raises(
        ConversionError,
        match=rf"'{key}' has shape \(1, 5, 16\), expected \(1, 6, 16\).*blocks/scale_shift_table",
    ):
        load_transformer(path)

    key = "patch_embedding.weight"
    safetensors.numpy.save_file(good | {key: np.zeros((16, 9, 1, 2, 3), np.float32)}, file)
    with pytest.raises(
        ConversionError, match=rf"'{key}' has shape \(16, 9, 1, 2, 3\), expected \(16, 9, 1, 2, 2\)"
    ):
        load_transformer(path)

    # Diffusers ignores norm_added_q weights on load (older I2V conversions carry them).
    extra = {"blocks.0.attn2.norm_added_q.weight": np.ones((16,), np.float32)}
    safetensors.numpy.save_file(good | extra, file)
    _, params = load_transformer(path)
    assert "norm_added_q" not in params["blocks"]["attn2"]


def test_an_i2v_checkpoint_does_not_load_as_t2v(tiny, tmp_path):
    """I2V weights under a text-only config: the image tensors are reported unexpected."""
    path = _copy(tiny["flf2v"][1], tmp_path)
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(image_dim=None, added_kv_proj_dim=None, pos_embed_seq_len=None)
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(
        ConversionError, match=r"unexpected tensor 'blocks.0.attn2.add_k_proj.bias'"
    ):
        load_transformer(path)


@pytest.mark.parametrize("family", ["flux", "qwen_image"])
def test_other_family_transformer_folders_are_refused(tmp_path, family):
    if family == "flux":
        from diffusers import FluxTransformer2DModel as cls

        from tests.models.flux.tiny import TRANSFORMER_CONFIGS

        cfg, name = TRANSFORMER_CONFIGS["unguided"], "FluxTransformer2DModel"
    else:
        from diffusers import QwenImageTransformer2DModel as cls

        from tests.models.qwen_image.tiny import TRANSFORMER_CONFIGS

        cfg, name = TRANSFORMER_CONFIGS["one_block"], "QwenImageTransformer2DModel"
    cls(**cfg).save_pretrained(tmp_path)
    with pytest.raises(
        ConfigError, match=f"_class_name is '{name}', expected 'WanTransformer3DModel'"
    ):
        load_pretrained("wan", "transformer", tmp_path)
    with pytest.raises(CheckpointFormatError, match=f"not a WAN checkpoint.*'{name}'"):
        identify(tmp_path)
    # Without its class name, the config still fails on keys WAN does not have.
    raw = json.loads((tmp_path / "config.json").read_text())
    del raw["_class_name"]
    with pytest.raises(ConfigError, match="unknown keys"):
        WanTransformerConfig.from_diffusers(raw)


def test_identify(tiny, tmp_path):
    assert identify(tiny["t2v"][1]) == "transformer"
    with pytest.raises(CheckpointFormatError, match="no model_index.json or config.json"):
        identify(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKLWan"}))
    assert identify(tmp_path) == "vae"
    for pipe in ("WanPipeline", "WanImageToVideoPipeline"):
        (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": pipe}))
        assert identify(tmp_path) == "pipeline"
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "QwenImagePipeline"}))
    with pytest.raises(CheckpointFormatError, match="'QwenImagePipeline', expected one of"):
        identify(tmp_path)


def test_config_validation_names_the_key():
    full = WanTransformerConfig.from_diffusers({"_class_name": "WanTransformer3DModel"})
    assert full.inner_dim == 5120 and full.rope_dims == (44, 42, 42) and full.num_layers == 40
    assert full.to_diffusers()["patch_size"] == [1, 2, 2]
    with pytest.raises(ConfigError, match="unknown keys \\['bogus'\\]"):
        WanTransformerConfig.from_diffusers({"bogus": 1})
    with pytest.raises(ConfigError, match="qk_norm=None is not supported"):
        WanTransformerConfig.from_diffusers({"qk_norm": None})
    with pytest.raises(ConfigError, match="image_dim=1280 and added_kv_proj_dim=None"):
        WanTransformerConfig.from_diffusers({"image_dim": 1280})
    with pytest.raises(
        ConfigError, match="added_kv_proj_dim=64 is invalid; expected inner_dim = 5120"
    ):
        WanTransformerConfig.from_diffusers({"image_dim": 1280, "added_kv_proj_dim": 64})
    with pytest.raises(ConfigError, match="pos_embed_seq_len=514 is invalid"):
        WanTransformerConfig.from_diffusers({"pos_embed_seq_len": 514})
    with pytest.raises(ConfigError, match="patch_size=\\(1, 2\\) is invalid"):
        WanTransformerConfig.from_diffusers({"patch_size": [1, 2]})
    with pytest.raises(ConfigError, match="attention_head_dim=15 is invalid"):
        WanTransformerConfig.from_diffusers({"attention_head_dim": 15})
    with pytest.raises(ConfigError, match="remat='some'"):
        WanTransformerConfig.from_diffusers({}, remat="some")
