"""configs/wan_t2v_{grpo,nft}.py on tiny real WanPipelines (UMT5 prompts, CFG in the
rollout and the training forward, LoRA on the WAN targets, causal-VAE video decoding):
the variants validate, each `tiny` variant trains two epochs end to end and writes its
video grids, the A14B pair trains with both experts, `--dry_run` plans the tiny run,
`ffjax.sample` writes videos, and a seeded GRPO run on `tiny` raises the reward."""

import importlib.util
import math
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

from ffjax import configs, dry_run, registry, sample, trainer
from ffjax import run as run_lib
from ffjax.stages import optimize

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PROMPTS = "a red cat\na dog on a mat\ntwo birds\na photo of a fox\n"


def _recipe(algorithm="grpo"):
    name = f"wan_t2v_{algorithm}"
    spec = importlib.util.spec_from_file_location(name, CONFIGS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tiny_pipelines):
    """{"t2v" | "a14b": pipeline folder (the session's, read-only), "prompts": data folder}."""
    tmp = tmp_path_factory.mktemp("wan_trainer")
    out = {v: tiny_pipelines.wan(v)[0] for v in ("t2v", "a14b")}
    (tmp / "prompts").mkdir()
    (tmp / "prompts" / "train.txt").write_text(PROMPTS)
    out["prompts"] = str(tmp / "prompts")
    return out


def _tiny(folders, algorithm="grpo", variant="t2v"):
    c = _recipe(algorithm).get_config("tiny")
    c.model.path, c.data.path = folders[variant], folders["prompts"]
    return c


@pytest.mark.parametrize(
    "algorithm,variant,steps", [("grpo", "", 2), ("grpo", "a14b", 2), ("grpo", "tiny", 2),
                                ("nft", "", 1), ("nft", "tiny", 1)]
)  # fmt: skip
def test_variants_validate_and_divide_into_optimizer_steps(algorithm, variant, steps):
    c = _recipe(algorithm).get_config(variant)
    assert c.model.path is None and c.data.path is None
    c.model.path, c.data.path = "/data/Wan2.1-T2V-14B-Diffusers", "/data/pickscore"
    configs.validate(c)
    spec = registry.ALGORITHMS.get(c.algorithm.name)
    rows = run_lib.check_run_shapes(c, spec, 1)
    assert rows // (c.train.micro_batch_size * c.train.grad_accum_steps) == steps
    assert c.model.name == "wan2-t2v" and (c.model.num_frames - 1) % 4 == 0


def test_a14b_recipe_adapts_the_high_noise_expert_only(folders):
    import re

    from ffjax.models.lora import dense_kernels
    from ffjax.models.wan.adapter import WanT2VAdapter

    _, weights = WanT2VAdapter.from_pretrained(folders["a14b"], num_frames=5)
    paths = dense_kernels(weights["transformer"])
    targets = _recipe().get_config("a14b").train.lora_targets
    chosen = sorted(p for p in paths if any(re.search(t, p) for t in targets))
    assert chosen and all(p.startswith("transformer/blocks/") for p in chosen)
    default = WanT2VAdapter.lora_targets.fget(None)
    both = {p.split("/")[0] for p in paths if any(re.search(t, p) for t in default)}
    assert both == {"transformer", "transformer_2"}
    per_expert = [p.split("/", 1)[1] for p in chosen]
    assert sorted(per_expert) == sorted(
        f"blocks/{m}" for m in ("attn1/to_q", "attn1/to_k", "attn1/to_v", "attn1/to_out",
                                "attn2/to_q", "attn2/to_k", "attn2/to_v", "attn2/to_out",
                                "ffn/proj_in", "ffn/proj_out")
    )  # fmt: skip


@pytest.mark.slow
def test_tiny_grpo_trains_two_epochs_and_writes_videos(folders, tmp_path):
    c = _tiny(folders)
    c.logging.image_grid_every = 1
    workdir = tmp_path / "run"
    history = trainer.train(configs.validate(c), workdir, progress=False)
    assert len(history) == 2
    for row in history:
        assert math.isfinite(row["loss"]) and math.isfinite(row["grad_norm"])
    # The rollout guides and so does the training forward: the first ratio is 1.
    assert abs(history[0]["ratio_min"] - 1) < 1e-2 and abs(history[0]["ratio_max"] - 1) < 1e-2
    assert math.isfinite(history[-1]["eval/reward_mean"])
    for name in ("eval_epoch_0000.gif", "eval_epoch_0002.gif", "train_epoch_0001.gif"):
        gif = Image.open(workdir / "samples" / name)
        assert gif.n_frames == c.model.num_frames, name

    c.checkpoint.every_epochs = 0
    out = tmp_path / "sampled"
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red cat\n")
    line = sample.sample(configs.validate(c), checkpoint=str(workdir), prompts=str(prompts),
                         out=out, num_per_prompt=2, progress=False)  # fmt: skip
    assert line.startswith("wrote 2 videos")
    assert Image.open(out / "00000_1.gif").n_frames == 5
    assert Image.open(out / "grid.gif").n_frames == 5


