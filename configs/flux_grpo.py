"""GRPO on FLUX.1-dev with the published settings of Flow-GRPO and Flow-Factory.

    python -m ffjax.train --config configs/flux_grpo.py --workdir /runs/flux_grpo \
        --config.model.path=/data/FLUX.1-dev --config.data.path=/data/pickscore
    python -m ffjax.train --config configs/flux_grpo.py:fast ...           # Flow-GRPO-Fast
    python -m ffjax.train --config configs/flux_grpo.py:flow_factory ...   # Flow-Factory's
    python -m ffjax.train --config configs/flux_grpo.py:tiny --workdir /tmp/flux_grpo
    python -m ffjax.train --config configs/flux_grpo.py --check_config ... # validate only

Variants:
  ""             Flow-GRPO's FLUX.1-dev PickScore run, 32 GPUs [G].
  "fast"         Flow-GRPO-Fast [GF]: CPS steps on a window of the first 3 steps.
  "flow_factory" Flow-Factory's FLUX.1 GRPO LoRA example, 8 GPUs [FF].
  "tiny"         the default's algorithm settings at toy size, on CPU in minutes, on
                 the demo pipeline (assets/demo, tools/make_demo_pipeline.py) with the
                 registered `shapes` reward.

All but "tiny" need `model.path` (a Diffusers FLUX.1-dev folder), `data.path`
(train.txt / test.txt prompts, e.g. Flow-GRPO's dataset/pickscore) and the PickScore
folder (a transformers CLIPModel, yuvalkirstain/PickScore_v1):
  --config.rewards.pickscore.args.path=/data/PickScore_v1          ("", "fast")
  --config.rewards.pickscore_rank.args.path=/data/PickScore_v1     ("flow_factory")
(validation names the key when it is missing).

Sources, cited by tag in the comments below (repository, commit, path):
  [G]  yifan123/flow_grpo 54809b5 config/grpo.py `pickscore_flux`, on config/base.py
  [GS] yifan123/flow_grpo 54809b5 scripts/train_flux.py
  [GF] yifan123/flow_grpo 54809b5 config/grpo.py `pickscore_flux_fast`
  [FF] X-GenGroup/Flow-Factory b30dc00 examples/grpo/lora/flux1/default.yaml (the same
       values at 5f6cda1 and a0b2bc5, which has the older schema: optimizer keys under
       train, data.dataset_dir)

Batch sizes. The references count per-GPU batches; ffjax counts global training rows,
one per (sample, SDE step). micro_batch_size is the references' per-GPU train batch
times their GPU count, and micro_batch_size x grad_accum_steps is the rows of one of
their optimizer steps, so an epoch takes as many optimizer steps as theirs (2). On
fewer devices divide micro_batch_size and multiply grad_accum_steps by the same factor.

Rewards as the sources: PickScore [G] (reward_fn {"pickscore": 1.0}) and Flow-Factory's
PickScore_Rank [FF] (PickScore ranked within each group). They train until stopped by hand
(num_epochs 100000); set `train.num_epochs`. Values not set here are the base values,
which already match the references (512 px, eval 28 steps, guidance 3.5, flow_sde,
clip range 1e-4, advantage clip 5, no KL, AdamW wd 1e-4, grad-norm clip 1, constant lr).
Advantage epsilon: [G] divides by std + 1e-4 (flow_grpo/stat_tracking.py), [FF] by
max(std, 1e-6) (advantage_processor.py); each variant names its own. [FF] evaluates
with PickScore (eval_rewards); ffjax evaluates with the training reward here.
"""

from pathlib import Path

from ffjax import configs

VARIANTS = ("", "fast", "flow_factory", "tiny")
DEMO = Path(__file__).resolve().parents[1] / "assets" / "demo"


def get_config(variant: str = "") -> configs.ConfigDict:
    """Variant: "" (Flow-GRPO, default), "fast", "flow_factory", "tiny"."""
    configs.check_variant(__file__, variant, VARIANTS)
    c = configs.base_config()
    configs.set_algorithm(c, "grpo")
    if variant == "flow_factory":
        _flow_factory(c)
    else:
        _flow_grpo(c)
    if variant == "fast":
        _fast(c)
    if variant == "tiny":
        _tiny(c)
    return c


def _flow_grpo(c: configs.ConfigDict) -> None:
    """[G]: FLUX.1-dev, PickScore, 32 GPUs x 3 samples per batch, 12 batches per epoch."""
    c.seed = 42  # [G] seed
    c.model.dtype = "bfloat16"  # [G] mixed_precision "bf16"
    c.model.max_sequence_length = 128  # [GS] compute_text_embeddings(max_sequence_length=128)
    c.sampling.num_steps = 6  # [G] sample.num_steps
    c.sampling.noise_level = 0.9  # [G] sample.noise_level
    # [GS] trains int(6 * timestep_fraction 0.99) = 5 steps, all but the last: the base
    # sde_candidates=() / sde_num_steps=0. (Its last rollout step is also stochastic but
    # never trained; here it is an ODE step.)
    c.sampling.batch_size = 96  # [G] sample.train_batch_size 3 x 32 GPUs per rollout call
    c.data.group_size = 24  # [G] sample.num_image_per_prompt
    c.data.prompts_per_epoch = 48  # [G] 32 GPUs x 3 x 12 batches / 24
    c.train.learning_rate = 3e-4  # [G] base.py train.learning_rate
    c.train.micro_batch_size = 96  # [G] train.batch_size 3 x 32 GPUs
    c.train.grad_accum_steps = 30  # [G][GS] 6 batches x 5 steps: 2 optimizer steps per epoch
    c.train.lora_rank = 64  # [GS] LoraConfig(r=64, init_lora_weights="gaussian")
    c.train.lora_alpha = 128.0  # [GS] lora_alpha=128; targets: the FLUX default (lora.py)
    c.train.advantage_std = "global"  # [G] sample.global_std=True (per-prompt mean)
    c.train.eval_every = 30  # [G] eval_freq
    c.checkpoint.every_epochs = 30  # [G] save_freq
    c.checkpoint.keep = 5  # [G] num_checkpoint_limit
    c.train.advantage_eps = "flow_grpo"  # [G] flow_grpo/stat_tracking.py std + 1e-4
    c.algorithm.kl_form = "flow_grpo"  # [GS] its KL form (kl_beta 0 here: unused)
    configs.ema_every_4_epochs(c)  # [FF] / [GS] decay 0.9 every 4 epochs
    configs.add_reward(c, "pickscore", path=configs.required_arg())  # [G] reward_fn pickscore


