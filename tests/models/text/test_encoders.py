"""Parity of the JAX CLIP / T5 / UMT5 encoders with transformers, and converter strictness."""

import json
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from ffjax.models import weights as W
from ffjax.models.text import call_like_transformers, convert, load_pretrained
from ffjax.models.text.t5 import relative_position_buckets
from tests.models.text.tiny import CLIP_CONFIGS, T5_CONFIGS, random_ids, right_padded_mask

RTOL = 1e-4  # max |ours - theirs| / max |theirs|, float32


def _reference(model, ids, mask):
    with torch.no_grad():
        kw = {} if mask is None else {"attention_mask": torch.tensor(mask)}
        return model(torch.tensor(ids), **kw)


def _assert_close(ours, theirs, what):
    theirs = theirs.detach().numpy()
    assert ours.shape == theirs.shape, (what, ours.shape, theirs.shape)
    err = np.abs(ours - theirs).max() / np.abs(theirs).max()
    assert err < RTOL, f"{what}: relative error {err:.2e}"


def _component(name):
    return "clip_text" if name in CLIP_CONFIGS else name.split("_")[0]


@pytest.fixture(scope="module")
def loaded(tiny_encoders):
    """{name: (module, params)} loaded through `load_pretrained` from the saved folders."""
    return {n: load_pretrained(_component(n), path) for n, (_, path) in tiny_encoders.items()}


@pytest.mark.parametrize("name", list(CLIP_CONFIGS))
@pytest.mark.parametrize("batch,length,padded", [(2, 77, False), (3, 13, True)])
def test_clip_parity(tiny_encoders, loaded, name, batch, length, padded):
    model, _ = tiny_encoders[name]
    rng = np.random.RandomState(batch)
    ids = random_ids(rng, batch, length, model.config.vocab_size, eos=1)
    mask = right_padded_mask(rng, batch, length) if padded else None
    ours = call_like_transformers("clip_text", *loaded[name], input_ids=ids, attention_mask=mask)
    ref = _reference(model, ids, mask)
    _assert_close(ours["last_hidden_state"], ref.last_hidden_state, "last_hidden_state")
    if CLIP_CONFIGS[name][0] == "CLIPTextModelWithProjection":
        assert set(ours) == {"last_hidden_state", "text_embeds"}
        _assert_close(ours["text_embeds"], ref.text_embeds, "text_embeds")
    else:
        assert set(ours) == {"last_hidden_state", "pooler_output"}
        _assert_close(ours["pooler_output"], ref.pooler_output, "pooler_output")


@pytest.mark.parametrize("name", list(T5_CONFIGS))
@pytest.mark.parametrize("batch,length,padded", [(2, 17, True), (3, 40, False)])
def test_t5_parity(tiny_encoders, loaded, name, batch, length, padded):
    model, _ = tiny_encoders[name]
    rng = np.random.RandomState(length)
    ids = rng.randint(0, model.config.vocab_size, (batch, length))
    mask = right_padded_mask(rng, batch, length) if padded else None
    ours = call_like_transformers(
        _component(name), *loaded[name], input_ids=ids, attention_mask=mask
    )
    assert set(ours) == {"last_hidden_state"}
    _assert_close(ours["last_hidden_state"], _reference(model, ids, mask).last_hidden_state, name)


@pytest.mark.parametrize("name", ["t5_gated", "umt5_gated"])
def test_t5_512_tokens(tiny_encoders, loaded, name):
    model, _ = tiny_encoders[name]
    rng = np.random.RandomState(0)
    ids = rng.randint(0, model.config.vocab_size, (2, 512))
    mask = right_padded_mask(rng, 2, 512)
    ours = call_like_transformers(
        _component(name), *loaded[name], input_ids=ids, attention_mask=mask
    )
    _assert_close(ours["last_hidden_state"], _reference(model, ids, mask).last_hidden_state, name)


def test_relative_position_buckets_match_transformers():
    from transformers.models.t5.modeling_t5 import T5Attention

    pos = torch.arange(600)
    rel = pos[None, :] - pos[:, None]
    for buckets, distance in [(32, 128), (16, 64), (8, 20)]:
        theirs = T5Attention._relative_position_bucket(rel, True, buckets, distance).numpy()
        np.testing.assert_array_equal(relative_position_buckets(600, buckets, distance), theirs)


@pytest.mark.parametrize("name", [*CLIP_CONFIGS, *T5_CONFIGS])
def test_export_round_trip_bit_exact(tiny_encoders, loaded, name):
    model, _ = tiny_encoders[name]
    module, params = loaded[name]
    if name in CLIP_CONFIGS:
        prefix = "text_model." if module.config.projection_dim else ""
        exported = convert.export_clip(module.config, params, prefix)
    else:
        exported = convert.export_t5(module.config, params)
    theirs = {
        k: v.numpy() for k, v in model.state_dict().items() if k != "encoder.embed_tokens.weight"
    }
    assert sorted(exported) == sorted(theirs)
    for k, v in theirs.items():
        np.testing.assert_array_equal(exported[k], v, err_msg=k)


