"""DiffusionNFT (Zheng et al. 2025): negative-aware fine-tuning on the forward process.

Implicit positive / negative policies v+ = (1 - beta) v_old + beta v_theta and
v- = (1 + beta) v_old - beta v_theta; with r in [0, 1] from the clipped advantage,
    L = r ||v+ - v_target||^2 w + (1 - r) ||v- - v_target||^2 w,
w the adaptive x0-error weight (stop-gradient). Rollouts may use any ODE solver; only
x0 is stored and re-noised at training time.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from ffjax import registry
from ffjax.algorithms import common
from ffjax.algorithms.spec import AlgorithmSpec, LossFn, PolicyFn
from ffjax.flow import schedule

ON_POLICY_OLD = ("flow_factory", "rollout")

# Floor of the adaptive weight mean|x0_hat - x0| (the reference's `.clip(min=1e-5)`).
WEIGHT_MIN = 1e-5


def default_config() -> ml_collections.ConfigDict:
    """The `config.algorithm` keys of DiffusionNFT."""
    c = ml_collections.ConfigDict()
    c.beta = 1.0  # strength of the implicit policies (v+- = v_old +- beta (v - v_old))
    c.adv_clip_max = 5.0  # advantages are clipped before mapping to r in [0, 1]
    c.kl_beta = 0.0  # weight of the KL (velocity MSE) to the reference policy
    c.off_policy = True  # old policy = the EMA weights (True) or on-policy (False, below)
    # The on-policy old policy (off_policy=False), where the references differ:
    # flow_factory: the current weights at each micro-batch (Flow-Factory precomputes the
    # old velocities per micro-batch with the weights of that moment) | rollout: the
    # weights the epoch's rollout sampled with (NVlabs DiffusionNFT's "old" adapter when
    # its per-epoch decay is 0; ffjax before 2026-12-08).
    c.on_policy_old = "flow_factory"
    c.timestep_sampler = "discrete"  # training sigmas: see ffjax.flow.schedule.TIMESTEP_SAMPLERS
    c.num_train_timesteps = 0  # sigmas per sample; 0 = int(N (hi - lo)), N = sampling.num_steps
    c.sigma_range = (0.0, 0.9)  # fraction range along denoising (0 = noise, 1 = clean)
    c.time_shift = 3.0  # shift of the logit-normal / uniform samplers
    return c


def make_loss(config: ml_collections.ConfigDict, policy: PolicyFn, *, dynamics: str) -> LossFn:
    """DiffusionNFT's loss on rows of the "final" layout (spec.py).

    With x_t = (1 - t) x0 + t eps (t = sigma), v = v_theta(x_t), v_old the old policy's
    velocity under stop_gradient, and A clipped to +-a (a = adv_clip_max):

        v+ = beta v + (1 - beta) v_old,          v- = (1 + beta) v_old - beta v,
        x0+ = x_t - t v+,                        x0- = x_t - t v-,
        w+- = sg(max(mean_d |x0+- - x0|, 1e-5))  (adaptive x0-error weight),
        r = clip(A / a / 2 + 1/2, 0, 1),
        L = mean_i [r mean_d (x0+ - x0)^2 / w+ + (1 - r) mean_d (x0- - x0)^2 / w-] a / beta
            + kl_beta mean_i mean_d (v - v_ref)^2,

    the paper's objective in the x0-prediction form its code trains, including the
    code's overall factor a / beta. Follows NVlabs/DiffusionNFT scripts/train_nft_sd3.py and
    Flow-Factory trainers/rl/nft.py.

    The old policy: with `off_policy` the EMA weights (`frozen.ema`; both references
    sample with the same EMA, updated between epochs). On-policy (`off_policy` False)
    `on_policy_old` picks where the references part:
      "flow_factory": the current weights at each micro-batch, v_old = sg(v) (one forward
        pass). X-GenGroup/Flow-Factory b30dc00 src/flow_factory/trainers/rl/nft.py
        (`_precompute_sampling_policy_steps`, called per micro-batch in `optimize`; the
        same at a0b2bc5 trainers/nft.py) computes the old velocities of a micro-batch
        just before training on it, and its automatic gradient accumulation (x the
        training timesteps) applies no update in between, so they are the current
        weights' velocities.
      "rollout": the weights the epoch's rollout sampled with (`frozen.snapshot`), as
        NVlabs/DiffusionNFT scripts/train_nft_sd3.py's "old" adapter with decay 0.
    `dynamics` is unused: any sampler works.

    Precision: the reference casts to float64 for w because its x0 predictions are
    bf16 under autocast; here every input of w is float32 and w only rescales each
    row's loss (no gradient), so float32's ~1e-7 relative rounding of its mean is
    immaterial, and w is computed in float32.

    Metrics: loss, policy_loss, positive_loss, negative_loss (row means of the two
    weighted errors), kl (0 when kl_beta = 0), old_deviate = mean (v - v_old)^2. No
    ratio, clipfrac or approx_kl: NFT has no likelihood ratio.
    """
    del dynamics
    beta = float(config.beta)
    if beta <= 0:
        raise ValueError(f"nft: beta must be > 0, got {beta}")
    adv_clip_max = float(config.adv_clip_max)
    if adv_clip_max <= 0:
        raise ValueError(f"nft: adv_clip_max must be > 0, got {adv_clip_max}")
    kl_beta = float(config.kl_beta)
    off_policy = bool(config.off_policy)
    on_policy_old = str(config.get("on_policy_old", "flow_factory"))
    if on_policy_old not in ON_POLICY_OLD:
        raise ValueError(
            f"nft: on_policy_old {on_policy_old!r}; allowed: {', '.join(ON_POLICY_OLD)}"
        )
    current_is_old = not off_policy and on_policy_old == "flow_factory"

    def loss_fn(trainable, frozen, batch, key):
        del key  # the trainer draws batch["noise"]
        x0 = jnp.asarray(batch["x0"], jnp.float32)
        sigma, cond = batch["sigma"], batch["cond"]
        x_t = common.forward_noise(x0, batch["noise"], sigma)
        v = policy(trainable, frozen.base, x_t, sigma, cond)
        if current_is_old:  # the same weights, inputs and pass: no second forward
            v_old = jax.lax.stop_gradient(v)
        else:
            old = (
                common.required(frozen.ema, "ema", "nft (off_policy=True)")
                if off_policy
                else common.required(frozen.snapshot, "snapshot", "nft (on_policy_old=rollout)")
            )
            v_old = jax.lax.stop_gradient(policy(old, frozen.base, x_t, sigma, cond))

        t = common.per_sample(sigma, x0)
        x0_pos = x_t - t * (beta * v + (1 - beta) * v_old)
        x0_neg = x_t - t * ((1 + beta) * v_old - beta * v)
        positive = _weighted_x0_error(x0_pos, x0)
        negative = _weighted_x0_error(x0_neg, x0)

        advantage = common.clip_advantages(batch["advantage"], adv_clip_max)
        r = jnp.clip(advantage / adv_clip_max / 2 + 0.5, 0.0, 1.0)
        policy_loss = jnp.mean((r * positive + (1 - r) * negative) / beta * adv_clip_max)

        kl = jnp.zeros((), jnp.float32)
        if kl_beta > 0:  # Python-level: no reference forward at all otherwise
            v_ref = jax.lax.stop_gradient(policy(frozen.ref, frozen.base, x_t, sigma, cond))
            kl = common.velocity_mse(v, v_ref)
        loss = policy_loss + kl_beta * kl

        metrics = {
            "loss": loss,
            "policy_loss": policy_loss,
            "positive_loss": jnp.mean(positive),
            "negative_loss": jnp.mean(negative),
            "kl": kl,
            "old_deviate": common.velocity_mse(v, v_old),
        }
        return loss, common.as_metrics(metrics)

    return loss_fn


def _weighted_x0_error(x0_hat: jax.Array, x0: jax.Array) -> jax.Array:
    """Per-row mean_d (x0_hat - x0)^2 / sg(max(mean_d |x0_hat - x0|, 1e-5)), float32[B]."""
    err = x0_hat - x0
    w = jax.lax.stop_gradient(jnp.maximum(common.batch_mean(jnp.abs(err)), WEIGHT_MIN))
    return common.batch_mean(jnp.square(err)) / w


registry.ALGORITHMS.register(
    "nft",
    AlgorithmSpec(
        "nft",
        default_config,
        "final",
        make_loss=make_loss,
        # Old policy: the EMA when off_policy (rollouts then sample with it too, as
        # DiffusionNFT's sampler does), else the current weights or the rollout-time
        # snapshot (on_policy_old).
        needs_snapshot=lambda c: not c.off_policy and c.get("on_policy_old") == "rollout",
        sample_with_ema=lambda c: c.off_policy,
        choices={"timestep_sampler": schedule.TIMESTEP_SAMPLERS, "on_policy_old": ON_POLICY_OLD},
    ),
)
