"""DiffusionNFT LoRA on WAN text-to-video with Flow-Factory's published WAN NFT settings.

    python -m ffjax.train --config configs/wan_t2v_nft.py --workdir /runs/wan_nft \
        --config.model.path=/data/Wan2.1-T2V-1.3B-Diffusers --config.data.path=/data/pickscore \
        --config.rewards.pick_score.args.path=/data/PickScore_v1 \
        --config.rewards.pick_score.args.processor_path=/data/CLIP-ViT-H-14-laion2B-s32B-b79K
    python -m ffjax.train --config configs/wan_t2v_nft.py:tiny --workdir /tmp/wan_nft \
        --config.model.path=<folder of tests/tiny_wan_pipeline.py>
    python -m ffjax.train --config configs/wan_t2v_nft.py --check_config ...  # validate only

Variants:
  ""      Flow-Factory's WAN 2.1 T2V-1.3B DiffusionNFT LoRA example, 8 GPUs [FF].
  "tiny"  the default's algorithm settings at toy size, on CPU in minutes, on the tiny
          WanPipeline that `tests.tiny_wan_pipeline.build_wan_pipeline` writes (pass its
          folder as model.path), with the `brightness` reward.

Sources, cited by tag in the comments below:
  [FF] X-GenGroup/Flow-Factory b30dc00 examples/nft/lora/wan21/t2v.yaml (guidance_scale
       5.0 at a0b2bc5, train and eval; 1.0 at b30dc00, followed here)
  [FW] X-GenGroup/Flow-Factory a0b2bc5 src/flow_factory/models/wan/wan2_t2v.py
  [FS] X-GenGroup/Flow-Factory a0b2bc5 src/flow_factory/scheduler/unipc_multistep.py

[FF] trains on single frames (num_frames 1: WAN as an image model, 480 x 832) without
guidance (scale 1.0), with ODE rollouts as DiffusionNFT does; its evaluation uses 41
frames at the training size, as here (model.eval_num_frames). Batch sizes as in configs/flux_nft.py: global rows, one per (sample, training
sigma); micro_batch_size is [FF]'s per-device batch times its 8 GPUs and an epoch takes
its one optimizer step. Values not set here are the ffjax NFT defaults, which match
[FF] (off-policy EMA old policy, "discrete" training sigmas, time shift 3, advantage
clip 5, no KL, AdamW wd 1e-4, grad-norm clip 1, constant lr).
"""

from ffjax import configs

VARIANTS = ("", "tiny")


def get_config(variant: str = "") -> configs.ConfigDict:
    """Variant: "" (Flow-Factory, Wan 2.1 T2V-1.3B, default), "tiny"."""
    configs.check_variant(__file__, variant, VARIANTS)
    c = configs.base_config()
    configs.set_algorithm(c, "nft")
    _flow_factory(c)
    if variant == "tiny":
        _tiny(c)
    return c


def _flow_factory(c: configs.ConfigDict) -> None:
    """[FF]: Wan 2.1 T2V-1.3B, one frame at 480 x 832, PickScore, 8 GPUs."""
    c.seed = 42  # [FF] seed
    c.model.name = "wan2-t2v"  # [FF] model_type wan2_t2v
    c.model.dtype = "bfloat16"  # [FF] mixed_precision
    c.model.height, c.model.width = 480, 832  # [FF] resolution
    c.model.num_frames = 1  # [FF] num_frames
    c.model.flow_shift = 3.0  # WanPipeline's 480p shift ([FF] sets no scheduler shift)
    c.model.negative_prompt = ""
    c.sampling.num_steps = 12  # [FF] num_inference_steps
    c.sampling.eval_num_steps = 20  # [FF] eval.num_inference_steps
    c.model.eval_num_frames = 41  # [FF] eval.num_frames (eval.resolution: the training one)
    c.sampling.guidance_scale = 1.0  # [FF] guidance_scale: no CFG (a0b2bc5: 5.0)
    # [FW] rolls out on its UniPC scheduler's timesteps / 1000 (0.999, 0.964, ... at 10
    # steps) and evaluates with UniPC multistep ([FS] eval mode).
    c.sampling.sigma_grid = "unipc_flow"
    c.sampling.eval_solver = "unipc"
    c.sampling.dynamics = "ode"  # [FF] dynamics_type ODE
    c.sampling.batch_size = 8  # [FF] per_device_batch_size 1 x 8 GPUs per rollout call
    c.data.group_size = 16  # [FF] group_size
    c.data.prompts_per_epoch = 48  # [FF] unique_sample_num_per_epoch
    c.train.learning_rate = 1e-4  # [FF] optimizers.learning_rate
    c.train.micro_batch_size = 8  # [FF] per_device_batch_size 1 x 8 GPUs
    c.train.grad_accum_steps = 384  # [FF] gradient_step_per_epoch 1: 48 x 16 x 4 / 8
    c.train.lora_rank = 128  # [FF] lora_rank
    c.train.lora_alpha = 128.0  # [FF] lora_alpha; target_modules "default" = the adapter's
    c.train.advantage_method = "gdpo"  # [FF] advantage_aggregation
    c.train.advantage_std = "group"  # [FF] global_std false
    c.train.eval_every = 20  # [FF] eval.eval_freq
    c.checkpoint.every_epochs = 20  # [FF] log.save_freq
    c.algorithm.beta = 0.1  # [FF] nft_beta
    c.algorithm.num_train_timesteps = 4  # [FF] num_train_timesteps
    c.algorithm.sigma_range = (0.0, 0.9)  # [FF] timestep_range 0.9
    configs.ema_nft(c)  # [FF] piecewise_linear EMA 0 -> 0.5 over 500 epochs: the old policy
    configs.add_reward(c, "pick_score", "pickscore")  # [FF] PickScore


def _tiny(c: configs.ConfigDict) -> None:
    """The default's algorithm settings at toy size (the tiny pipeline), 5 frames."""
    c.model.dtype = "float32"  # CPUs have no fast bfloat16 matmuls
    c.model.height, c.model.width = 16, 32
    c.model.num_frames = 5
    c.model.max_sequence_length = 32
    c.sampling.num_steps = 6
    c.sampling.eval_num_steps = 6
    c.model.eval_height = c.model.eval_width = 0  # evaluate at the tiny size
    c.model.eval_num_frames = 0
    c.sampling.sigma_grid = "flow_match_euler"  # the grid the tiny results were recorded on
    c.sampling.eval_solver = "euler"  # as when the tiny results were recorded
    c.sampling.batch_size = 0  # the whole epoch in one rollout call
    c.data.group_size = 4
    c.data.prompts_per_epoch = 2
    c.train.num_epochs = 2
    c.train.micro_batch_size = 16  # 2 x 4 samples x 4 sigmas = 32 rows: one optimizer
    c.train.grad_accum_steps = 2  # step per epoch, as [FF]
    c.train.lora_rank = 4
    c.train.lora_alpha = 4.0  # alpha / rank = 1, as [FF]
    c.train.eval_every = 2
    c.checkpoint.every_epochs = 0
    c.logging.tensorboard = False
    # Pinned to the value this variant trained with before issue 17 (its results are
    # compared across refactors): ffjax's advantage epsilon std + 1e-4.
    c.train.advantage_eps = "flow_grpo"
    c.rewards = configs.ConfigDict()
    configs.add_reward(c, "brightness")
