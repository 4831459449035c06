"""Tiny FLUX.1 configs and helpers shared by the FLUX tests.

Weights are perturbed away from Diffusers' init (zero-init AdaLN / biases would hide
bugs) with a fixed seed; every parity test loads them through our own code.
"""

import numpy as np
import torch

# Two transformer shapes: (a) guidance embedding on, more double than single blocks;
# (b) guidance off, more single than double blocks, other head count / RoPE split.
TRANSFORMER_CONFIGS = {
    "guided": dict(
        patch_size=1, in_channels=16, num_layers=2, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=24, pooled_projection_dim=20,
        guidance_embeds=True, axes_dims_rope=(4, 6, 6),
    ),
    "unguided": dict(
        patch_size=1, in_channels=16, out_channels=8, num_layers=1, num_single_layers=2,
        attention_head_dim=8, num_attention_heads=3, joint_attention_dim=12,
        pooled_projection_dim=10, guidance_embeds=False, axes_dims_rope=(2, 2, 4),
    ),
}  # fmt: skip

# Two VAE shapes, FLUX-style (16 latents, no quant convs) and one with quant convs.
VAE_CONFIGS = {
    "flux": dict(
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(8, 16, 16), layers_per_block=1, latent_channels=16, norm_num_groups=4,
        scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False,
        use_post_quant_conv=False, sample_size=32,
    ),
    "quant": dict(
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 12), layers_per_block=2, latent_channels=4, norm_num_groups=4,
        scaling_factor=0.5, shift_factor=None, use_quant_conv=True, use_post_quant_conv=True,
        sample_size=16,
    ),
}  # fmt: skip


def perturb(model: torch.nn.Module, seed: int, scale: float = 0.05) -> torch.nn.Module:
    """Adds seeded noise to every parameter, so zero-initialised layers matter too."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return model.eval()


def save_tiny_models(
    cls, configs: dict, tmp_path_factory, prefix: str, torch_seed: int, perturb_seed: int
) -> dict:
    """{name: (torch model, saved folder)}: `cls(**configs[name])`, initialised with
    torch seed torch_seed + i, perturbed with seed perturb_seed + i, save_pretrained."""
    out = {}
    for i, (name, cfg) in enumerate(configs.items()):
        torch.manual_seed(torch_seed + i)
        model = perturb(cls(**cfg), seed=perturb_seed + i)
        path = tmp_path_factory.mktemp(f"{prefix}_{name}")
        model.save_pretrained(path)
        out[name] = (model, path)
    return out


def image_ids(h: int, w: int) -> np.ndarray:
    """(0, row, col) ids of an h x w patch grid, as FluxPipeline._prepare_latent_image_ids."""
    ids = np.zeros((h, w, 3), np.float32)
    ids[..., 1] = np.arange(h)[:, None]
    ids[..., 2] = np.arange(w)[None, :]
    return ids.reshape(-1, 3)


def rel_err(a, b) -> float:
    """max |a - b| / max |b|."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))