def _fast(c: configs.ConfigDict) -> None:
    """[GF] on top of [G]: CPS on steps 0-2 only, a tighter clip, group-std advantages."""
    c.sampling.dynamics = "cps"  # [GF] sample.sde_type
    c.sampling.noise_level = 0.8  # [GF] sample.noise_level
    # [GF] sde_window_size 3 within sde_window_range (0, num_steps // 2 = 3): steps 0-2.
    c.sampling.sde_candidates = (0, 1, 2)
    c.sampling.sde_window = "contiguous"  # [GF] a window (here the whole range)
    c.algorithm.clip_range = 1e-5  # [GF] train.clip_range
    c.train.advantage_std = "group"  # [GF] sample.global_std=False
    c.train.grad_accum_steps = 18  # 6 batches x 3 window steps: 2 optimizer steps per epoch


def _flow_factory(c: configs.ConfigDict) -> None:
    """[FF]: FLUX.1-dev, PickScore rank reward, 8 GPUs x 2 samples per batch."""
    c.seed = 42  # [FF] seed
    c.model.dtype = "bfloat16"  # [FF] mixed_precision
    # num_steps 10, guidance 3.5, flow_sde, noise_level 0.7: [FF] = the base values.
    c.sampling.eval_num_steps = 20  # [FF] eval.num_inference_steps
    c.sampling.sde_candidates = (1, 2, 3)  # [FF] scheduler.sde_steps
    c.sampling.sde_num_steps = 1  # [FF] scheduler.num_sde_steps, drawn at random
    c.sampling.batch_size = 16  # [FF] per_device_batch_size 2 x 8 GPUs
    c.data.group_size = 16  # [FF] group_size
    c.data.prompts_per_epoch = 48  # [FF] unique_sample_num_per_epoch
    c.train.learning_rate = 3e-4  # [FF] optimizers.learning_rate
    c.train.micro_batch_size = 16  # [FF] per_device_batch_size 2 x 8 GPUs
    c.train.grad_accum_steps = 24  # [FF] gradient_step_per_epoch 2: 48 x 16 x 1 / 2 / 16
    c.train.lora_rank = 64  # [FF] lora_rank
    c.train.lora_alpha = 128.0  # [FF] lora_alpha; target_modules "default" = lora.py's
    c.train.advantage_method = "gdpo"  # [FF] advantage_aggregation
    c.train.advantage_std = "group"  # [FF] global_std false
    c.train.advantage_eps = "flow_factory"  # [FF] max(std, 1e-6)
    c.algorithm.kl_type = "v-based"  # [FF] kl_type (kl_beta 0: unused)
    c.algorithm.clip_range = 1e-4  # [FF] clip_range 1.0e-4 = the pair (-1e-4, 1e-4)
    c.algorithm.adv_clip_max = 5.0  # [FF] adv_clip_range 5.0 = (-5, 5)
    c.train.eval_every = 20  # [FF] eval.eval_freq
    c.checkpoint.every_epochs = 20  # [FF] log.save_freq
    configs.ema_every_4_epochs(c)  # [FF] ema_decay 0.9, ema_update_interval 4
    configs.add_reward(c, "pickscore_rank", path=configs.required_arg())  # [FF] PickScore_Rank


def _tiny(c: configs.ConfigDict) -> None:
    """The default's algorithm settings at toy size: a CPU run of a few minutes."""
    c.model.path = str(DEMO)
    c.data.path = str(DEMO / "prompts")
    c.model.dtype = "float32"  # CPUs have no fast bfloat16 matmuls
    c.model.height = c.model.width = 32  # the demo VAE (factor 4): 4x4 packed latent tokens
    c.model.max_sequence_length = 16  # tools/make_demo_pipeline.py MAX_SEQUENCE_LENGTH
    c.sampling.num_steps = 8
    c.sampling.eval_num_steps = 8
    c.sampling.batch_size = 0  # the whole epoch (16 samples) in one rollout call
    c.data.group_size = 4
    c.data.prompts_per_epoch = 4
    c.train.num_epochs = 4
    c.train.micro_batch_size = 8  # 4 x 4 samples x 7 SDE steps = 112 rows: 2 optimizer
    c.train.grad_accum_steps = 7  # steps of 56 rows per epoch, as [G]
    c.train.lora_rank = 8
    c.train.lora_alpha = 16.0  # alpha / rank = 2, as [GS]
    c.train.eval_every = 2
    c.checkpoint.every_epochs = 4
    c.logging.tensorboard = True
    c.logging.image_grid_every = 2
    # Pinned to the values this variant trained with before issue 17 (its results are
    # compared across refactors): ffjax's advantage epsilon std + 1e-4.
    c.train.advantage_eps = "flow_grpo"
    c.rewards = configs.ConfigDict()
    configs.add_reward(c, "shapes")  # the demo draws coloured shapes (ffjax/rewards/shapes.py)
