"""Tiny random text encoders, built once per session and saved to tmp dirs."""

import pytest

from tests.models.text.tiny import CLIP_CONFIGS, T5_CONFIGS, build


@pytest.fixture(scope="session")
def tiny_encoders(tmp_path_factory):
    """{name: (torch model, saved folder)} for every CLIP_CONFIGS and T5_CONFIGS entry."""
    out = {}
    for i, (name, (cls, cfg)) in enumerate({**CLIP_CONFIGS, **T5_CONFIGS}.items()):
        model = build(cls, cfg, seed=i)
        path = tmp_path_factory.mktemp(f"text_{name}")
        model.save_pretrained(path)
        out[name] = (model, path)
    return out
