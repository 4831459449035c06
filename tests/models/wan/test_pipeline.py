"""End-to-end parity of the `wan2-t2v` adapter with tiny Diffusers WanPipelines.

Same initial noise (passed to the pipeline as `latents=`), same prompts: the adapter's
UMT5 prompt encoding, schedule, velocity (with CFG for guidance_scale > 1, and the
A14B expert switch) and Euler ODE steps must reproduce the pipeline's noise
predictions, final latents and decoded video.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from ffjax import configs, registry
from ffjax.models.wan.adapter import WanT2VAdapter, check_num_frames
from ffjax.models.weights import CheckpointFormatError
from tests.models.flux.tiny import rel_err
from tests.tiny_wan_pipeline import A14B_BOUNDARY, SIZES

FRAMES, STEPS = 5, 6
HEIGHT, WIDTH = SIZES["t2v"]
PROMPTS = ["a photo of a cat", "an astronaut riding a horse on the moon"]


def _config(path, guidance_scale: float, size=(HEIGHT, WIDTH)) -> configs.ConfigDict:
    c = configs.base_config()
    c.model.name = "wan2-t2v"
    c.model.path = str(path)
    (c.model.height, c.model.width), c.model.num_frames = size, FRAMES
    c.model.negative_prompt = ""
    c.sampling.guidance_scale = guidance_scale
    return c


def _built(variant, tiny_pipelines):
    """(pipeline, folder) of the session's tiny WAN `variant` (tests/tiny_pipelines.py)."""
    path, pipe = tiny_pipelines.wan(variant)
    return pipe, path


@pytest.fixture(scope="module")
def a14b_folder(tiny_pipelines):
    return _built("a14b", tiny_pipelines)[1]


def _run_pipeline(pipe, noise, scale, height, width):
    """Runs the pipeline; returns (frames in [0, 1], final latents, [(x, sigma, v)] per
    step, its sigmas, [expert name per step])."""
    steps, final, experts = [], {}, []
    step = pipe.scheduler.step

    def recording_step(model_output, timestep, sample, **kw):
        sigma = pipe.scheduler.sigmas[pipe.scheduler.step_index or 0]
        steps.append((sample.numpy().copy(), float(sigma), model_output.numpy().copy()))
        return step(model_output, timestep, sample, **kw)

    def on_step_end(_pipe, i, t, kwargs):
        final["latents"] = kwargs["latents"].numpy().copy()
        return {}

    hooks = []
    for name in ("transformer", "transformer_2"):
        module = getattr(pipe, name)
        if module is not None:
            hooks.append(module.register_forward_pre_hook(
                lambda *_, name=name: experts.append(name)))  # fmt: skip
    pipe.scheduler.step = recording_step
    try:
        with torch.no_grad():
            out = pipe(
                prompt=PROMPTS, negative_prompt="", guidance_scale=scale, latents=noise,
                height=height, width=width, num_frames=FRAMES, num_inference_steps=STEPS,
                output_type="np", callback_on_step_end=on_step_end,
            )  # fmt: skip
    finally:
        del pipe.scheduler.step
        for h in hooks:
            h.remove()
    per_step = experts[:: 2 if scale > 1 else 1]  # CFG calls the step's expert twice
    return out.frames, final["latents"], steps, pipe.scheduler.sigmas.numpy(), per_step


def _to_ours(a):  # (B, C, F, H, W) -> (B, F, H, W, C)
    return np.moveaxis(np.asarray(a), 1, -1)


