"""WanVAE encode / decode parity with Diffusers' AutoencoderKLWan (float32, videos), and
the chunked (lax.scan) encode / decode not growing memory with the frame count."""

import jax
import numpy as np
import pytest
import torch

from ffjax.models import load_pretrained
from ffjax.models.wan import _jitted_vae, call_like_diffusers
from tests.models.flux.tiny import rel_err
from tests.models.wan.tiny_vae import save_tiny_vaes

# (config, batch, H, W): non-square, latent width 3 (odd); frames 1, 5, 9 each.
SIZES = {"wan21": (2, 16, 24), "wan22": (1, 32, 48)}
CASES = [(n, t) for n in SIZES for t in (1, 5, 9)]


@pytest.fixture(scope="module")
def tiny_vaes(tmp_path_factory):
    """{name: (torch model, saved folder, ffjax module, params)}."""
    out = {}
    for name, (model, path) in save_tiny_vaes(tmp_path_factory).items():
        out[name] = (model, path, *load_pretrained("wan", "vae", path))
    return out


def _video(name, frames, seed=0):
    b, h, w = SIZES[name]
    return torch.rand(b, 3, frames, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _latents(model, name, frames, seed=1):
    b, h, w = SIZES[name]
    f = model.config.scale_factor_spatial
    shape = (b, model.config.z_dim, 1 + (frames - 1) // 4, h // f, w // f)
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name,frames", CASES)
def test_vae_encode_parity(tiny_vaes, name, frames):
    model, _, module, params = tiny_vaes[name]
    x = _video(name, frames)
    with torch.no_grad():
        ref = model.encode(x).latent_dist.mean.numpy()
    out = call_like_diffusers("vae_encode", module, params, x=x.numpy())
    assert out.shape == ref.shape and ref.shape[2] == 1 + (frames - 1) // 4
    err = rel_err(out, ref)
    print(f"encode {name} T={frames}: max rel err {err:.2e}")
    assert err < 1e-5


@pytest.mark.parametrize("name,frames", CASES)
def test_vae_decode_parity(tiny_vaes, name, frames):
    model, _, module, params = tiny_vaes[name]
    z = _latents(model, name, frames)
    with torch.no_grad():
        ref = model.decode(z).sample.numpy()
    out = call_like_diffusers("vae_decode", module, params, z=z.numpy())
    b, h, w = SIZES[name]
    assert out.shape == ref.shape == (b, 3, frames, h, w)
    assert out.min() >= -1.0 and out.max() <= 1.0
    err = rel_err(out, ref)
    print(f"decode {name} T={frames}: max rel err {err:.2e}")
    assert err < 1e-5


@pytest.mark.slow
def test_memory_does_not_grow_with_frames(tiny_vaes):
    """Encode / decode 9 and 33 frames (3 and 9 latent frames) of the tiny Wan 2.1 VAE.

    Chunks run in a lax.scan that carries only the frame cache (the last 1-2 frames of
    every temporal conv's input) and writes into the output, so XLA's scratch memory
    (`temp_size_in_bytes`) is one chunk's activations whatever the length; holding all
    frames' activations would grow it ~3.7x with the frames. Bound: the 33-frame temp
    is within 10% of the 9-frame one (measured: +0.2% encode, +0.1% decode). The
    33-frame outputs also match Diffusers.
    """
    model, _, module, params = tiny_vaes["wan21"]
    temps = {}
    for frames in (9, 33):
        x = _video("wan21", frames, seed=frames).numpy().transpose(0, 2, 3, 4, 1)
        z = _latents(model, "wan21", frames, seed=frames).numpy().transpose(0, 2, 3, 4, 1)
        enc = _jitted_vae(module, "encode").lower(params, x).compile()
        dec = _jitted_vae(module, "decode").lower(params, z).compile()
        temps[frames] = (enc.memory_analysis().temp_size_in_bytes,
                         dec.memory_analysis().temp_size_in_bytes)  # fmt: skip
        if frames == 33:  # (9 frames: the parity tests above)
            with torch.no_grad():
                ref_mean = model.encode(
                    torch.from_numpy(x.transpose(0, 4, 1, 2, 3))
                ).latent_dist.mean
                ref_video = model.decode(torch.from_numpy(z.transpose(0, 4, 1, 2, 3))).sample
            mean = np.asarray(enc(params, x)[0]).transpose(0, 4, 1, 2, 3)
            video = np.asarray(dec(params, z)).transpose(0, 4, 1, 2, 3)
            errs = rel_err(mean, ref_mean.numpy()), rel_err(video, ref_video.numpy())
            print(f"33 frames: encode / decode max rel err {errs[0]:.2e} / {errs[1]:.2e}")
            assert max(errs) < 1e-5
    print(f"temp bytes (encode, decode): 9 frames {temps[9]}, 33 frames {temps[33]}")
    for small, large in zip(temps[9], temps[33], strict=True):
        assert large <= 1.1 * small, temps


def test_bad_inputs_are_refused(tiny_vaes):
    _, _, module, params = tiny_vaes["wan21"]
    with pytest.raises(ValueError, match=r"T=4 frames; expected 1 \+ 4k"):
        call_like_diffusers("vae_encode", module, params, x=np.zeros((1, 3, 4, 16, 16), np.float32))
    with pytest.raises(ValueError, match=r"frame size 16x20 .* spatial factor 8"):
        call_like_diffusers("vae_encode", module, params, x=np.zeros((1, 3, 1, 16, 20), np.float32))
    with pytest.raises(ValueError, match=r"\(batch, channels, frames, height, width\)"):
        call_like_diffusers("vae_encode", module, params, x=np.zeros((3, 1, 16, 16), np.float32))
    with pytest.raises(ValueError, match="z has 5 channels; expected z_dim=4"):
        call_like_diffusers("vae_decode", module, params, z=np.zeros((1, 5, 1, 2, 2), np.float32))
    with pytest.raises(TypeError, match="takes only z="):
        call_like_diffusers("vae_decode", module, params, sample=np.zeros((1, 4, 1, 2, 2)))
    # Wan 2.2 compresses 16x (2x2 patches, then 8x).
    _, _, module, params = tiny_vaes["wan22"]
    with pytest.raises(ValueError, match=r"frame size 24x32 .* spatial factor 16"):
        module.apply({"params": params}, np.zeros((1, 1, 24, 32, 3), np.float32), method="encode")
    with pytest.raises(ValueError, match=r"frame size 32x40 .* spatial factor 16"):
        module.apply({"params": params}, np.zeros((1, 1, 32, 40, 3), np.float32), method="encode")


def test_latent_normalisation_matches_the_pipelines(tiny_vaes):
    from ffjax.models.wan.config import WanVAEConfig
    from ffjax.models.wan.vae import from_transformer_space, to_transformer_space

    for name in SIZES:
        model, path, _, _ = tiny_vaes[name]
        cfg = WanVAEConfig.from_diffusers(path)
        zd = cfg.z_dim
        x = np.random.default_rng(0).normal(size=(2, 3, 5, 4, zd)).astype(np.float32)
        xt = torch.from_numpy(x.transpose(0, 4, 1, 2, 3))
        mean = torch.tensor(model.config.latents_mean).view(1, zd, 1, 1, 1)
        inv_std = 1.0 / torch.tensor(model.config.latents_std).view(1, zd, 1, 1, 1)
        # WanPipeline decodes with latents / latents_std + latents_mean, latents_std = 1 / std;
        # WanImageToVideoPipeline encodes its condition as (z - mean) * latents_std.
        dec = (xt / inv_std + mean).numpy().transpose(0, 2, 3, 4, 1)
        enc = ((xt - mean) * inv_std).numpy().transpose(0, 2, 3, 4, 1)
        # (Equal to float32 rounding: XLA may fuse the division differently.)
        np.testing.assert_allclose(
            np.asarray(from_transformer_space(x, cfg)), dec, rtol=3e-7, atol=1e-7
        )
        np.testing.assert_allclose(
            np.asarray(to_transformer_space(x, cfg)), enc, rtol=3e-7, atol=1e-7
        )
        back = to_transformer_space(from_transformer_space(x, cfg), cfg)
        np.testing.assert_allclose(np.asarray(back), x, rtol=1e-5, atol=1e-6)


def test_vae_params_carry_logical_axes(tiny_vaes):
    from flax import linen as nn

    from ffjax.models.wan.config import WanVAEConfig
    from ffjax.models.wan.vae import init_shapes

    _, abstract = init_shapes(WanVAEConfig.from_diffusers(tiny_vaes["wan22"][1]))
    specs = nn.get_partition_spec(abstract)
    conv1 = specs["encoder"]["down_blocks_1"]["resnets_0"]["conv1"]["kernel"]
    assert tuple(conv1) == (None, None, None, "conv_in", "conv_out")
    qkv = specs["decoder"]["mid_block"]["attentions_0"]["to_qkv"]["kernel"]
    assert tuple(qkv)[2:] == ("conv_in", "conv_out")
    # Abstract shapes equal the loaded params' (the loader checks every tensor against them).
    loaded = tiny_vaes["wan22"][3]
    assert jax.tree.map(lambda a: a.shape, nn.unbox(abstract)) == jax.tree.map(
        lambda a: a.shape, loaded
    )
