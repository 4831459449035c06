"""DiffusionNFT on FLUX.1-dev with Flow-Factory's published settings.

    python -m ffjax.train --config configs/flux_nft.py --workdir /runs/flux_nft \
        --config.model.path=/data/FLUX.1-dev --config.data.path=/data/pickscore
    python -m ffjax.train --config configs/flux_nft.py:tiny --workdir /tmp/flux_nft
    python -m ffjax.train --config configs/flux_nft.py --check_config ...  # validate only

Variants:
  ""      Flow-Factory's FLUX.1 DiffusionNFT LoRA example, 8 GPUs [FF].
  "tiny"  the same algorithm settings at toy size, on CPU in minutes, on the demo
          pipeline (assets/demo, tools/make_demo_pipeline.py) with the `shapes` reward.

The default needs `model.path` (a Diffusers FLUX.1-dev folder), `data.path`
(train.txt / test.txt prompts, e.g. Flow-GRPO's dataset/pickscore) and
`--config.rewards.pickscore.args.path=/data/PickScore_v1` (yuvalkirstain/PickScore_v1).

Sources, cited by tag in the comments below (repository, commit, path):
  [FF]  X-GenGroup/Flow-Factory b30dc00 examples/nft/lora/flux1/default.yaml (the newest
        read). At a0b2bc5 (older schema) the same values but guidance_scale 3.5 (train
        and eval); b30dc00 and 5f6cda1 have 1.0, followed here.
  [NFT] NVlabs/DiffusionNFT publishes SD3.5-M settings only (README: `config/nft.py:sd3_*`;
        config/nft.py, as read in the jiaxi98/DiffusionNFT fork, accepts base_model "sd3"
        alone), so there is no official FLUX.1 recipe and [FF] is the published one. The
        SD3.5 recipe shares beta 1 (sd3_geneval / sd3_pickscore), guidance 1, 48 groups;
        it differs in 24 samples per group, 10 steps, a 2nd-order solver and a KL weight
        of 1e-4 (train.beta), which [FF] does not carry to FLUX.1.

Batch sizes. ffjax counts global training rows, one per (sample, training sigma):
micro_batch_size is [FF]'s per-GPU batch times its 8 GPUs and micro_batch_size x
grad_accum_steps the rows of its one optimizer step per epoch. On fewer devices divide
micro_batch_size and multiply grad_accum_steps by the same factor.

Reward: PickScore as [FF]. Evaluation at 1024 px as [FF] (model.eval_height / width;
training at 384). Values not set here are the base or ffjax NFT
defaults, which already match [FF] (eval 28 steps, beta 1, off-policy EMA old policy,
"discrete" training sigmas, time shift 3, advantage clip 5, no KL, sum advantages with
group std, AdamW wd 1e-4, grad-norm clip 1, constant lr).
"""

from pathlib import Path

from ffjax import configs

VARIANTS = ("", "tiny")
DEMO = Path(__file__).resolve().parents[1] / "assets" / "demo"


def get_config(variant: str = "") -> configs.ConfigDict:
    """Variant: "" (Flow-Factory FLUX.1, default), "tiny"."""
    configs.check_variant(__file__, variant, VARIANTS)
    c = configs.base_config()
    configs.set_algorithm(c, "nft")
    _flow_factory(c)
    if variant == "tiny":
        _tiny(c)
    return c