# Without CFG once (t2v); the CFG runs cover both passes for every layout.
@pytest.mark.slow
@pytest.mark.parametrize(
    "variant,scale", [("t2v", 1.0), ("t2v", 4.0), ("a14b", 4.0), ("ti2v", 4.0)],
    ids=["t2v-no_cfg", "t2v-cfg", "a14b-cfg", "ti2v-cfg"],
)  # fmt: skip
def test_pipeline_parity(tiny_pipelines, variant, scale):
    pipe, path = _built(variant, tiny_pipelines)
    h, w = SIZES[variant]
    adapter, weights = registry.MODELS.get("wan2-t2v").load(_config(path, scale, (h, w)))
    assert adapter.do_cfg == (scale > 1)
    assert adapter.two_experts == (variant == "a14b")
    assert adapter.expand_timesteps == (variant == "ti2v")
    shape = adapter.latent_shape(len(PROMPTS), h, w)
    assert (
        shape == {"t2v": (2, 2, 4, 8, 4), "a14b": (2, 2, 4, 8, 4), "ti2v": (2, 2, 2, 4, 6)}[variant]
    )
    noise = torch.randn(np.moveaxis(np.empty(shape), -1, 1).shape,
                        generator=torch.Generator().manual_seed(0))  # fmt: skip
    ref_frames, ref_latents, ref_steps, pipe_sigmas, ref_experts = _run_pipeline(
        pipe, noise, scale, h, w
    )

    sigmas = adapter.sigmas(STEPS, h, w)
    np.testing.assert_allclose(sigmas, pipe_sigmas, rtol=1e-6)
    if variant == "a14b":
        # The expert of every step is the pipeline's: t >= boundary_ratio * 1000 -> high.
        ours = ["transformer" if s * 1000 >= A14B_BOUNDARY * 1000 else "transformer_2"
                for s in np.asarray(sigmas[:-1], np.float32)]  # fmt: skip
        assert ours == ref_experts
        assert "transformer" in ours and "transformer_2" in ours, ours
    cond = adapter.encode_prompts(PROMPTS, h, w)
    assert cond.cfg == (scale > 1)

    velocity = jax.jit(adapter.velocity)
    variables = {"params": weights["transformer"]}
    errs = []
    for x_ref, s_ref, v_ref in ref_steps:
        v = velocity(variables, jnp.asarray(_to_ours(x_ref)), jnp.full((2,), s_ref), cond)
        errs.append(rel_err(v, _to_ours(v_ref)))
        assert errs[-1] < 1e-4, s_ref

    # The rollout path (cross-attention K/V prepared once) gives the same velocities.
    prepared = jax.jit(adapter.prepare_cond)(variables, cond)
    if cond.cfg:  # the negative prompt's K/V are computed once, for one row
        assert {kv["k"].shape[1] for kv in prepared.negative_kv.values()} == {1}
    x_ref, s_ref, v_ref = ref_steps[-1]
    v = velocity(variables, jnp.asarray(_to_ours(x_ref)), jnp.full((2,), s_ref), prepared)
    assert rel_err(v, _to_ours(v_ref)) < 1e-4

    x = jnp.asarray(_to_ours(noise.numpy()))
    for s, s_next in zip(sigmas[:-1], sigmas[1:], strict=True):
        v = velocity(variables, x, jnp.full((2,), s, jnp.float32), cond)
        x = x + v * (s_next - s)  # Euler ODE step (DESIGN.md time convention)
    assert rel_err(x, _to_ours(ref_latents)) < 1e-4
    print(f"{variant} scale {scale}: velocity max rel err {max(errs):.2g},"
          f" final latents {rel_err(x, _to_ours(ref_latents)):.2g}")  # fmt: skip

    video = np.asarray(
        jax.jit(adapter.decode_latents, static_argnums=(2, 3))(weights["vae"], x, h, w)
    )
    assert video.shape == (2, FRAMES, h, w, 3)
    np.testing.assert_allclose(np.clip(video / 2 + 0.5, 0, 1), ref_frames, atol=1e-4)
    print(f"  video max abs diff {np.abs(np.clip(video / 2 + 0.5, 0, 1) - ref_frames).max():.2g}")
    uint8 = np.asarray(jax.jit(adapter.decode, static_argnums=(2, 3))(weights["vae"], x, h, w))
    assert uint8.shape == (2, FRAMES, h, w, 3) and uint8.dtype == np.uint8
    assert np.abs(uint8.astype(int) - np.round(ref_frames * 255).astype(int)).max() <= 1


