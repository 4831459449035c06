"""Tiny random Diffusers Qwen-Image models, built once per session and saved to tmp dirs."""

import pytest

from tests.models.flux.tiny import save_tiny_models
from tests.models.qwen_image.tiny import TRANSFORMER_CONFIGS, VAE_CONFIGS


@pytest.fixture(scope="session")
def tiny_transformers(tmp_path_factory):
    """{name: (torch model, saved folder)} for TRANSFORMER_CONFIGS."""
    from diffusers import QwenImageTransformer2DModel

    return save_tiny_models(
        QwenImageTransformer2DModel, TRANSFORMER_CONFIGS, tmp_path_factory, "qwen_transformer",
        0, 300,
    )  # fmt: skip


@pytest.fixture(scope="session")
def tiny_vaes(tmp_path_factory):
    """{name: (torch model, saved folder)} for VAE_CONFIGS."""
    from diffusers import AutoencoderKLQwenImage

    return save_tiny_models(
        AutoencoderKLQwenImage, VAE_CONFIGS, tmp_path_factory, "qwen_vae", 20, 400
    )
