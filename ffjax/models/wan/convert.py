"""WAN checkpoints <-> ffjax params: the key tables, and loaders built on them.

Each table row is `Rule(ours, theirs, transform, layers)` (see `ffjax.models.weights`).
The transformer table follows `WanTransformer3DModel`'s forward pass; the VAE table
follows `AutoencoderKLWan`'s module tree.
"""

from __future__ import annotations

WEIGHTS_PREFIX = "diffusion_pytorch_model"  # Diffusers' weight file name stem

# ---------------------------------------------------------------- transformer section

# ---------------------------------------------------------------- vae section
