"""The embedded default recipe: a tiny FLUX-architecture pipeline on CPU.

    python -m ffjax.train                                   # this recipe, GRPO
    python -m ffjax.train --config configs/demo.py:nft      # DiffusionNFT
    python -m ffjax.train --config configs/demo.py:awm --config.train.num_epochs=5

The pipeline folder (assets/demo) is built by tools/make_demo_pipeline.py.
"""

from pathlib import Path

from ffjax import configs

VARIANTS = ("grpo", "nft", "awm")
ASSETS = Path(__file__).resolve().parents[1] / "assets" / "demo"


def get_config(variant: str = "") -> configs.ConfigDict:
    """Variant: "" or "grpo" (default), "nft", "awm"."""
    variant = variant or "grpo"
    if variant not in VARIANTS:
        raise ValueError(
            f"unknown variant {variant!r} of configs/demo.py; allowed: {', '.join(VARIANTS)}"
        )
    c = configs.base_config()
    c.model.name = "flux1"
    c.model.path = str(ASSETS)
    c.model.height = c.model.width = 32  # tiny: 2x2-packed 4x4 latent tokens
    c.sampling.num_steps = 8
    c.sampling.eval_num_steps = 8
    c.sampling.guidance_scale = 1.0
    c.data.group_size = 4
    c.data.prompts_per_epoch = 4
    c.train.num_epochs = 20
    c.train.micro_batch_size = 8
    c.train.lora_rank = 8
    c.train.lora_alpha = 8.0
    c.train.learning_rate = 3e-4
    c.train.eval_every = 5
    c.checkpoint.every_epochs = 5
    configs.set_algorithm(c, variant)
    configs.add_reward(c, "brightness")
    return c
