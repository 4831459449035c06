"""A Qwen-Image-sized pipeline folder holding config.json files only (no weights), for
`--dry_run` (which reads nothing else):

    python -m tests.gpu.qwen_image_configs /tmp/qwen-image-configs
    python -m ffjax.train --config configs/qwen_image_grpo.py --dry_run \
        --config.model.path=/tmp/qwen-image-configs --config.data.path=/tmp/prompts ...

The values are those of Qwen/Qwen-Image's transformer (60 blocks, 24 heads x 128,
joint_attention_dim 3584: 20.4B parameters), VAE (AutoencoderKLQwenImage, base_dim 96)
and text encoder (Qwen2.5-VL-7B-Instruct: 28 layers, 3584 wide) config.json files.
"""

from __future__ import annotations

import os
import sys

from tests.flux_dev_configs import write_folder

TRANSFORMER = {
    "_class_name": "QwenImageTransformer2DModel",
    "patch_size": 2,
    "in_channels": 64,
    "out_channels": 16,
    "num_layers": 60,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 3584,
    "guidance_embeds": False,
    "axes_dims_rope": [16, 56, 56],
}
VAE = {
    "_class_name": "AutoencoderKLQwenImage",
    "base_dim": 96,
    "z_dim": 16,
    "dim_mult": [1, 2, 4, 4],
    "num_res_blocks": 2,
    "attn_scales": [],
    "temperal_downsample": [False, True, True],
    "dropout": 0.0,
    "input_channels": 3,
    "latents_mean": [0.0] * 16,
    "latents_std": [1.0] * 16,
}
TEXT_ENCODER = {
    "architectures": ["Qwen2_5_VLForConditionalGeneration"],
    "model_type": "qwen2_5_vl",
    "dtype": "bfloat16",
    "image_token_id": 151655,
    "video_token_id": 151656,
    "vision_start_token_id": 151652,
    "vision_end_token_id": 151653,
    "tie_word_embeddings": False,
    "text_config": {
        "model_type": "qwen2_5_vl_text",
        "hidden_act": "silu",
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "vocab_size": 152064,
        "max_position_embeddings": 128000,
        "rms_norm_eps": 1e-6,
        "rope_parameters": {
            "mrope_section": [16, 24, 24],
            "rope_theta": 1000000.0,
            "rope_type": "default",
        },
        "bos_token_id": 151643,
        "eos_token_id": 151645,
        "attention_dropout": 0.0,
    },
    "vision_config": {
        "model_type": "qwen2_5_vl_vision",
        "depth": 32,
        "hidden_size": 1280,
        "intermediate_size": 3420,
        "num_heads": 16,
        "out_hidden_size": 3584,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 112,
        "fullatt_block_indexes": [7, 15, 23, 31],
        "tokens_per_second": 2,
        "in_channels": 3,
        "hidden_act": "silu",
    },
}
FILES = {"transformer": TRANSFORMER, "vae": VAE, "text_encoder": TEXT_ENCODER}


def write(folder: str | os.PathLike) -> str:
    """Writes the three config.json files (and model_index.json) under `folder`."""
    return write_folder(folder, FILES, "QwenImagePipeline")


if __name__ == "__main__":
    print(write(sys.argv[1]))
