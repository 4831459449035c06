"""Parity of the JAX CLIPModel with transformers' `CLIPModel`, and converter strictness."""

import json
import shutil

import jax
import numpy as np
import pytest
import torch

from ffjax.models import load_pretrained
from ffjax.models import weights as W
from ffjax.models.clip import convert
from ffjax.models.clip.model import CLIPVisionModel
from tests.models.clip.tiny import CLIP_MODEL_CONFIGS
from tests.models.text.tiny import random_ids, right_padded_mask

RTOL = 1e-4  # max |ours - theirs| / max |theirs|, float32


def _rel(ours, theirs):
    theirs = theirs.detach().numpy() if hasattr(theirs, "detach") else np.asarray(theirs)
    ours = np.asarray(ours)
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    return float(np.abs(ours - theirs).max() / np.abs(theirs).max())


def _features(out):
    # transformers 5 returns a BaseModelOutputWithPooling whose pooler_output is projected.
    return out if isinstance(out, torch.Tensor) else out.pooler_output


@pytest.fixture(scope="module")
def loaded(tiny_clips):
    """{name: (module, params)} through `ffjax.models.load_pretrained("clip", "model", ...)`."""
    return {n: load_pretrained("clip", "model", path) for n, (_, path) in tiny_clips.items()}


def _inputs(model, n_images, n_texts, length, seed):
    rng = np.random.RandomState(seed)
    s = model.config.vision_config.image_size
    pixels = rng.randn(n_images, 3, s, s).astype(np.float32)
    eos = model.config.text_config.eos_token_id
    ids = random_ids(rng, n_texts, length, model.config.text_config.vocab_size, eos=eos)
    mask = right_padded_mask(rng, n_texts, length)
    return pixels, ids, mask


@pytest.mark.parametrize("name", list(CLIP_MODEL_CONFIGS))
@pytest.mark.parametrize("n_images,n_texts,length", [(3, 2, 13), (2, 2, 77)])
def test_clip_model_parity(tiny_clips, loaded, name, n_images, n_texts, length):
    model, _ = tiny_clips[name]
    module, params = loaded[name]
    pixels, ids, mask = _inputs(model, n_images, n_texts, length, seed=n_images + length)
    nhwc = pixels.transpose(0, 2, 3, 1)
    with torch.no_grad():
        t_pix, t_ids, t_mask = map(torch.tensor, (pixels, ids, mask))
        ref_img = _features(model.get_image_features(pixel_values=t_pix))
        ref_txt = _features(model.get_text_features(input_ids=t_ids, attention_mask=t_mask))
        ref = model(input_ids=t_ids, pixel_values=t_pix, attention_mask=t_mask)
    v = {"params": params}
    img = jax.jit(lambda p, x: module.apply(p, x, method="get_image_features"))(v, nhwc)
    txt = jax.jit(lambda p, i, m: module.apply(p, i, m, method="get_text_features"))(v, ids, mask)
    out = jax.jit(module.apply)(v, nhwc, ids, mask)
    errs = {
        "image_features": _rel(img, ref_img),
        "text_features": _rel(txt, ref_txt),
        "image_embeds": _rel(out["image_embeds"], ref.image_embeds),
        "text_embeds": _rel(out["text_embeds"], ref.text_embeds),
        "logits_per_image": _rel(out["logits_per_image"], ref.logits_per_image),
        "logits_per_text": _rel(out["logits_per_text"], ref.logits_per_text),
    }
    assert max(errs.values()) < RTOL, errs
    assert float(out["logit_scale"]) == pytest.approx(float(model.logit_scale.detach()), rel=1e-7)


@pytest.mark.parametrize("name", list(CLIP_MODEL_CONFIGS))
def test_vision_tower_hidden_states(tiny_clips, loaded, name):
    model, _ = tiny_clips[name]
    module, params = loaded[name]
    pixels, _, _ = _inputs(model, 2, 1, 5, seed=7)
    with torch.no_grad():
        ref = model.vision_model(pixel_values=torch.tensor(pixels))
    tower = CLIPVisionModel(module.config.vision)
    ours = tower.apply({"params": params["vision_model"]}, pixels.transpose(0, 2, 3, 1))
    assert _rel(ours["last_hidden_state"], ref.last_hidden_state) < RTOL
    assert _rel(ours["pooler_output"], ref.pooler_output) < RTOL


