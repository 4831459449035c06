"""DiffusionNFT (Zheng et al. 2025): negative-aware fine-tuning on the forward process.

Implicit positive / negative policies v+ = (1 - beta) v_old + beta v_theta and
v- = (1 + beta) v_old - beta v_theta; with r in [0, 1] from the clipped advantage,
    L = r ||v+ - v_target||^2 w + (1 - r) ||v- - v_target||^2 w,
w the adaptive x0-error weight (stop-gradient). Rollouts may use any ODE solver; only
x0 is stored and re-noised at training time.
"""

from __future__ import annotations

import ml_collections

from ffjax import registry
from ffjax.algorithms.spec import AlgorithmSpec
from ffjax.flow import schedule


def default_config() -> ml_collections.ConfigDict:
    """The `config.algorithm` keys of DiffusionNFT."""
    c = ml_collections.ConfigDict()
    c.beta = 1.0  # strength of the implicit policies (v+- = v_old +- beta (v - v_old))
    c.adv_clip_max = 5.0  # advantages are clipped before mapping to r in [0, 1]
    c.kl_beta = 0.0  # weight of the KL (velocity MSE) to the reference policy
    c.off_policy = True  # old policy = EMA weights (True) or the current weights (False)
    c.timestep_sampler = "discrete"  # training sigmas: see ffjax.flow.schedule.TIMESTEP_SAMPLERS
    c.num_train_timesteps = 0  # sigmas per sample and epoch; 0 = 0.9 * sampling.num_steps
    c.sigma_range = (0.0, 0.9)  # fraction range along denoising (0 = noise, 1 = clean)
    c.time_shift = 3.0  # shift of the logit-normal / uniform samplers
    return c


registry.ALGORITHMS.register(
    "nft",
    AlgorithmSpec("nft", default_config, "final", choices={"timestep_sampler": schedule.TIMESTEP_SAMPLERS}),
)