def test_bfloat16_load(tiny_encoders, loaded):
    _, path = tiny_encoders["t5_gated"]
    module, params = load_pretrained("t5", path, dtype="bfloat16")
    assert module.dtype == jnp.bfloat16 and params["shared"]["embedding"].dtype == jnp.bfloat16
    ids = np.arange(24).reshape(2, 12)
    lo = call_like_transformers("t5", module, params, input_ids=ids)["last_hidden_state"]
    hi = call_like_transformers("t5", *loaded["t5_gated"], input_ids=ids)["last_hidden_state"]
    assert np.abs(lo.astype(np.float32) - hi).max() / np.abs(hi).max() < 0.05


def test_legacy_clip_layout_with_prefix_and_buffer(tiny_encoders, loaded, tmp_path):
    """Old saves (and FLUX's text_encoder/) nest keys under text_model. and keep position_ids."""
    model, path = tiny_encoders["legacy"]
    state = {f"text_model.{k}": v.numpy() for k, v in model.state_dict().items()}
    state["text_model.embeddings.position_ids"] = np.arange(77, dtype=np.int64)[None]
    W.save_safetensors(tmp_path / "model.safetensors", state)
    shutil.copy(path / "config.json", tmp_path / "config.json")
    ids = np.arange(1, 21).reshape(2, 10)
    ours = call_like_transformers(
        "clip_text", *load_pretrained("clip_text", tmp_path), input_ids=ids
    )
    same = call_like_transformers("clip_text", *loaded["legacy"], input_ids=ids)
    np.testing.assert_array_equal(ours["pooler_output"], same["pooler_output"])


def _copy_with(tmp_path, path, edit):
    """A copy of checkpoint folder `path` whose tensors went through `edit(dict)`."""
    state = {
        k: W.SafetensorsFile(path / "model.safetensors").read(k)
        for k in W.SafetensorsFile(path / "model.safetensors").keys()
    }
    edit(state)
    W.save_safetensors(tmp_path / "model.safetensors", state)
    shutil.copy(path / "config.json", tmp_path / "config.json")
    return tmp_path


def test_strict_missing_unexpected_misshaped(tiny_encoders, tmp_path):
    _, path = tiny_encoders["t5_gated"]

    def edit(state):
        del state["encoder.final_layer_norm.weight"]
        state["encoder.block.0.layer.0.SelfAttention.bogus.weight"] = np.zeros((2, 2), np.float32)
        state["encoder.block.1.layer.0.SelfAttention.q.weight"] = np.zeros((3, 32), np.float32)

    with pytest.raises(W.ConversionError) as e:
        load_pretrained("t5", _copy_with(tmp_path, path, edit))
    msg = str(e.value)
    assert "missing tensor 'encoder.final_layer_norm.weight'" in msg
    assert "unexpected tensor 'encoder.block.0.layer.0.SelfAttention.bogus.weight'" in msg
    assert (
        "'encoder.block.1.layer.0.SelfAttention.q.weight' has shape (3, 32), expected (32, 32)"
        in msg
    )


def test_t5_with_decoder_weights_is_rejected(tiny_encoders, tmp_path):
    _, path = tiny_encoders["t5_gated"]
    edit = lambda s: s.update({"decoder.final_layer_norm.weight": np.ones(32, np.float32)})
    with pytest.raises(
        W.ConversionError, match="unexpected tensor 'decoder.final_layer_norm.weight'"
    ):
        load_pretrained("t5", _copy_with(tmp_path, path, edit))


@pytest.mark.parametrize(
    "component,name,said",
    [
        ("clip_text", "t5_gated", "'t5'"),
        ("t5", "umt5_gated", "'umt5'"),
        ("umt5", "legacy", "'clip_text_model'"),
    ],
)
def test_checkpoint_of_the_wrong_model(tiny_encoders, component, name, said):
    with pytest.raises(
        W.CheckpointFormatError, match=f"model_type {said}.*component '{component}'"
    ):
        load_pretrained(component, tiny_encoders[name][1])


def test_umt5_config_with_t5_tables_fails_on_keys(tiny_encoders, tmp_path):
    """A UMT5 checkpoint relabelled as T5: the per-layer bias tables are named unexpected."""
    _, path = tiny_encoders["umt5_gated"]
    shutil.copy(path / "model.safetensors", tmp_path / "model.safetensors")
    cfg = json.loads((path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "model_type": "t5"}))
    with pytest.raises(
        W.ConversionError, match="unexpected tensor 'encoder.block.1.layer.0.SelfAttention.relative"
    ):
        load_pretrained("t5", tmp_path)


def test_missing_folder_and_unknown_component(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_pretrained("t5", tmp_path)
    with pytest.raises(ValueError, match="unknown text component 'bert'"):
        load_pretrained("bert", tmp_path)


def test_family_table_routes_text(tiny_encoders, monkeypatch):
    """`ffjax.models.load_pretrained("text", ...)`, with the row the lead adds if it is absent."""
    import ffjax.models

    row = {c: f"ffjax.models.text:load_{c}" for c in ("clip_text", "t5", "umt5", "qwen2_5_vl")}
    if "text" not in ffjax.models.LOADERS:
        monkeypatch.setitem(ffjax.models.LOADERS, "text", row)
    module, _ = ffjax.models.load_pretrained("text", "umt5", tiny_encoders["umt5_relu"][1])
    assert module.config.bias_per_layer
