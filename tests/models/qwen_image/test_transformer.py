"""QwenImageTransformer parity with Diffusers' QwenImageTransformer2DModel (float32, tiny configs)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from ffjax.models import load_pretrained
from ffjax.models.qwen_image import call_like_diffusers, pack_latents, packed_grid, rope_ids
from tests.models.flux.tiny import rel_err

# (config, batch, images of one sample as (frames, rows, cols) token grids, text length,
# valid text tokens per sample (None: no mask), a hole in the mask (not only padding)).
CASES = [
    ("two_blocks", 2, [(1, 3, 5)], 7, [7, 4], False),  # non-square, padded text
    ("two_blocks", 3, [(1, 4, 4)], 6, [6, 2, 5], True),  # square, padding + a hole
    ("one_block", 1, [(1, 2, 3)], 5, None, False),  # no mask at all, odd sizes
    ("one_block", 2, [(1, 2, 3), (1, 3, 2)], 4, [3, 4], False),  # two images per sample
]
_IDS = ["nonsquare-padded", "square-hole", "nomask-odd", "two-images"]


def _inputs(model, b, images, lt, valid, hole, seed):
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    n_img = sum(f * h * w for f, h, w in images)
    kw = dict(
        hidden_states=torch.randn(b, n_img, cfg.in_channels, generator=g),
        encoder_hidden_states=torch.randn(b, lt, cfg.joint_attention_dim, generator=g),
        timestep=torch.rand(b, generator=g),
        img_shapes=[list(images)] * b,
    )
    if valid is not None:
        mask = (torch.arange(lt)[None] < torch.tensor(valid)[:, None]).long()
        if hole:
            mask[0, 1] = 0
        kw["encoder_hidden_states_mask"] = mask
    return kw


def _numpy(kw):
    return {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in kw.items()}


@pytest.mark.parametrize("name,b,images,lt,valid,hole", CASES, ids=_IDS)
def test_transformer_parity(tiny_transformers, name, b, images, lt, valid, hole):
    model, path = tiny_transformers[name]
    module, params = load_pretrained("qwen_image", "transformer", path)
    kw = _inputs(model, b, images, lt, valid, hole, seed=1)
    with torch.no_grad():
        ref = model(**kw).sample.numpy()
    out = call_like_diffusers("transformer", module, params, **_numpy(kw))
    assert out.shape == ref.shape
    err = rel_err(out, ref)
    print(f"{name} b={b} images={images} lt={lt}: max rel err {err:.2e}")
    assert err < 1e-5


def test_padding_is_ignored(tiny_transformers):
    """Masked text tokens do not change the image output, whatever their values."""
    model, path = tiny_transformers["two_blocks"]
    module, params = load_pretrained("qwen_image", "transformer", path)
    kw = _numpy(_inputs(model, 2, [(1, 2, 2)], 6, [6, 3], False, seed=2))
    out = call_like_diffusers("transformer", module, params, **kw)
    kw["encoder_hidden_states"] = kw["encoder_hidden_states"].copy()
    kw["encoder_hidden_states"][1, 3:] = 100.0
    out2 = call_like_diffusers("transformer", module, params, **kw)
    np.testing.assert_allclose(out2, out, rtol=0, atol=1e-6)


def test_rope_positions_are_centred():
    img, txt = rope_ids([[(1, 3, 4)]], 2)
    assert sorted(set(img[:, 1].tolist())) == [-2, -1, 0]  # rows r - ceil(3/2)
    assert sorted(set(img[:, 2].tolist())) == [-2, -1, 0, 1]  # cols c - 4/2
    np.testing.assert_array_equal(txt, [[2, 2, 2], [3, 3, 3]])  # after max(3//2, 4//2)


def test_bad_layouts_are_clear_errors(tiny_transformers):
    model, path = tiny_transformers["one_block"]
    module, params = load_pretrained("qwen_image", "transformer", path)
    kw = _numpy(_inputs(model, 2, [(1, 2, 3)], 4, None, False, seed=3))
    with pytest.raises(ValueError, match=r"describe 12 image tokens, hidden_states has 6"):
        call_like_diffusers(
            "transformer", module, params, **{**kw, "img_shapes": [[(1, 3, 4)]] * 2}
        )
    with pytest.raises(ValueError, match="img_shapes differ across the batch"):
        call_like_diffusers("transformer", module, params,
                            **{**kw, "img_shapes": [[(1, 2, 3)], [(1, 3, 2)]]})  # fmt: skip
    with pytest.raises(ValueError, match="guidance is not supported"):
        call_like_diffusers("transformer", module, params, **kw, guidance=np.ones(2))
    with pytest.raises(TypeError, match="unexpected .* arguments \\['pooled_projections'\\]"):
        call_like_diffusers("transformer", module, params, **kw, pooled_projections=np.ones(2))


@pytest.mark.parametrize("h,w", [(6, 8), (8, 5)])
def test_latents_not_divisible_by_the_packing_factor(h, w):
    if h % 2 or w % 2:
        with pytest.raises(
            ValueError, match=f"latent grid {h}x{w} is not divisible by the packing factor 2"
        ):
            pack_latents(jnp.zeros((1, h, w, 4)))
    else:
        assert pack_latents(jnp.zeros((1, h, w, 4))).shape == (1, h * w // 4, 16)
    with pytest.raises(ValueError, match="image size 100x64 is not divisible by 16"):
        packed_grid(100, 64)
    assert packed_grid(96, 64) == (6, 4)


def test_pack_matches_the_pipeline():
    from diffusers import QwenImagePipeline

    z = torch.randn(2, 4, 6, 8)
    ref = QwenImagePipeline._pack_latents(z, 2, 4, 6, 8).numpy()
    out = pack_latents(jnp.asarray(z.numpy().transpose(0, 2, 3, 1)))
    np.testing.assert_array_equal(np.asarray(out), ref)


def test_remat_policy_reaches_the_gradient(tiny_transformers):
    """remat none / full / save_dots: checkpointing shows up in the traced gradient."""
    from ffjax.models.qwen_image.convert import load_transformer

    model, path = tiny_transformers["one_block"]
    kw = _inputs(model, 1, [(1, 2, 2)], 3, [2], False, seed=4)
    img_ids, txt_ids = rope_ids(kw["img_shapes"], 3)
    args = [jnp.asarray(kw[k].numpy()) for k in ("hidden_states", "encoder_hidden_states")]
    args += [jnp.asarray(kw["encoder_hidden_states_mask"].numpy().astype(bool)),
             jnp.asarray(kw["timestep"].numpy()), jnp.asarray(img_ids), jnp.asarray(txt_ids)]  # fmt: skip
    for remat in ("none", "full", "save_dots"):
        module, params = load_transformer(path, remat=remat)
        loss = lambda p, m=module: jnp.mean(m.apply({"params": p}, *args) ** 2)
        jaxpr = str(jax.make_jaxpr(jax.grad(loss))(params))
        assert ("checkpoint" in jaxpr or "remat" in jaxpr) == (remat != "none"), remat


def test_params_carry_logical_axes(tiny_transformers):
    from flax import linen as nn

    from ffjax.models.qwen_image.config import QwenImageTransformerConfig
    from ffjax.models.qwen_image.transformer import init_shapes

    cfg = QwenImageTransformerConfig.from_diffusers(tiny_transformers["two_blocks"][1])
    _, abstract = init_shapes(cfg)
    specs = nn.get_partition_spec(abstract)
    blocks = specs["transformer_blocks"]
    assert tuple(blocks["attn"]["to_q"]["kernel"]) == ("layers", "embed", "heads")
    assert tuple(blocks["attn"]["to_add_out"]["kernel"]) == ("layers", "heads", "embed")
    assert tuple(blocks["img_mlp"]["proj_out"]["kernel"]) == ("layers", "mlp", "embed")
    assert tuple(specs["txt_norm"]["scale"]) == ("embed",)


@pytest.mark.gpu
def test_transformer_bf16_cudnn_close_to_float32(tiny_transformers):
    """On GPU: bf16 params/activations with cuDNN (masked) attention stay near float32."""
    from ffjax.models.qwen_image.convert import load_transformer

    model, path = tiny_transformers["two_blocks"]
    kw = _numpy(_inputs(model, 2, [(1, 4, 4)], 8, [8, 5], False, seed=5))
    m32, p32 = load_transformer(path, dtype="float32", attention="xla")
    m16, p16 = load_transformer(path, dtype="bfloat16", attention="cudnn")
    ref = call_like_diffusers("transformer", m32, p32, **kw)
    out = call_like_diffusers("transformer", m16, p16, **kw)
    assert rel_err(out, ref) < 5e-2
