"""Tiny random Diffusers Qwen-Image models, built once per session and saved to tmp dirs."""

import pytest
import torch

from tests.models.flux.tiny import perturb
from tests.models.qwen_image.tiny import TRANSFORMER_CONFIGS, VAE_CONFIGS


@pytest.fixture(scope="session")
def tiny_transformers(tmp_path_factory):
    """{name: (torch model, saved folder)} for TRANSFORMER_CONFIGS."""
    from diffusers import QwenImageTransformer2DModel

    out = {}
    for i, (name, cfg) in enumerate(TRANSFORMER_CONFIGS.items()):
        torch.manual_seed(i)
        model = perturb(QwenImageTransformer2DModel(**cfg), seed=300 + i)
        path = tmp_path_factory.mktemp(f"qwen_transformer_{name}")
        model.save_pretrained(path)
        out[name] = (model, path)
    return out


@pytest.fixture(scope="session")
def tiny_vaes(tmp_path_factory):
    """{name: (torch model, saved folder)} for VAE_CONFIGS."""
    from diffusers import AutoencoderKLQwenImage

    out = {}
    for i, (name, cfg) in enumerate(VAE_CONFIGS.items()):
        torch.manual_seed(20 + i)
        model = perturb(AutoencoderKLQwenImage(**cfg), seed=400 + i)
        path = tmp_path_factory.mktemp(f"qwen_vae_{name}")
        model.save_pretrained(path)
        out[name] = (model, path)
    return out
