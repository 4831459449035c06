"""GRPO on flow models (Flow-GRPO, Liu et al. 2025; DanceGRPO, Xue et al. 2025).

PPO-clip on the stored SDE steps: for step t of sample i with advantage A_i,
    r = exp(log p_theta(x_{t-1} | x_t) - log p_old(x_{t-1} | x_t)),
    L = -mean(min(r A, clip(r, 1 - eps, 1 + eps) A)) + beta KL(p_theta || p_ref).
`grpo-guard` (GRPO-Guard) normalises the per-step log-ratio before the clip so that
its distribution is centred and comparable across steps.
"""

from __future__ import annotations

import ml_collections

from ffjax import registry
from ffjax.algorithms.spec import AlgorithmSpec


def default_config() -> ml_collections.ConfigDict:
    """The `config.algorithm` keys of GRPO (Flow-GRPO defaults)."""
    c = ml_collections.ConfigDict()
    c.clip_range = 1e-4  # eps of the PPO ratio clip (log-probs are per-element means)
    c.adv_clip_max = 5.0  # advantages are clipped to [-adv_clip_max, adv_clip_max]
    c.kl_beta = 0.0  # weight of the KL to the reference policy (0 disables)
    c.kl_type = "x-based"  # x-based: KL of the step Gaussians (means) | v-based: velocity MSE
    c.cfg_in_train = False  # classifier-free guidance in the training forward (CFG models)
    return c


_CHOICES = {"kl_type": ("x-based", "v-based")}

registry.ALGORITHMS.register("grpo", AlgorithmSpec("grpo", default_config, "sde_steps", choices=_CHOICES))
registry.ALGORITHMS.register(
    "grpo-guard", AlgorithmSpec("grpo-guard", default_config, "sde_steps", choices=_CHOICES)
)
