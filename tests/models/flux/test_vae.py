"""FluxVAE encode / decode parity with Diffusers' AutoencoderKL (float32, tiny configs)."""

import numpy as np
import pytest
import torch

from ffjax.models import load_pretrained
from ffjax.models.flux import call_like_diffusers
from tests.models.flux.tiny import rel_err

# (config, batch, image H, W): non-square images.
CASES = [("flux", 2, 16, 24), ("quant", 1, 12, 8)]


@pytest.mark.parametrize("name,b,h,w", CASES)
def test_vae_encode_parity(tiny_vaes, name, b, h, w):
    model, path = tiny_vaes[name]
    module, params = load_pretrained("flux", "vae", path)
    x = torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        ref = model.encode(x).latent_dist.mean.numpy()
    out = call_like_diffusers("vae_encode", module, params, sample=x.numpy())
    assert out.shape == ref.shape
    assert rel_err(out, ref) < 1e-5


@pytest.mark.parametrize("name,b,h,w", CASES)
def test_vae_decode_parity(tiny_vaes, name, b, h, w):
    model, path = tiny_vaes[name]
    module, params = load_pretrained("flux", "vae", path)
    f = 2 ** (len(model.config.block_out_channels) - 1)
    z = torch.randn(
        b, model.config.latent_channels, h // f, w // f, generator=torch.Generator().manual_seed(1)
    )
    with torch.no_grad():
        ref = model.decode(z).sample.numpy()
    out = call_like_diffusers("vae_decode", module, params, z=z.numpy())
    assert out.shape == ref.shape == (b, 3, h, w)
    assert rel_err(out, ref) < 1e-5


def test_scaling_matches_pipeline_convention(tiny_vaes):
    from ffjax.models.flux.config import FluxVAEConfig
    from ffjax.models.flux.vae import from_transformer_space, to_transformer_space

    cfg = FluxVAEConfig.from_diffusers(tiny_vaes["flux"][1])
    z = np.linspace(-2, 2, 7, dtype=np.float32)
    # FluxPipeline decodes with latents / scaling_factor + shift_factor.
    np.testing.assert_allclose(from_transformer_space(z, cfg), z / 0.3611 + 0.1159, rtol=1e-6)
    np.testing.assert_allclose(
        from_transformer_space(to_transformer_space(z, cfg), cfg), z, rtol=1e-5, atol=1e-6
    )
