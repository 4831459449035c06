"""Advantage Weighted Matching on FLUX.1-dev with Flow-Factory's published settings.

    python -m ffjax.train --config configs/flux_awm.py --workdir /runs/flux_awm \
        --config.model.path=/data/FLUX.1-dev --config.data.path=/data/pickscore
    python -m ffjax.train --config configs/flux_awm.py:tiny --workdir /tmp/flux_awm
    python -m ffjax.train --config configs/flux_awm.py --check_config ...  # validate only

Variants:
  ""      Flow-Factory's FLUX.1 AWM LoRA example, 8 GPUs [FF].
  "tiny"  the same algorithm settings at toy size, on CPU in minutes, on the demo
          pipeline (assets/demo, tools/make_demo_pipeline.py) with the `shapes` reward.

The default needs `model.path` (a Diffusers FLUX.1-dev folder), `data.path`
(train.txt / test.txt prompts, e.g. Flow-GRPO's dataset/pickscore) and
`--config.rewards.pickscore.args.path=/data/PickScore_v1` (yuvalkirstain/PickScore_v1).

Sources, cited by tag in the comments below (repository, commit, path):
  [FF]  X-GenGroup/Flow-Factory a0b2bc5 examples/awm/lora/flux1/default.yaml (older
        schema); the index holds the newer file at 6c7882b, not read value by value here
  [AWM] scxue/advantage_weighted_matching config/dgx_awm.py publishes SD3.5-M runs only
        (`pickscore_sd3_no_cfg_*` and others), so there is no official FLUX.1 recipe and
        [FF] is the published one. [FF] keeps [AWM]'s algorithm values: ghuber weighting
        with p 0.25, clip range 1, advantage clip 1, an EMA-KL whose EMA decay ramps
        linearly to 0.3, on-policy, global std, lr 3e-4. [AWM] differs in 14 steps, 24
        samples per group, 6 training sigmas and a KL weight (train.beta, 1e-4 in its
        PickScore runs).

Batch sizes. ffjax counts global training rows, one per (sample, training sigma):
micro_batch_size is [FF]'s per-GPU batch times its 8 GPUs and micro_batch_size x
grad_accum_steps the rows of its one optimizer step per epoch. On fewer devices divide
micro_batch_size and multiply grad_accum_steps by the same factor.

Reward: PickScore as [FF]. [FF] clips the advantage to +-1 (adv_clip_range 1.0); [AWM]
clips to +-5 and rescales to +-1 (train.advantage_max 1: clip(A, +-5) / 5), which this
recipe does not do (algorithm.advantage_max=1 with adv_clip_max=5 would). Evaluation at
1024 px as [FF] (model.eval_height / width; training at 512). Values not set here are the base or ffjax AWM
defaults, which already match [FF] (512 px, 10 steps, guidance 3.5, no reference KL,
sum advantages, AdamW wd 1e-4, grad-norm clip 1, constant lr).
"""

from pathlib import Path

from ffjax import configs

VARIANTS = ("", "tiny")
DEMO = Path(__file__).resolve().parents[1] / "assets" / "demo"


def get_config(variant: str = "") -> configs.ConfigDict:
    """Variant: "" (Flow-Factory FLUX.1, default), "tiny"."""
    configs.check_variant(__file__, variant, VARIANTS)
    c = configs.base_config()
    configs.set_algorithm(c, "awm")
    _flow_factory(c)
    if variant == "tiny":
        _tiny(c)
    return c


def _flow_factory(c: configs.ConfigDict) -> None:
    """[FF]: FLUX.1-dev at 512 px, PickScore, 8 GPUs x 2 samples per batch."""
    c.seed = 42  # [FF] seed
    c.model.dtype = "bfloat16"  # [FF] mixed_precision
    c.sampling.eval_num_steps = 20  # [FF] eval.num_inference_steps
    c.model.eval_height = c.model.eval_width = 1024  # [FF] eval.resolution 1024
    c.sampling.dynamics = "ode"  # [FF] dynamics_type "ODE": AWM trains on x0 only
    c.sampling.batch_size = 16  # [FF] per_device_batch_size 2 x 8 GPUs per rollout call
    c.data.group_size = 16  # [FF] group_size
    c.data.prompts_per_epoch = 48  # [FF] unique_sample_num_per_epoch
    c.train.learning_rate = 3e-4  # [FF] optimizers.learning_rate; [AWM] too
    c.train.micro_batch_size = 16  # [FF] per_device_batch_size 2 x 8 GPUs
    c.train.grad_accum_steps = 192  # [FF] gradient_step_per_epoch 1: 48 x 16 x 4 / 16
    c.train.lora_rank = 64  # [FF] lora_rank
    c.train.lora_alpha = 128.0  # [FF] lora_alpha; target_modules "default" = lora.py's
    c.train.advantage_std = "global"  # [FF] global_std; [AWM] sample.global_std
    c.train.eval_every = 20  # [FF] eval.eval_freq
    c.checkpoint.every_epochs = 20  # [FF] log.save_freq
    a = c.algorithm
    a.weighting = "ghuber"  # [FF] awm_weighting; [AWM] train.weighting
    a.ghuber_p = 0.25  # [FF] ghuber_power; [AWM] train.ghuber_power
    a.clip_range = 1.0  # [FF] clip_range; [AWM] train.clip_range
    a.adv_clip_max = 1.0  # [FF] adv_clip_range; [AWM] 5, rescaled by advantage_max 1
    a.advantage_max = 0.0  # [FF] no rescale (the ffjax default)
    a.ema_kl_beta = 0.1  # [FF] ema_kl_beta
    a.timestep_sampler = "discrete"  # [FF] time_sampling_strategy
    a.num_train_timesteps = 4  # [FF] num_train_timesteps
    a.sigma_range = (0.0, 0.7)  # [FF] timestep_range 0.7 = [0, 0.7] along denoising
    a.time_shift = 3.0  # [FF] time_shift (unused by "discrete")
    c.train.advantage_method = "sum"  # [FF] advantage_aggregation 'sum'
    c.train.advantage_eps = "flow_factory"  # [FF] max(std, 1e-6)
    configs.ema_awm(c)  # [FF] linear EMA 0 -> 0.3 over 300 epochs (the EMA-KL's)
    configs.add_reward(c, "pickscore", path=configs.required_arg())  # [FF] PickScore


def _tiny(c: configs.ConfigDict) -> None:
    """The default's algorithm settings at toy size: a CPU run of a few minutes."""
    c.model.path = str(DEMO)
    c.data.path = str(DEMO / "prompts")
    c.model.dtype = "float32"  # CPUs have no fast bfloat16 matmuls
    c.model.height = c.model.width = 32  # the demo VAE (factor 4): 4x4 packed latent tokens
    c.model.max_sequence_length = 16  # tools/make_demo_pipeline.py MAX_SEQUENCE_LENGTH
    c.sampling.num_steps = 8
    c.sampling.eval_num_steps = 8
    c.model.eval_height = c.model.eval_width = 0  # evaluate at the tiny size
    c.sampling.batch_size = 0  # the whole epoch (16 samples) in one rollout call
    c.data.group_size = 4
    c.data.prompts_per_epoch = 4
    c.train.num_epochs = 4
    c.train.micro_batch_size = 16  # 4 x 4 samples x 4 sigmas = 64 rows: one optimizer
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
