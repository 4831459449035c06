"""Each recipe against the values of the source its docstring cites, typed in from the
source files (repository, commit and path in each row's comment). Config-level only.

Batch geometry: a reference's optimizer step takes per_device_batch_size x GPUs x
gradient-accumulation rows, GAS = (unique prompts x group size / (GPUs x per-device
batch)) / gradient_step_per_epoch x trained steps per sample (Flow-Factory b30dc00
src/flow_factory/hparams/training_args/_base.py `_initialize_batch_geometry`,
`compute_gradient_accumulation_steps`); ffjax's micro_batch_size x grad_accum_steps.
"""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _recipe(name, variant=""):
    spec = importlib.util.spec_from_file_location(name, ROOT / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(variant)


# (recipe, variant): source values. Keys: guidance, steps, eval_steps, rewards {ffjax
# name: weight}, kl_type, kl_form, gpus, per_device, prompts, group, grad_steps, trained
# (SDE steps or training sigmas per sample), ema (decay, interval) or None, eps.
SOURCES = {
    # X-GenGroup/Flow-Factory b30dc00 examples/grpo/lora/flux1/default.yaml
    ("flux_grpo", "flow_factory"): dict(
        guidance=3.5, steps=10, eval_steps=20, rewards={"pickscore_rank": 1.0},
        kl_type="v-based", gpus=8, per_device=2, prompts=48, group=16, grad_steps=2,
        trained=1, ema=(0.9, 4), eps="flow_factory", noise=0.7, sde=(1, 2, 3),
    ),
    # yifan123/flow_grpo 54809b5 config/grpo.py pickscore_flux (32 GPUs x 3, 24 per
    # prompt, 48 prompts, gradient_accumulation_steps = num_batches_per_epoch // 2) and
    # scripts/train_flux.py (timestep_fraction 0.99 of 6 steps: 5 trained)
    ("flux_grpo", ""): dict(
        guidance=3.5, steps=6, eval_steps=28, rewards={"pickscore": 1.0},
        kl_type="x-based", kl_form="flow_grpo", gpus=32, per_device=3, prompts=48,
        group=24, grad_steps=2, trained=5, ema=(0.9, 4), eps="flow_grpo", noise=0.9,
    ),
    # X-GenGroup/Flow-Factory b30dc00 examples/nft/lora/flux1/default.yaml (guidance
    # 1.0; a0b2bc5 3.5)
    ("flux_nft", ""): dict(
        guidance=1.0, steps=8, eval_steps=28, rewards={"pickscore": 1.0}, gpus=8,
        per_device=1, prompts=48, group=16, grad_steps=1, trained=2, ema=None,
        eps="flow_factory", method="sum", std="group", nft_beta=1.0, sigma_hi=0.7,
    ),
    # X-GenGroup/Flow-Factory a0b2bc5 examples/awm/lora/flux1/default.yaml
    ("flux_awm", ""): dict(
        guidance=3.5, steps=10, eval_steps=20, rewards={"pickscore": 1.0}, gpus=8,
        per_device=2, prompts=48, group=16, grad_steps=1, trained=4, ema=None,
        eps="flow_factory", method="sum", std="global", sigma_hi=0.7,
    ),
    # X-GenGroup/Flow-Factory a0b2bc5 examples/grpo/lora/qwen_image/default.yaml
    ("qwen_image_grpo", ""): dict(
        guidance=4.0, steps=10, eval_steps=28, kl_type="v-based", gpus=8, per_device=1,
        rewards={"clip_score": 1.0, "pickscore": 0.5}, prompts=48, group=16,
        grad_steps=2, trained=1, ema=(0.9, 4), method="gdpo", std="group", noise=1.0,
        sde=(1, 2, 3),
    ),
    # X-GenGroup/Flow-Factory b30dc00 examples/nft/lora/qwen_image/rational_rewards_t2i.yaml
    # (guidance 1.0; a0b2bc5 4.0). Reward: its VLM judge is not in ffjax (PickScore).
    ("qwen_image_nft", ""): dict(
        guidance=1.0, steps=30, eval_steps=40, gpus=8, per_device=1, prompts=32,
        group=16, grad_steps=1, trained=10, ema=None, method="gdpo", std="group",
        nft_beta=1.0, sigma_hi=0.5, lr=2e-4,
    ),
    # X-GenGroup/Flow-Factory a0b2bc5 examples/grpo/lora/wan21/t2v.yaml
    ("wan_t2v_grpo", ""): dict(
        guidance=5.0, steps=10, eval_steps=28, kl_type="v-based", gpus=8, per_device=1,
        rewards={"clip_score": 1.0, "pickscore": 0.5}, prompts=48, group=16,
        grad_steps=2, trained=1, ema=(0.9, 4), method="gdpo", std="group", noise=0.9,
        sde=(1, 2, 3), flow_shift=3.0, frames=5, lr=1e-4,
    ),
    # X-GenGroup/Flow-Factory b30dc00 examples/nft/lora/wan21/t2v.yaml (guidance 1.0;
    # a0b2bc5 5.0)
    ("wan_t2v_nft", ""): dict(
        guidance=1.0, steps=12, eval_steps=20, rewards={"pickscore": 1.0}, gpus=8,
        per_device=1, prompts=48, group=16, grad_steps=1, trained=4, ema=None,
        method="gdpo", std="group", nft_beta=0.1, sigma_hi=0.9, frames=1, lr=1e-4,
    ),
    # X-GenGroup/Flow-Factory a0b2bc5 examples/grpo/lora/wan21/i2v.yaml
    ("wan_i2v_grpo", ""): dict(
        guidance=5.0, steps=10, eval_steps=28, kl_type="v-based", gpus=8, per_device=1,
        rewards={"pickscore": 1.0}, prompts=48, group=16, grad_steps=2, trained=1,
        ema=(0.9, 4), method="gdpo", std="group", noise=0.9, sde=(1, 2, 3), frames=5,
    ),
}  # fmt: skip


@pytest.mark.parametrize("key", list(SOURCES), ids=lambda k: ":".join(k))
def test_recipe_matches_its_source(key):
    src, c = SOURCES[key], _recipe(*key)
    assert c.sampling.guidance_scale == src["guidance"]
    assert c.sampling.num_steps == src["steps"]
    assert c.sampling.eval_num_steps == src["eval_steps"]
    if "rewards" in src:
        got = {e.name: e.weight for e in c.rewards.values()}
        assert got == src["rewards"]
    if "kl_type" in src:
        assert c.algorithm.kl_type == src["kl_type"] and c.algorithm.kl_beta == 0
    if "kl_form" in src:
        assert c.algorithm.kl_form == src["kl_form"]
    # Batch geometry: the same rows per rollout call and per optimizer step.
    samples = src["prompts"] * src["group"]
    batches = samples // (src["gpus"] * src["per_device"])
    rows_per_step = src["gpus"] * src["per_device"] * batches // src["grad_steps"] * src["trained"]
    assert c.data.prompts_per_epoch == src["prompts"] and c.data.group_size == src["group"]
    assert c.train.micro_batch_size * c.train.grad_accum_steps == rows_per_step
    assert samples * src["trained"] // rows_per_step == src["grad_steps"]
    if "noise" in src:
        assert c.sampling.noise_level == src["noise"]
    if "sde" in src:
        assert tuple(c.sampling.sde_candidates) == src["sde"]
    if "method" in src:
        assert c.train.advantage_method == src["method"]
    if "std" in src:
        assert c.train.advantage_std == src["std"]
    if "eps" in src:
        assert c.train.advantage_eps == src["eps"]
    if "nft_beta" in src:
        assert c.algorithm.beta == src["nft_beta"]
    if "sigma_hi" in src:
        assert tuple(c.algorithm.sigma_range) == (0.0, src["sigma_hi"])
        assert c.algorithm.num_train_timesteps == src["trained"]
    if "flow_shift" in src:
        assert c.model.flow_shift == src["flow_shift"]
    if "frames" in src:
        assert c.model.num_frames == src["frames"]
    if "lr" in src:
        assert c.train.learning_rate == src["lr"]
    if src["ema"] is not None:  # decay 0.9 every 4 epochs: configs.ema_every_4_epochs
        assert src["ema"] == (0.9, 4)
        got = (c.ema.schedule, c.ema.warmup_epochs, c.ema.decay, c.ema.update_interval)
        assert got == ("power_warmup", 10, 0.9, 4)  # [FF] ema_decay_schedule power


@pytest.mark.parametrize("name", ["flux_grpo", "flux_nft", "flux_awm"])
def test_flux_recipes_name_the_missing_reward_weights(name):
    from ffjax import configs

    c = _recipe(name)
    c.model.path = c.data.path = "/data"
    with pytest.raises(configs.ConfigError, match=r"rewards\.pickscore(_rank)?\.args\.path"):
        configs.validate(c)
    for entry in c.rewards.values():
        entry.args.path = "/data/PickScore_v1"
    configs.validate(c)


def test_every_recipe_docstring_cites_commits():
    """Every [tag] source line names a repository and a commit."""
    import re

    for path in sorted((ROOT / "configs").glob("*.py")):
        if path.name == "demo.py":
            continue
        doc = path.read_text().split('"""')[1]
        cites = re.findall(r"^\s+\[\w+\]\s+(\S+/\S+) (\w+) ", doc, flags=re.M)
        assert cites, path.name
        for repo, commit in cites:
            assert (
                re.fullmatch(r"[0-9a-f]{7}", commit)
                or repo.startswith("NVlabs")
                or (repo.startswith("scxue"))
            ), (path.name, repo, commit)


@pytest.mark.parametrize("name", ["qwen_image_grpo", "qwen_image_awm"])
def test_qwen_image_negative_prompt_is_flow_factorys(name):
    # X-GenGroup/Flow-Factory a0b2bc5 src/flow_factory/models/qwen_image/qwen_image.py
    # encode_prompt: with guidance_scale > 1, negative_prompt None -> "".
    from ffjax import configs

    c = _recipe(name)
    assert c.sampling.guidance_scale > 1 and c.model.negative_prompt == ""
    assert configs.base_config().model.negative_prompt == ""


# (recipe): (eval height, eval width, eval frames) of its source's `eval:` section, 0 =
# the training value. X-GenGroup/Flow-Factory b30dc00 examples/nft/lora/flux1/default.yaml
# (eval.resolution 1024), a0b2bc5 examples/awm/lora/flux1/default.yaml (1024),
# a0b2bc5 examples/grpo/lora/qwen_image/default.yaml (1024; also configs/qwen_image_awm's
# [FG]), a0b2bc5 examples/grpo/lora/wan21/t2v.yaml (480, num_frames 13) and i2v.yaml (480,
# num_frames 5 = training), b30dc00 examples/nft/lora/wan21/t2v.yaml ([480, 832] = training,
# num_frames 41), b30dc00 examples/nft/lora/qwen_image/rational_rewards_t2i.yaml (512 =
# training).
EVAL = {
    "flux_nft": (1024, 1024, 0),
    "flux_awm": (1024, 1024, 0),
    "qwen_image_grpo": (1024, 1024, 0),
    "qwen_image_awm": (1024, 1024, 0),
    "qwen_image_nft": (0, 0, 0),
    "wan_t2v_grpo": (480, 480, 13),
    "wan_i2v_grpo": (480, 480, 0),
    "wan_t2v_nft": (0, 0, 41),
}


@pytest.mark.parametrize("name", sorted(EVAL))
def test_evaluation_settings_follow_the_source(name):
    m = _recipe(name).model
    assert (m.eval_height, m.eval_width, m.eval_num_frames) == EVAL[name]
    tiny = _recipe(name, "tiny").model  # the tiny variants evaluate at their own size
    assert (tiny.eval_height, tiny.eval_width, tiny.eval_num_frames) == (0, 0, 0)
