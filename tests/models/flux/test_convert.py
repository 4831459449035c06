"""FLUX.1 converters: bit-exact round trips, sharded and bf16 checkpoints, strictness."""

import json
import shutil

import numpy as np
import pytest
import safetensors.numpy
import torch

from ffjax.models import load_pretrained
from ffjax.models.flux import call_like_diffusers
from ffjax.models.flux.config import ConfigError, FluxTransformerConfig, FluxVAEConfig
from ffjax.models.flux.convert import identify, save_diffusers
from ffjax.models.weights import CheckpointFormatError, ConversionError


def _tensors(folder):
    return safetensors.numpy.load_file(folder / "diffusion_pytorch_model.safetensors")


@pytest.mark.parametrize("kind,fixture,cfg_cls", [("transformer", "tiny_transformers", FluxTransformerConfig),
                                                  ("vae", "tiny_vaes", FluxVAEConfig)])  # fmt: skip
def test_round_trip_bit_exact(request, tmp_path, kind, fixture, cfg_cls):
    for _, path in request.getfixturevalue(fixture).values():
        _, params = load_pretrained("flux", kind, path, dtype=None)
        n = save_diffusers(kind, cfg_cls.from_diffusers(path), params, tmp_path / path.name)
        original, back = _tensors(path), _tensors(tmp_path / path.name)
        assert n == len(original) and sorted(back) == sorted(original)
        for k, a in original.items():
            assert back[k].dtype == a.dtype and back[k].tobytes() == a.tobytes(), k


def test_sharded_checkpoint_loads_identically(tiny_transformers, tmp_path):
    model, path = tiny_transformers["guided"]
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "diffusion_pytorch_model.safetensors.index.json").exists()
    _, sharded = load_pretrained("flux", "transformer", tmp_path)
    _, single = load_pretrained("flux", "transformer", path)
    import jax

    jax.tree.map(np.testing.assert_array_equal, sharded, single)


def test_bf16_checkpoint(tiny_transformers, tmp_path):
    model, _ = tiny_transformers["unguided"]
    bf16 = type(model).from_config(model.config)
    bf16.load_state_dict(model.state_dict())
    bf16.to(torch.bfloat16).save_pretrained(tmp_path)
    module, params = load_pretrained("flux", "transformer", tmp_path, dtype="float32")
    assert params["proj_out"]["kernel"].dtype == np.float32
    w = bf16.proj_out.weight.detach().float().numpy()
    np.testing.assert_array_equal(params["proj_out"]["kernel"], w.T)
    _, raw = load_pretrained("flux", "transformer", tmp_path, dtype=None)
    assert str(raw["proj_out"]["kernel"].dtype) == "bfloat16"
    # The float32 model runs on the upcast weights like the upcast torch model.
    g = torch.Generator().manual_seed(0)
    kw = dict(hidden_states=torch.randn(1, 4, 16, generator=g), encoder_hidden_states=torch.randn(1, 3, 12, generator=g),
              pooled_projections=torch.randn(1, 10, generator=g), timestep=torch.tensor([0.5]),
              img_ids=torch.zeros(4, 3), txt_ids=torch.zeros(3, 3))  # fmt: skip
    with torch.no_grad():
        ref = bf16.float()(**kw).sample.numpy()
    out = call_like_diffusers(
        "transformer", module, params, **{k: v.numpy() for k, v in kw.items()}
    )
    assert np.abs(out - ref).max() / np.abs(ref).max() < 2e-5


def _copy(path, tmp_path):
    dst = tmp_path / "ckpt"
    shutil.copytree(path, dst)
    return dst


def test_strict_missing_unexpected_misshaped(tiny_transformers, tmp_path):
    path = _copy(tiny_transformers["guided"][1], tmp_path)
    good = _tensors(path)
    file = path / "diffusion_pytorch_model.safetensors"

    safetensors.numpy.save_file({k: v for k, v in good.items() if k != "proj_out.bias"}, file)
    with pytest.raises(
        ConversionError, match=r"missing tensor 'proj_out.bias' \(expected shape \(16,\)\)"
    ):
        load_pretrained("flux", "transformer", path)

    safetensors.numpy.save_file(good | {"extra.weight": np.zeros((3,), np.float32)}, file)
    with pytest.raises(
        ConversionError, match=r"unexpected tensor 'extra.weight' with shape \(3,\)"
    ):
        load_pretrained("flux", "transformer", path)

    key = "transformer_blocks.1.attn.to_q.weight"
    safetensors.numpy.save_file(good | {key: np.zeros((32, 31), np.float32)}, file)
    with pytest.raises(
        ConversionError, match=rf"'{key}' has shape \(32, 31\), expected \(32, 32\)"
    ):
        load_pretrained("flux", "transformer", path)


def test_truncated_checkpoint(tiny_transformers, tmp_path):
    path = _copy(tiny_transformers["guided"][1], tmp_path)
    file = path / "diffusion_pytorch_model.safetensors"
    file.write_bytes(file.read_bytes()[:-100])
    with pytest.raises(CheckpointFormatError, match="truncated safetensors file"):
        load_pretrained("flux", "transformer", path)


def test_wrong_family_is_refused(tiny_transformers, tmp_path):
    path = _copy(tiny_transformers["guided"][1], tmp_path)
    cfg = json.loads((path / "config.json").read_text())
    cfg["_class_name"] = "QwenImageTransformer2DModel"
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(
        ConfigError, match="'QwenImageTransformer2DModel', expected 'FluxTransformer2DModel'"
    ):
        load_pretrained("flux", "transformer", path)
    with pytest.raises(
        CheckpointFormatError, match="not a FLUX.1 checkpoint.*QwenImageTransformer2DModel"
    ):
        identify(path)
    assert identify(tiny_transformers["guided"][1]) == "transformer"


def test_config_validation_names_the_key():
    with pytest.raises(ConfigError, match="axes_dims_rope"):
        FluxTransformerConfig.from_diffusers(
            {"attention_head_dim": 16, "axes_dims_rope": [4, 4, 4]}
        )
    with pytest.raises(ConfigError, match="unknown keys \\['bogus'\\]"):
        FluxTransformerConfig.from_diffusers({"bogus": 1})
    dev = FluxTransformerConfig.from_diffusers(
        {
            "_class_name": "FluxTransformer2DModel",
            "guidance_embeds": True,
            "num_layers": 19,
            "num_single_layers": 38,
        }
    )
    assert dev.inner_dim == 3072 and dev.output_channels == 64
