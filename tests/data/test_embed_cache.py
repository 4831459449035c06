"""The on-disk prompt-embedding cache: hits, misses, corruption, keys, atomic writes."""

import logging
import os
import threading

import ml_dtypes
import numpy as np
import pytest

from ffjax.data.embed_cache import (
    EmbedCache,
    cache_key,
    cached_encode,
    tokenizer_fingerprint,
    weights_fingerprint,
)
from ffjax.models import weights as W

PARTS = {"encoders": [["t5", "abc", "def", "float32"]], "max_length": 8, "template": None}


class CountingEncoder:
    """A deterministic fake encoder: each prompt -> arrays derived from its characters."""

    def __init__(self):
        self.calls: list[list[str]] = []

    def __call__(self, prompts):
        self.calls.append(list(prompts))
        codes = np.array([[ord(c) for c in p.ljust(8)[:8]] for p in prompts], np.float32)
        return {
            "embeds": codes[:, :, None] * np.ones(3, np.float32),
            "pooled": codes.astype(ml_dtypes.bfloat16),
        }


def test_miss_then_hit_identical_without_encoder(tmp_path):
    cache, enc = EmbedCache(tmp_path), CountingEncoder()
    first = cached_encode(cache, ["a cat", "a dog"], enc, PARTS)
    assert enc.calls == [["a cat", "a dog"]]

    def fail(_):
        raise AssertionError("encoder called on a full hit")

    second = cached_encode(cache, ["a cat", "a dog"], fail, PARTS)
    assert set(second) == {"embeds", "pooled"}
    for k in first:
        assert second[k].dtype == first[k].dtype and second[k].shape == first[k].shape
        np.testing.assert_array_equal(second[k], first[k])
    assert second["pooled"].dtype == ml_dtypes.bfloat16


def test_partial_hit_encodes_only_missing_once(tmp_path):
    cache, enc = EmbedCache(tmp_path), CountingEncoder()
    cached_encode(cache, ["a cat"], enc, PARTS)
    out = cached_encode(cache, ["a dog", "a cat", "a dog"], enc, PARTS)
    assert enc.calls == [["a cat"], ["a dog"]]
    np.testing.assert_array_equal(
        out["embeds"], CountingEncoder()(["a dog", "a cat", "a dog"])["embeds"]
    )


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage"])
def test_corrupted_entry_is_detected_and_rebuilt(tmp_path, caplog, damage):
    cache, enc = EmbedCache(tmp_path), CountingEncoder()
    want = cached_encode(cache, ["a cat", "a dog"], enc, PARTS)
    path = cache.path(cache_key(item="a dog", **PARTS))
    blob = open(path, "rb").read()
    blob = {
        "flip": blob[:-5] + bytes([blob[-5] ^ 0xFF]) + blob[-4:],
        "truncate": blob[: len(blob) // 2],
        "garbage": b"not an entry",
    }[damage]
    open(path, "wb").write(blob)
    with caplog.at_level(logging.WARNING):
        got = cached_encode(cache, ["a cat", "a dog"], enc, PARTS)
    assert any("corrupted entry" in r.getMessage() for r in caplog.records)
    assert enc.calls[-1] == ["a dog"]  # only the damaged entry was re-encoded
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])
    assert cache.load(cache_key(item="a dog", **PARTS)) is not None  # rewritten whole


def test_key_depends_on_every_part():
    base = cache_key(item="a cat", **PARTS)
    assert base == cache_key(item="a cat", **dict(reversed(list(PARTS.items()))))
    assert base != cache_key(item="a cat ", **PARTS)
    assert base != cache_key(item="a cat", **{**PARTS, "max_length": 9})
    assert base != cache_key(item="a cat", **{**PARTS, "template": "<sys>{}"})
    assert base != cache_key(
        item="a cat", **{**PARTS, "encoders": [["t5", "abd", "def", "float32"]]}
    )


def test_concurrent_writers_leave_one_whole_file(tmp_path):
    cache = EmbedCache(tmp_path)
    arrays = {"x": np.arange(100_000, dtype=np.float32)}
    threads = [threading.Thread(target=cache.save, args=("k" * 64, arrays)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    np.testing.assert_array_equal(cache.load("k" * 64)["x"], arrays["x"])
    assert os.listdir(os.path.dirname(cache.path("k" * 64))) == ["k" * 64 + ".emb"]  # no temp files


def test_no_cache_always_encodes():
    enc = CountingEncoder()
    cached_encode(None, ["a"], enc, PARTS)
    cached_encode(None, ["a"], enc, PARTS)
    assert len(enc.calls) == 2


def test_fingerprints_follow_content(tmp_path):
    rng = np.random.RandomState(0)
    big = {"w": rng.randn(1 << 20).astype(np.float32)}  # 4 MiB: the sampled path
    W.save_safetensors(tmp_path / "model.safetensors", big)
    (tmp_path / "config.json").write_text('{"model_type": "t5"}')
    fp = weights_fingerprint(tmp_path)
    assert fp == weights_fingerprint(tmp_path) and len(fp) == 64
    big["w"][0] += 1.0  # the first data chunk is always sampled
    W.save_safetensors(tmp_path / "model.safetensors", big)
    assert weights_fingerprint(tmp_path) != fp
    assert weights_fingerprint(tmp_path, full=True) != weights_fingerprint(tmp_path)

    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "tokenizer.json").write_text("{}")
    a = tokenizer_fingerprint(tok)
    (tok / "tokenizer_config.json").write_text('{"model_max_length": 77}')
    assert tokenizer_fingerprint(tok) != a