@pytest.mark.slow
def test_tiny_nft_trains_both_a14b_experts(folders):
    """NFT trains on sigmas on both sides of the 0.875 boundary, so one epoch moves the
    LoRA of each expert (B starts at zero); micro-batches of one expert's rows are
    traced for that expert alone."""
    run = trainer.setup(configs.validate(_tiny(folders, "nft", "a14b")))
    assert set(run.initial.trainable) == {"transformer", "transformer_2"}
    before = jax.tree.map(np.asarray, run.initial.trainable)
    experts, step = [], run.train_step
    run.train_step = lambda *a, expert=None: (experts.append(expert), step(*a, expert=expert))[1]
    state, metrics, videos = trainer.run_epoch(run, run.initial)
    assert {0, 1} <= set(experts), experts  # both experts got one-expert micro-batches
    assert math.isfinite(metrics["loss"]) and math.isfinite(metrics["grad_norm"])
    assert videos.shape == (8, 5, 16, 32, 3) and videos.dtype == np.uint8
    for expert in ("transformer", "transformer_2"):
        moved = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - b).max()),
                             state.trainable[expert], before[expert])  # fmt: skip
        assert max(jax.tree.leaves(moved)) > 0, expert


def test_micro_batches_of_one_expert():
    rng = np.random.default_rng(0)
    order = rng.permutation(20).astype(np.int32)
    row_expert = (np.arange(20) % 3 == 0).astype(np.int32)  # 7 rows of expert 1, 13 of 0
    batches = optimize.micro_batches(order, 4, row_expert, np.random.default_rng(1))
    assert sorted(np.concatenate([b for b, _ in batches]).tolist()) == list(range(20))
    assert all(len(b) == 4 for b, _ in batches)
    kinds = sorted(str(e) for _, e in batches)
    assert kinds == ["0", "0", "0", "1", "None"]  # 12 + 4 rows whole, 1 + 3 left mixed
    for part, e in batches:
        if e is not None:
            assert set(row_expert[part]) == {e}
    plain = optimize.micro_batches(order, 4, None, rng)
    assert [e for _, e in plain] == [None] * 5 and np.array_equal(plain[1][0], order[4:8])


@pytest.mark.slow
def test_one_expert_batches_equal_the_switch_at_half_the_cost_of_mixed_ones(folders):
    """velocity with cond.expert fixed = the per-row switch on rows of that expert, with
    the same LoRA gradient; and its gradient costs about half the FLOPs of a mixed
    micro-batch, where the switch runs both experts on every row (jnp.where)."""
    from ffjax.models.lora import init_lora
    from ffjax.models.wan.adapter import WanT2VAdapter

    adapter, weights = WanT2VAdapter.from_pretrained(folders["a14b"], num_frames=5)
    params = weights["transformer"]  # {"transformer": high-noise, "transformer_2": low-noise}
    lora, scale = init_lora(params, rank=4, alpha=4.0, targets=adapter.lora_targets,
                            init="gaussian", key=jax.random.key(0))  # fmt: skip
    lora = jax.tree.map(lambda a: a + 0.01, lora)  # B != 0: both experts' LoRA matter
    b, text = 2, adapter.config.text_dim
    cond = adapter.make_cond(np.random.default_rng(0).standard_normal((b, 8, text)))
    x = jax.random.normal(jax.random.key(1), adapter.latent_shape(b, 16, 32))

    def loss(lora, sigma, c):  # sigma traced, as in the train step
        v = adapter.velocity({"params": params, "lora": lora, "lora_scale": scale}, x, sigma, c)
        return (v**2).mean()

    grad = jax.jit(jax.value_and_grad(loss))
    for sigma_value, expert in ((0.95, 0), (0.3, 1)):
        sigma = np.full((b,), sigma_value, np.float32)
        assert adapter.experts_of(sigma).tolist() == [expert] * b
        switch, fixed = (
            grad(lora, sigma, cond),
            grad(lora, sigma, adapter.with_expert(cond, expert)),
        )
        np.testing.assert_allclose(fixed[0], switch[0], rtol=1e-6)
        # Float32 programs of different shape round differently (more so compiled at O0,
        # tests/conftest.py): 1e-6 of the largest gradient entry, at least 1e-9.
        top = max(float(np.abs(c).max()) for c in jax.tree.leaves(switch[1]))
        for a, c in zip(jax.tree.leaves(fixed[1]), jax.tree.leaves(switch[1]), strict=True):
            np.testing.assert_allclose(a, c, rtol=1e-5, atol=max(1e-9, 1e-6 * top))
    sigma = np.full((b,), 0.95, np.float32)
    one = grad.lower(lora, sigma, adapter.with_expert(cond, 0)).compile()
    mixed = grad.lower(lora, sigma, cond).compile()  # traced sigma: may be mixed
    flops = [c.cost_analysis()["flops"] for c in (one, mixed)]
    temp = [c.memory_analysis().temp_size_in_bytes for c in (one, mixed)]
    print(f"one expert / switch: FLOPs {flops[0]:.3g} / {flops[1]:.3g}, temporaries {temp}")
    assert flops[0] < 0.6 * flops[1] and temp[0] < 0.8 * temp[1], (flops, temp)


