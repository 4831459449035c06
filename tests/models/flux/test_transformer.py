"""FluxTransformer parity with Diffusers' FluxTransformer2DModel (float32, tiny configs)."""

import jax
import jax.numpy as jnp
import pytest
import torch

from ffjax.models import load_pretrained
from ffjax.models.flux import call_like_diffusers
from tests.models.flux.tiny import image_ids, rel_err

# (config, batch, latent grid h x w, text length): non-square grids, odd lengths.
CASES = [("guided", 2, 3, 5, 7), ("unguided", 1, 4, 2, 5)]


def _inputs(model, b, h, w, lt, seed):
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    kw = dict(
        hidden_states=torch.randn(b, h * w, cfg.in_channels, generator=g),
        encoder_hidden_states=torch.randn(b, lt, cfg.joint_attention_dim, generator=g),
        pooled_projections=torch.randn(b, cfg.pooled_projection_dim, generator=g),
        timestep=torch.rand(b, generator=g),
        img_ids=torch.from_numpy(image_ids(h, w)),
        txt_ids=torch.zeros(lt, 3),
    )
    if cfg.guidance_embeds:
        kw["guidance"] = 1 + 4 * torch.rand(b, generator=g)
    return kw


@pytest.mark.parametrize("name,b,h,w,lt", CASES)
def test_transformer_parity(tiny_transformers, name, b, h, w, lt):
    model, path = tiny_transformers[name]
    module, params = load_pretrained("flux", "transformer", path)
    kw = _inputs(model, b, h, w, lt, seed=1)
    with torch.no_grad():
        ref = model(**kw).sample.numpy()
    out = call_like_diffusers(
        "transformer", module, params, **{k: v.numpy() for k, v in kw.items()}
    )
    assert out.shape == ref.shape
    assert rel_err(out, ref) < 2e-5


def test_guidance_required(tiny_transformers):
    module, params = load_pretrained("flux", "transformer", tiny_transformers["guided"][1])
    kw = {k: v.numpy() for k, v in _inputs(tiny_transformers["guided"][0], 1, 2, 2, 3, 0).items()}
    del kw["guidance"]
    with pytest.raises(ValueError, match="guidance"):
        call_like_diffusers("transformer", module, params, **kw)


def test_remat_policy_reaches_the_gradient(tiny_transformers):
    """remat none / full / save_dots: checkpointing shows up in the traced gradient.

    (jax.checkpoint never changes values, so tracing - not compiling - is enough.)
    """
    from ffjax.models.flux.convert import load_transformer

    model, path = tiny_transformers["unguided"]
    args = [jnp.asarray(v.numpy()) for v in _inputs(model, 1, 2, 2, 3, 2).values()]
    for remat in ("none", "full", "save_dots"):
        module, params = load_transformer(path, remat=remat)
        loss = lambda p, m=module: jnp.mean(m.apply({"params": p}, *args) ** 2)
        jaxpr = str(jax.make_jaxpr(jax.grad(loss))(params))
        assert ("checkpoint" in jaxpr or "remat" in jaxpr) == (remat != "none"), remat


def test_params_carry_logical_axes(tiny_transformers):
    from flax import linen as nn

    from ffjax.models.flux.config import FluxTransformerConfig
    from ffjax.models.flux.convert import transformer_init_shapes

    cfg = FluxTransformerConfig.from_diffusers(tiny_transformers["guided"][1])
    _, abstract = transformer_init_shapes(cfg)
    specs = nn.get_partition_spec(abstract)
    assert tuple(specs["double_blocks"]["attn"]["to_q"]["kernel"]) == ("layers", "embed", "heads")
    assert tuple(specs["single_blocks"]["proj_out"]["kernel"]) == ("layers", "mlp", "embed")


@pytest.mark.gpu
def test_transformer_bf16_cudnn_close_to_float32(tiny_transformers):
    """On GPU: bf16 params/activations with cuDNN attention stay near the float32 result."""
    from ffjax.models.flux.convert import load_transformer

    model, path = tiny_transformers["guided"]
    kw = {k: v.numpy() for k, v in _inputs(model, 2, 4, 4, 8, 3).items()}
    m32, p32 = load_transformer(path, dtype="float32", attention="xla")
    m16, p16 = load_transformer(path, dtype="bfloat16", attention="cudnn")
    ref = call_like_diffusers("transformer", m32, p32, **kw)
    out = call_like_diffusers("transformer", m16, p16, **kw)
    assert rel_err(out, ref) < 5e-2
