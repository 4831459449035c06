"""`encode_prompts_*` against the Diffusers pipelines' `encode_prompt` on tiny pipeline folders."""

import logging
import os
import shutil

import numpy as np
import pytest

from ffjax.models import weights as W
from ffjax.models.text import encode
from tests.models.text.tiny import build, clip_tokenizer, t5_tokenizer

LONG = " ".join(["a photo of a cat sitting on a red mat in the park at sunset"] * 12)
PROMPTS = ["a cat", "an astronaut riding a horse on the moon", LONG]


@pytest.fixture(scope="module")
def flux_folder(tmp_path_factory):
    """(FluxPipeline loaded back from its folder, the folder) with tiny random parts."""
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        FluxPipeline,
        FluxTransformer2DModel,
    )

    tmp = tmp_path_factory.mktemp("flux_text")
    clip = build("CLIPTextModel", dict(vocab_size=130, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                 num_attention_heads=4, max_position_embeddings=77, eos_token_id=1, bos_token_id=0,
                 pad_token_id=1), seed=10)  # fmt: skip
    t5 = build("T5EncoderModel", dict(vocab_size=64, d_model=24, d_kv=6, d_ff=36, num_layers=2, num_heads=4,
               feed_forward_proj="gated-gelu"), seed=11)  # fmt: skip
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=24, pooled_projection_dim=32, axes_dims_rope=(2, 2, 4),
    )  # fmt: skip
    vae = AutoencoderKL(
        block_out_channels=(4,), latent_channels=1, down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",), norm_num_groups=2, layers_per_block=1,
    )  # fmt: skip
    pipe = FluxPipeline(
        FlowMatchEulerDiscreteScheduler(), vae, clip, clip_tokenizer(tmp / "tk"), t5, t5_tokenizer(tmp / "tk2"),
        transformer,
    )  # fmt: skip
    pipe.save_pretrained(tmp / "pipe")
    return FluxPipeline.from_pretrained(tmp / "pipe"), tmp / "pipe"


@pytest.fixture(scope="module")
def wan_folder(tmp_path_factory):
    """(WanPipeline with text parts loaded back from its folder, the folder)."""
    from diffusers import (
        AutoencoderKLWan,
        FlowMatchEulerDiscreteScheduler,
        WanPipeline,
        WanTransformer3DModel,
    )

    tmp = tmp_path_factory.mktemp("wan_text")
    umt5 = build("UMT5EncoderModel", dict(vocab_size=64, d_model=24, d_kv=6, d_ff=36, num_layers=2, num_heads=4,
                 feed_forward_proj="gated-gelu"), seed=12)  # fmt: skip
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4,
        text_dim=24, freq_dim=16, ffn_dim=16, num_layers=1, rope_max_seq_len=32,
    )  # fmt: skip
    vae = AutoencoderKLWan(
        base_dim=4, z_dim=4, dim_mult=[1, 1], num_res_blocks=1, temperal_downsample=[False]
    )
    pipe = WanPipeline(
        tokenizer=t5_tokenizer(tmp / "tk"), text_encoder=umt5, vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(), transformer=transformer,
    )  # fmt: skip
    pipe.save_pretrained(tmp / "pipe")
    # The transformer keeps fp32 modules, which diffusers cannot reload without
    # `accelerate`; the text parts under test do come from the folder.
    return WanPipeline.from_pretrained(tmp / "pipe", transformer=transformer), tmp / "pipe"


def _close(ours, theirs, rtol=1e-4):
    theirs = theirs.detach().numpy()
    ours = np.asarray(ours)
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype, (
        ours.shape,
        theirs.shape,
        ours.dtype,
    )
    assert np.abs(ours - theirs).max() <= rtol * np.abs(theirs).max()


@pytest.fixture(scope="module")
def flux_text(flux_folder):
    return encode.load_flux_text(flux_folder[1])


@pytest.mark.parametrize("max_len,n", [(512, 1), (20, 2)])
def test_flux_encode_prompt_parity(flux_folder, flux_text, max_len, n):
    pipe, _ = flux_folder
    ours = encode.encode_prompts_flux(
        flux_text, PROMPTS, max_sequence_length=max_len, num_images_per_prompt=n
    )
    theirs = pipe.encode_prompt(PROMPTS, max_sequence_length=max_len, num_images_per_prompt=n)
    for o, t in zip(ours, theirs, strict=True):
        _close(o, t)


def test_flux_prompt_2_goes_to_t5(flux_folder, flux_text):
    pipe, _ = flux_folder
    p2 = ["a red fox", "a bowl of fruit", "the lazy dog"]
    ours = encode.encode_prompts_flux(flux_text, PROMPTS, p2, max_sequence_length=32)
    theirs = pipe.encode_prompt(PROMPTS, p2, max_sequence_length=32)
    for o, t in zip(ours, theirs, strict=True):
        _close(o, t)


