"""End-to-end parity of the `wan2-i2v` adapter with tiny Diffusers WanImageToVideoPipelines.

Same initial noise (`latents=`), same prompts, same images (the pipeline takes one
image a call, so it runs once per row): the adapter's image conditioning (CLIP
hidden_states[-2], VAE-encoded video condition and mask), velocity (with CFG), Euler
ODE steps and decode must reproduce the pipeline's. Wan 2.1 I2V layout ("i2v") and
Wan 2.2 TI2V-5B ("ti2v", expand_timesteps: frames >= 1 match the pipeline's noise
predictions, frame 0 gets its exact velocity by design, see adapter_i2v.py).
"""

import html
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from PIL import Image

from ffjax import configs, registry
from ffjax.models.wan import call_like_diffusers
from ffjax.models.wan.adapter_i2v import IMAGE_FIELD, WanI2VAdapter, image_roots
from ffjax.models.wan.vae import from_transformer_space
from tests.models.flux.tiny import rel_err

FRAMES, STEPS = 5, 4
SIZES = {
    "i2v": (16, 32),
    "flf2v": (16, 32),
    "a14b": (16, 32),
    "ti2v": (32, 64),
}  # VAE 4x / 16x, patch 2
PROMPTS = ["a photo of a cat", "an astronaut riding a horse on the moon"]
# max_sequence_length of both sides: Diffusers' image cross-attention takes all but the
# last 512 context tokens as the image's, so I2V needs 512; TI2V runs faster with 32.
TEXT_LEN = {"i2v": 512, "flf2v": 512, "a14b": 32, "ti2v": 32}


def _images():
    rng = np.random.default_rng(3)
    rgb = Image.fromarray(rng.integers(0, 256, (40, 24, 3), np.uint8))  # tall, not square
    rgba = Image.fromarray(rng.integers(0, 256, (21, 33, 4), np.uint8), "RGBA")  # odd sizes
    return [rgb, rgba]


def _config(path, variant, scale, data_path=None) -> configs.ConfigDict:
    c = configs.base_config()
    c.model.name = "wan2-i2v"
    c.model.path = str(path)
    c.model.height, c.model.width = SIZES[variant]
    c.model.num_frames = FRAMES
    c.model.negative_prompt = ""
    c.model.max_sequence_length = TEXT_LEN[variant]
    c.sampling.guidance_scale = scale
    if data_path is not None:
        c.data.path = str(data_path)
    return c


@pytest.fixture(scope="module", autouse=True)
def _no_ftfy():
    from diffusers.pipelines.wan import pipeline_wan_i2v

    # Diffusers 0.42's I2V `basic_clean` calls ftfy even when it is not installed (its
    # T2V one skips it, as ffjax does): the same cleaning without ftfy.
    clean = pipeline_wan_i2v.basic_clean
    pipeline_wan_i2v.basic_clean = lambda t: html.unescape(html.unescape(t)).strip()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: threads only contend with XLA's
    yield
    torch.set_num_threads(threads)
    pipeline_wan_i2v.basic_clean = clean


_BUILT: dict[str, dict] = {}  # variant -> pipeline, folder, loaded adapter (once a session)


def _built(variant, tiny_pipelines) -> dict:
    """The tiny pipeline, its folder, and the adapter loaded from it (guidance 4: the
    no-CFG case uses `conditional_only`), its weights and jitted functions."""
    if variant not in _BUILT:
        path, pipe = tiny_pipelines.wan_i2v(variant)
        adapter, weights = registry.MODELS.get("wan2-i2v").load(_config(path, variant, 4.0))
        _BUILT[variant] = dict(
            pipe=pipe, path=path, adapter=adapter, weights=weights,
            velocity=jax.jit(adapter.velocity), prepare=jax.jit(adapter.prepare_cond),
        )  # fmt: skip
    return _BUILT[variant]


@pytest.fixture(scope="module", params=["i2v", "flf2v", "a14b", "ti2v"])
def pipeline(request, tiny_pipelines):
    return request.param, _built(request.param, tiny_pipelines)


@pytest.fixture(scope="module")
def i2v(tiny_pipelines):
    return _built("i2v", tiny_pipelines)


def _to_ours(a):  # (B, C, F, H, W) -> (B, F, H, W, C)
    return np.moveaxis(np.asarray(a), 1, -1)


