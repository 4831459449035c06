"""The `flux1` adapter: packing, ids, size checks, registry, decode to uint8."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import FluxPipeline

from ffjax.models.flux import Flux1Adapter, FluxTransformer, FluxTransformerConfig, FluxVAEConfig
from ffjax.models.flux.adapter import pack_latents, unpack_latents
from ffjax.registry import MODELS


def _adapter(**cfg):
    return Flux1Adapter(FluxTransformer(FluxTransformerConfig(**cfg)), vae_config=FluxVAEConfig())


def test_registered_as_flux1():
    assert MODELS.get("flux1") is Flux1Adapter


def test_pack_matches_diffusers_and_round_trips():
    z = torch.randn(2, 16, 6, 4)  # NCHW, non-square
    ref = FluxPipeline._pack_latents(z, 2, 16, 6, 4).numpy()
    packed = pack_latents(jnp.asarray(z.numpy().transpose(0, 2, 3, 1)))
    np.testing.assert_array_equal(packed, ref)
    np.testing.assert_array_equal(unpack_latents(packed, 6, 4), z.numpy().transpose(0, 2, 3, 1))
    back = FluxPipeline._unpack_latents(torch.from_numpy(np.array(packed)), 48, 32, 8).numpy()
    np.testing.assert_array_equal(back, z.numpy())


def test_image_ids_match_pipeline():
    a = _adapter()
    ref = FluxPipeline._prepare_latent_image_ids(
        1, 48 // 16, 80 // 16, "cpu", torch.float32
    ).numpy()
    np.testing.assert_array_equal(a.image_ids(48, 80), ref)
    assert a.latent_shape(3, 48, 80) == (3, 15, 64)


@pytest.mark.parametrize("h,w", [(40, 64), (64, 24), (0, 16), (17, 32)])
def test_size_not_divisible_by_16_is_a_clear_error(h, w):
    with pytest.raises(ValueError, match="multiples of 16"):
        _adapter().latent_shape(1, h, w)


def test_velocity_and_decode_shapes(tiny_transformers, tiny_vaes):
    from ffjax.models import load_pretrained

    # The "guided" tiny transformer takes 16 packed channels: 4 latent channels, like the
    # "quant" tiny VAE (downsampling factor 2, so sizes are multiples of 4).
    transformer, tp = load_pretrained("flux", "transformer", tiny_transformers["guided"][1])
    vae, vp = load_pretrained("flux", "vae", tiny_vaes["quant"][1])
    a = Flux1Adapter(transformer, vae, vae.config, guidance_scale=2.0)
    x = a.init_noise(jax.random.key(0), 2, 12, 8)
    cond = a.make_cond(np.ones((2, 3, 24), np.float32), np.ones((2, 20), np.float32), 12, 8)
    assert cond.guidance.tolist() == [2.0, 2.0]
    v = jax.jit(a.velocity)({"params": tp}, x, jnp.array([1.0, 0.5]), cond)
    assert v.shape == x.shape and v.dtype == jnp.float32
    img = jax.jit(a.decode, static_argnums=(2, 3))(vp, x, 12, 8)
    assert img.shape == (2, 12, 8, 3) and img.dtype == jnp.uint8
    with pytest.raises(ValueError, match="multiples of 4"):
        a.latent_shape(1, 10, 8)