def test_wrong_image_size_is_an_error(loaded):
    module, params = loaded["quick"]
    with pytest.raises(ValueError, match=r"do not match the model's \(30, 30, 3\)"):
        module.apply(
            {"params": params}, np.zeros((1, 28, 28, 3), np.float32), method="get_image_features"
        )


@pytest.mark.parametrize("name", list(CLIP_MODEL_CONFIGS))
def test_export_round_trip_bit_exact(tiny_clips, loaded, name):
    model, _ = tiny_clips[name]
    module, params = loaded[name]
    exported = convert.export_clip_model(module.config, params)
    theirs = {k: v.numpy() for k, v in model.state_dict().items()}
    assert sorted(exported) == sorted(theirs)
    for k, v in theirs.items():
        np.testing.assert_array_equal(exported[k], v, err_msg=k)


def _state(tiny_clips, name="quick"):
    return {k: v.numpy() for k, v in tiny_clips[name][0].state_dict().items()}


def test_strict_missing_unexpected_misshaped(tiny_clips, loaded):
    cfg = loaded["quick"][0].config
    state = _state(tiny_clips)
    state.pop("vision_model.post_layernorm.bias")
    state["vision_model.extra.weight"] = np.zeros(3, np.float32)
    state["visual_projection.weight"] = np.zeros((16, 25), np.float32)
    with pytest.raises(W.ConversionError) as e:
        convert.convert_clip_model(W.ArraySource(state), cfg)
    msg = str(e.value)
    assert "missing tensor 'vision_model.post_layernorm.bias' (expected shape (24,))" in msg
    assert "unexpected tensor 'vision_model.extra.weight'" in msg
    assert "tensor 'visual_projection.weight' has shape (16, 25), expected (16, 24)" in msg


def test_position_ids_buffers_of_old_saves_are_accepted(tiny_clips, loaded):
    module, params = loaded["quick"]
    state = _state(tiny_clips)
    state["text_model.embeddings.position_ids"] = np.arange(77)[None]
    state["vision_model.embeddings.position_ids"] = np.arange(26)[None]
    ours = convert.convert_clip_model(W.ArraySource(state), module.config)
    np.testing.assert_array_equal(
        ours["vision_model"]["class_embedding"], params["vision_model"]["class_embedding"]
    )


def test_wrong_model_type_and_missing_config(tiny_clips, tmp_path):
    _, path = tiny_clips["quick"]
    folder = tmp_path / "text_only"
    shutil.copytree(path, folder)
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "model_type": "clip_text_model"}))
    with pytest.raises(
        W.CheckpointFormatError, match="model_type 'clip_text_model'.*expected 'clip'"
    ):
        convert.load_clip_model(folder)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        convert.load_clip_model(tmp_path)


def test_bfloat16_load(tiny_clips, loaded):
    model, path = tiny_clips["gelu"]
    module, params = load_pretrained("clip", "model", path, dtype="bfloat16")
    assert params["logit_scale"].dtype == jax.numpy.bfloat16
    pixels, _, _ = _inputs(model, 2, 1, 5, seed=3)
    nhwc = pixels.transpose(0, 2, 3, 1)
    lo = module.apply({"params": params}, nhwc, method="get_image_features")
    m32, p32 = loaded["gelu"]
    hi = m32.apply({"params": p32}, nhwc, method="get_image_features")
    assert _rel(np.asarray(lo, np.float32), hi) < 0.05


def test_legacy_pytorch_model_bin(tiny_clips, loaded, tmp_path):
    model, path = tiny_clips["gelu"]
    shutil.copy(path / "config.json", tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    _, params = convert.load_clip_model(tmp_path)
    ours, theirs = W.flat_params(params), W.flat_params(loaded["gelu"][1])
    assert sorted(ours) == sorted(theirs)
    for k in ours:
        np.testing.assert_array_equal(ours[k], theirs[k], err_msg=k)
    (tmp_path / "pytorch_model.bin").unlink()
    with pytest.raises(
        W.CheckpointFormatError, match="no model.safetensors.*nor pytorch_model.bin"
    ):
        convert.load_clip_model(tmp_path)
