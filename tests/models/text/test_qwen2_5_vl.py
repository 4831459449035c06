"""Parity of the Qwen2.5-VL language model (text path) with transformers, both key layouts."""

import json
import shutil

import numpy as np
import pytest
import torch

from ffjax.models import weights as W
from ffjax.models.text import call_like_transformers, load_pretrained
from tests.models.text.tiny import build, right_padded_mask

VISION = dict(depth=1, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=32,
              fullatt_block_indexes=[0], patch_size=2, spatial_merge_size=1, temporal_patch_size=1,
              window_size=4)  # fmt: skip
CONFIGS = {
    "gqa": dict(vocab_size=80, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                "mrope_section": [1, 1, 2]}, max_position_embeddings=128),
    "mha_odd": dict(vocab_size=90, hidden_size=24, intermediate_size=40, num_hidden_layers=3,
                    num_attention_heads=2, num_key_value_heads=2, rms_norm_eps=1e-6,
                    rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 2, 2]},
                    max_position_embeddings=128),
}  # fmt: skip


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory):
    """{name: (torch model, folder)}; folders saved by transformers (the `model.layers.*` layout)."""
    out = {}
    for i, (name, text) in enumerate(CONFIGS.items()):
        model = build(
            "Qwen2_5_VLForConditionalGeneration",
            dict(text_config=text, vision_config=VISION),
            seed=20 + i,
        )
        path = tmp_path_factory.mktemp(f"qwen_{name}")
        model.save_pretrained(path)
        out[name] = (model, path)
    return out


def _relayout(src, dst):
    """The same checkpoint with `model.language_model.*` / `model.visual.*` keys (newer layout)."""
    f = W.SafetensorsFile(src / "model.safetensors")
    rename = lambda k: (
        "model." + k if k.startswith("visual.") else k.replace("model.", "model.language_model.", 1)
    )
    state = {rename(k) if not k.startswith("lm_head") else k: f.read(k) for k in f.keys()}
    assert any(k.startswith("model.language_model.layers.") for k in state)
    W.save_safetensors(dst / "model.safetensors", state)
    shutil.copy(src / "config.json", dst / "config.json")
    return dst


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("layout", ["model.layers", "model.language_model.layers"])
def test_qwen_parity(tiny_qwen, tmp_path, name, layout):
    model, path = tiny_qwen[name]
    if layout != "model.layers":
        path = _relayout(path, tmp_path)
    module, params = load_pretrained("qwen2_5_vl", path)
    rng = np.random.RandomState(0)
    ids = rng.randint(0, CONFIGS[name]["vocab_size"], (3, 19))
    mask = right_padded_mask(rng, 3, 19)
    ours = call_like_transformers("qwen2_5_vl", module, params, input_ids=ids, attention_mask=mask)
    with torch.no_grad():
        ref = model.model(
            input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)
        ).last_hidden_state.numpy()
    valid = mask.astype(bool)  # padded query rows are discarded by every caller
    err = np.abs(ours["last_hidden_state"] - ref)[valid].max() / np.abs(ref[valid]).max()
    assert err < 1e-4, err


def test_qwen_strict_and_wrong_model(tiny_qwen, tmp_path):
    _, path = tiny_qwen["gqa"]
    f = W.SafetensorsFile(path / "model.safetensors")
    state = {k: f.read(k) for k in f.keys() if k != "model.norm.weight"}
    W.save_safetensors(tmp_path / "model.safetensors", state)
    shutil.copy(path / "config.json", tmp_path / "config.json")
    with pytest.raises(W.ConversionError, match="missing tensor 'model.norm.weight'"):
        load_pretrained("qwen2_5_vl", tmp_path)
    cfg = json.loads((path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "model_type": "qwen2_vl"}))
    with pytest.raises(W.CheckpointFormatError, match="model_type 'qwen2_vl'"):
        load_pretrained("qwen2_5_vl", tmp_path)
