"""DiffusionNFT LoRA on Qwen-Image with Flow-Factory's published Qwen-Image NFT settings.

    python -m ffjax.train --config configs/qwen_image_nft.py --workdir /runs/qwen_nft \
        --config.model.path=/data/Qwen-Image-2512 --config.data.path=/data/pickscore \
        --config.rewards.pick_score.args.path=/data/PickScore_v1 \
        --config.rewards.pick_score.args.processor_path=/data/CLIP-ViT-H-14-laion2B-s32B-b79K
    python -m ffjax.train --config configs/qwen_image_nft.py:tiny --workdir /tmp/qwen_nft \
        --config.model.path=<folder of tests/tiny_qwen_image_pipeline.py>
    python -m ffjax.train --config configs/qwen_image_nft.py --check_config ...  # validate only

Variants:
  ""      Flow-Factory's Qwen-Image DiffusionNFT LoRA example, 8 GPUs [FF].
  "tiny"  the default's algorithm settings at toy size, on CPU in minutes, on the tiny
          QwenImagePipeline that `tests.tiny_qwen_image_pipeline.build_qwen_image_pipeline`
          writes (pass its folder as model.path), with the `brightness` reward.

Sources, cited by tag in the comments below:
  [FF]  X-GenGroup/Flow-Factory b30dc00 examples/nft/lora/qwen_image/rational_rewards_t2i.yaml,
        the current Qwen-Image NFT example (Qwen/Qwen-Image-2512, same architecture as
        Qwen-Image: any QwenImagePipeline folder loads).
  [FF0] X-GenGroup/Flow-Factory d7ad67a examples/nft/lora/qwen_image.yaml, the earlier example:
        Qwen-Image on PickScore, but written in the GRPO layout (PPO clip, EMA 0.9 every 4
        epochs, guidance 4, no NFT-specific fields), so [FF] is the one followed here;
        only its reward (PickScore) is taken.
  [NFT] NVlabs/DiffusionNFT publishes SD3.5-M settings only (see configs/flux_nft.py).

Guidance: [FF] samples and evaluates at guidance_scale 1.0, i.e. without Qwen-Image's
true classifier-free guidance (no negative-prompt pass), as DiffusionNFT trains CFG-free.

Batch sizes as in configs/flux_nft.py: global rows, one per (sample, training sigma);
micro_batch_size is [FF]'s per-device batch times its 8 GPUs and an epoch takes its one
optimizer step. On fewer devices divide micro_batch_size and multiply grad_accum_steps.

Not carried over: [FF]'s reward is RationalRewards-8B-T2I, a VLM judge served by vLLM,
which ffjax does not have; the placeholder is PickScore as in [FF0] (on [FF]'s PickScore
prompts). [FF] caps its dataset at 10,000 prompts (ffjax reads all of data.path).
Values not set here are the base or ffjax NFT defaults, which already match [FF]
(nft_beta 1, off-policy EMA old policy, "discrete" training sigmas, time shift 3,
advantage clip 5, no KL, AdamW wd 1e-4, grad-norm clip 1, constant lr, no gradient
checkpointing).
"""

from ffjax import configs

VARIANTS = ("", "tiny")


def get_config(variant: str = "") -> configs.ConfigDict:
    """Variant: "" (Flow-Factory, default), "tiny"."""
    configs.check_variant(__file__, variant, VARIANTS)
    c = configs.base_config()
    configs.set_algorithm(c, "nft")
    _flow_factory(c)
    if variant == "tiny":
        _tiny(c)
    return c


def _flow_factory(c: configs.ConfigDict) -> None:
    """[FF]: Qwen-Image at 512 px, 8 GPUs x 1 sample per batch."""
    c.seed = 42  # [FF] seed
    c.model.name = "qwen-image"  # [FF] model_type
    c.model.dtype = "bfloat16"  # [FF] mixed_precision
    c.model.height = c.model.width = 512  # [FF] resolution (eval too)
    c.model.max_sequence_length = 1024  # the Qwen-Image pipeline's default
    c.sampling.num_steps = 30  # [FF] num_inference_steps
    c.sampling.eval_num_steps = 40  # [FF] eval.num_inference_steps
    # [FF] guidance_scale (train and eval): no true CFG; 4.0 at a0b2bc5 (the same file).
    c.sampling.guidance_scale = 1.0
    c.sampling.dynamics = "ode"  # [FF] dynamics_type "ODE": NFT trains on x0 only
    c.sampling.batch_size = 8  # [FF] per_device_batch_size 1 x 8 GPUs per rollout call
    c.data.group_size = 16  # [FF] group_size
    c.data.prompts_per_epoch = 32  # [FF] unique_sample_num_per_epoch
    c.train.learning_rate = 2e-4  # [FF] optimizers.learning_rate
    c.train.micro_batch_size = 8  # [FF] per_device_batch_size 1 x 8 GPUs
    c.train.grad_accum_steps = 640  # [FF] gradient_step_per_epoch 1: 32 x 16 x 10 / 8
    c.train.lora_rank = 64  # [FF] lora_rank
    c.train.lora_alpha = 128.0  # [FF] lora_alpha; target_modules "default" = the adapter's
    c.train.advantage_method = "gdpo"  # [FF] advantage_aggregation
    c.train.advantage_std = "group"  # [FF] global_std false
    c.train.eval_every = 10  # [FF] eval.eval_freq
    c.checkpoint.every_epochs = 20  # [FF] log.save_freq
    c.algorithm.num_train_timesteps = 10  # [FF] num_train_timesteps
    c.algorithm.sigma_range = (0.0, 0.5)  # [FF] timestep_range 0.5 = [0, 0.5] along denoising
    configs.ema_nft(c)  # [FF] piecewise_linear EMA 0 -> 0.5 over 500 epochs: the old policy
    configs.add_reward(c, "pick_score", "pickscore")  # [FF0]; placeholder for [FF]'s judge


def _tiny(c: configs.ConfigDict) -> None:
    """The default's algorithm settings at toy size (the tiny pipeline: 32 px, factor 4)."""
    c.model.dtype = "float32"  # CPUs have no fast bfloat16 matmuls
    c.model.height = c.model.width = 32  # 8x8 latents: 16 packed tokens
    c.model.max_sequence_length = 64
    c.sampling.num_steps = 8
    c.sampling.eval_num_steps = 8
    c.sampling.batch_size = 0  # the whole epoch (4 samples) in one rollout call
    c.data.group_size = 2
    c.data.prompts_per_epoch = 2
    c.train.num_epochs = 2
    c.train.micro_batch_size = 20  # 2 x 2 samples x 10 sigmas = 40 rows: one optimizer
    c.train.grad_accum_steps = 2  # step per epoch, as [FF]
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
