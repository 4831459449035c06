"""Flow-Factory YAML configs (ffjax/ff_yaml): every table entry, the batch geometry and
EMA rules, both schemas for GRPO / NFT / AWM on FLUX.1, Qwen-Image and WAN (LoRA and
full), the refusals, the hub-ID check, and a few runs of the real command line.

Expected values come from Flow-Factory's hparams (X-GenGroup/Flow-Factory a0b2bc5
src/flow_factory/hparams/args.py `_align_batch_geometry` / `_adjust_gradient_accumulation`,
training_args.py; b30dc00 hparams/training_args/_base.py) and from ffjax's recipes that
follow its examples (configs/flux_grpo.py:flow_factory, flux_nft.py, flux_awm.py).
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ffjax import configs, ff_yaml, local_paths
from ffjax.errors import ModelFolderError
from ffjax.ff_yaml import rules
from ffjax.ff_yaml.table import IGNORED, LAUNCHER, ROWS

HERE = Path(__file__).resolve().parent
FILES = HERE / "ff_yaml"
ROOT = HERE.parent

# A small GRPO run: 1 GPU x 4 rows, 4 prompts x 4 samples, 1 SDE step, 1 optimizer step.
BASE = {
    "num_processes": 1,
    "data": {"dataset_dir": "prompts"},
    "model": {
        "model_name_or_path": "/data/FLUX.1-dev",
        "model_type": "flux1",
        "target_modules": "default",
    },  # fmt: skip
    "train": {
        "trainer_type": "grpo",
        "per_device_batch_size": 4,
        "group_size": 4,
        "unique_sample_num_per_epoch": 4,
        "gradient_step_per_epoch": 1,
    },
    "rewards": [{"name": "pick", "reward_model": "PickScore"}],
}
FORWARD = {"scheduler": {"dynamics_type": "ODE"}}


def doc(trainer: str = "grpo", **sections) -> dict:
    """BASE for `trainer`, with `sections` ({"train": {...}} or top-level values) merged."""
    d = copy.deepcopy(BASE)
    d["train"]["trainer_type"] = trainer
    if trainer in ("nft", "awm"):
        d.update(copy.deepcopy(FORWARD))
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(d.get(key), dict):
            d[key].update(value)
        else:
            d[key] = value
    return d


def line(mapping: ff_yaml.Mapping, ff: str) -> ff_yaml.Line:
    (found,) = [x for x in mapping.lines if x.ff == ff]
    return found


def set_key(d: dict, ff: str, value) -> None:
    """Puts Flow-Factory key `ff` (dotted, `rewards[].x` = the first entry) into `d`."""
    if "[]." in ff:
        sec, name = ff.split("[].")
        d.setdefault(sec, [{"name": "e", "reward_model": "PickScore"}])
        d[sec][0][name] = value
    elif "." in ff:
        sec, name = ff.split(".", 1)
        d.setdefault(sec, {})[name] = value
    else:
        d[ff] = value


# Each mapped row: (trainer, value) -> the ffjax keys it sets (a subset check).
MAPPED = {
    "config_file": ("grpo", "ds.yaml", {"mesh.data": 1, "mesh.fsdp": -1}),
    "num_processes": ("grpo", 2, {"train.micro_batch_size": 8, "sampling.batch_size": 8}),
    "mixed_precision": ("grpo", "fp16", {"model.dtype": "float16"}),
    "data.dataset_dir": ("grpo", "p/q", {"data.path": "p/q"}),
    "data.datasets": (
        "grpo",
        [{"name": "a", "dataset_dir": "d", "train": {"weight": 1}}],
        {"data.path": "d"},
    ),  # fmt: skip
    "data.image_dir": ("grpo", "imgs", {"data.image_dir": "imgs"}),
    "data.video_dir": ("grpo", None, {}),
    "data.audio_dir": ("grpo", None, {}),
    "data.sampler_type": ("grpo", "auto", {}),
    "model.model_name_or_path": ("grpo", "org/Model", {"model.path": "org/Model"}),
    "model.model_type": (
        "grpo",
        "wan2_i2v",
        {"model.name": "wan2-i2v", "sampling.eval_solver": "unipc"},
    ),  # fmt: skip
    "model.finetune_type": ("grpo", "lora", {"train.lora_rank": 8}),  # lora_rank default 8
    "model.lora_alpha": ("grpo", None, {}),  # full fine-tune (the default): no LoRA
    "model.target_modules": ("grpo", "default", {}),
    "model.target_components": ("grpo", ["transformer", "transformer_2"], {}),
    "model.resume_path": ("grpo", None, {}),
    "log.run_name": ("grpo", "r1", {"logging.wandb_name": "r1"}),
    "log.logging_backend": ("grpo", "wandb", {"logging.wandb_project": "Flow-Factory"}),
    "log.save_freq": ("grpo", 3, {"checkpoint.every_epochs": 3}),
    "log.verbose": ("grpo", True, {"logging.step_progress": True}),
    "train.trainer_type": ("awm", "awm", {"algorithm.name": "awm"}),
    "train.resolution": ("grpo", [256, 320], {"model.height": 256, "model.width": 320}),
    "train.height": ("grpo", 192, {"model.height": 192}),
    "train.width": ("grpo", 160, {"model.width": 160}),
    "train.num_frames": ("grpo", 9, {"model.num_frames": 9}),
    "train.max_epochs": ("grpo", 12, {"train.num_epochs": 12}),
    "train.per_device_batch_size": (
        "grpo",
        2,
        {"train.micro_batch_size": 2, "sampling.batch_size": 2},
    ),  # fmt: skip
    "train.group_size": ("grpo", 8, {"data.group_size": 8}),
    "train.unique_sample_num_per_epoch": ("grpo", 8, {"data.prompts_per_epoch": 8}),
    "train.gradient_step_per_epoch": ("grpo", 2, {"train.grad_accum_steps": 2}),
    "train.gradient_accumulation_steps": ("grpo", 2, {}),  # shown on gradient_step_per_epoch
    "train.num_inner_epochs": ("grpo", 2, {"train.inner_epochs": 2}),
    "train.num_inference_steps": ("grpo", 12, {"sampling.num_steps": 12}),
    "train.guidance_scale": ("grpo", 4.5, {"sampling.guidance_scale": 4.5}),
    "train.guidance_scale_2": ("grpo", 3.0, {"model.guidance_scale_2": 3.0}),
    "train.seed": ("grpo", 3, {"seed": 3}),
    "train.learning_rate": ("grpo", 2e-4, {"train.learning_rate": 2e-4}),
    "train.adam_weight_decay": ("grpo", 0.01, {"train.weight_decay": 0.01}),
    "train.adam_betas": ("grpo", [0.8, 0.9], {"train.adam_b1": 0.8, "train.adam_b2": 0.9}),
    "train.adam_epsilon": ("grpo", 1e-6, {"train.adam_eps": 1e-6}),
    "train.max_grad_norm": ("grpo", 0.5, {"train.max_grad_norm": 0.5}),
    "train.enable_gradient_checkpointing": ("grpo", True, {"model.remat": "full"}),
    "train.ema_decay": ("grpo", 0.0, {"ema.decay": 0.0}),
    "train.ema_update_interval": ("grpo", 1, {}),
    "train.ema_decay_schedule": ("grpo", "constant", {}),
    "train.warmup_steps": ("grpo", 10, {}),
    "train.flat_steps": ("grpo", 0, {}),
    "train.ramp_rate": ("grpo", 0.001, {}),
    "train.initial_decay": ("grpo", 0.0, {}),
    "train.ema_device": ("grpo", "cpu", {"ema.offload": True}),
    "train.ref_param_device": ("grpo", "cpu", {"train.offload_ref": True}),
    "train.latent_storage_dtype": ("grpo", "bf16", {"sampling.storage_dtype": "bfloat16"}),
    "train.shuffle_samples": ("grpo", True, {}),
    "train.reward_optimization_overlap": ("grpo", False, {}),
    "train.global_std": ("grpo", False, {"train.advantage_std": "group"}),
    "train.advantage_aggregation": ("grpo", "sum", {"train.advantage_method": "sum"}),
    "train.adv_clip_range": ("grpo", [-2.0, 3.0], {"algorithm.adv_clip_bounds": (-2.0, 3.0)}),
    "train.kl_type": ("grpo", "v-based", {"algorithm.kl_type": "v-based"}),
    "train.kl_beta": ("grpo", 0.01, {"algorithm.kl_beta": 0.01}),
    "train.clip_range": ("grpo", [-1e-4, 2e-4], {"algorithm.clip_bounds": (-1e-4, 2e-4)}),
    "train.nft_beta": ("nft", 0.5, {"algorithm.beta": 0.5}),
    "train.off_policy": ("nft", False, {"algorithm.off_policy": False}),
    "train.num_train_timesteps": ("nft", 3, {"algorithm.num_train_timesteps": 3}),
    "train.time_sampling_strategy": ("nft", "uniform", {"algorithm.timestep_sampler": "uniform"}),
    "train.time_shift": ("nft", 1.0, {"algorithm.time_shift": 1.0}),
    "train.timestep_range": ("awm", [0.2, 0.8], {"algorithm.sigma_range": (0.2, 0.8)}),
    "train.awm_weighting": ("awm", "Uniform", {"algorithm.weighting": "uniform"}),
    "train.ghuber_power": ("awm", 0.5, {"algorithm.ghuber_p": 0.5}),
    "train.ema_kl_beta": ("awm", 0.2, {"algorithm.ema_kl_beta": 0.2}),
    "scheduler.dynamics_type": ("grpo", "CPS", {"sampling.dynamics": "cps"}),
    "scheduler.noise_level": ("grpo", 0.9, {"sampling.noise_level": 0.9}),
    "scheduler.num_sde_steps": ("grpo", None, {"sampling.sde_num_steps": 0}),
    "scheduler.sde_steps": ("grpo", [0, 2], {"sampling.sde_candidates": (0, 2)}),
    "scheduler.flow_shift": ("grpo", 5.0, {"model.flow_shift": 5.0}),
    "eval.num_inference_steps": ("grpo", 20, {"sampling.eval_num_steps": 20}),
    "eval.eval_freq": ("grpo", 7, {"train.eval_every": 7}),
    "eval.guidance_scale": ("grpo", 5.0, {"sampling.eval_guidance_scale": 5.0}),
    "eval.resolution": ("grpo", [768, 1024], {"model.eval_height": 768, "model.eval_width": 1024}),
    "eval.height": ("grpo", None, {}),
    "eval.width": ("grpo", None, {}),
    "eval.num_frames": ("grpo", 9, {"model.eval_num_frames": 9}),
    "eval.guidance_scale_2": ("grpo", 2.0, {"model.eval_guidance_scale_2": 2.0}),
    "rewards[].reward_model": (
        "grpo",
        "CLIP",
        {"rewards.e.name": "clip_score", "rewards.e.args.w": 1.0, "rewards.e.args.clamp": False},
    ),  # fmt: skip
    "rewards[].weight": ("grpo", 0.5, {"rewards.e.weight": 0.5}),
    "rewards[].batch_size": ("grpo", 8, {"rewards.e.args.batch_size": 8}),
    "rewards[].dtype": ("grpo", "fp32", {"rewards.e.args.dtype": "float32"}),
    "rewards[].async_reward": ("grpo", True, {"train.async_rewards": True}),
    "rewards[].num_workers": ("grpo", 1, {}),  # read only with async_reward
    "rewards[].applicable_datasets": ("grpo", None, {}),
    "eval_rewards[].reward_model": (
        "grpo",
        "PickScore_Rank",
        {"eval_rewards.e.name": "pickscore_rank"},
    ),  # fmt: skip
    "eval_rewards[].weight": ("grpo", 2.0, {"eval_rewards.e.weight": 2.0}),
    "eval_rewards[].batch_size": ("grpo", 4, {"eval_rewards.e.args.batch_size": 4}),
    "eval_rewards[].dtype": ("grpo", "bf16", {"eval_rewards.e.args.dtype": "bfloat16"}),
    "eval_rewards[].async_reward": ("grpo", True, {}),  # the async pool is the rollout's
    "eval_rewards[].num_workers": ("grpo", 3, {}),
    "eval_rewards[].applicable_datasets": ("grpo", None, {}),
    "optimizers": ("grpo", [{"learning_rate": 1e-3}], {}),
    "optimizers[].type": ("grpo", "AdamW", {}),
    "optimizers[].learning_rate": ("grpo", 5e-4, {"train.learning_rate": 5e-4}),
    "optimizers[].weight_decay": ("grpo", 0.0, {"train.weight_decay": 0.0}),
    "optimizers[].betas": ("grpo", [0.9, 0.95], {"train.adam_b2": 0.95}),
    "optimizers[].eps": ("grpo", 1e-7, {"train.adam_eps": 1e-7}),
    "optimizers[].max_grad_norm": ("grpo", 2.0, {"train.max_grad_norm": 2.0}),
}

# A value each refusing row cannot honour.
REFUSED = {
    "mixed_precision": "fp8",
    "data.datasets": [{"dataset_dir": "a", "train": {}}, {"dataset_dir": "b", "train": {}}],
    "data.video_dir": "videos",
    "data.audio_dir": "audio",
    "model.model_type": "flux2",
    "model.finetune_type": "qlora",
    "model.target_modules": ["to_q", "to_k"],
    "model.target_components": "transformer_2",
    "model.resume_path": "/ckpt/ff",
    "log.logging_backend": "swanlab",
    "train.gradient_accumulation_steps": 3,  # 16 rows an epoch are not steps of 4 x 3
    "train.ema_decay_schedule": "cosine",
    "train.shuffle_samples": False,
    "train.reward_optimization_overlap": True,
    "train.kl_type": "y-based",
    "train.clip_range": [2.0, 1.0],
    "train.timestep_range": 1.5,
    "scheduler.dynamics_type": "Euler",
    "rewards[].reward_model": "vllm_evaluate",
    "rewards[].weight": {"a": 1.0},
    "optimizers": [{"learning_rate": 1e-4}, {"learning_rate": 1e-5}],
    "optimizers[].type": "sgd",
}


def _row_trainer(ff: str) -> str:
    return MAPPED[ff][0] if ff in MAPPED else "grpo"


def _with_key(ff: str, value, trainer: str) -> dict:
    d = doc(trainer)
    if ff.startswith(("rewards[].", "eval_rewards[].")):
        d[ff.split("[]")[0]] = [{"name": "e", "reward_model": "PickScore"}]
    if ff == "model.target_modules":
        d["model"]["finetune_type"] = "lora"
    if ff.startswith("optimizers[]."):
        d["optimizers"] = [{}]
    if ff == "model.finetune_type" and value == "lora":
        d["model"].pop("lora_rank", None)
    set_key(d, ff, value)
    return d


def test_every_row_has_a_test():
    keys = {r.ff for r in ROWS if r.to not in (LAUNCHER, IGNORED)}
    assert keys == set(MAPPED), keys ^ set(MAPPED)


@pytest.mark.parametrize("ff", sorted(MAPPED))
def test_mapped_row(ff):
    trainer, value, want = MAPPED[ff]
    m = ff_yaml.map_document(_with_key(ff, value, trainer))
    label = ff.replace("[]", "[0]")
    got = line(m, label).ffjax
    assert {k: got[k] for k in want} == want, got
    configs.validate(m.config)


@pytest.mark.parametrize("ff", sorted(REFUSED))
def test_refused_row_is_one_line_naming_the_key(ff):
    value = REFUSED[ff]
    with pytest.raises(ff_yaml.FFYamlError) as e:
        ff_yaml.map_document(_with_key(ff, value, _row_trainer(ff)))
    text = str(e.value)
    assert "\n" not in text and (ff.replace("[]", "[0]") in text or ff.split(".")[-1] in text)


@pytest.mark.parametrize(
    "row",
    [r for r in ROWS if r.to in (LAUNCHER, IGNORED) and not r.ff.endswith("[].name")],
    ids=lambda r: f"{r.ff}:{r.trainers[0]}",
)
def test_launcher_and_ignored_rows_change_nothing(row):
    trainer = row.trainers[0]
    d = _with_key(row.ff, "x", trainer)
    without = copy.deepcopy(d)
    if "[]." in row.ff:
        sec, name = row.ff.split("[].")
        del without[sec][0][name]
    else:
        sec, _, name = row.ff.rpartition(".")
        del (without[sec] if sec else without)[name]
    base = ff_yaml.map_document(without).config
    m = ff_yaml.map_document(d)
    assert line(m, row.ff.replace("[]", "[0]")).status == row.to
    assert configs.to_text(m.config) == configs.to_text(base)


def test_reward_name_is_the_alias():
    m = ff_yaml.map_document(doc(rewards=[{"name": "aesthetic_pick", "reward_model": "PickScore"}]))
    assert line(m, "rewards[0].name").status == IGNORED
    assert m.config.rewards.aesthetic_pick.name == "pickscore"


def test_two_rewards_of_one_name_are_refused():
    twice = [{"name": "r", "reward_model": "PickScore"}, {"name": "r", "reward_model": "CLIP"}]
    with pytest.raises(ff_yaml.FFYamlError, match="rewards: the name 'r' is given twice"):
        ff_yaml.map_document(doc(rewards=twice))


def test_other_trainers_keys_are_read_by_none():
    m = ff_yaml.map_document(doc("nft", train={"clip_range": 1e-4}))
    assert line(m, "train.clip_range").status == IGNORED


def test_unknown_key_is_one_line():
    with pytest.raises(ff_yaml.FFYamlError, match=r"unknown Flow-Factory key train.lerning_rate.*train.learning_rate"):  # fmt: skip
        ff_yaml.map_document(doc(train={"lerning_rate": 1e-4}))
    with pytest.raises(ff_yaml.FFYamlError, match="unknown Flow-Factory key rewards\\[\\].api_key"):
        ff_yaml.map_document(doc(rewards=[{"reward_model": "PickScore", "api_key": "k"}]))


@pytest.mark.parametrize(
    "family",
    [
        "sd3-5",
        "flux2",
        "flux2-klein",
        "z-image",
        "ltx2_t2av",
        "qwen-image-edit-plus",
        "flux1-kontext",
        "wan2_v2v",
    ],  # fmt: skip
)
def test_unsupported_family_names_what_ffjax_has(family):
    d = doc(model={"model_type": family, "some_family_key": 1})  # the family is named first
    with pytest.raises(ff_yaml.FFYamlError) as e:
        ff_yaml.map_document(d)
    assert f"model.model_type={family!r}" in str(e.value) and "flux1, qwen-image" not in str(
        e.value
    )
    assert "wan2_t2v (wan2-t2v)" in str(e.value)


def test_unsupported_reward_points_to_remote():
    with pytest.raises(ff_yaml.FFYamlError, match="remote"):
        ff_yaml.map_document(doc(rewards=[{"name": "judge", "reward_model": "vllm_evaluate"}]))


def test_unsupported_trainer():
    with pytest.raises(ff_yaml.FFYamlError, match="trainer_type='dpo': ffjax has the algorithms"):
        ff_yaml.map_document(doc("dpo"))


# --------------------------------------------------------------------------- geometry


@pytest.mark.parametrize(
    "trainer, train, scheduler, world, want",
    [
        # Flow-Factory's FLUX.1 GRPO example = configs/flux_grpo.py:flow_factory.
        (
            "grpo",
            dict(
                per_device_batch_size=2,
                group_size=16,
                unique_sample_num_per_epoch=48,
                gradient_step_per_epoch=2,
            ),
            dict(num_sde_steps=1, sde_steps=[1, 2, 3]),
            8,
            (48, 16, 16, 24),
        ),  # fmt: skip
        # its NFT example = configs/flux_nft.py (2 training sigmas).
        (
            "nft",
            dict(
                per_device_batch_size=1,
                group_size=16,
                unique_sample_num_per_epoch=48,
                gradient_step_per_epoch=1,
                num_train_timesteps=2,
                num_inference_steps=8,
            ),
            {},
            8,
            (48, 16, 8, 192),
        ),  # fmt: skip
        # its AWM example = configs/flux_awm.py (4 training sigmas).
        (
            "awm",
            dict(
                per_device_batch_size=2,
                group_size=16,
                unique_sample_num_per_epoch=48,
                gradient_step_per_epoch=1,
                num_train_timesteps=4,
            ),
            {},
            8,
            (48, 16, 16, 192),
        ),  # fmt: skip
        # M = 10 over 8 GPUs: "auto" takes distributed_k_repeat (10 % 8 != 0, the local
        # batch tiles); M stays, a multiple of 16 / gcd(16, 16) x 2 = 2: 10 batches, 5 each.
        (
            "grpo",
            dict(
                per_device_batch_size=2,
                group_size=16,
                unique_sample_num_per_epoch=10,
                gradient_step_per_epoch=2,
            ),
            dict(num_sde_steps=1),
            8,
            (10, 16, 16, 5),
        ),  # fmt: skip
        # num_train_timesteps 0: int(10 x (0.7 - 0)) = 7 sigmas; manual accumulation kept.
        (
            "nft",
            dict(
                per_device_batch_size=4,
                group_size=4,
                unique_sample_num_per_epoch=4,
                gradient_accumulation_steps=7,
                timestep_range=0.7,
            ),
            {},
            1,
            (4, 4, 4, 7),
        ),  # fmt: skip
        # sde_steps null, num_sde_steps null: every step but the last (9 of 10); M = 4
        # rounds up to a multiple of 4 / gcd(4, 4) x 3 = 3: 6 prompts, 6 batches, 2 x 9.
        (
            "grpo",
            dict(
                per_device_batch_size=4,
                group_size=4,
                unique_sample_num_per_epoch=4,
                gradient_step_per_epoch=3,
            ),
            dict(num_sde_steps=None),
            1,
            (6, 4, 4, 18),
        ),  # fmt: skip
    ],
)
def test_geometry_follows_flow_factory(trainer, train, scheduler, world, want):
    g = rules.geometry(trainer, train, scheduler, world, "auto")
    assert (g.prompts_per_epoch, g.group_size, g.micro_batch_size, g.grad_accum_steps) == want
    # ffjax's rows check (ffjax/trainer.py _check_run_shapes): whole optimizer steps.
    rows = g.prompts_per_epoch * g.group_size * g.rows_per_sample
    assert rows % (g.micro_batch_size * g.grad_accum_steps) == 0


def test_geometry_group_contiguous_rounds_prompts_to_whole_gpus():
    # M = 10 rounds up to a multiple of lcm(16 / gcd(16, 16) x 2, 8) = 8: 16.
    g = rules.geometry("grpo", dict(per_device_batch_size=2, group_size=16, unique_sample_num_per_epoch=10, gradient_step_per_epoch=2), dict(num_sde_steps=1), 8, "group_contiguous")  # fmt: skip
    assert (g.prompts_per_epoch, g.grad_accum_steps) == (16, 8)


def test_geometry_distributed_k_repeat_when_groups_do_not_split_over_gpus():
    g = rules.geometry("grpo", dict(per_device_batch_size=2, group_size=4, unique_sample_num_per_epoch=6, gradient_step_per_epoch=1), {}, 4, "auto")  # fmt: skip
    assert g.sampler == "distributed_k_repeat" and g.prompts_per_epoch == 6


# --------------------------------------------------------------------------- EMA


def _ema_keys(c) -> dict:
    return {k: c.ema[k] for k in ("schedule", "decay", "warmup_epochs", "update_interval")}


def test_ema_power_every_4_epochs_is_the_recipes():
    # [A0] ema_utils.py power_warmup_decay: min(d, (1 + t) / (warmup_steps + t)), default
    # warmup_steps 10; ema.py EMAModuleWrapper.step: every ema_update_interval-th epoch.
    m = ff_yaml.map_document(doc(train={"ema_decay": 0.9, "ema_update_interval": 4}))
    want = configs.ema_every_4_epochs(configs.base_config())
    assert _ema_keys(m.config) == _ema_keys(want) == {
        "schedule": "power_warmup", "decay": 0.9, "warmup_epochs": 10, "update_interval": 4
    }  # fmt: skip
    for k, sched in ((3, "linear"), (2, "piecewise_linear"), (5, "constant")):
        train = {"ema_decay": 0.5, "ema_update_interval": k, "ema_decay_schedule": sched}
        got = ff_yaml.map_document(doc(train=train)).config.ema
        assert (got.schedule, got.update_interval, got.decay) == (sched, k, 0.5)


def test_ema_piecewise_and_linear_are_the_recipes():
    nft = ff_yaml.map_document(doc("nft", train={"ema_decay_schedule": "piecewise_linear", "ema_decay": 0.5, "ema_update_interval": 1, "flat_steps": 0, "ramp_rate": 0.001}))  # fmt: skip
    want = configs.ema_nft(configs.base_config()).ema
    assert (nft.config.ema.schedule, tuple(nft.config.ema.boundaries), tuple(nft.config.ema.decays)) == (want.schedule, tuple(want.boundaries), tuple(want.decays))  # fmt: skip
    awm = ff_yaml.map_document(doc("awm", train={"ema_decay_schedule": "linear", "ema_decay": 0.3, "ema_update_interval": 1, "warmup_steps": 300}))  # fmt: skip
    want = configs.ema_awm(configs.base_config()).ema
    got = awm.config.ema
    assert (got.schedule, got.start_decay, got.decay, got.ramp_epochs) == (want.schedule, want.start_decay, want.decay, want.ramp_epochs)  # fmt: skip


# --------------------------------------------------------------------------- both schemas


FAMILIES = {"flux1": "flux1", "qwen-image": "qwen-image", "wan2_t2v": "wan2-t2v", "wan2_i2v": "wan2-i2v"}  # fmt: skip


def _schema_doc(schema: str, trainer: str, family: str, finetune: str) -> dict:
    d = doc(trainer, model={"model_type": family, "finetune_type": finetune, "lora_rank": 16})
    d["model"]["target_modules"] = "default"
    if schema == "new":
        d["data"] = {"datasets": [{"name": "p", "dataset_dir": "prompts", "train": {"weight": 1}}]}
        d["optimizers"] = [{"name": "default", "learning_rate": 2e-4, "weight_decay": 1e-4, "betas": [0.9, 0.999], "eps": 1e-8, "max_grad_norm": 1.0}]  # fmt: skip
    else:
        d["train"].update(learning_rate=2e-4, adam_weight_decay=1e-4, adam_betas=[0.9, 0.999], adam_epsilon=1e-8, max_grad_norm=1.0)  # fmt: skip
    if family.startswith("wan"):
        d["train"]["num_frames"] = 5
    return d


@pytest.mark.parametrize("finetune", ["lora", "full"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("trainer", ["grpo", "nft", "awm"])
def test_both_schemas_map_to_the_same_valid_config(trainer, family, finetune):
    old = ff_yaml.map_document(_schema_doc("old", trainer, family, finetune)).config
    new = ff_yaml.map_document(_schema_doc("new", trainer, family, finetune)).config
    configs.validate(new)
    assert configs.to_text(old) == configs.to_text(new)
    assert (new.model.name, new.algorithm.name) == (FAMILIES[family], trainer)
    assert new.train.lora_rank == (16 if finetune == "lora" else 0)
    assert new.train.learning_rate == 2e-4
    # Flow-Factory evaluates WAN with UniPC multistep, the image families with Euler.
    assert new.sampling.eval_solver == ("unipc" if family.startswith("wan") else "euler")


def test_files_in_both_schemas():
    old = ff_yaml.load(FILES / "grpo_lora_flux1_old.yaml").config
    configs.validate(old)
    assert (old.train.micro_batch_size, old.train.grad_accum_steps, old.data.prompts_per_epoch) == (8, 12, 12)  # fmt: skip
    assert (old.model.height, old.model.width, old.train.lora_rank, old.train.lora_alpha) == (256, 384, 16, 32.0)  # fmt: skip
    assert old.algorithm.adv_clip_bounds == (-3.0, 4.0) and old.algorithm.clip_range == 2e-4
    assert old.train.offload_ref and old.ema.offload
    assert (old.ema.schedule, old.ema.update_interval) == ("power_warmup", 4)
    assert tuple(old.sampling.sde_candidates) == (1, 2, 3, 4) and old.sampling.sde_num_steps == 2
    assert old.rewards.rank.name == "pickscore_rank" and old.eval_rewards.pick.name == "pickscore"
    nft = ff_yaml.load(FILES / "nft_lora_flux1_new.yaml")
    configs.validate(nft.config)
    c = nft.config
    assert (c.train.micro_batch_size, c.train.grad_accum_steps, c.data.prompts_per_epoch) == (2, 24, 6)  # fmt: skip
    assert c.sampling.dynamics == "ode" and c.algorithm.sigma_range == (0.0, 0.7)
    assert c.rewards.pickscore.args.path == "yuvalkirstain/PickScore_v1"
    # eval.resolution 512, training 256: evaluation at its own size; eval guidance 3.5
    # (Flow-Factory's default), training 1.0.
    assert (c.model.height, c.model.eval_height, c.model.eval_width) == (256, 512, 512)
    assert (c.sampling.guidance_scale, c.sampling.eval_guidance_scale) == (1.0, 3.5)
    awm = ff_yaml.load(FILES / "awm_full_wan_new.yaml").config
    configs.validate(awm)
    assert (awm.model.name, awm.train.lora_rank, awm.model.dtype, awm.model.remat) == ("wan2-t2v", 0, "float32", "full")  # fmt: skip
    assert awm.algorithm.num_train_timesteps == 5  # int(10 x (0.6 - 0.1))
    assert (awm.train.micro_batch_size, awm.train.grad_accum_steps) == (2, 30)
    assert awm.rewards.clip.args.path == "/data/clip-vit-large-patch14"


# --------------------------------------------------------------------------- hub IDs


def test_hub_ids_are_refused_at_load_with_the_key(tmp_path):
    c = ff_yaml.load(FILES / "nft_lora_flux1_new.yaml").config
    with pytest.raises(ModelFolderError, match=r"--config.model.path=/path/to/FLUX.1-dev"):
        local_paths.check(c)
    c.model.path = str(tmp_path)
    with pytest.raises(ModelFolderError, match=r"--config.rewards.pickscore.args.path="):
        local_paths.check(c)
    c.rewards.pickscore.args.path = c.rewards.pickscore.args.processor_path = str(tmp_path)
    local_paths.check(c)
    os.makedirs(tmp_path / "org" / "local")
    assert not local_paths.is_hub_id(str(tmp_path / "org" / "local"))
    assert local_paths.is_hub_id("org/name") and not local_paths.is_hub_id("/abs/name")


# --------------------------------------------------------------------------- command line


def _train(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "ffjax.train", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,  # fmt: skip
    )


def test_cli_check_config_prints_the_mapping(tmp_path):
    r = _train("--config", str(FILES / "nft_lora_flux1_new.yaml"), "--check_config", f"--workdir={tmp_path}", "--config.model.path=/data/flux")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "Flow-Factory key" in r.stdout and "train.grad_accum_steps" in r.stdout
    assert "model.path = '/data/flux'" in r.stdout and "config is valid" in r.stdout


def test_cli_hub_id_fails_at_load_in_one_line(tmp_path):
    r = _train(f"--config={FILES / 'grpo_lora_flux1_old.yaml'}", f"--workdir={tmp_path}")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [
        "ffjax.train: config.model.path='black-forest-labs/FLUX.1-dev' is a hub ID, not a local"
        " folder; ffjax never downloads weights: pass a local folder with"
        " --config.model.path=/path/to/FLUX.1-dev"
    ]


def test_sample_cli_hub_id_fails_in_one_line(tmp_path):
    # Sampling loads no reward: only model.path is checked (the YAML's PickScore hub IDs
    # stay as given).
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    r = subprocess.run(
        [sys.executable, "-m", "ffjax.sample", f"--config={FILES / 'grpo_lora_flux1_old.yaml'}",
         "--weights=base", f"--prompts={tmp_path}", f"--out={tmp_path / 'out'}"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [
        "ffjax.sample: config.model.path='black-forest-labs/FLUX.1-dev' is a hub ID, not a"
        " local folder; ffjax never downloads weights: pass a local folder with"
        " --config.model.path=/path/to/FLUX.1-dev"
    ]
    c = ff_yaml.load(FILES / "grpo_lora_flux1_old.yaml").config
    c.model.path = str(tmp_path)
    local_paths.check(c, rewards=False)  # the rewards' hub IDs are not sampling's concern
    with pytest.raises(ModelFolderError, match="rewards"):
        local_paths.check(c)


@pytest.mark.parametrize(
    "edit, needle",
    [
        (
            ("train:\n", "train:\n  lerning_rate: 1.0\n"),
            "unknown Flow-Factory key train.lerning_rate",
        ),
        (("model_type: flux1", "model_type: z-image"), "model.model_type='z-image'"),
    ],
)
def test_cli_refusals_are_one_line_exit_2(tmp_path, edit, needle):
    text = (FILES / "grpo_lora_flux1_old.yaml").read_text().replace(*edit)
    path = tmp_path / "run.yaml"
    path.write_text(text)
    r = _train("--config", str(path), "--check_config", f"--workdir={tmp_path}")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    (only,) = r.stderr.strip().splitlines()
    assert needle in only


def test_eval_size_resolves_like_flow_factory():
    # [A0] / 6c7882b EvaluationArguments: resolution default (1024, 1024), height / width
    # override it; the same size as training maps to nothing (0: the training size).
    def size(eval_section, train=None):
        d = doc(train=train or {})
        d["eval"] = eval_section
        return line(ff_yaml.map_document(d), "eval.resolution").ffjax

    assert size({}) == {"model.eval_height": 1024, "model.eval_width": 1024}
    assert size({"resolution": 512}) == {}  # the training default 512 x 512
    assert size({"resolution": 512, "height": 256}) == {"model.eval_height": 256, "model.eval_width": 512}  # fmt: skip
    assert size({"width": 640}, {"resolution": [512, 640]}) == {"model.eval_height": 1024, "model.eval_width": 640}  # fmt: skip
