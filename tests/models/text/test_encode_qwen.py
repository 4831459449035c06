"""`encode_prompts_qwen_image` against `QwenImagePipeline.encode_prompt` on a tiny pipeline folder."""

import json
import logging
import shutil

import numpy as np
import pytest

from ffjax.models.text import encode
from tests.models.text.tiny import qwen_image_pipeline

LONG = " ".join(["a photo of a cat sitting on a red mat in the park at sunset"] * 12)
PROMPTS = ["a cat", "an astronaut riding a horse on the moon", LONG, ""]


@pytest.fixture(scope="module")
def qwen_folder(tmp_path_factory):
    """(QwenImagePipeline loaded back from its folder, the folder)."""
    from diffusers import QwenImagePipeline

    path = tmp_path_factory.mktemp("qwen_image_text") / "pipe"
    qwen_image_pipeline(path)
    return QwenImagePipeline.from_pretrained(path), path


@pytest.fixture(scope="module")
def qwen_text(qwen_folder):
    return encode.load_qwen_image_text(qwen_folder[1])


def _rows(enc, prompts):
    """Each prompt's token count after the template's dropped prefix (no truncation)."""
    ids = enc.tokenizer([encode.QWEN_IMAGE_TEMPLATE.format(p) for p in prompts])["input_ids"]
    return [len(x) - encode.QWEN_IMAGE_DROP_IDX for x in ids]


def _check(ours, theirs, n_mask=None):
    """Embeddings to rtol 1e-4 of the largest value; masks equal (a None mask = all ones)."""
    (emb, mask), (t_emb, t_mask) = ours, theirs
    t_emb = t_emb.detach().numpy()
    emb, mask = np.asarray(emb), np.asarray(mask)
    assert emb.shape == t_emb.shape and emb.dtype == t_emb.dtype, (emb.shape, t_emb.shape)
    assert np.abs(emb - t_emb).max() <= 1e-4 * np.abs(t_emb).max()
    t_mask = np.ones(mask.shape, np.int64) if t_mask is None else t_mask.numpy()
    np.testing.assert_array_equal(mask, t_mask if n_mask is None else n_mask)
    assert mask.dtype == np.int32
    assert np.all(emb[mask == 0] == 0)  # zero rows wherever the mask is 0


@pytest.mark.parametrize("cut", ["none", "long_only", "all"])
def test_qwen_image_encode_prompt_parity(qwen_folder, qwen_text, cut, caplog):
    pipe, _ = qwen_folder
    rows = _rows(qwen_text, PROMPTS)
    # "long_only": LONG is cut, the others are not; "all": every row is cut, so Diffusers
    # returns mask None (all positions valid).
    max_len = {"none": 1024, "long_only": sorted(rows)[-2] + 3, "all": min(rows) - 1}[cut]
    with caplog.at_level(logging.WARNING):
        ours = encode.encode_prompts_qwen_image(qwen_text, PROMPTS, max_sequence_length=max_len)
    theirs = pipe.encode_prompt(PROMPTS, max_sequence_length=max_len)
    _check(ours, theirs)
    assert (theirs[1] is None) == (cut == "all")
    warned = [r.getMessage() for r in caplog.records if "truncated" in r.getMessage()]
    assert bool(warned) == (cut != "none"), warned
    if cut == "long_only":
        assert "1 of 4 prompts" in warned[0] and f"max_sequence_length={max_len}" in warned[0]


def test_qwen_image_num_images_per_prompt(qwen_folder, qwen_text):
    pipe, _ = qwen_folder
    ours = encode.encode_prompts_qwen_image(
        qwen_text, PROMPTS[:3], max_sequence_length=64, num_images_per_prompt=2
    )
    theirs = pipe.encode_prompt(PROMPTS[:3], max_sequence_length=64, num_images_per_prompt=2)
    # Diffusers 0.42 interleaves the embeddings (p0, p0, p1, ...) but tiles the mask
    # (p0, p1, p2, p0, ...); ours keeps each mask row with its embeddings.
    _, one = pipe.encode_prompt(PROMPTS[:3], max_sequence_length=64)
    _check(ours, theirs, n_mask=np.repeat(one.numpy(), 2, axis=0))


