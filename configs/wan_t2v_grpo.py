"""GRPO LoRA on WAN text-to-video with Flow-Factory's published WAN settings.

    python -m ffjax.train --config configs/wan_t2v_grpo.py --workdir /runs/wan_grpo \
        --config.model.path=/data/Wan2.1-T2V-14B-Diffusers --config.data.path=/data/pickscore \
        --config.rewards.text_alignment.args.path=/data/clip-vit-large-patch14 \
        --config.rewards.pick_score.args.path=/data/PickScore_v1 \
        --config.rewards.pick_score.args.processor_path=/data/CLIP-ViT-H-14-laion2B-s32B-b79K
    python -m ffjax.train --config configs/wan_t2v_grpo.py:a14b ... \
        --config.model.path=/data/Wan2.2-T2V-A14B-Diffusers
    python -m ffjax.train --config configs/wan_t2v_grpo.py:tiny --workdir /tmp/wan_grpo \
        --config.model.path=<folder of tests/tiny_wan_pipeline.py>
    python -m ffjax.train --config configs/wan_t2v_grpo.py --check_config ...  # validate only

Variants:
  ""      Flow-Factory's WAN 2.1 T2V-14B GRPO LoRA example, 8 GPUs [FF].
  "a14b"  Flow-Factory's Wan 2.2 T2V-A14B GRPO example [FF2] (two experts): SDE steps
          1-2, gradient checkpointing, and only the high-noise expert `transformer`
          trained ([FF2] target_components), here as LoRA on it.
  "tiny"  the default's algorithm settings at toy size, on CPU in minutes, on the tiny
          WanPipeline that `tests.tiny_wan_pipeline.build_wan_pipeline` writes (pass its
          folder as model.path), with the `brightness` reward.

Sources, cited by tag in the comments below:
  [FF] X-GenGroup/Flow-Factory a0b2bc5 examples/grpo/lora/wan21/t2v.yaml
  [FF2] X-GenGroup/Flow-Factory a0b2bc5 examples/grpo/full/wan22/t2v.yaml (a full fine-tune
        there; LoRA here like [FF], everything else as [FF2])
  [FW] X-GenGroup/Flow-Factory a0b2bc5 src/flow_factory/models/wan/wan2_t2v.py
  [FS] X-GenGroup/Flow-Factory a0b2bc5 src/flow_factory/scheduler/unipc_multistep.py

Videos: [FF] trains on 5-frame clips at 256 px; rewards see every frame (the CLIP-family
rewards average their per-frame scores). Guidance: classifier-free, scale 5, in the
rollout and in the training forward as [FW]'s forward does (`algorithm.cfg_in_train`).
The rollout grid is [FW]'s: its UniPC scheduler's integer timesteps / 1000 with [FF]'s
flow_shift 3.0 (sampling.sigma_grid "unipc_flow"), stepped by ffjax's Flow-SDE / ODE
steps as [FS]'s SDE step does.

Batch sizes as in configs/flux_grpo.py: global rows, one per (sample, SDE step);
micro_batch_size is [FF]'s per-device batch times its 8 GPUs and an epoch takes its 2
optimizer steps. Evaluation of 13 frames at 480 px as [FF] (model.eval_num_frames,
eval_height / eval_width).
"""

from ffjax import configs
from ffjax.models.wan.adapter import WAN_TARGETS

VARIANTS = ("", "a14b", "tiny")


def get_config(variant: str = "") -> configs.ConfigDict:
    """Variant: "" (Flow-Factory, Wan 2.1 T2V-14B, default), "a14b", "tiny"."""
    configs.check_variant(__file__, variant, VARIANTS)
    c = configs.base_config()
    configs.set_algorithm(c, "grpo")
    _flow_factory(c)
    if variant == "a14b":
        _a14b(c)
    if variant == "tiny":
        _tiny(c)
    return c


