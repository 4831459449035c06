"""QwenImageVAE encode / decode parity with Diffusers' AutoencoderKLQwenImage (float32, images)."""

import numpy as np
import pytest
import torch

from ffjax.models import load_pretrained
from ffjax.models.qwen_image import call_like_diffusers
from tests.models.flux.tiny import rel_err

# (config, batch, image H, W): non-square, and sizes the stride-2 convs must pad.
CASES = [("small", 2, 12, 20), ("small", 1, 9, 14), ("qwen", 2, 16, 24)]


@pytest.mark.parametrize("name,b,h,w", CASES)
def test_vae_encode_parity(tiny_vaes, name, b, h, w):
    model, path = tiny_vaes[name]
    module, params = load_pretrained("qwen_image", "vae", path)
    x = torch.rand(b, 3, 1, h, w, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        ref = model.encode(x).latent_dist.mean.numpy()
    out = call_like_diffusers("vae_encode", module, params, x=x.numpy())
    assert out.shape == ref.shape
    err = rel_err(out, ref)
    print(f"encode {name} {b}x{h}x{w}: max rel err {err:.2e}")
    assert err < 1e-5


@pytest.mark.parametrize("name,b,h,w", CASES)
def test_vae_decode_parity(tiny_vaes, name, b, h, w):
    model, path = tiny_vaes[name]
    module, params = load_pretrained("qwen_image", "vae", path)
    f = 2 ** len(model.config.temperal_downsample)
    shape = (b, model.config.z_dim, 1, -(-h // f), -(-w // f))
    z = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model.decode(z).sample.numpy()
    out = call_like_diffusers("vae_decode", module, params, z=z.numpy())
    assert out.shape == ref.shape == (b, 3, 1, shape[3] * f, shape[4] * f)
    err = rel_err(out, ref)
    print(f"decode {name} {b}x{shape[3]}x{shape[4]}: max rel err {err:.2e}")
    assert err < 1e-5


def test_video_input_is_refused(tiny_vaes):
    module, params = load_pretrained("qwen_image", "vae", tiny_vaes["small"][1])
    with pytest.raises(
        ValueError, match=r"\(batch, channels, 1, height, width\).*\(1, 3, 2, 8, 8\)"
    ):
        call_like_diffusers("vae_encode", module, params, x=np.zeros((1, 3, 2, 8, 8), np.float32))
    with pytest.raises(TypeError, match="takes only z="):
        call_like_diffusers("vae_decode", module, params, sample=np.zeros((1, 4, 1, 2, 2)))


def test_latent_normalisation_matches_the_pipeline(tiny_vaes):
    from ffjax.models.qwen_image.config import QwenImageVAEConfig
    from ffjax.models.qwen_image.vae import from_transformer_space, to_transformer_space

    model, path = tiny_vaes["small"]
    cfg = QwenImageVAEConfig.from_diffusers(path)
    x = np.random.default_rng(0).normal(size=(2, 3, 5, 4)).astype(np.float32)
    # QwenImagePipeline decodes with latents / (1 / std) + mean (per channel).
    mean = torch.tensor(model.config.latents_mean).view(1, 4, 1, 1)
    inv_std = 1.0 / torch.tensor(model.config.latents_std).view(1, 4, 1, 1)
    ref = (torch.from_numpy(x.transpose(0, 3, 1, 2)) / inv_std + mean).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(
        np.asarray(from_transformer_space(x, cfg)), ref, rtol=3e-7, atol=1e-7
    )
    back = to_transformer_space(from_transformer_space(x, cfg), cfg)
    np.testing.assert_allclose(np.asarray(back), x, rtol=1e-5, atol=1e-6)


def test_vae_params_carry_logical_axes(tiny_vaes):
    from flax import linen as nn

    from ffjax.models.qwen_image.config import QwenImageVAEConfig
    from ffjax.models.qwen_image.vae import init_shapes

    _, abstract = init_shapes(QwenImageVAEConfig.from_diffusers(tiny_vaes["qwen"][1]))
    specs = nn.get_partition_spec(abstract)
    conv1 = specs["encoder"]["down_blocks_0"]["conv1"]["kernel"]
    assert tuple(conv1) == (None, None, None, "conv_in", "conv_out")
    assert tuple(specs["decoder"]["mid_block"]["attentions_0"]["to_qkv"]["kernel"])[2:] == (
        "conv_in",
        "conv_out",
    )
