"""Advantage Weighted Matching LoRA on Qwen-Image, derived from Flow-Factory's FLUX.1 AWM
example (no Qwen-Image AWM setting is published).

    python -m ffjax.train --config configs/qwen_image_awm.py --workdir /runs/qwen_awm \
        --config.model.path=/data/Qwen-Image --config.data.path=/data/pickscore \
        --config.rewards.pick_score.args.path=/data/PickScore_v1 \
        --config.rewards.pick_score.args.processor_path=/data/CLIP-ViT-H-14-laion2B-s32B-b79K
    python -m ffjax.train --config configs/qwen_image_awm.py:tiny --workdir /tmp/qwen_awm \
        --config.model.path=<folder of tests/tiny_qwen_image_pipeline.py>
    python -m ffjax.train --config configs/qwen_image_awm.py --check_config ...  # validate only

Variants:
  ""      [FF]'s FLUX.1 AWM LoRA settings on Qwen-Image, with [FG]'s Qwen-Image model
          settings, 8 GPUs.
  "tiny"  the default's algorithm settings at toy size, on CPU in minutes, on the tiny
          QwenImagePipeline that `tests.tiny_qwen_image_pipeline.build_qwen_image_pipeline`
          writes (pass its folder as model.path), with the `brightness` reward.

Sources, cited by tag in the comments below:
  [FF]  X-GenGroup/Flow-Factory a0b2bc5 examples/awm/lora/flux1/default.yaml (as configs/flux_awm.py).
        Flow-Factory's AWM examples cover FLUX.1, FLUX.2-klein-base and SD3.5 only (examples/
        awm/lora/), and scxue/advantage_weighted_matching publishes SD3.5-M runs only, so
        there is no published Qwen-Image AWM setting: the algorithm, batch, optimizer and
        EMA values are [FF]'s FLUX.1 ones.
  [FG]  X-GenGroup/Flow-Factory a0b2bc5 examples/grpo/lora/qwen_image/default.yaml, its Qwen-Image
        GRPO example (configs/qwen_image_grpo.py): the Qwen-Image model values (true CFG
        scale 4, gradient checkpointing, 28 eval steps); [FF]'s 3.5 is FLUX.1's embedded
        guidance, which Qwen-Image does not have.

Guidance: `sampling.guidance_scale` is the pipeline's `true_cfg_scale`; with a scale > 1
the `qwen-image` velocity guides (two passes, norm rescaled) in the rollout and in AWM's
training forward alike, as Flow-Factory's Qwen-Image forward does (AWM has no
`algorithm.cfg_in_train` key: only GRPO can train without the guidance).

Batch sizes as in configs/flux_awm.py: global rows, one per (sample, training sigma);
micro_batch_size is [FF]'s per-GPU batch times its 8 GPUs and an epoch takes its one
optimizer step. On fewer devices divide micro_batch_size and multiply grad_accum_steps.

Evaluation at 1024 px as [FG] and [FF] (model.eval_height / width).
Values not set here are the base or ffjax AWM defaults, which already match [FF] (512
px, 10 steps, no reference KL, sum advantages, AdamW wd 1e-4, grad-norm clip 1,
constant lr).
"""

from ffjax import configs

VARIANTS = ("", "tiny")


def get_config(variant: str = "") -> configs.ConfigDict:
    """Variant: "" (Flow-Factory FLUX.1 AWM on Qwen-Image, default), "tiny"."""
    configs.check_variant(__file__, variant, VARIANTS)
    c = configs.base_config()
    configs.set_algorithm(c, "awm")
    _flow_factory(c)
    if variant == "tiny":
        _tiny(c)
    return c