def test_flux_truncation_warns(flux_text, caplog):
    with caplog.at_level(logging.WARNING):
        encode.encode_prompts_flux(flux_text, ["a cat"], max_sequence_length=16)
    assert not [r for r in caplog.records if "truncated" in r.getMessage()]
    with caplog.at_level(logging.WARNING):
        encode.encode_prompts_flux(flux_text, [LONG], max_sequence_length=16)
    msgs = [r.getMessage() for r in caplog.records if "truncated" in r.getMessage()]
    assert any("CLIP" in m for m in msgs) and any("T5" in m for m in msgs)


def test_flux_rejects_long_max_sequence_length(flux_text):
    with pytest.raises(ValueError, match="cannot be greater than 512"):
        encode.encode_prompts_flux(flux_text, ["a cat"], max_sequence_length=513)


@pytest.mark.parametrize("max_len", [512, 16])
def test_wan_encode_prompt_parity(wan_folder, max_len):
    pipe, folder = wan_folder
    prompts = ["  a cat &amp;   a dog ", "an astronaut\n riding a horse", LONG]
    enc = encode.load_wan_text(folder)
    ours = encode.encode_prompts_wan(enc, prompts, max_sequence_length=max_len)
    theirs, _ = pipe.encode_prompt(
        prompts, max_sequence_length=max_len, do_classifier_free_guidance=False
    )
    _close(ours, theirs)
    n = len(enc.tokenizer("a cat & a dog").input_ids)  # the cleaned first prompt, with </s>
    rows = np.abs(np.asarray(ours)[0]).sum(-1)
    assert np.all(rows[:n] > 0) and np.all(rows[n:] == 0)  # zeroed beyond the real length


def test_missing_tokenizer_folder(flux_folder, tmp_path):
    folder = tmp_path / "pipe"
    shutil.copytree(flux_folder[1], folder)
    shutil.rmtree(folder / "tokenizer_2")
    with pytest.raises(FileNotFoundError, match="no tokenizer folder 'tokenizer_2'"):
        encode.load_flux_text(folder)


def test_text_encoder_of_the_wrong_model(flux_folder, tmp_path):
    folder = tmp_path / "pipe"
    shutil.copytree(flux_folder[1], folder)
    shutil.rmtree(folder / "text_encoder_2")
    shutil.copytree(folder / "text_encoder", folder / "text_encoder_2")
    with pytest.raises(
        W.CheckpointFormatError, match="model_type 'clip_text_model'.*component 't5'"
    ):
        encode.load_flux_text(folder)


def test_flux_cache_hit_skips_encoders(flux_folder, flux_text, tmp_path, monkeypatch):
    from ffjax.data.embed_cache import EmbedCache

    cache = EmbedCache(tmp_path / "cache")
    plain = encode.encode_prompts_flux(flux_text, PROMPTS, max_sequence_length=32)
    first = encode.encode_prompts_flux(flux_text, PROMPTS, max_sequence_length=32, cache=cache)

    def fail(*_, **__):
        raise AssertionError("an encoder ran on a cache hit")

    monkeypatch.setattr(encode.TextEncoder, "__call__", fail)
    second = encode.encode_prompts_flux(
        flux_text, PROMPTS, max_sequence_length=32, num_images_per_prompt=2, cache=cache
    )
    for p, a in zip(plain, first, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(p))
    np.testing.assert_array_equal(np.asarray(second[0])[::2], np.asarray(first[0]))  # 2 per prompt
    np.testing.assert_array_equal(np.asarray(second[1])[1::2], np.asarray(first[1]))
    np.testing.assert_array_equal(np.asarray(second[2]), np.asarray(first[2]))
    with pytest.raises(AssertionError, match="encoder ran"):  # another length is another key
        encode.encode_prompts_flux(flux_text, PROMPTS, max_sequence_length=16, cache=cache)


def test_wan_cache_round_trip(wan_folder, tmp_path):
    from ffjax.data.embed_cache import EmbedCache

    enc = encode.load_wan_text(wan_folder[1])
    cache = EmbedCache(tmp_path / "cache")
    a = encode.encode_prompts_wan(enc, ["a cat", "a dog"], max_sequence_length=16, cache=cache)
    b = encode.encode_prompts_wan(
        enc, ["a  cat"], max_sequence_length=16, cache=cache
    )  # same once cleaned
    np.testing.assert_array_equal(np.asarray(b)[0], np.asarray(a)[0])
    entries = [f for _, _, files in os.walk(tmp_path / "cache") for f in files]
    assert len(entries) == 2 and all(f.endswith(".emb") for f in entries)
