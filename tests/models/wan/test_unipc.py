"""WAN's sigma grid choice and UniPC evaluation parity with a tiny Diffusers WanPipeline.

The pipeline runs end to end with the UniPCMultistepScheduler config Wan 2.1 / 2.2
Diffusers folders ship (tests/flow/test_unipc.py WAN_UNIPC); ffjax runs the adapter's
velocity with `ffjax.flow.unipc.unipc_sample` on the adapter's `unipc_sigmas`, from the
same initial noise and prompts. Flow-Factory sources: X-GenGroup/Flow-Factory a0b2bc5
src/flow_factory/models/wan/wan2_t2v.py (rollout on the scheduler's timesteps / 1000;
evaluation through the scheduler's eval mode) and src/flow_factory/scheduler/unipc_multistep.py
(eval mode: `UniPCMultistepScheduler.step`).
"""

import importlib

import jax
import numpy as np
import pytest
import torch

from ffjax import configs, registry
from ffjax.flow import schedule
from ffjax.flow.unipc import unipc_sample
from ffjax.models.wan.adapter import WanT2VAdapter, resolve_sigma_grid
from tests.flow.test_unipc import WAN_UNIPC
from tests.models.flux.tiny import rel_err
from tests.tiny_wan_pipeline import SIZES, build_wan_pipeline

FRAMES, STEPS = 5, 8
HEIGHT, WIDTH = SIZES["t2v"]
PROMPTS = ["a photo of a cat", "an astronaut riding a horse on the moon"]


@pytest.fixture(scope="module")
def unipc_pipe(tmp_path_factory):
    """The tiny t2v WanPipeline with WAN's UniPC scheduler, saved in its folder too."""
    from diffusers import UniPCMultistepScheduler

    path, pipe = build_wan_pipeline(tmp_path_factory.mktemp("wan_unipc") / "pipe", "t2v")
    pipe.scheduler = UniPCMultistepScheduler(**WAN_UNIPC)
    pipe.scheduler.save_pretrained(f"{path}/scheduler")
    return pipe, path


def _config(path, scale, grid="pipeline"):
    c = configs.base_config()
    c.model.name = "wan2-t2v"
    c.model.path = str(path)
    c.model.height, c.model.width, c.model.num_frames = HEIGHT, WIDTH, FRAMES
    c.model.negative_prompt = ""
    c.model.max_sequence_length = 32
    c.sampling.guidance_scale = scale
    c.sampling.sigma_grid = grid
    return c


@pytest.mark.parametrize("scale", [1.0, 4.0], ids=["no_cfg", "cfg"])
def test_unipc_sampling_matches_wan_pipeline(unipc_pipe, scale):
    pipe, path = unipc_pipe
    adapter, weights = registry.MODELS.get("wan2-t2v").load(_config(path, scale))
    assert adapter.sigma_grid == "unipc_flow"  # "pipeline": the folder's UniPC scheduler
    shape = adapter.latent_shape(len(PROMPTS), HEIGHT, WIDTH)
    noise = torch.randn(np.moveaxis(np.empty(shape), -1, 1).shape,
                        generator=torch.Generator().manual_seed(0))  # fmt: skip
    final = {}

    def on_step_end(_pipe, i, t, kwargs):
        final["latents"] = kwargs["latents"].numpy().copy()
        return {}

    with torch.no_grad():
        pipe(
            prompt=PROMPTS, negative_prompt="", guidance_scale=scale, latents=noise,
            height=HEIGHT, width=WIDTH, num_frames=FRAMES, num_inference_steps=STEPS,
            max_sequence_length=32, output_type="np", callback_on_step_end=on_step_end,
        )  # fmt: skip
    solver, model = adapter.unipc_sigmas(STEPS, HEIGHT, WIDTH)
    np.testing.assert_array_equal(solver, pipe.scheduler.sigmas.numpy())
    np.testing.assert_array_equal(model * 1000, pipe.scheduler.timesteps.numpy().astype(np.float32))

    cond = adapter.encode_prompts(PROMPTS, HEIGHT, WIDTH)
    ours = unipc_sample(
        adapter.velocity, {"params": weights["transformer"]}, cond,
        jax.numpy.asarray(np.moveaxis(noise.numpy(), 1, -1)), solver, model_sigmas=model,
        prepare_fn=adapter.prepare_cond,
    )  # fmt: skip
    ref = np.moveaxis(final["latents"], 1, -1)
    err = rel_err(ours, ref)
    print(f"scale {scale}: UniPC final latents rel err {err:.2g}")
    # float32 throughout; the model sees t / 1000 * 1000 (e.g. 250.99998 for t = 251).
    assert err < 1e-5


def test_rollout_grid_choices(unipc_pipe, tmp_path_factory):
    _, path = unipc_pipe
    for grid, want in [
        ("pipeline", schedule.unipc_flow_rollout_sigmas(10, 3.0)),
        ("unipc_flow", schedule.unipc_flow_rollout_sigmas(10, 3.0)),
        ("flow_match_euler", schedule.fixed_shift_sigmas(10, 3.0)),
    ]:
        adapter, _ = WanT2VAdapter.from_pretrained(path, num_frames=FRAMES, sigma_grid=grid)
        np.testing.assert_array_equal(adapter.sigmas(10, HEIGHT, WIDTH), want)
        # The evaluation solver's sigmas do not depend on the rollout grid.
        np.testing.assert_array_equal(
            adapter.unipc_sigmas(10, HEIGHT, WIDTH)[0], schedule.unipc_flow_sigmas(10, 3.0)
        )
    # The tiny FlowMatchEuler pipeline folders keep their grid under "pipeline".
    fme, _ = build_wan_pipeline(tmp_path_factory.mktemp("wan_fme") / "pipe", "t2v")
    assert resolve_sigma_grid("pipeline", fme) == "flow_match_euler"
    assert resolve_sigma_grid("pipeline", str(tmp_path_factory.mktemp("none"))) == "unipc_flow"
    with pytest.raises(ValueError, match="sigma_grid 'karras'; allowed: pipeline"):
        resolve_sigma_grid("karras", fme)
    with pytest.raises(ValueError, match="resolve 'pipeline' with resolve_sigma_grid"):
        adapter.replace(sigma_grid="pipeline")


