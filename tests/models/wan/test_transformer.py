"""WanTransformer parity with Diffusers' WanTransformer3DModel (float32, tiny configs),
the precomputed cross-attention K/V, and input errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from ffjax.models import load_pretrained
from ffjax.models.wan import call_like_diffusers, patchify, rope_tables, unpatchify
from ffjax.models.wan.config import WanTransformerConfig
from tests.models.flux.tiny import rel_err
from tests.models.wan.tiny import TRANSFORMER_CONFIGS, save_tiny_transformers

TOL = 1e-5  # max |ours - theirs| / max |theirs|, float32


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """{name: (torch model, folder, ffjax module, params)}."""
    out = {}
    for name, (model, path) in save_tiny_transformers(tmp_path_factory).items():
        out[name] = (model, path, *load_pretrained("wan", "transformer", path))
    return out


def _inputs(name, b, fhw, seed, text_len=7, image_len=3, per_token=None):
    """Diffusers-layout inputs; per_token: None, "first_frame" (the TI2V pipeline's
    mask: t = 0 on the first latent frame's tokens) or "random"."""
    cfg = TRANSFORMER_CONFIGS[name]
    g = torch.Generator().manual_seed(seed)
    f, h, w = fhw
    kw = dict(
        hidden_states=torch.randn(b, cfg["in_channels"], f, h, w, generator=g),
        timestep=torch.rand(b, generator=g) * 1000,
        encoder_hidden_states=torch.randn(b, text_len, cfg["text_dim"], generator=g),
    )
    if cfg.get("image_dim"):
        n = 2 * b if cfg.get("pos_embed_seq_len") else b  # FLF2V: first + last frame
        kw["encoder_hidden_states_image"] = torch.randn(n, image_len, cfg["image_dim"], generator=g)
    if per_token:
        pt, ph, pw = cfg["patch_size"]
        grid = (f // pt, h // ph, w // pw)
        if per_token == "random":
            t = torch.rand(b, *grid, generator=g) * 1000
        else:
            t = kw["timestep"][:, None, None, None].expand(b, *grid).clone()
            t[:, 0] = 0.0
        kw["timestep"] = t.reshape(b, -1)
    return kw


def _numpy(kw):
    return {k: v.numpy() for k, v in kw.items()}


# (config, batch, latent (frames, height, width), text length, per-token timesteps)
CASES = [
    ("t2v", 2, (1, 4, 6), 7, None),  # one frame (an image), 2x3 tokens
    ("t2v", 1, (3, 6, 10), 5, None),  # three frames, odd token width (5)
    ("t2v", 2, (5, 2, 14), 4, None),  # five frames, one token row, 7 columns
    ("i2v", 2, (2, 4, 6), 512, None),  # Diffusers splits image / text at 512 text tokens
    ("flf2v", 2, (2, 2, 6), 512, None),  # image tokens of first + last frame, pos_embed
    ("ti2v", 2, (4, 4, 6), 6, "first_frame"),  # the TI2V pipeline's expand_timesteps
    ("ti2v", 1, (2, 6, 2), 3, "random"),  # any per-token timesteps
]
_IDS = ["t2v-1frame", "t2v-3frames-odd", "t2v-5frames-row", "i2v", "flf2v", "ti2v-mask",
        "ti2v-random"]  # fmt: skip


@pytest.mark.parametrize("name,b,fhw,lt,per_token", CASES, ids=_IDS)
def test_transformer_parity(tiny, name, b, fhw, lt, per_token):
    model, _, module, params = tiny[name]
    kw = _inputs(name, b, fhw, seed=1, text_len=lt, per_token=per_token)
    with torch.no_grad():
        ref = model(**kw).sample.numpy()
    out = call_like_diffusers("transformer", module, params, **_numpy(kw))
    assert out.shape == ref.shape
    err = rel_err(out, ref)
    print(f"{name} b={b} fhw={fhw} lt={lt} per_token={per_token}: max rel err {err:.2e}")
    assert err < TOL


def _channels_last(kw):
    x = jnp.asarray(kw["hidden_states"].numpy().transpose(0, 2, 3, 4, 1))
    ctx = jnp.asarray(kw["encoder_hidden_states"].numpy())
    img = kw.get("encoder_hidden_states_image")
    return (
        x,
        jnp.asarray(kw["timestep"].numpy()),
        ctx,
        None if img is None else jnp.asarray(img.numpy()),
    )


def test_context_kv_precompute_matches(tiny):
    """kv = context_kv(context, image) once; __call__(..., kv=kv) with context=None is the
    same forward as recomputing the K/V from the context (and as Diffusers)."""
    model, _, module, params = tiny["i2v"]
    kw = _inputs("i2v", 2, (2, 4, 6), seed=1, text_len=512)  # the i2v parity case
    with torch.no_grad():
        ref = model(**kw).sample.numpy()
    full = call_like_diffusers("transformer", module, params, **_numpy(kw))
    x, t, ctx, img = _channels_last(kw)
    v = {"params": params}
    kv = jax.jit(lambda c, i: module.apply(v, c, i, method="context_kv"))(ctx, img)
    cfg = module.config
    assert set(kv) == {"k", "v", "k_img", "v_img"}
    heads, hd = cfg.num_attention_heads, cfg.attention_head_dim
    assert kv["k"].shape == (cfg.num_layers, 2, 512, heads, hd)
    assert kv["v_img"].shape == (cfg.num_layers, 2, img.shape[1], heads, hd)
    cached = jax.jit(lambda x, t, kv: module.apply(v, x, t, None, kv=kv))(x, t, kv)
    cached = np.asarray(cached).transpose(0, 4, 1, 2, 3)
    np.testing.assert_allclose(cached, full, rtol=0, atol=1e-6)
    assert rel_err(cached, ref) < TOL


def test_shared_context_of_batch_1(tiny):
    """A text context of batch 1 (the CFG negative prompt) serves every sample, with
    per-sample images: the same forward as the context broadcast to the batch, whether
    its K/V are computed in the forward or given as kv (text entries of batch 1)."""
    _, _, module, params = tiny["i2v"]
    kw = _inputs("i2v", 2, (2, 4, 6), seed=2, text_len=512)
    x, t, ctx, img = _channels_last(kw)
    one = ctx[:1]
    v = {"params": params}
    fwd = jax.jit(lambda c, kv=None: module.apply(v, x, t, c, None if kv else img, kv=kv))
    want = np.asarray(fwd(jnp.broadcast_to(one, ctx.shape)))
    np.testing.assert_allclose(fwd(one), want, rtol=0, atol=1e-6)
    kv = module.apply(v, one, img[:1], method="context_kv")
    full = module.apply(v, ctx, img, method="context_kv")
    kv = dict(kv, k_img=full["k_img"], v_img=full["v_img"])  # text batch 1, images batch 2
    np.testing.assert_allclose(fwd(None, kv), want, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match=r"kv\['k'\] is for 2 layers x batch 3"):
        fwd(None, dict(kv, k=jnp.concatenate([kv["k"]] * 3, axis=1)))


def test_rope_tables_match_diffusers():
    from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

    cfg = WanTransformerConfig.from_diffusers(TRANSFORMER_CONFIGS["ti2v"])
    rope = WanRotaryPosEmbed(cfg.attention_head_dim, cfg.patch_size, cfg.rope_max_seq_len)
    cos_ref, sin_ref = rope(torch.zeros(1, 1, 6, 10, 4))  # grid 3 x 5 x 2
    cos, sin = rope_tables((3, 5, 2), cfg.rope_dims, cfg.rope_max_seq_len)
    assert cfg.rope_dims == (8, 4, 4)
    np.testing.assert_array_equal(np.asarray(cos), cos_ref[0, :, 0].numpy())
    np.testing.assert_array_equal(np.asarray(sin), sin_ref[0, :, 0].numpy())
    with pytest.raises(ValueError, match="exceeds rope_max_seq_len=16"):
        rope_tables((17, 1, 1), cfg.rope_dims, 16)


def test_patchify_round_trip():
    x = jnp.arange(2 * 4 * 6 * 4 * 3, dtype=jnp.float32).reshape(2, 4, 6, 4, 3)
    tok = patchify(x, (2, 3, 2))
    assert tok.shape == (2, 2 * 2 * 2, 2 * 3 * 2 * 3)
    np.testing.assert_array_equal(np.asarray(unpatchify(tok, (2, 2, 2), (2, 3, 2))), x)
    # Token (0, 0, 1) holds x[:, 0:2, 0:3, 2:4, :] in (dt, dy, dx, c) order.
    np.testing.assert_array_equal(
        np.asarray(tok[:, 1]), np.asarray(x[:, 0:2, 0:3, 2:4].reshape(2, -1))
    )


def test_bad_inputs_are_clear_errors(tiny):
    _, _, module, params = tiny["i2v"]
    kw = _numpy(_inputs("i2v", 1, (2, 4, 6), seed=3))
    run = lambda **over: call_like_diffusers("transformer", module, params, **{**kw, **over})
    with pytest.raises(
        ValueError, match=r"frames x height x width 2x4x7 is not divisible by the patch size 1x2x2"
    ):
        run(hidden_states=np.zeros((1, 9, 2, 4, 7), np.float32))
    with pytest.raises(ValueError, match=r"2x5x6 is not divisible"):
        run(hidden_states=np.zeros((1, 9, 2, 5, 6), np.float32))
    with pytest.raises(ValueError, match=r"timestep must be \(1,\) or \(1, 12\)"):
        run(timestep=np.zeros((1, 5), np.float32))
    with pytest.raises(ValueError, match="context_image is required"):
        run(encoder_hidden_states_image=None)
    with pytest.raises(ValueError, match=r"in_channels=9"):
        run(hidden_states=np.zeros((1, 4, 2, 4, 6), np.float32))
    with pytest.raises(ValueError, match="attention_kwargs is not supported"):
        run(attention_kwargs={"scale": 1.0})
    with pytest.raises(
        TypeError, match=r"unexpected WanTransformer3DModel.forward arguments \['guidance'\]"
    ):
        run(guidance=np.ones(1))
    # A text-only model refuses image states, and kv must come from context_kv.
    _, _, t2v, p2v = tiny["t2v"]
    kw2 = _numpy(_inputs("t2v", 1, (1, 2, 2), seed=4))
    with pytest.raises(ValueError, match="has no image cross-attention"):
        call_like_diffusers("transformer", t2v, p2v, **kw2,
                            encoder_hidden_states_image=np.zeros((1, 3, 10), np.float32))  # fmt: skip
    x, t, ctx, _ = _channels_last({k: torch.from_numpy(v) for k, v in kw2.items()})
    with pytest.raises(ValueError, match=r"kv has entries \['k'\], expected \['k', 'v'\]"):
        t2v.apply({"params": p2v}, x, t, None, kv={"k": jnp.zeros((2, 1, 7, 2, 12))})
    with pytest.raises(ValueError, match="context .* is required without kv"):
        t2v.apply({"params": p2v}, x, t, None)


def test_remat_policy_reaches_the_gradient(tiny):
    """remat none / full / save_dots: checkpointing shows up in the traced gradient."""
    from ffjax.models.wan.convert import load_transformer

    _, path, _, _ = tiny["t2v"]
    x, t, ctx, _ = _channels_last(_inputs("t2v", 1, (1, 2, 2), seed=5))
    for remat in ("none", "full", "save_dots"):
        module, params = load_transformer(path, remat=remat)
        loss = lambda p, m=module: jnp.mean(m.apply({"params": p}, x, t, ctx) ** 2)
        jaxpr = str(jax.make_jaxpr(jax.grad(loss))(params))
        assert ("checkpoint" in jaxpr or "remat" in jaxpr) == (remat != "none"), remat


def test_params_carry_logical_axes_and_lora_paths(tiny):
    from flax import linen as nn

    from ffjax.models.lora import dense_kernels
    from ffjax.models.wan.transformer import init_shapes

    cfg = WanTransformerConfig.from_diffusers(tiny["i2v"][1])
    _, abstract = init_shapes(cfg)
    specs = nn.get_partition_spec(abstract)
    blocks = specs["blocks"]
    assert tuple(blocks["attn1"]["to_q"]["kernel"]) == ("layers", "embed", "heads")
    assert tuple(blocks["attn2"]["to_out"]["kernel"]) == ("layers", "heads", "embed")
    assert tuple(blocks["attn2"]["norm_added_k"]["scale"]) == ("layers", "heads")
    assert tuple(blocks["ffn"]["proj_out"]["kernel"]) == ("layers", "mlp", "embed")
    assert tuple(blocks["scale_shift_table"]) == ("layers", None, "embed")
    # Every Diffusers Linear is a layers.Dense at a path LoRA target patterns can match.
    kernels = dense_kernels(abstract)
    for p in ("blocks/attn1/to_q", "blocks/attn2/to_k", "blocks/attn2/add_v_proj",
              "blocks/ffn/proj_in", "patch_embedding", "proj_out"):  # fmt: skip
        assert p in kernels, p


def test_bfloat16_close_to_float32(tiny):
    """bf16 params / activations (float32 norms, modulation and residual sums) on CPU."""
    from ffjax.models.wan.convert import load_transformer

    _, path, m32, p32 = tiny["i2v"]
    kw = _numpy(_inputs("i2v", 2, (2, 4, 6), seed=1, text_len=512))  # the i2v parity case
    m16, p16 = load_transformer(path, dtype="bfloat16", attention="xla")
    assert str(p16["blocks"]["attn1"]["to_q"]["kernel"].dtype) == "bfloat16"
    ref = call_like_diffusers("transformer", m32, p32, **kw)
    err = rel_err(call_like_diffusers("transformer", m16, p16, **kw), ref)
    print(f"bf16 vs float32: max rel err {err:.2e}")
    assert err < 5e-2


@pytest.mark.gpu
def test_transformer_bf16_cudnn_close_to_float32(tiny):
    """On GPU: bf16 params/activations with cuDNN attention stay near float32."""
    from ffjax.models.wan.convert import load_transformer

    for name in ("t2v", "i2v"):
        _, path, _, _ = tiny[name]
        kw = _numpy(_inputs(name, 2, (3, 8, 8), seed=6, text_len=512))
        m32, p32 = load_transformer(path, dtype="float32", attention="xla")
        m16, p16 = load_transformer(path, dtype="bfloat16", attention="cudnn")
        ref = call_like_diffusers("transformer", m32, p32, **kw)
        out = call_like_diffusers("transformer", m16, p16, **kw)
        assert rel_err(out, ref) < 5e-2, name
