"""Tiny random Diffusers FLUX.1 models, built once per session and saved to tmp dirs."""

import pytest
import torch

from tests.models.flux.tiny import TRANSFORMER_CONFIGS, VAE_CONFIGS, perturb


@pytest.fixture(scope="session")
def tiny_transformers(tmp_path_factory):
    """{name: (torch model, saved folder)} for TRANSFORMER_CONFIGS."""
    from diffusers import FluxTransformer2DModel

    out = {}
    for i, (name, cfg) in enumerate(TRANSFORMER_CONFIGS.items()):
        torch.manual_seed(i)
        model = perturb(FluxTransformer2DModel(**cfg), seed=100 + i)
        path = tmp_path_factory.mktemp(f"transformer_{name}")
        model.save_pretrained(path)
        out[name] = (model, path)
    return out


@pytest.fixture(scope="session")
def tiny_vaes(tmp_path_factory):
    """{name: (torch model, saved folder)} for VAE_CONFIGS."""
    from diffusers import AutoencoderKL

    out = {}
    for i, (name, cfg) in enumerate(VAE_CONFIGS.items()):
        torch.manual_seed(10 + i)
        model = perturb(AutoencoderKL(**cfg), seed=200 + i)
        path = tmp_path_factory.mktemp(f"vae_{name}")
        model.save_pretrained(path)
        out[name] = (model, path)
    return out
