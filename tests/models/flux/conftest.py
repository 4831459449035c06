"""Tiny random Diffusers FLUX.1 models, built once per session and saved to tmp dirs."""

import pytest

from tests.models.flux.tiny import TRANSFORMER_CONFIGS, VAE_CONFIGS, save_tiny_models


@pytest.fixture(scope="session")
def tiny_transformers(tmp_path_factory):
    """{name: (torch model, saved folder)} for TRANSFORMER_CONFIGS."""
    from diffusers import FluxTransformer2DModel

    return save_tiny_models(
        FluxTransformer2DModel, TRANSFORMER_CONFIGS, tmp_path_factory, "transformer", 0, 100
    )


@pytest.fixture(scope="session")
def tiny_vaes(tmp_path_factory):
    """{name: (torch model, saved folder)} for VAE_CONFIGS."""
    from diffusers import AutoencoderKL

    return save_tiny_models(AutoencoderKL, VAE_CONFIGS, tmp_path_factory, "vae", 10, 200)