@pytest.mark.slow
def test_tiny_dry_run_plans_and_compiles(folders):
    """`--dry_run` (config files only) for the tiny GRPO run (CFG, K/V prepared once)."""
    c = _tiny(folders)
    report = dry_run.plan(configs.validate(c))
    assert "train" in report.programs and "wan2-t2v" in report.text(None)


# Full fine-tune at a high learning rate: the random tiny pipeline's videos sit near
# mean luma 0.49 and move slowly, so the margin is small but clear of the seeded runs'
# epoch-to-epoch noise (~0.002). Measured (first two vs last two epochs of 8, this
# config, 2026-12-01): seed 0 +0.016 (0.4866 -> 0.5024), seed 1 +0.019 (0.4918 -> 0.5107).
LEARNING_OVERRIDES = {
    "train.lora_rank": "0",
    "train.learning_rate": "3e-2",
    "algorithm.clip_range": "1e-2",
    "train.num_epochs": "8",
    "train.eval_every": "0",
    "seed": "0",
}
LEARNING_MARGIN = 0.008


@pytest.mark.slow
def test_tiny_grpo_learning_raises_brightness(folders, tmp_path):
    c = _tiny(folders)
    for key, value in LEARNING_OVERRIDES.items():
        configs.apply_override(c, key, value)
    history = trainer.train(configs.validate(c), tmp_path / "run", progress=False)
    first = np.mean([r["reward_mean"] for r in history[:2]])
    last = np.mean([r["reward_mean"] for r in history[-2:]])
    print(f"wan2-t2v grpo: brightness {first:.4f} -> {last:.4f}")
    assert last - first > LEARNING_MARGIN, (first, last)


@pytest.mark.slow
def test_unipc_evaluation_is_the_unipc_solve_of_the_adapter(folders):
    """`sampling.eval_solver="unipc"`: the generate stage's deterministic run (evaluation,
    `ffjax.sample`) is `flow.unipc.unipc_sample` of the adapter's velocity on the UniPC
    grid, through the chunking, the variables and `finish_latents` (tests/models/wan/
    test_unipc.py holds that solve equal to WanPipeline's UniPCMultistepScheduler)."""
    from ffjax.flow import unipc
    from ffjax.stages import generate

    c = _tiny(folders)
    c.sampling.eval_solver = "unipc"
    c.sampling.batch_size = 2  # two calls of 2 rows: the chunks are stitched back in order
    run = run_lib.build(configs.validate(c), training=False)
    m, n = c.model, c.sampling.eval_num_steps
    sigmas, levels = generate.ode_grid(run.adapter, "unipc", n, m.height, m.width)
    assert levels is None and len(sigmas[0]) == n + 1 and len(sigmas[1]) == n
    prompts = PROMPTS.split("\n")[:4]
    noise = generate.init_noise(run.adapter, jax.random.key(3), 4, m.height, m.width, run.mesh)
    out = generate.generate(run.gen, None, prompts, [{}] * 4, noise, sigmas, levels,
                            jax.random.key(0), solver="unipc")  # fmt: skip
    cond = run.adapter.encode_prompts(prompts, m.height, m.width)
    direct = unipc.unipc_sample(run.adapter.velocity, run.gen.variables(None), cond, noise,
                                sigmas[0], model_sigmas=sigmas[1],
                                prepare_fn=run.adapter.prepare_cond)  # fmt: skip
    np.testing.assert_allclose(np.asarray(out.final), np.asarray(direct), rtol=1e-5, atol=1e-5)
    assert out.traj is None and out.images.shape[0] == 4
    euler = generate.generate(run.gen, None, prompts, [{}] * 4, noise,
                              *generate.ode_grid(run.adapter, "euler", n, m.height, m.width),
                              jax.random.key(0))  # fmt: skip
    assert float(np.abs(np.asarray(euler.final) - np.asarray(direct)).max()) > 1e-3