def _flow_factory(c: configs.ConfigDict) -> None:
    """[FF] on Qwen-Image at 512 px, PickScore, 8 GPUs x 2 samples per batch."""
    c.seed = 42  # [FF] seed
    c.model.name = "qwen-image"  # [FG] model_type
    c.model.dtype = "bfloat16"  # [FF] mixed_precision
    c.model.remat = "full"  # [FG] enable_gradient_checkpointing (a 20B transformer)
    c.model.height = c.model.width = 512  # [FF] resolution
    c.model.max_sequence_length = 1024  # the Qwen-Image pipeline's default
    c.sampling.num_steps = 10  # [FF] num_inference_steps
    c.sampling.eval_num_steps = 28  # [FG] eval.num_inference_steps ([FF] 20 for FLUX.1)
    c.model.eval_height = c.model.eval_width = 1024  # [FG] eval.resolution 1024, as [FF]
    c.sampling.guidance_scale = 4.0  # [FG] guidance_scale = true_cfg_scale
    c.model.negative_prompt = ""  # Flow-Factory a0b2bc5 models/qwen_image/qwen_image.py: None -> ""
    c.sampling.dynamics = "ode"  # [FF] dynamics_type "ODE": AWM trains on x0 only
    c.sampling.batch_size = 16  # [FF] per_device_batch_size 2 x 8 GPUs per rollout call
    c.data.group_size = 16  # [FF] group_size
    c.data.prompts_per_epoch = 48  # [FF] unique_sample_num_per_epoch
    c.train.learning_rate = 3e-4  # [FF] optimizers.learning_rate
    c.train.micro_batch_size = 16  # [FF] per_device_batch_size 2 x 8 GPUs
    c.train.grad_accum_steps = 192  # [FF] gradient_step_per_epoch 1: 48 x 16 x 4 / 16
    c.train.lora_rank = 64  # [FF] lora_rank
    c.train.lora_alpha = 128.0  # [FF] lora_alpha; target_modules "default" = the adapter's
    c.train.advantage_std = "global"  # [FF] global_std
    c.train.eval_every = 20  # [FF] eval.eval_freq
    c.checkpoint.every_epochs = 20  # [FF] log.save_freq
    a = c.algorithm
    a.weighting = "ghuber"  # [FF] awm_weighting
    a.ghuber_p = 0.25  # [FF] ghuber_power
    a.clip_range = 1.0  # [FF] clip_range
    a.adv_clip_max = 1.0  # [FF] adv_clip_range
    a.ema_kl_beta = 0.1  # [FF] ema_kl_beta
    a.timestep_sampler = "discrete"  # [FF] time_sampling_strategy
    a.num_train_timesteps = 4  # [FF] num_train_timesteps
    a.sigma_range = (0.0, 0.7)  # [FF] timestep_range 0.7 = [0, 0.7] along denoising
    a.time_shift = 3.0  # [FF] time_shift (unused by "discrete")
    configs.ema_awm(c)  # [FF] linear EMA 0 -> 0.3 over 300 epochs (the EMA-KL's)
    configs.add_reward(c, "pick_score", "pickscore")  # [FF] PickScore


def _tiny(c: configs.ConfigDict) -> None:
    """The default's algorithm settings at toy size (the tiny pipeline: 32 px, factor 4)."""
    c.model.dtype = "float32"  # CPUs have no fast bfloat16 matmuls
    c.model.remat = "none"
    c.model.height = c.model.width = 32  # 8x8 latents: 16 packed tokens
    c.model.max_sequence_length = 64
    c.sampling.num_steps = 4
    c.sampling.eval_num_steps = 4
    c.model.eval_height = c.model.eval_width = 0  # evaluate at the tiny size
    c.sampling.batch_size = 0  # the whole epoch (4 samples) in one rollout call
    c.data.group_size = 2
    c.data.prompts_per_epoch = 2
    c.train.num_epochs = 2
    c.train.micro_batch_size = 8  # 2 x 2 samples x 4 sigmas = 16 rows: one optimizer
    c.train.grad_accum_steps = 2  # step per epoch, as [FF]
    c.train.lora_rank = 4
    c.train.lora_alpha = 8.0  # alpha / rank = 2, as [FF]
    c.train.eval_every = 2
    c.checkpoint.every_epochs = 0
    c.logging.tensorboard = False
    # Pinned to the value this variant trained with before issue 17 (its results are
    # compared across refactors): ffjax's advantage epsilon std + 1e-4.
    c.train.advantage_eps = "flow_grpo"
    c.model.negative_prompt = " "  # and the negative prompt of its true CFG then ([FF]: "")
    c.rewards = configs.ConfigDict()
    configs.add_reward(c, "brightness")