def _run_pipeline(pipe, noise, scale, h, w, text_len, images):
    """Per row: frames in [0, 1], the last latents, [(x, sigma, v, v_conditional)] per
    step, and the pipeline's conditioning (prepare_latents' condition, encode_image's
    states). v_conditional: the conditional pass of the step's CFG pair (its first)."""
    out = {"frames": [], "latents": [], "steps": [], "condition": [], "image_embeds": []}
    step, prepare, encode = pipe.scheduler.step, pipe.prepare_latents, pipe.encode_image

    def recording_step(model_output, timestep, sample, **kw):
        sigma = pipe.scheduler.sigmas[pipe.scheduler.step_index or 0]
        v_cond = calls[-2 if scale > 1 else -1]
        rows[-1].append((sample.numpy().copy(), float(sigma), model_output.numpy().copy(),
                         v_cond))  # fmt: skip
        return step(model_output, timestep, sample, **kw)

    calls = []
    hooks = [
        m.register_forward_hook(lambda _m, _a, o: calls.append(o[0].numpy().copy()))
        for m in (pipe.transformer, pipe.transformer_2) if m is not None
    ]  # fmt: skip

    def recording_prepare(*a, **kw):
        res = prepare(*a, **kw)
        out["condition"].append(res[1].numpy().copy())
        return res

    def recording_encode(*a, **kw):
        res = encode(*a, **kw)
        out["image_embeds"].append(res.numpy().copy())
        return res

    def on_step_end(_pipe, i, t, kwargs):
        last["latents"] = kwargs["latents"].numpy().copy()
        return {}

    rows, last = [], {}
    pipe.scheduler.step, pipe.prepare_latents, pipe.encode_image = (
        recording_step, recording_prepare, recording_encode)  # fmt: skip
    try:
        for i, (prompt, pair) in enumerate(zip(PROMPTS, images, strict=True)):
            rows.append([])
            extra = {"last_image": pair[1].convert("RGB")} if len(pair) > 1 else {}
            with torch.no_grad():
                res = pipe(
                    image=pair[0].convert("RGB"), **extra, prompt=prompt, negative_prompt="",
                    guidance_scale=scale, latents=noise[i : i + 1], height=h, width=w,
                    num_frames=FRAMES, num_inference_steps=STEPS, output_type="np",
                    callback_on_step_end=on_step_end, max_sequence_length=text_len,
                )  # fmt: skip
            out["frames"].append(res.frames)
            out["latents"].append(last["latents"])
    finally:
        del pipe.scheduler.step, pipe.prepare_latents, pipe.encode_image
        for hook in hooks:
            hook.remove()
    cat = lambda k: np.concatenate(out[k]) if out[k] else None
    steps = [tuple(np.concatenate([r[j][k] for r in rows]) if k != 1 else rows[0][j][1]
                   for k in range(4)) for j in range(STEPS)]  # fmt: skip
    return dict(frames=cat("frames"), latents=cat("latents"), steps=steps,
                condition=cat("condition"), image_embeds=cat("image_embeds"),
                sigmas=pipe.scheduler.sigmas.numpy())  # fmt: skip