def test_mixed_batch_picks_each_rows_expert(a14b_folder):
    """Training rows at different sigmas (NFT / AWM) each get their own expert."""
    adapter, weights = WanT2VAdapter.from_pretrained(
        a14b_folder, num_frames=FRAMES, guidance_scale=1.0
    )
    cond = adapter.make_cond(np.random.default_rng(0).normal(size=(2, 7, 24)).astype(np.float32))
    x = jax.random.normal(jax.random.key(0), adapter.latent_shape(2, HEIGHT, WIDTH))
    variables = {"params": weights["transformer"]}
    hi, lo = 0.95, 0.5  # above / below the 0.875 boundary
    mixed = adapter.velocity(variables, x, jnp.array([hi, lo]), cond)
    high = adapter.velocity(variables, x, jnp.array([hi, hi]), cond)
    low = adapter.velocity(variables, x, jnp.array([lo, lo]), cond)
    np.testing.assert_allclose(mixed[0], high[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(mixed[1], low[1], rtol=1e-5, atol=1e-6)
    assert rel_err(high[1], low[1]) > 1e-2  # the experts differ


def test_num_frames_and_size_validation(a14b_folder):
    path = a14b_folder
    assert [check_num_frames(n) for n in (1, 5, 81)] == [1, 2, 21]
    for bad in (0, 4, 6, 80):
        with pytest.raises(ValueError, match=rf"num_frames={bad} is not 4k \+ 1"):
            check_num_frames(bad)
    with pytest.raises(ValueError, match="num_frames=6 is not 4k"):
        WanT2VAdapter.from_pretrained(path, num_frames=6)
    adapter, _ = WanT2VAdapter.from_pretrained(path, num_frames=FRAMES)
    # VAE factor 4 x patch 2: sides must be multiples of 8.
    with pytest.raises(ValueError, match=r"16x36 must be positive multiples of 8x8"):
        adapter.init_noise(jax.random.key(0), 1, 16, 36)
    with pytest.raises(ValueError, match="multiples of 8x8"):
        adapter.latent_shape(1, 12, 32)


def test_other_family_folder_is_refused(tiny_pipelines):
    path = tiny_pipelines.flux()
    with pytest.raises(CheckpointFormatError, match="FluxPipeline"):
        WanT2VAdapter.load(_config(path, 4.0))


def test_guidance_scale_2_only_for_two_experts(tiny_pipelines, a14b_folder):
    """As WanPipeline: guidance_scale_2 needs a boundary_ratio pipeline, and guidance is
    on when guidance_scale > 1 (guidance_scale_2 alone does not turn it on)."""
    _, t2v_folder = _built("t2v", tiny_pipelines)
    with pytest.raises(ValueError, match=r"guidance_scale_2=4.0 .* only for two-expert"):
        WanT2VAdapter.from_pretrained(t2v_folder, num_frames=FRAMES, guidance_scale_2=4.0)
    adapter, _ = WanT2VAdapter.from_pretrained(
        a14b_folder, num_frames=FRAMES, guidance_scale=1.0, guidance_scale_2=4.0
    )
    assert not adapter.do_cfg
    adapter, _ = WanT2VAdapter.from_pretrained(
        a14b_folder, num_frames=FRAMES, guidance_scale=4.0, guidance_scale_2=3.0
    )
    cond = adapter.make_cond(np.zeros((2, 3, 24), np.float32), np.ones((1, 3, 24), np.float32))
    np.testing.assert_array_equal(cond.guidance_scale, [4.0, 4.0])
    np.testing.assert_array_equal(cond.guidance_scale_2, [3.0, 3.0])
    with pytest.raises(ValueError, match=r"must be one row \(1, S, D\)"):
        adapter.make_cond(np.zeros((2, 3, 24), np.float32), np.ones((2, 3, 24), np.float32))
