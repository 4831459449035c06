"""WAN configs, built from Diffusers `config.json` files and validated.

`WanTransformerConfig` mirrors `WanTransformer3DModel` (Wan 2.1 T2V/I2V, Wan 2.2
TI2V-5B and each A14B expert) plus ffjax runtime fields; `WanVAEConfig` mirrors
`AutoencoderKLWan` (the Wan 2.1 z=16 VAE and the Wan 2.2 z=48 residual VAE). Unknown
keys and impossible values are errors that name the key.
"""

from __future__ import annotations

# ---------------------------------------------------------------- transformer section

# ---------------------------------------------------------------- vae section