def test_scheduler_folder_errors(tmp_path):
    (tmp_path / "scheduler").mkdir()
    cfg = tmp_path / "scheduler" / "scheduler_config.json"
    cfg.write_text('{"_class_name": "DDIMScheduler"}')
    with pytest.raises(ValueError, match="'DDIMScheduler' has no ffjax sigma grid"):
        resolve_sigma_grid("pipeline", str(tmp_path))
    cfg.write_text('{"_class_name": "UniPCMultistepScheduler", "use_flow_sigmas": false}')
    with pytest.raises(ValueError, match="without use_flow_sigmas"):
        resolve_sigma_grid("pipeline", str(tmp_path))


def _base(model="wan2-t2v"):
    c = configs.base_config()
    c.model.name, c.model.path, c.data.path = model, "/x", "/y"
    return c


def test_config_keys_validated():
    c = _base()
    assert (c.sampling.sigma_grid, c.sampling.eval_solver) == ("pipeline", "euler")
    c.sampling.sigma_grid, c.sampling.eval_solver = "unipc_flow", "unipc"
    configs.validate(c)
    c.sampling.sigma_grid = "karras"
    with pytest.raises(configs.ConfigError, match=r"sampling.sigma_grid='karras' is not allowed"):
        configs.validate(c)
    c = _base()
    c.sampling.eval_solver = "dpm"
    with pytest.raises(
        configs.ConfigError, match=r"eval_solver='dpm' is not allowed; allowed: euler, unipc"
    ):
        configs.validate(c)
    c = _base("flux1")
    c.sampling.sigma_grid, c.sampling.eval_solver = "unipc_flow", "unipc"
    with pytest.raises(configs.ConfigError) as e:
        configs.validate(c)
    for key in ("sigma_grid='unipc_flow'", "eval_solver='unipc'"):
        assert f"config.sampling.{key} needs a WAN model (wan2-t2v, wan2-i2v)" in str(e.value)
    c = _base("flux1")
    c.sampling.sigma_grid = "flow_match_euler"  # FLUX.1's own grid: fine
    configs.validate(c)


@pytest.mark.parametrize("recipe", ["wan_t2v_grpo", "wan_t2v_nft", "wan_i2v_grpo"])
def test_wan_recipes_grid(recipe):
    """Flow-Factory a0b2bc5 wan2_t2v.py / wan2_i2v.py roll out on the UniPC grid; the tiny
    variants keep the FlowMatchEuler grid their recorded results came from."""
    mod = importlib.import_module(f"configs.{recipe}")
    assert mod.get_config("").sampling.sigma_grid == "unipc_flow"
    assert mod.get_config("tiny").sampling.sigma_grid == "flow_match_euler"
    # Flow-Factory a0b2bc5 trainers/grpo.py evaluate() puts the scheduler in eval mode:
    # UniPC multistep (scheduler/unipc_multistep.py); the tiny variants keep Euler.
    assert mod.get_config("").sampling.eval_solver == "unipc"
    assert mod.get_config("tiny").sampling.eval_solver == "euler"


@pytest.mark.slow
def test_evaluation_solver_takes_the_folders_order_and_type(unipc_pipe, tmp_path):
    """sampling.eval_solver=unipc reads solver_order / solver_type from the folder's
    scheduler (as WanPipeline does): the generate stage's solve equals unipc_sample's
    at the folder's order 3, bh1 (and differs from the default 2, bh2)."""
    import json
    import shutil

    from ffjax import run as run_lib
    from ffjax.stages import generate

    _, path = unipc_pipe
    folder = tmp_path / "pipe"
    shutil.copytree(path, folder)
    f = folder / "scheduler" / "scheduler_config.json"
    f.write_text(json.dumps({**json.loads(f.read_text()), "solver_order": 3, "solver_type": "bh1"}))
    c = _config(folder, 1.0)
    c.sampling.eval_solver = "unipc"
    c.train.lora_rank = 0
    run = run_lib.build(c, training=False)
    assert run.gen.unipc == (3, "bh1")
    assert run_lib.build(_config(path, 1.0), abstract=True, training=False).gen.unipc == (2, "bh2")

    sigmas, _ = generate.ode_grid(run.adapter, "unipc", STEPS, HEIGHT, WIDTH)
    noise = generate.init_noise(run.adapter, jax.random.key(0), 2, HEIGHT, WIDTH, run.mesh)
    cond = run.adapter.encode_prompts(PROMPTS, HEIGHT, WIDTH)
    final, _, _ = generate.rollout_and_decode(
        run.gen, run.initial.trainable, cond, noise, sigmas, None, jax.random.key(1), solver="unipc"
    )
    variables = run.gen.variables(run.initial.trainable)
    kw = dict(model_sigmas=sigmas[1], prepare_fn=run.adapter.prepare_cond)
    want = unipc_sample(run.adapter.velocity, variables, cond, noise, sigmas[0], order=3,
                        solver_type="bh1", **kw)  # fmt: skip
    default = unipc_sample(run.adapter.velocity, variables, cond, noise, sigmas[0], **kw)
    np.testing.assert_allclose(np.asarray(final), np.asarray(want), rtol=1e-5, atol=1e-6)
    assert rel_err(default, want) > 1e-4  # the order and type change the solve