def _flow_factory(c: configs.ConfigDict) -> None:
    """[FF]: FLUX.1-dev at 384 px, PickScore, 8 GPUs x 1 sample per batch."""
    c.seed = 42  # [FF] seed
    c.model.dtype = "bfloat16"  # [FF] mixed_precision
    c.model.height = c.model.width = 384  # [FF] train.resolution
    c.model.eval_height = c.model.eval_width = 1024  # [FF] eval.resolution 1024
    c.sampling.num_steps = 8  # [FF] num_inference_steps
    c.sampling.guidance_scale = 1.0  # [FF] guidance_scale (train and eval); a0b2bc5: 3.5
    c.sampling.dynamics = "ode"  # [FF] dynamics_type "ODE": NFT trains on x0 only
    c.sampling.batch_size = 8  # [FF] per_device_batch_size 1 x 8 GPUs per rollout call
    c.data.group_size = 16  # [FF] group_size
    c.data.prompts_per_epoch = 48  # [FF] unique_sample_num_per_epoch
    c.train.learning_rate = 3e-4  # [FF] optimizers.learning_rate
    c.train.micro_batch_size = 8  # [FF] per_device_batch_size 1 x 8 GPUs
    c.train.grad_accum_steps = 192  # [FF] gradient_step_per_epoch 1: 48 x 16 x 2 / 8
    c.train.lora_rank = 64  # [FF] lora_rank
    c.train.lora_alpha = 128.0  # [FF] lora_alpha; target_modules "default" = lora.py's
    c.train.eval_every = 20  # [FF] eval.eval_freq
    c.checkpoint.every_epochs = 20  # [FF] log.save_freq
    c.algorithm.num_train_timesteps = 2  # [FF] num_train_timesteps
    c.algorithm.sigma_range = (0.0, 0.7)  # [FF] timestep_range 0.7 = [0, 0.7] along denoising
    c.train.advantage_method = "sum"  # [FF] advantage_aggregation 'sum'
    c.train.advantage_std = "group"  # [FF] global_std false
    c.train.advantage_eps = "flow_factory"  # [FF] max(std, 1e-6)
    c.algorithm.beta = 1.0  # [FF] nft_beta
    c.algorithm.adv_clip_max = 5.0  # [FF] adv_clip_range
    c.algorithm.off_policy = True  # [FF] off_policy: the EMA samples and is the old policy
    c.algorithm.timestep_sampler = "discrete"  # [FF] time_sampling_strategy
    c.algorithm.time_shift = 3.0  # [FF] time_shift
    configs.ema_nft(c)  # [FF] piecewise_linear EMA 0 -> 0.5 over 500 epochs: the old policy
    configs.add_reward(c, "pickscore", path=configs.required_arg())  # [FF] PickScore


def _tiny(c: configs.ConfigDict) -> None:
    """The default's algorithm settings at toy size: a CPU run of a few minutes."""
    c.model.path = str(DEMO)
    c.data.path = str(DEMO / "prompts")
    c.model.dtype = "float32"  # CPUs have no fast bfloat16 matmuls
    c.model.height = c.model.width = 32  # the demo VAE (factor 4): 4x4 packed latent tokens
    c.model.max_sequence_length = 16  # tools/make_demo_pipeline.py MAX_SEQUENCE_LENGTH
    c.sampling.num_steps = 8  # as [FF]
    c.sampling.eval_num_steps = 8
    c.model.eval_height = c.model.eval_width = 0  # evaluate at the tiny size
    c.sampling.batch_size = 0  # the whole epoch (16 samples) in one rollout call
    c.data.group_size = 4
    c.data.prompts_per_epoch = 4
    c.train.num_epochs = 4
    c.train.micro_batch_size = 8  # 4 x 4 samples x 2 sigmas = 32 rows: one optimizer
    c.train.grad_accum_steps = 4  # step per epoch, as [FF]
    c.train.lora_rank = 8
    c.train.lora_alpha = 16.0  # alpha / rank = 2, as [FF]
    c.train.eval_every = 2
    c.checkpoint.every_epochs = 4
    c.logging.tensorboard = True
    c.logging.image_grid_every = 2
    # Pinned to the values this variant trained with before issue 17 (its results are
    # compared across refactors): ffjax's advantage epsilon std + 1e-4.
    c.train.advantage_eps = "flow_grpo"
    c.rewards = configs.ConfigDict()
    configs.add_reward(c, "shapes")  # the demo draws coloured shapes (ffjax/rewards/shapes.py)
