"""The CLIP vision tower as WAN I2V's image encoder: `load_clip_vision` on transformers
CLIPVisionModel[WithProjection] folders (bare keys as transformers 5 saves them, and
"vision_model."-prefixed ones as hub folders hold them), every layer's hidden state
against transformers' `output_hidden_states`, and `preprocess_pil` against
CLIPImageProcessor bit for bit."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from PIL import Image

from ffjax.models.clip.convert import load_clip_vision
from ffjax.models.clip.preprocess import CLIPImageProcessorConfig, preprocess_pil
from ffjax.models.weights import CheckpointFormatError, save_safetensors
from tests.models.flux.tiny import rel_err
from tests.models.text.tiny import build

VISION = dict(hidden_size=20, intermediate_size=36, num_hidden_layers=3, num_attention_heads=5,
              image_size=28, patch_size=4, hidden_act="gelu", layer_norm_eps=1e-6)  # fmt: skip


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    out = {}
    for name, extra in (("CLIPVisionModel", {}), ("CLIPVisionModelWithProjection",
                                                  {"projection_dim": 12})):  # fmt: skip
        model = build(name, {**VISION, **extra}, seed=7)
        path = tmp_path_factory.mktemp(name)
        model.save_pretrained(path)
        out[name] = model, path
    return out


@pytest.mark.parametrize("name", ["CLIPVisionModel", "CLIPVisionModelWithProjection"])
def test_hidden_states_match_transformers(saved, name):
    model, path = saved[name]
    module, params = load_clip_vision(path)
    assert (module.config.projection_dim is not None) == name.endswith("Projection")
    pixels = np.random.default_rng(0).normal(size=(2, 3, 28, 28)).astype(np.float32)
    with torch.no_grad():
        ref = model(pixel_values=torch.from_numpy(pixels), output_hidden_states=True)
    out = module.apply(
        {"params": params}, jnp.asarray(pixels.transpose(0, 2, 3, 1)), output_hidden_states=True
    )
    assert out["hidden_states"].shape[0] == len(ref.hidden_states) == 4
    for ours, theirs in zip(out["hidden_states"], ref.hidden_states, strict=True):
        assert rel_err(ours, theirs.numpy()) < 1e-5
    assert rel_err(out["last_hidden_state"], ref.last_hidden_state.numpy()) < 1e-5
    if name.endswith("Projection"):
        assert rel_err(out["image_embeds"], ref.image_embeds.numpy()) < 1e-5


def test_prefixed_keys_and_other_models(saved, tmp_path):
    """Hub folders nest the tower under "vision_model."; both layouts load the same."""
    from safetensors.numpy import load_file

    _, path = saved["CLIPVisionModel"]
    tensors = load_file(str(path / "model.safetensors"))
    assert not any(k.startswith("vision_model.") for k in tensors)
    (tmp_path / "hub").mkdir()
    save_safetensors(
        str(tmp_path / "hub" / "model.safetensors"),
        {f"vision_model.{k}": v for k, v in tensors.items()},
    )
    (tmp_path / "hub" / "config.json").write_text((path / "config.json").read_text())
    _, bare = load_clip_vision(path)
    _, hub = load_clip_vision(tmp_path / "hub")
    for a, b in zip(
        np.concatenate([np.ravel(x) for x in _leaves(bare)]),
        np.concatenate([np.ravel(x) for x in _leaves(hub)]),
        strict=True,
    ):
        assert a == b
    cfg = json.loads((path / "config.json").read_text())
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text(json.dumps({**cfg, "model_type": "siglip"}))
    with pytest.raises(CheckpointFormatError, match="model_type 'siglip'"):
        load_clip_vision(tmp_path / "other")


def _leaves(tree):
    import jax

    return jax.tree.leaves(tree)


@pytest.mark.parametrize("size,mode", [((33, 21), "RGB"), ((17, 40), "RGBA"), ((28, 28), "L")])
def test_preprocess_pil_is_the_processor(size, mode):
    from transformers import CLIPImageProcessor

    proc = CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 24, "width": 26})
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    a = np.random.default_rng(1).integers(0, 256, (*size, channels), np.uint8)
    image = Image.fromarray(a[..., 0] if mode == "L" else a, mode)
    ref = proc(images=image, return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)
    ours = preprocess_pil(image, CLIPImageProcessorConfig.from_dict(proc.to_dict()))
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    np.testing.assert_array_equal(ours, ref)
