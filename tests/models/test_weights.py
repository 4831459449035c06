"""The shared checkpoint machinery: safetensors I/O (no torch) and strict key tables."""

import json

import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy
import torch
from safetensors.torch import save_file as torch_save_file

from ffjax.models import weights as W


def test_reader_matches_safetensors_package(tmp_path):
    arrays = {"a": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.array([1, -2], np.int64),
              "c": np.ones((2, 1, 3), np.float16)}  # fmt: skip
    safetensors.numpy.save_file(arrays, tmp_path / "x.safetensors")
    f = W.SafetensorsFile(tmp_path / "x.safetensors")
    assert sorted(f.keys()) == ["a", "b", "c"]
    for k, a in arrays.items():
        assert f.shape(k) == a.shape
        np.testing.assert_array_equal(f.read(k), a)
        assert f.read(k).dtype == a.dtype


def test_bf16_read_bit_exact_without_torch(tmp_path):
    t = torch.randn(5, 7).to(torch.bfloat16)
    torch_save_file({"w": t}, tmp_path / "bf16.safetensors")
    a = W.SafetensorsFile(tmp_path / "bf16.safetensors").read("w")
    assert a.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(a.view(np.uint16), t.view(torch.int16).numpy().view(np.uint16))


def test_writer_is_read_by_safetensors_package(tmp_path):
    arrays = {
        "x": np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32),
        "y": np.zeros(5, np.uint8),
    }
    W.save_safetensors(tmp_path / "w.safetensors", arrays, metadata={"format": "pt"})
    back = safetensors.numpy.load_file(tmp_path / "w.safetensors")
    for k in arrays:
        np.testing.assert_array_equal(back[k], arrays[k])


def test_sharded_index(tmp_path):
    arrays = {f"t{i}": np.full((10,), i, np.float32) for i in range(5)}
    W.save_sharded(tmp_path, arrays, "model", max_shard_bytes=80)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    ckpt = W.SafetensorsCheckpoint.open(tmp_path, prefix="model")
    assert sorted(ckpt.keys()) == sorted(arrays)
    for k, a in arrays.items():
        np.testing.assert_array_equal(ckpt.read(k), a)


def test_truncated_file_is_a_clear_error(tmp_path):
    W.save_safetensors(tmp_path / "t.safetensors", {"w": np.ones((64, 64), np.float32)})
    data = (tmp_path / "t.safetensors").read_bytes()
    (tmp_path / "t.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(W.CheckpointFormatError, match="truncated safetensors file.*'w'"):
        W.SafetensorsFile(tmp_path / "t.safetensors")
    (tmp_path / "t.safetensors").write_bytes(data[:5])
    with pytest.raises(W.CheckpointFormatError, match="truncated"):
        W.SafetensorsFile(tmp_path / "t.safetensors")


# A two-row table: a Linear stacked over 2 layers, and a plain norm weight.
RULES = [*W.dense("blocks/fc", "layers.{i}.fc", layers=2), *W.norm("ln", "ln", bias=False)]
EXPECTED = {"blocks/fc/kernel": (2, 3, 4), "blocks/fc/bias": (2, 4), "ln/scale": (3,)}


def _state():
    rng = np.random.default_rng(0)
    s = {f"layers.{i}.fc.weight": rng.normal(size=(4, 3)).astype(np.float32) for i in range(2)}
    s |= {f"layers.{i}.fc.bias": rng.normal(size=(4,)).astype(np.float32) for i in range(2)}
    return s | {"ln.weight": rng.normal(size=(3,)).astype(np.float32)}


def test_table_stacks_transposes_and_round_trips():
    state = _state()
    params = W.load_params(RULES, W.ArraySource(state), EXPECTED, dtype=None)
    np.testing.assert_array_equal(
        params["blocks"]["fc"]["kernel"][1], state["layers.1.fc.weight"].T
    )
    back = W.export_params(RULES, params)
    assert sorted(back) == sorted(state)
    for k in state:
        assert back[k].tobytes() == state[k].tobytes()


def test_missing_tensor_names_key_and_shape():
    state = _state()
    del state["layers.1.fc.bias"]
    with pytest.raises(
        W.ConversionError, match=r"missing tensor 'layers.1.fc.bias' \(expected shape \(4,\)\)"
    ):
        W.load_params(RULES, W.ArraySource(state), EXPECTED)


def test_unexpected_tensor_names_key_and_shape():
    state = _state() | {"extra.weight": np.zeros((2, 2), np.float32)}
    with pytest.raises(
        W.ConversionError, match=r"unexpected tensor 'extra.weight' with shape \(2, 2\)"
    ):
        W.load_params(RULES, W.ArraySource(state), EXPECTED)


def test_misshaped_tensor_names_key_and_both_shapes():
    state = _state() | {"layers.0.fc.weight": np.zeros((4, 5), np.float32)}
    with pytest.raises(
        W.ConversionError, match=r"'layers.0.fc.weight' has shape \(4, 5\), expected \(4, 3\)"
    ):
        W.load_params(RULES, W.ArraySource(state), EXPECTED)


def test_table_that_misses_a_param_is_reported():
    with pytest.raises(W.ConversionError, match="params without a rule.*extra/kernel"):
        W.load_params(RULES, W.ArraySource(_state()), EXPECTED | {"extra/kernel": (1, 1)})