def test_qwen_image_tokenizer_truncation(qwen_folder, qwen_text, caplog):
    """A prompt past 1024 + drop_idx tokens is cut by the tokenizer (template end included)."""
    pipe, _ = qwen_folder
    prompts = ["a cat", LONG * 3]
    assert _rows(qwen_text, prompts)[1] > 1024
    with caplog.at_level(logging.WARNING):
        ours = encode.encode_prompts_qwen_image(qwen_text, prompts)
    _check(ours, pipe.encode_prompt(prompts))
    assert np.asarray(ours[0]).shape[1] == 1024
    assert any("by the tokenizer to 1058 tokens" in r.getMessage() for r in caplog.records)


def test_qwen_image_left_padding(qwen_folder, tmp_path):
    """A tokenizer that pads on the left: positions stay arange(L), as transformers has them."""
    from diffusers import QwenImagePipeline

    folder = tmp_path / "pipe"
    shutil.copytree(qwen_folder[1], folder)
    cfg_path = folder / "tokenizer" / "tokenizer_config.json"
    cfg_path.write_text(json.dumps({**json.loads(cfg_path.read_text()), "padding_side": "left"}))
    pipe = QwenImagePipeline.from_pretrained(folder)
    enc = encode.load_qwen_image_text(folder)
    assert pipe.tokenizer.padding_side == enc.tokenizer.padding_side == "left"
    ours = encode.encode_prompts_qwen_image(enc, PROMPTS[:3], max_sequence_length=128)
    _check(ours, pipe.encode_prompt(PROMPTS[:3], max_sequence_length=128))


def test_qwen_image_cache(qwen_text, tmp_path, monkeypatch):
    from ffjax.data.embed_cache import EmbedCache

    cache = EmbedCache(tmp_path / "cache")
    plain = encode.encode_prompts_qwen_image(qwen_text, PROMPTS, max_sequence_length=64)
    miss = encode.encode_prompts_qwen_image(qwen_text, PROMPTS, max_sequence_length=64, cache=cache)

    def fail(*_, **__):
        raise AssertionError("the encoder ran on a cache hit")

    monkeypatch.setattr(encode.TextEncoder, "__call__", fail)
    hit = encode.encode_prompts_qwen_image(qwen_text, PROMPTS, max_sequence_length=64, cache=cache)
    for p, a, b in zip(plain, miss, hit, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(p))
        np.testing.assert_array_equal(np.asarray(b), np.asarray(a))
    # One entry per prompt serves every max_sequence_length and any batch order.
    short = encode.encode_prompts_qwen_image(
        qwen_text, PROMPTS[1::-1], max_sequence_length=8, num_images_per_prompt=2, cache=cache
    )
    np.testing.assert_array_equal(np.asarray(short[0])[::2], np.asarray(miss[0])[1::-1, :8])
    with pytest.raises(AssertionError, match="encoder ran"):  # the template is in the key
        encode.encode_prompts_qwen_image(
            qwen_text, PROMPTS[:1], template="<|im_start|>user\n{}<|im_end|>\n", cache=cache
        )


def test_qwen_image_missing_tokenizer_folder(qwen_folder, tmp_path):
    folder = tmp_path / "pipe"
    shutil.copytree(qwen_folder[1], folder)
    shutil.rmtree(folder / "tokenizer")
    with pytest.raises(FileNotFoundError, match="no tokenizer folder 'tokenizer'"):
        encode.load_qwen_image_text(folder)


def test_qwen_image_bad_arguments(qwen_text):
    with pytest.raises(ValueError, match="cannot be greater than 1024"):
        encode.encode_prompts_qwen_image(qwen_text, ["a cat"], max_sequence_length=1025)
    with pytest.raises(TypeError, match="not a string"):
        encode.encode_prompts_qwen_image(qwen_text, "a cat")


def test_qwen_image_constants_match_the_pipeline(qwen_folder):
    pipe, _ = qwen_folder
    assert encode.QWEN_IMAGE_TEMPLATE == pipe.prompt_template_encode
    assert encode.QWEN_IMAGE_DROP_IDX == pipe.prompt_template_encode_start_idx
    assert encode.QWEN_IMAGE_TOKENIZER_MAX_LENGTH == pipe.tokenizer_max_length