def _flow_factory(c: configs.ConfigDict) -> None:
    """[FF]: WAN T2V at 256 px, 5 frames, CLIP text alignment + PickScore, 8 GPUs."""
    c.seed = 42  # [FF] seed
    c.model.name = "wan2-t2v"  # [FF] model_type wan2_t2v
    c.model.dtype = "bfloat16"  # [FF] mixed_precision
    c.model.remat = "none"  # [FF] enable_gradient_checkpointing false
    c.model.height = c.model.width = 256  # [FF] resolution
    c.model.num_frames = 5  # [FF] num_frames
    c.model.flow_shift = 3.0  # [FF] scheduler.flow_shift (480p value)
    c.model.negative_prompt = ""  # WanPipeline's default negative prompt
    c.sampling.num_steps = 10  # [FF] num_inference_steps
    c.sampling.eval_num_steps = 28  # [FF] eval.num_inference_steps
    c.model.eval_height = c.model.eval_width = 480  # [FF] eval.resolution 480
    c.model.eval_num_frames = 13  # [FF] eval.num_frames
    c.sampling.guidance_scale = 5.0  # [FF] guidance_scale
    # [FW] rolls out on its UniPC scheduler's timesteps / 1000 (0.999, 0.964, ... at 10
    # steps) and evaluates with UniPC multistep ([FS] eval mode).
    c.sampling.sigma_grid = "unipc_flow"
    c.sampling.eval_solver = "unipc"
    c.sampling.dynamics = "flow_sde"  # [FF] dynamics_type Flow-SDE
    c.sampling.noise_level = 0.9  # [FF] noise_level
    c.sampling.sde_candidates = (1, 2, 3)  # [FF] sde_steps
    c.sampling.sde_num_steps = 1  # [FF] num_sde_steps, drawn at random
    c.sampling.batch_size = 8  # [FF] per_device_batch_size 1 x 8 GPUs
    c.data.group_size = 16  # [FF] group_size
    c.data.prompts_per_epoch = 48  # [FF] unique_sample_num_per_epoch
    c.train.learning_rate = 1e-4  # [FF] optimizers.learning_rate
    c.train.micro_batch_size = 8  # [FF] per_device_batch_size 1 x 8 GPUs
    c.train.grad_accum_steps = 48  # [FF] gradient_step_per_epoch 2: 48 x 16 x 1 / 2 / 8
    c.train.lora_rank = 64  # [FF] lora_rank
    c.train.lora_alpha = 128.0  # [FF] lora_alpha; target_modules "default" = the adapter's
    c.train.advantage_method = "gdpo"  # [FF] advantage_aggregation
    c.train.advantage_std = "group"  # [FF] global_std false
    c.algorithm.clip_range = 1e-4  # [FF] clip_range
    c.algorithm.kl_type = "v-based"  # [FF] kl_type (kl_beta 0: unused)
    c.algorithm.cfg_in_train = True  # [FW] forward() guides like inference does
    c.train.eval_every = 20  # [FF] eval.eval_freq
    c.checkpoint.every_epochs = 20  # [FF] log.save_freq
    configs.ema_every_4_epochs(c)  # [FF] ema_decay 0.9 every 4 epochs
    configs.add_reward(c, "text_alignment", "clip_score", 1.0)  # [FF] CLIP, weight 1.0
    configs.add_reward(c, "pick_score", "pickscore", 0.5)  # [FF] PickScore, weight 0.5


def _a14b(c: configs.ConfigDict) -> None:
    """[FF2]: Wan 2.2 T2V-A14B; what differs from [FF]."""
    c.model.remat = "full"  # [FF2] enable_gradient_checkpointing
    c.sampling.sde_candidates = (1, 2)  # [FF2] sde_steps: both above the 0.875 boundary
    # [FF2] target_components "transformer": LoRA on the high-noise expert alone (the
    # adapter's targets restricted to it); transformer_2 stays frozen.
    c.train.lora_targets = tuple(
        t.replace("^(transformer(_2)?/)?", "^transformer/") for t in WAN_TARGETS
    )


def _tiny(c: configs.ConfigDict) -> None:
    """The default's algorithm settings at toy size (the tiny pipeline: factor 4 in space
    and time, patch 2: 5 frames of 16 x 32 are 16 tokens)."""
    c.model.dtype = "float32"  # CPUs have no fast bfloat16 matmuls
    c.model.height, c.model.width = 16, 32
    c.model.num_frames = 5
    c.model.max_sequence_length = 32
    c.sampling.num_steps = 4
    c.sampling.eval_num_steps = 4
    c.model.eval_height = c.model.eval_width = 0  # evaluate at the tiny size
    c.model.eval_num_frames = 0
    c.sampling.sigma_grid = "flow_match_euler"  # the grid the tiny results were recorded on
    c.sampling.eval_solver = "euler"  # as when the tiny results were recorded
    c.sampling.sde_candidates = (1, 2)
    c.sampling.batch_size = 0  # the whole epoch in one rollout call
    c.data.group_size = 4
    c.data.prompts_per_epoch = 2
    c.train.num_epochs = 2
    c.train.micro_batch_size = 2  # 2 x 4 samples x 1 SDE step = 8 rows: 2 optimizer
    c.train.grad_accum_steps = 2  # steps of 4 rows per epoch, as [FF]
    c.train.lora_rank = 4
    c.train.lora_alpha = 8.0  # alpha / rank = 2, as [FF]
    c.train.eval_every = 2
    c.checkpoint.every_epochs = 0
    c.logging.tensorboard = False
    # Pinned to the value this variant trained with before issue 17 (its results are
    # compared across refactors): ffjax's advantage epsilon std + 1e-4.
    c.train.advantage_eps = "flow_grpo"
    c.rewards = configs.ConfigDict()
    configs.add_reward(c, "brightness")
