"""GRPO LoRA on Qwen-Image with Flow-Factory's published Qwen-Image settings.

    python -m ffjax.train --config configs/qwen_image_grpo.py --workdir /runs/qwen_grpo \
        --config.model.path=/data/Qwen-Image --config.data.path=/data/pickscore \
        --config.rewards.text_alignment.args.path=/data/clip-vit-large-patch14 \
        --config.rewards.pick_score.args.path=/data/PickScore_v1 \
        --config.rewards.pick_score.args.processor_path=/data/CLIP-ViT-H-14-laion2B-s32B-b79K
    python -m ffjax.train --config configs/qwen_image_grpo.py:tiny --workdir /tmp/qwen_grpo \
        --config.model.path=<folder of tests/tiny_qwen_image_pipeline.py>
    python -m ffjax.train --config configs/qwen_image_grpo.py --check_config ... # validate only

Variants:
  ""      Flow-Factory's Qwen-Image GRPO LoRA example, 8 GPUs [FF].
  "tiny"  the default's algorithm settings at toy size, on CPU in minutes, on the tiny
          QwenImagePipeline that `tests.tiny_qwen_image_pipeline.build_qwen_image_pipeline`
          writes (pass its folder as model.path), with the `brightness` reward.

Sources, cited by tag in the comments below:
  [FF] X-GenGroup/Flow-Factory a0b2bc5 examples/grpo/lora/qwen_image/default.yaml
  [FQ] X-GenGroup/Flow-Factory a0b2bc5 src/flow_factory/models/qwen_image/qwen_image.py

Guidance: Qwen-Image uses true classifier-free guidance; `sampling.guidance_scale` is
the pipeline's `true_cfg_scale` and `model.negative_prompt` the negative prompt (the
ffjax `qwen-image` adapter). As in [FQ], the guided velocity (both passes, norm
rescaled) is used in the rollout and in the training forward alike
(`algorithm.cfg_in_train=True`; see its comment for False).

Batch sizes as in configs/flux_grpo.py: global rows, one per (sample, SDE step);
micro_batch_size is [FF]'s per-device batch times its 8 GPUs and an epoch takes its 2
optimizer steps. Evaluation at 1024 px as [FF] (model.eval_height / width).
"""

from ffjax import configs

VARIANTS = ("", "tiny")


def get_config(variant: str = "") -> configs.ConfigDict:
    """Variant: "" (Flow-Factory, default), "tiny"."""
    configs.check_variant(__file__, variant, VARIANTS)
    c = configs.base_config()
    configs.set_algorithm(c, "grpo")
    _flow_factory(c)
    if variant == "tiny":
        _tiny(c)
    return c


def _flow_factory(c: configs.ConfigDict) -> None:
    """[FF]: Qwen-Image, CLIP text alignment + PickScore, 8 GPUs x 1 sample per batch."""
    c.seed = 42  # [FF] seed
    c.model.name = "qwen-image"  # [FF] model_type
    c.model.dtype = "bfloat16"  # [FF] mixed_precision
    c.model.remat = "full"  # [FF] enable_gradient_checkpointing
    c.model.height = c.model.width = 512  # [FF] resolution
    c.model.max_sequence_length = 1024  # [FQ] encode_prompt / inference default
    c.sampling.num_steps = 10  # [FF] num_inference_steps
    c.sampling.eval_num_steps = 28  # [FF] eval.num_inference_steps
    c.model.eval_height = c.model.eval_width = 1024  # [FF] eval.resolution 1024
    c.sampling.guidance_scale = 4.0  # [FF] guidance_scale = true_cfg_scale [FQ]
    c.model.negative_prompt = ""  # [FQ] encode_prompt: negative_prompt None -> ""
    c.sampling.dynamics = "flow_sde"  # [FF] dynamics_type Flow-SDE
    c.sampling.noise_level = 1.0  # [FF] noise_level
    c.sampling.sde_candidates = (1, 2, 3)  # [FF] sde_steps
    c.sampling.sde_num_steps = 1  # [FF] num_sde_steps, drawn at random
    c.sampling.batch_size = 8  # [FF] per_device_batch_size 1 x 8 GPUs
    c.data.group_size = 16  # [FF] group_size
    c.data.prompts_per_epoch = 48  # [FF] unique_sample_num_per_epoch
    c.train.learning_rate = 3e-4  # [FF] optimizers.learning_rate
    c.train.micro_batch_size = 8  # [FF] per_device_batch_size 1 x 8 GPUs
    c.train.grad_accum_steps = 48  # [FF] gradient_step_per_epoch 2: 48 x 16 x 1 / 2 / 8
    c.train.lora_rank = 64  # [FF] lora_rank
    c.train.lora_alpha = 128.0  # [FF] lora_alpha; target_modules "default" = the adapter's
    c.train.advantage_method = "gdpo"  # [FF] advantage_aggregation
    c.train.advantage_std = "group"  # [FF] global_std false
    c.algorithm.kl_type = "v-based"  # [FF] kl_type (kl_beta 0: unused)
    # [FQ] forward() guides like inference does. False halves the training forward (the
    # conditional pass only) but scores the guided rollout's old log-probs with another
    # policy: the ratio starts away from 1 and mostly clips at clip_range 1e-4.
    c.algorithm.cfg_in_train = True
    c.train.eval_every = 20  # [FF] eval.eval_freq
    c.checkpoint.every_epochs = 20  # [FF] log.save_freq
    configs.ema_every_4_epochs(c)  # [FF] ema_decay 0.9 every 4 epochs
    configs.add_reward(c, "text_alignment", "clip_score", 1.0)  # [FF] CLIP, weight 1.0
    configs.add_reward(c, "pick_score", "pickscore", 0.5)  # [FF] PickScore, weight 0.5


def _tiny(c: configs.ConfigDict) -> None:
    """The default's algorithm settings at toy size (the tiny pipeline: 32 px, factor 4)."""
    c.model.dtype = "float32"  # CPUs have no fast bfloat16 matmuls
    c.model.remat = "none"
    c.model.height = c.model.width = 32  # 8x8 latents: 16 packed tokens
    c.model.max_sequence_length = 64
    c.sampling.num_steps = 4
    c.sampling.eval_num_steps = 4
    c.model.eval_height = c.model.eval_width = 0  # evaluate at the tiny size
    c.sampling.sde_candidates = (1, 2)
    c.sampling.batch_size = 0  # the whole epoch (4 samples) in one rollout call
    c.data.group_size = 2
    c.data.prompts_per_epoch = 2
    c.train.num_epochs = 2
    c.train.micro_batch_size = 1  # 2 x 2 samples x 1 SDE step = 4 rows: 2 optimizer
    c.train.grad_accum_steps = 2  # steps of 2 rows per epoch, as [FF]
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
