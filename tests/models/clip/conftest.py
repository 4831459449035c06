"""Tiny random CLIPModels, built once per session and saved with `save_pretrained`."""

import pytest

from tests.models.clip.tiny import CLIP_MODEL_CONFIGS, build_clip


@pytest.fixture(scope="session")
def tiny_clips(tmp_path_factory):
    """{name: (torch CLIPModel, saved folder)} for every CLIP_MODEL_CONFIGS entry."""
    out = {}
    for i, name in enumerate(CLIP_MODEL_CONFIGS):
        model = build_clip(name, seed=40 + i)
        path = tmp_path_factory.mktemp(f"clip_{name}")
        model.save_pretrained(path)
        out[name] = (model, path)
    return out