@pytest.mark.slow
def test_pipeline_parity(pipeline):
    """With CFG (scale 4): per-step guided predictions, prepared K/V, final latents and
    video; without (`conditional_only`): the pipeline's conditional pass at each step."""
    variant, b = pipeline
    scale = 4.0
    pipe, adapter, weights, velocity = b["pipe"], b["adapter"], b["weights"], b["velocity"]
    h, w = SIZES[variant]
    assert isinstance(adapter, WanI2VAdapter) and adapter.do_cfg
    assert adapter.expand_timesteps == (variant == "ti2v")
    assert adapter.core.two_experts == (variant == "a14b")
    shape = adapter.latent_shape(len(PROMPTS), h, w)
    noise = torch.randn(tuple(np.array(shape)[[0, 4, 1, 2, 3]]),
                        generator=torch.Generator().manual_seed(0))  # fmt: skip
    im = _images()
    pairs = [(im[0], im[1]), (im[1], im[0])] if variant == "flf2v" else [(i,) for i in im]
    ref = _run_pipeline(pipe, noise, scale, h, w, TEXT_LEN[variant], pairs)
    sigmas = adapter.sigmas(STEPS, h, w)
    np.testing.assert_allclose(sigmas, ref["sigmas"], rtol=1e-6)
    if variant == "a14b":  # the steps use both experts
        high = np.asarray(sigmas[:-1], np.float32) * 1000 >= adapter.core.boundary_timestep()
        assert high.any() and not high.all(), sigmas

    metadata = [{IMAGE_FIELD: list(p) if variant == "flf2v" else p[0]} for p in pairs]
    cond = adapter.encode_prompts(PROMPTS, h, w, metadata=metadata)
    conditional = adapter.conditional_only(cond)
    errs = {"condition": rel_err(cond.condition, _to_ours(ref["condition"]))}
    if variant in ("i2v", "flf2v"):  # FLF2V: the pipeline's [2B, S, D] is our [B, 2S, D]
        errs["image_embeds"] = rel_err(cond.image_embeds, ref["image_embeds"].reshape(
            cond.image_embeds.shape))  # fmt: skip
    else:  # no image attention: neither side encodes the image with CLIP
        assert cond.image_embeds is None and ref["image_embeds"] is None

    variables = {"params": weights["transformer"]}
    errs["v"] = errs["v_no_cfg"] = 0.0
    for x_ref, s_ref, *v_refs in ref["steps"]:
        x = jnp.asarray(_to_ours(x_ref))
        for name, cd, v_ref in (("v", cond, v_refs[0]), ("v_no_cfg", conditional, v_refs[1])):
            v = np.asarray(velocity(variables, x, jnp.full((2,), s_ref), cd))
            v_ref = _to_ours(v_ref)
            if variant == "ti2v":  # frame 0: the exact velocity of the known first frame
                c = np.asarray(cond.condition)
                np.testing.assert_allclose(v[:, :1], (np.asarray(x)[:, :1] - c) / s_ref, rtol=1e-5)
                v, v_ref = v[:, 1:], v_ref[:, 1:]
            errs[name] = max(errs[name], rel_err(v, v_ref))

    prepared = b["prepare"](variables, cond)
    for kv in prepared.text.negative_kv.values():  # text K/V once; image K/V the prompt's
        assert kv["k"].shape[1] == 1 and all(kv[k].shape[1] == 2 for k in kv if "img" in k)
    x_ref, s_ref, v_ref, _ = ref["steps"][-1]
    v = velocity(variables, jnp.asarray(_to_ours(x_ref)), jnp.full((2,), s_ref), prepared)
    sl = slice(1, None) if variant == "ti2v" else slice(None)
    errs["v_prepared"] = rel_err(np.asarray(v)[:, sl], _to_ours(v_ref)[:, sl])

    x = jnp.asarray(_to_ours(noise.numpy()))
    for s, s_next in zip(sigmas[:-1], sigmas[1:], strict=True):
        x = x + velocity(variables, x, jnp.full((2,), s, jnp.float32), cond) * (s_next - s)
    if variant == "ti2v":  # an ODE rollout already ends on the image's latent frame
        assert rel_err(x[:, :1], cond.condition) < 1e-5
    x = adapter.finish_latents(x, cond)
    errs["latents"] = rel_err(x[:, sl], _to_ours(ref["latents"])[:, sl])

    # Decoded through the VAE seam (compiled without LLVM optimisation: same numerics,
    # a third of the compile time); `decode` itself runs in tests/test_trainer_wan_i2v.py.
    z = np.moveaxis(np.asarray(from_transformer_space(x, adapter.core.vae_config)), -1, 1)
    video = _to_ours(call_like_diffusers("vae_decode", adapter.core.vae, weights["vae"], z=z))
    assert video.shape == (2, FRAMES, h, w, 3)
    errs["video"] = float(np.abs(np.clip(video / 2 + 0.5, 0, 1) - ref["frames"]).max())
    print(variant, {k: f"{v:.1e}" for k, v in errs.items()})
    assert max(errs.values()) < 1e-4, errs


