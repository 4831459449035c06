"""GRPO LoRA on WAN image-to-video with Flow-Factory's published Wan 2.1 I2V settings.

    python -m ffjax.train --config configs/wan_i2v_grpo.py --workdir /runs/wan_i2v_grpo \
        --config.model.path=/data/Wan2.1-I2V-14B-480P-Diffusers \
        --config.data.path=/data/sharegpt4o_image_mini \
        --config.rewards.pick_score.args.path=/data/PickScore_v1 \
        --config.rewards.pick_score.args.processor_path=/data/CLIP-ViT-H-14-laion2B-s32B-b79K
    python -m ffjax.train --config configs/wan_i2v_grpo.py:tiny --workdir /tmp/wan_i2v \
        --config.model.path=<folder of tests/tiny_wan_i2v_pipeline.py> \
        --config.data.path=<folder with train.jsonl rows {"prompt": ..., "image": ...}>
    python -m ffjax.train --config configs/wan_i2v_grpo.py --check_config ...  # validate only

Variants:
  ""      Flow-Factory's Wan 2.1 I2V-14B-480P GRPO LoRA example, 8 GPUs [FF].
  "tiny"  the default's algorithm settings at toy size, on CPU in minutes, on the tiny
          WanImageToVideoPipeline that `tests.tiny_wan_i2v_pipeline` writes (pass its
          folder as model.path), with the `brightness` reward.

Sources, cited by tag in the comments below:
  [FF] X-GenGroup/Flow-Factory a0b2bc5 examples/grpo/lora/wan21/i2v.yaml
  [FD] X-GenGroup/Flow-Factory a0b2bc5 README "Image-to-Image & Image-to-Video" (dataset rows)
  [FW] X-GenGroup/Flow-Factory a0b2bc5 src/flow_factory/models/wan/wan2_i2v.py
  [FS] X-GenGroup/Flow-Factory a0b2bc5 src/flow_factory/scheduler/unipc_multistep.py

Data: a jsonl folder (train.jsonl / test.jsonl) whose rows carry the conditioning image
in an "image" field [FD]; relative paths are looked up in `data.image_dir` (default
<data folder>/images, as [FD], then the data folder). The `wan2-i2v` adapter resizes it
to the training size (see ffjax/models/wan/adapter_i2v.py). Everything else as
configs/wan_t2v_grpo.py: classifier-free guidance 5 in the rollout and the training
forward, flow shift 3.0 stepped by ffjax's Flow-SDE / ODE steps, global batch rows.
Evaluation at 480 px as [FF] (model.eval_height / width). Not carried over: its
text_alignment eval reward is commented out there, and so absent here.
"""

from ffjax import configs

VARIANTS = ("", "tiny")


def get_config(variant: str = "") -> configs.ConfigDict:
    """Variant: "" (Flow-Factory, Wan 2.1 I2V-14B-480P, default), "tiny"."""
    configs.check_variant(__file__, variant, VARIANTS)
    c = configs.base_config()
    configs.set_algorithm(c, "grpo")
    _flow_factory(c)
    if variant == "tiny":
        _tiny(c)
    return c


def _flow_factory(c: configs.ConfigDict) -> None:
    """[FF]: Wan 2.1 I2V at 240 px, 5 frames, PickScore, 8 GPUs."""
    c.seed = 42  # [FF] seed
    c.model.name = "wan2-i2v"  # [FF] model_type wan2_i2v
    c.model.dtype = "bfloat16"  # [FF] mixed_precision
    c.model.remat = "none"  # [FF] enable_gradient_checkpointing false
    # [FF] resolution 240; WAN sizes must divide VAE factor 8 x patch 2 = 16: 240 = 15 x 16.
    c.model.height = c.model.width = 240
    c.model.num_frames = 5  # [FF] num_frames
    c.model.flow_shift = 3.0  # the 480P pipeline's scheduler flow_shift
    c.model.negative_prompt = ""  # WanImageToVideoPipeline's default negative prompt
    c.model.max_sequence_length = 512  # Wan 2.1 I2V takes exactly 512 text tokens
    c.sampling.num_steps = 10  # [FF] num_inference_steps
    c.sampling.eval_num_steps = 28  # [FF] eval.num_inference_steps
    c.model.eval_height = c.model.eval_width = 480  # [FF] eval.resolution 480
    # [FW] rolls out on its UniPC scheduler's timesteps / 1000 (0.999, 0.964, ... at 10
    # steps) and evaluates with UniPC multistep ([FS] eval mode).
    c.sampling.sigma_grid = "unipc_flow"
    c.sampling.eval_solver = "unipc"
    c.sampling.guidance_scale = 5.0  # [FF] guidance_scale
    c.sampling.dynamics = "flow_sde"  # [FF] dynamics_type Flow-SDE
    c.sampling.noise_level = 0.9  # [FF] noise_level
    c.sampling.sde_candidates = (1, 2, 3)  # [FF] sde_steps
    c.sampling.sde_num_steps = 1  # [FF] num_sde_steps, drawn at random
    c.sampling.batch_size = 8  # [FF] per_device_batch_size 1 x 8 GPUs
    c.data.group_size = 16  # [FF] group_size
    c.data.prompts_per_epoch = 48  # [FF] unique_sample_num_per_epoch
    c.train.learning_rate = 1e-4  # [FF] optimizers.learning_rate
    c.train.weight_decay = 1e-4  # [FF] optimizers.weight_decay
    c.train.max_grad_norm = 1.0  # [FF] optimizers.max_grad_norm
    c.train.micro_batch_size = 8  # [FF] per_device_batch_size 1 x 8 GPUs
    c.train.grad_accum_steps = 48  # [FF] gradient_step_per_epoch 2: 48 x 16 x 1 / 2 / 8
    c.train.lora_rank = 64  # [FF] lora_rank
    c.train.lora_alpha = 128.0  # [FF] lora_alpha; target_modules "default" = the adapter's
    c.train.advantage_method = "gdpo"  # [FF] advantage_aggregation
    c.train.advantage_std = "group"  # [FF] global_std false
    c.algorithm.clip_range = 1e-4  # [FF] clip_range
    c.algorithm.adv_clip_max = 5.0  # [FF] adv_clip_range
    c.algorithm.kl_type = "v-based"  # [FF] kl_type (kl_beta 0: unused)
    c.algorithm.cfg_in_train = True  # the WAN forward guides like inference does
    c.train.eval_every = 20  # [FF] eval.eval_freq
    c.checkpoint.every_epochs = 20  # [FF] log.save_freq
    configs.ema_every_4_epochs(c)  # [FF] ema_decay 0.9 every 4 epochs
    configs.add_reward(c, "pick_score", "pickscore", 1.0)  # [FF] rewards: PickScore


def _tiny(c: configs.ConfigDict) -> None:
    """The default's algorithm settings at toy size (the tiny "i2v" pipeline: factor 4 in
    space and time, patch 2: 5 frames of 16 x 32 are 16 tokens)."""
    c.model.dtype = "float32"  # CPUs have no fast bfloat16 matmuls
    c.model.height, c.model.width = 16, 32
    c.model.num_frames = 5
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
