"""The one table from Flow-Factory YAML keys to ffjax config keys, with value transforms.

Sources, by tag (repository X-GenGroup/Flow-Factory; facts read, no code taken):
  [A0]  a0b2bc5 src/flow_factory/hparams/{args,data_args,model_args,scheduler_args,
        log_args,reward_args,training_args}.py: the older schema (data.dataset_dir,
        optimizer keys under train) and every field's default.
  [B3]  b30dc00 src/flow_factory/hparams/{args,data_args}.py and
        hparams/training_args/_base.py: the newer schema (data.datasets list,
        `optimizers` list, acceleration plugins); c5b89b1 hparams/training_args/grpo.py.
  [EX]  examples/<algorithm>/<lora|full>/<model>/*.yaml at a0b2bc5 and b30dc00, whose
        extra keys (num_frames, flow_shift, flat_steps, ramp_rate, warmup_steps, kl_weight)
        land in Flow-Factory's extra_kwargs.
  [MR]  a0b2bc5 src/flow_factory/models/registry.py (model_type names) and
        rewards/registry.py, rewards/pick_score.py, rewards/clip.py (reward names and
        the hub folders they load).

A row: the Flow-Factory key (dotted; `rewards[].x` for every entry of a list), the
value Flow-Factory uses when the YAML leaves it out (MISSING: nothing then), the
trainers it belongs to, and a transform from (value, context) to {ffjax key: value},
or a status: LAUNCHER keys are "not needed in JAX", IGNORED keys have no effect in
ffjax (the note says why, shown by --check_config). A transform raises `Refused` with
the reason when ffjax cannot honour the value.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from ffjax.ff_yaml import rules
from ffjax.ff_yaml import transforms as t
from ffjax.ff_yaml.transforms import ALL, FORWARD, GRPO

MISSING = object()


@dataclasses.dataclass(frozen=True)
class Row:
    """One Flow-Factory key and what it becomes in ffjax."""

    ff: str  # dotted Flow-Factory key; "rewards[]." / "optimizers[]." for list entries
    to: Callable[[Any, Any], dict[str, Any]] | str  # transform, LAUNCHER or IGNORED
    note: str = ""
    default: Any = MISSING  # Flow-Factory's value when the YAML omits the key
    trainers: tuple[str, ...] = ALL


LAUNCHER = "not needed in JAX"
IGNORED = "no effect in ffjax"

# ------------------------------------------------------------------ the table

ROWS: tuple[Row, ...] = (
    # Environment [A0] Arguments
    Row("launcher", LAUNCHER, "one JAX process per host; no launcher", "accelerate"),
    Row(
        "config_file",
        lambda v, ctx: {} if v is None else {"mesh.data": 1, "mesh.fsdp": -1},
        "a DeepSpeed / FSDP file: parameters, gradients and optimizer state sharded over"
        " all devices (mesh.fsdp=-1); ZeRO-2 keeps parameters whole, FSDP shards them too",
    ),
    Row(
        "num_processes",
        t.geometry("train.micro_batch_size", "sampling.batch_size"),
        "GPU count W: global rows per backward pass = W x per_device_batch_size",
        1,
    ),
    Row("main_process_port", LAUNCHER, "", 29500),
    Row(
        "mixed_precision",
        t.mixed_precision,
        "'no' (YAML's bare no reads as false) = float32",
        "bf16",
    ),  # fmt: skip
    *(
        Row(k, LAUNCHER, "set at run time by Flow-Factory's launcher")
        for k in (
            "process_index",
            "local_process_index",
            "num_machines",
            "gpus_per_node",
            "machine_rank",
            "main_process_ip",
        )
    ),  # fmt: skip
    Row("acceleration", LAUNCHER, "torch attention backends / torch.compile; XLA compiles"),
    # data [A0] DataArguments, [B3] datasets
    Row("data.dataset_dir", t.put("data.path", str), "prompt folder (train.txt / train.jsonl)"),
    Row("data.datasets", t.datasets, "the one training source's dataset_dir"),
    Row("data.image_dir", t.put("data.image_dir", lambda v: "" if v is None else str(v))),
    Row("data.video_dir", t.when(lambda v: v is None, t.nothing, "ffjax has no video conditions")),
    Row("data.audio_dir", t.when(lambda v: v is None, t.nothing, "ffjax has no audio conditions")),
    Row(
        "data.max_dataset_size", IGNORED, "ffjax reads every prompt of the file; shorten it to cap"
    ),
    *(
        Row(
            f"data.{k}",
            LAUNCHER,
            "torch preprocessing cache / DataLoader; ffjax encodes prompts each epoch",
        )
        for k in (
            "cache_dir",
            "preprocessing_batch_size",
            "dataloader_num_workers",
            "enable_preprocess",
            "force_reprocess",
            "preprocess_parallelism",
        )
    ),  # fmt: skip
    Row(
        "data.sampler_type",
        t.geometry(),
        "auto resolved as Flow-Factory does (the prompts per epoch rounding)",
        "auto",
    ),  # fmt: skip
    Row("data.sampler_subgroup_size", LAUNCHER, "torch sampler placement"),
    # model [A0] ModelArguments
    Row(
        "model.model_name_or_path",
        t.put("model.path", str),
        "kept as given: a hub ID must be replaced by a local folder",
        "black-forest-labs/FLUX.1-dev",
    ),  # fmt: skip
    Row("model.model_type", t.model_type, "", "flux1"),
    Row("model.finetune_type", t.finetune, "full = train.lora_rank 0", "full"),
    Row("model.lora_rank", IGNORED, "read by finetune_type", 8),
    Row("model.lora_alpha", t.lora_alpha, "null = 2 x lora_rank", None),
    Row("model.target_modules", t.target_modules, "'default' = the adapter's layers", "all"),
    Row("model.target_components", t.target_components, "", "transformer"),
    Row(
        "model.master_weight_dtype",
        IGNORED,
        "ffjax keeps float32 trainable weights (optax state too)",
    ),
    Row(
        "model.resume_path",
        t.when(
            lambda v: v is None,
            t.nothing,
            "ffjax resumes its own checkpoints from --workdir; a Flow-Factory checkpoint cannot be loaded",
        ),
    ),  # fmt: skip
    Row("model.resume_type", IGNORED, "no resume_path"),
    Row(
        "model.attn_backend", LAUNCHER, "torch attention backend; ffjax picks with model.attention"
    ),
    # log [A0] LogArguments
    Row("log.run_name", t.put("logging.wandb_name", lambda v: "" if v is None else str(v))),
    Row("log.project", IGNORED, "the W&B project when logging_backend is wandb"),
    Row("log.logging_backend", t.logging_backend, "", None),
    Row("log.save_dir", IGNORED, "ffjax writes to --workdir"),
    Row("log.save_freq", t.put("checkpoint.every_epochs", int), "", 10),
    Row("log.save_model_only", IGNORED, "ffjax checkpoints the whole train state (to resume)"),
    Row("log.verbose", t.put("logging.step_progress", bool)),
    # train: common [A0] TrainingArguments, [B3] _base.py
    Row(
        "train.trainer_type",
        lambda v, c: {"algorithm.name": c.trainer},
        "the algorithm's defaults, then the keys below",
        "grpo",
    ),  # fmt: skip
    Row("train.resolution", t.resolution, "", 512),
    Row("train.height", t.put("model.height", int)),
    Row("train.width", t.put("model.width", int)),
    Row("train.num_frames", lambda v, c: {} if v is None else {"model.num_frames": int(v)}),
    Row("train.frame_rate", IGNORED, "the frame rate of logged videos"),
    Row("train.max_epochs", t.num_epochs, "null = until stopped", None),
    Row(
        "train.per_device_batch_size",
        t.geometry("train.micro_batch_size", "sampling.batch_size"),
        "W x B rows per backward pass and per rollout call",
        1,
    ),  # fmt: skip
    Row("train.group_size", t.geometry("data.group_size"), "", 1),
    Row(
        "train.unique_sample_num_per_epoch",
        t.geometry("data.prompts_per_epoch"),
        "rounded up as Flow-Factory aligns it",
        8,
    ),  # fmt: skip
    Row(
        "train.gradient_step_per_epoch",
        t.geometry("train.grad_accum_steps"),
        "optimizer steps an epoch",
        2,
    ),  # fmt: skip
    Row(
        "train.gradient_accumulation_steps",
        t.geometry(),
        "auto = batches / gradient_step_per_epoch x rows per sample",
        "auto",
    ),  # fmt: skip
    Row("train.num_inner_epochs", t.put("train.inner_epochs", int), "", 1),
    Row("train.num_inference_steps", t.put("sampling.num_steps", int), "", 10),
    Row("train.guidance_scale", t.put("sampling.guidance_scale", float), "", 3.5),
    Row("train.guidance_scale_2", t.put("model.guidance_scale_2", float), "Wan 2.2 A14B"),
    Row(
        "train.condition_image_size",
        IGNORED,
        "ffjax resizes a condition image to model.height x width",
    ),
    Row("train.seed", t.put("seed", int), "", 42),
    Row("train.learning_rate", t.put("train.learning_rate", float), "", 1e-5),
    Row("train.adam_weight_decay", t.put("train.weight_decay", float), "", 1e-4),
    Row("train.adam_betas", t.betas, "", (0.9, 0.999)),
    Row("train.adam_epsilon", t.put("train.adam_eps", float), "", 1e-8),
    Row("train.max_grad_norm", t.put("train.max_grad_norm", float), "", 1.0),
    Row(
        "train.enable_gradient_checkpointing",
        t.remat,
        "a selective policy becomes full remat",
        False,
    ),  # fmt: skip
    Row(
        "train.offload_samples_to_cpu",
        LAUNCHER,
        "torch sample offload; ffjax keeps trajectories sharded",
    ),
    Row("train.ema_decay", t.ema, "", 0.995),
    Row(
        "train.ema_update_interval",
        t.ema_checked,
        "ema.update_interval: an update after every k-th epoch (rules.ema)",
        10,
    ),  # fmt: skip
    Row("train.ema_decay_schedule", t.ema_checked, "", "power"),
    Row("train.warmup_steps", t.ema_checked, "the EMA warm-up (power / linear)"),
    Row("train.flat_steps", t.ema_checked, "piecewise_linear EMA"),
    Row("train.ramp_rate", t.ema_checked, "piecewise_linear EMA"),
    Row("train.initial_decay", t.ema_checked, "linear EMA"),
    Row("train.ema_device", t.device("ema.offload"), "", "cuda"),
    Row("train.ref_param_device", t.device("train.offload_ref"), "", "cuda"),
    Row("train.latent_storage_dtype", t.latent_dtype, "fp16 -> float32", "fp16"),
    Row(
        "train.shuffle_samples",
        t.when(
            lambda v: v is True, t.nothing, "ffjax visits rows in a fresh order every inner epoch"
        ),
        "",
        True,
    ),  # fmt: skip
    Row(
        "train.reward_optimization_overlap",
        t.when(
            lambda v: v is False,
            t.nothing,
            "ffjax overlaps rewards with the rollout (train.async_rewards), not with optimization",
        ),
    ),  # fmt: skip
    Row(
        "train.reward_optimization_overlap_mode", LAUNCHER, "only with reward_optimization_overlap"
    ),
    Row(
        "train.reward_optimization_overlap_poll_interval",
        LAUNCHER,
        "only with reward_optimization_overlap",
    ),  # fmt: skip
    Row(
        "train.global_std",
        t.put("train.advantage_std", lambda v: "global" if v else "group"),
        "",
        True,
    ),  # fmt: skip
    Row(
        "train.advantage_aggregation",
        t.choice("train.advantage_method", {"sum": "sum", "gdpo": "gdpo"}, "advantage aggregation"),
        "",
        "gdpo",
    ),  # fmt: skip
    Row("train.adv_clip_range", t.clip("adv_clip_max", "adv_clip_bounds"), "", 5.0),
    Row("train.kl_type", t.kl_type, "", "x-based", GRPO),
    Row("train.kl_type", t.kl_type, "", "v-based", FORWARD),
    Row("train.kl_beta", t.put("algorithm.kl_beta", float), "", 0.0),
    # train: GRPO [A0] GRPOTrainingArguments
    Row("train.clip_range", t.clip("clip_range", "clip_bounds"), "", 1e-4, GRPO + ("awm",)),
    # train: NFT / AWM [A0] NFTTrainingArguments, AWMTrainingArguments
    Row("train.nft_beta", t.put("algorithm.beta", float), "", 1.0, ("nft",)),
    Row("train.off_policy", t.off_policy, "", False, FORWARD),
    Row("train.num_train_timesteps", t.timesteps, "0 / null = int(N (hi - lo))", 0, FORWARD),
    Row(
        "train.time_sampling_strategy",
        t.put("algorithm.timestep_sampler", str),
        "",
        "discrete",
        FORWARD,
    ),  # fmt: skip
    Row("train.time_shift", t.put("algorithm.time_shift", float), "", 3.0, FORWARD),
    Row(
        "train.timestep_range",
        lambda v, c: {"algorithm.sigma_range": rules.sigma_range(v)},
        "a float v = [0, v]",
        0.9,
        FORWARD,
    ),  # fmt: skip
    Row(
        "train.awm_weighting",
        t.put("algorithm.weighting", lambda v: str(v).lower()),
        "",
        "Uniform",
        ("awm",),
    ),  # fmt: skip
    Row("train.ghuber_power", t.put("algorithm.ghuber_p", float), "", 0.25, ("awm",)),
    Row("train.ema_kl_beta", t.put("algorithm.ema_kl_beta", float), "", 0.0, ("awm",)),
    Row(
        "train.kl_weight",
        IGNORED,
        "an extra key of the AWM example, read by no trainer",
        MISSING,
        ("awm",),
    ),  # fmt: skip
    # scheduler [A0] SchedulerArguments
    Row("scheduler.dynamics_type", t.dynamics, "", "Flow-SDE"),
    Row("scheduler.noise_level", t.not_ode("sampling.noise_level", float), "", 0.7),
    Row(
        "scheduler.num_sde_steps",
        t.not_ode("sampling.sde_num_steps", lambda v: 0 if v is None else int(v)),
        "null = every candidate",
        1,
    ),  # fmt: skip
    Row(
        "scheduler.sde_steps",
        t.not_ode(
            "sampling.sde_candidates", lambda v: () if v is None else tuple(int(i) for i in v)
        ),
        "null = all but the last step",
        None,
    ),  # fmt: skip
    Row("scheduler.seed", IGNORED, "ffjax draws the SDE steps from the run seed"),
    Row("scheduler.flow_shift", t.put("model.flow_shift", float), "WAN's schedule shift"),
    # eval [A0] EvaluationArguments
    Row("eval.num_inference_steps", t.put("sampling.eval_num_steps", int), "", 30),
    Row("eval.eval_freq", t.put("train.eval_every", int), "", 10),
    Row(
        "eval.guidance_scale",
        t.eval_value("sampling.eval_guidance_scale", "train.guidance_scale", 3.5),
        "where it differs from train.guidance_scale",
        3.5,
    ),
    Row("eval.resolution", t.eval_size, "where it differs from the training size", (1024, 1024)),
    Row("eval.height", t.nothing, "read with eval.resolution"),
    Row("eval.width", t.nothing, "read with eval.resolution"),
    Row(
        "eval.num_frames",
        t.eval_value("model.eval_num_frames", "train.num_frames", None, int),
        "where it differs from train.num_frames",
    ),
    Row(
        "eval.guidance_scale_2",
        t.eval_value("model.eval_guidance_scale_2", "train.guidance_scale_2", None),
        "where it differs from train.guidance_scale_2",
    ),
    Row(
        "eval.condition_image_size",
        IGNORED,
        "ffjax resizes a condition image to model.height x width",
    ),
    Row("eval.frame_rate", IGNORED, "the frame rate of logged videos"),
    Row("eval.per_device_batch_size", LAUNCHER, "ffjax evaluates in sampling.batch_size chunks"),
    Row("eval.seed", IGNORED, "ffjax derives evaluation noise from the run seed"),
    # rewards / eval_rewards [A0] RewardArguments (a list, or one entry)
    *(
        row
        for sec in ("rewards", "eval_rewards")
        for row in (
            Row(f"{sec}[].name", IGNORED, f"the alias: config.{sec}.<name>"),
            Row(f"{sec}[].reward_model", t.reward_model, "the reward and its weights folders"),
            Row(f"{sec}[].weight", t.reward_weight, "", 1.0),
            Row(f"{sec}[].batch_size", t.reward_arg("batch_size", int), "", 16),
            Row(
                f"{sec}[].dtype",
                t.reward_arg(
                    "dtype",
                    lambda v: {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}.get(
                        str(v), str(v)
                    ),
                ),
                "",
                "bfloat16",
            ),  # fmt: skip
            Row(f"{sec}[].device", LAUNCHER, "rewards run on the mesh's devices"),
            Row(f"{sec}[].async_reward", t.async_reward, "scored during the rollout", False),
            Row(f"{sec}[].num_workers", t.reward_workers, "threads of the async pool", 1),
            Row(f"{sec}[].model_name_or_path", IGNORED, "the CLIP folder (reward_model)"),
            Row(
                f"{sec}[].applicable_datasets",
                t.when(lambda v: v is None, t.nothing, "ffjax has one dataset"),
            ),  # fmt: skip
        )
    ),
    # optimizers [B3] (one AdamW entry; the flat train.* keys are the older spelling)
    Row("optimizers", t.optimizers, "one trainable policy"),
    Row("optimizers[].name", IGNORED, "one policy"),
    Row("optimizers[].type", t.opt_type, "", "adamw"),
    Row("optimizers[].learning_rate", t.put("train.learning_rate", float)),
    Row("optimizers[].weight_decay", t.put("train.weight_decay", float)),
    Row("optimizers[].betas", t.betas),
    Row("optimizers[].eps", t.put("train.adam_eps", float)),
    Row("optimizers[].max_grad_norm", t.put("train.max_grad_norm", float)),
)

SECTIONS = ("data", "model", "log", "train", "scheduler", "eval")
LISTS = ("rewards", "eval_rewards", "optimizers")