def test_images_from_jsonl_rows_and_bad_inputs(i2v, tmp_path):
    """Relative paths resolve against <data>/images (Flow-Factory), then <data>; a prompt
    without an image, a missing file, a bad array or two images are refused clearly."""
    (tmp_path / "images").mkdir()
    im = _images()
    im[0].save(tmp_path / "images" / "a.png")
    im[1].save(tmp_path / "b.png")  # RGBA, next to the jsonl
    rows = [{"prompt": PROMPTS[0], "image": "a.png"}, {"prompt": PROMPTS[1], "image": "b.png"}]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    adapter = i2v["adapter"]
    roots = image_roots(_config(i2v["path"], "i2v", 1.0, tmp_path / "train.jsonl"))
    assert roots == (str(tmp_path / "images"), str(tmp_path))
    assert image_roots(_config(i2v["path"], "i2v", 1.0, tmp_path)) == roots
    c = _config(i2v["path"], "i2v", 1.0, tmp_path)
    c.data.image_dir = "/elsewhere"
    assert image_roots(c) == ("/elsewhere",)
    adapter = adapter.replace(image_roots=roots)  # what load(config) sets from config.data
    h, w = SIZES["i2v"]
    meta = [{k: v for k, v in r.items() if k != "prompt"} for r in rows]
    from_files = adapter.encode_prompts(PROMPTS, h, w, metadata=meta)
    given = adapter.encode_prompts(PROMPTS, h, w, metadata=[{"image": i} for i in im])
    # From a file == given in memory; RGBA is converted to RGB (as Flow-Factory loads).
    np.testing.assert_array_equal(from_files.condition, given.condition)
    np.testing.assert_array_equal(from_files.image_embeds, given.image_embeds)
    as_array = adapter.encode_prompts(PROMPTS[:1], h, w, metadata=[{"image": np.asarray(im[0])}])
    np.testing.assert_array_equal(as_array.condition, given.condition[:1])

    with pytest.raises(ValueError, match=r"prompt 1 \('an astronaut.*no 'image' in its metadata"):
        adapter.encode_prompts(PROMPTS, h, w, metadata=[meta[0], {"other": 1}])
    with pytest.raises(ValueError, match="needs one metadata dict per prompt"):
        adapter.encode_prompts(PROMPTS, h, w)
    with pytest.raises(FileNotFoundError, match=r"prompt 0 .*'gone.png' not found; looked at"):
        adapter.encode_prompts(PROMPTS[:1], h, w, metadata=[{"image": "gone.png"}])
    with pytest.raises(ValueError, match=r"uint8\[H, W, 3 or 4\]; got float32"):
        adapter.encode_prompts(
            PROMPTS[:1], h, w, metadata=[{"image": np.zeros((4, 4, 3), np.float32)}]
        )
    with pytest.raises(
        ValueError, match=r"lists 2 image\(s\); this wan2-i2v model conditions on one"
    ):
        adapter.encode_prompts(PROMPTS[:1], h, w, metadata=[{"image": ["a.png", "b.png"]}])
    with pytest.raises(ValueError, match="multiples of 8x8"):
        adapter.encode_prompts(PROMPTS, 12, 32, metadata=meta)
    short = adapter.replace(core=adapter.core.replace(max_sequence_length=77))
    with pytest.raises(ValueError, match="max_sequence_length=77.*512"):
        short.encode_prompts(PROMPTS, h, w, metadata=meta)


def test_abstract_load_matches_load(i2v):
    """--dry_run shapes: abstract_cond and abstract weights agree with the real ones."""
    c = _config(i2v["path"], "i2v", 4.0)
    adapter, weights = i2v["adapter"], i2v["weights"]
    abstract, shapes = WanI2VAdapter.abstract_load(c)
    shape_of = lambda t: jax.tree.map(lambda a: (a.shape, jnp.dtype(a.dtype)), t)
    assert shape_of(shapes) == shape_of(weights)
    h, w = SIZES["i2v"]
    cond = adapter.encode_prompts(PROMPTS, h, w, metadata=[{"image": i} for i in _images()])
    want = shape_of(abstract.abstract_cond(2, h, w))
    got = shape_of(cond)
    assert jax.tree.structure(want) == jax.tree.structure(got)
    assert jax.tree.leaves(want) == jax.tree.leaves(got)
    enc = WanI2VAdapter.abstract_text_encoders(c)
    assert set(enc) == {"text_encoder (UMT5)", "image_encoder (CLIP vision)"}
    assert shape_of(enc["image_encoder (CLIP vision)"]) == shape_of(adapter.image_encoder[1])


@pytest.mark.slow
def test_image_conditions_are_batched_and_cached(i2v, monkeypatch):
    """Images missing from the adapter's cache are encoded in one batched call, equal to
    encoding them one at a time; a later epoch's images are not encoded again."""
    adapter, (h, w) = i2v["adapter"].replace(), SIZES["i2v"]  # a copy with a fresh cache
    calls = []
    batch = adapter.encode_image_batch
    monkeypatch.setattr(  # on the class: adapters are immutable
        WanI2VAdapter,
        "encode_image_batch",
        lambda self, pairs, *a: calls.append(len(pairs)) or batch(pairs, *a),
    )
    im = [i.convert("RGB") for i in _images()]
    im.append(im[0].transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    first = adapter.encode_images(im, h, w)
    assert calls == [3]  # one call for the three (the encoders see a padded batch of 4)
    for i, image in enumerate(im):
        alone = batch([(image,)], h, w)
        # Equal up to float32 rounding (XLA's CPU matmuls tile by batch size).
        for k in ("condition", "image_embeds"):
            np.testing.assert_allclose(first[k][i : i + 1], alone[k], rtol=1e-5, atol=1e-6)
    again = adapter.encode_images(im[::-1], h, w)  # the next epoch, another order
    assert calls == [3]
    np.testing.assert_array_equal(again["condition"], first["condition"][::-1])
    np.testing.assert_array_equal(again["image_embeds"], first["image_embeds"][::-1])
    new = im[1].transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    mixed = adapter.encode_images([im[2], new], h, w)
    assert calls == [3, 1]  # only the new image
    np.testing.assert_array_equal(mixed["condition"][0], first["condition"][2])
