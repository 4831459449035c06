"""Full-size WAN pipeline folders holding config.json files only (no weights).

Enough for `--dry_run`, which reads nothing else:

    python -m tests.wan_configs /tmp/wan2.1-t2v-14b-configs 14b
    python -m ffjax.train --config configs/wan_t2v_grpo.py --dry_run \
        --config.model.path=/tmp/wan2.1-t2v-14b-configs --config.data.path=/tmp/x

Variants: "14b" (Wan-AI/Wan2.1-T2V-14B-Diffusers: 40 layers, 5120 wide, 14.3B
parameters), "1.3b" (Wan2.1-T2V-1.3B: 30 layers, 1536 wide), "a14b"
(Wan2.2-T2V-A14B: two 14B experts, boundary_ratio 0.875). All use the Wan 2.1 VAE and
the UMT5-XXL encoder; the values are those of the published config.json files.
"""

from __future__ import annotations

import json
import os
import sys

TRANSFORMER_14B = {
    "_class_name": "WanTransformer3DModel",
    "patch_size": [1, 2, 2],
    "num_attention_heads": 40,
    "attention_head_dim": 128,
    "in_channels": 16,
    "out_channels": 16,
    "text_dim": 4096,
    "freq_dim": 256,
    "ffn_dim": 13824,
    "num_layers": 40,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "eps": 1e-6,
    "image_dim": None,
    "added_kv_proj_dim": None,
    "rope_max_seq_len": 1024,
}
TRANSFORMER_1_3B = dict(TRANSFORMER_14B, num_attention_heads=12, ffn_dim=8960, num_layers=30)
VAE = {"_class_name": "AutoencoderKLWan"}  # Diffusers' defaults are the Wan 2.1 VAE
UMT5_XXL = {
    "architectures": ["UMT5EncoderModel"],
    "model_type": "umt5",
    "vocab_size": 256384,
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
VARIANTS = ("14b", "1.3b", "a14b")


def write(folder: str | os.PathLike, variant: str = "14b") -> str:
    """Writes the config.json files (and model_index.json) of `variant` under `folder`."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; known: {VARIANTS}")
    folder = os.fspath(folder)
    transformer = TRANSFORMER_1_3B if variant == "1.3b" else TRANSFORMER_14B
    files = {"transformer": transformer, "vae": VAE, "text_encoder": UMT5_XXL}
    index = {"_class_name": "WanPipeline", "transformer": ["diffusers", "WanTransformer3DModel"],
             "transformer_2": [None, None], "boundary_ratio": None, "expand_timesteps": False}  # fmt: skip
    if variant == "a14b":
        files["transformer_2"] = transformer
        index.update(transformer_2=["diffusers", "WanTransformer3DModel"], boundary_ratio=0.875)
    for sub, cfg in files.items():
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
        with open(os.path.join(folder, sub, "config.json"), "w") as f:
            json.dump(cfg, f, indent=2)
    with open(os.path.join(folder, "model_index.json"), "w") as f:
        json.dump(index, f)
    return folder


if __name__ == "__main__":
    print(write(sys.argv[1], *sys.argv[2:3]))
