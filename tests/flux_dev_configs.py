"""A FLUX.1-dev-sized pipeline folder holding config.json files only (no weights).

Enough for `--dry_run`, which reads nothing else:

    python -m tests.flux_dev_configs /tmp/flux1-dev-configs
    python -m ffjax.train --config configs/flux_grpo.py:flow_factory --dry_run \
        --config.model.path=/tmp/flux1-dev-configs --config.data.path=/tmp/flux1-dev-configs

The values are those of black-forest-labs/FLUX.1-dev's transformer (19 double + 38
single blocks, 3072 wide: 11.9B parameters), VAE, CLIP-L text encoder and T5-XXL
encoder (4.76B parameters) config.json files.
"""

from __future__ import annotations

import json
import os
import sys

TRANSFORMER = {
    "_class_name": "FluxTransformer2DModel",
    "patch_size": 1,
    "in_channels": 64,
    "out_channels": None,
    "num_layers": 19,
    "num_single_layers": 38,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "pooled_projection_dim": 768,
    "guidance_embeds": True,
    "axes_dims_rope": [16, 56, 56],
}
VAE = {
    "_class_name": "AutoencoderKL",
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "act_fn": "silu",
    "latent_channels": 16,
    "norm_num_groups": 32,
    "sample_size": 1024,
    "scaling_factor": 0.3611,
    "shift_factor": 0.1159,
    "latents_mean": None,
    "latents_std": None,
    "force_upcast": True,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
    "mid_block_add_attention": True,
}
CLIP_L = {
    "architectures": ["CLIPTextModel"],
    "model_type": "clip_text_model",
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "projection_dim": 768,
    "eos_token_id": 2,
    "dtype": "bfloat16",
}
T5_XXL = {
    "architectures": ["T5EncoderModel"],
    "model_type": "t5",
    "vocab_size": 32128,
    "d_model": 4096,
    "d_kv": 64,
    "d_ff": 10240,
    "num_layers": 24,
    "num_heads": 64,
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "layer_norm_epsilon": 1e-6,
    "feed_forward_proj": "gated-gelu",
    "is_gated_act": True,
    "dtype": "bfloat16",
}
FILES = {
    "transformer": TRANSFORMER,
    "vae": VAE,
    "text_encoder": CLIP_L,
    "text_encoder_2": T5_XXL,
}


def write_folder(folder: str | os.PathLike, files: dict, pipeline_class: str) -> str:
    """Writes {component: config} as `folder`/component/config.json and a model_index.json
    naming `pipeline_class`: a pipeline folder of config files only. Returns the folder."""
    folder = os.fspath(folder)
    for sub, cfg in files.items():
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
        with open(os.path.join(folder, sub, "config.json"), "w") as f:
            json.dump(cfg, f, indent=2)
    with open(os.path.join(folder, "model_index.json"), "w") as f:
        json.dump({"_class_name": pipeline_class}, f)
    return folder


def write(folder: str | os.PathLike) -> str:
    """Writes the four config.json files (and model_index.json) under `folder`."""
    return write_folder(folder, FILES, "FluxPipeline")


if __name__ == "__main__":
    print(write(sys.argv[1]))
