"""Advantage Weighted Matching (AWM): flow-matching error as a log-likelihood surrogate.

With the per-sample weighted flow-matching error e_theta = w(t) ||v_theta(x_t) - (noise - x0)||^2,
log pi ~ -e; PPO-clip on r = exp(e_old - e_theta) with the advantage, plus optional KL
to the reference and to the EMA policy. Weightings: uniform, t, t^2, huber, ghuber(p).
"""

from __future__ import annotations

import ml_collections

from ffjax import registry
from ffjax.algorithms.spec import AlgorithmSpec
from ffjax.flow import schedule

WEIGHTINGS = ("uniform", "t", "t2", "huber", "ghuber")


def default_config() -> ml_collections.ConfigDict:
    """The `config.algorithm` keys of AWM."""
    c = ml_collections.ConfigDict()
    c.clip_range = 1e-4  # eps of the PPO clip on the surrogate ratio
    c.adv_clip_max = 5.0  # advantages are clipped to [-adv_clip_max, adv_clip_max]
    c.weighting = (
        "uniform"  # per-time weight of the matching error: uniform | t | t2 | huber | ghuber
    )
    c.ghuber_p = 0.5  # exponent p of the generalised Huber weighting
    c.kl_beta = 0.0  # weight of the KL to the reference policy
    c.ema_kl_beta = 0.0  # weight of the KL to the EMA policy
    c.timestep_sampler = "uniform"  # training sigmas: see ffjax.flow.schedule.TIMESTEP_SAMPLERS
    c.num_train_timesteps = 0  # sigmas per sample and epoch; 0 = 0.9 * sampling.num_steps
    c.sigma_range = (0.0, 0.99)  # fraction range along denoising (0 = noise, 1 = clean)
    c.time_shift = 1.0  # shift of the logit-normal / uniform samplers
    return c


registry.ALGORITHMS.register(
    "awm",
    AlgorithmSpec(
        "awm",
        default_config,
        "final",
        choices={"weighting": WEIGHTINGS, "timestep_sampler": schedule.TIMESTEP_SAMPLERS},
    ),
)
