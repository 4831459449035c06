"""Advantage Weighted Matching (AWM): flow-matching error as a log-likelihood surrogate.

With the per-sample weighted flow-matching error e_theta = w(t) ||v_theta(x_t) - (noise - x0)||^2,
log pi ~ -e; PPO-clip on r = exp(e_old - e_theta) with the advantage, plus optional KL
to the reference and to the EMA policy. Weightings: uniform, t, t^2, huber, ghuber(p).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from ffjax import registry
from ffjax.algorithms import common
from ffjax.algorithms.spec import AlgorithmSpec, LossFn, PolicyFn
from ffjax.flow import schedule

WEIGHTINGS = ("uniform", "t", "t2", "huber", "ghuber")
ON_POLICY_OLD = ("flow_factory", "rollout")

# The reference's Huber smoothing: sqrt(m + 1e-10) - sqrt(1e-10) vanishes at m = 0.
HUBER_EPS = 1e-10


def default_config() -> ml_collections.ConfigDict:
    """The `config.algorithm` keys of AWM."""
    c = ml_collections.ConfigDict()
    c.clip_range = 1e-4  # eps of the PPO clip on the surrogate ratio
    c.adv_clip_max = 5.0  # advantages are clipped to [-adv_clip_max, adv_clip_max]
    # Where the references differ: 0 = Flow-Factory (the clipped advantage as it is) |
    # m > 0 = scxue/advantage_weighted_matching's train.advantage_max, the clipped
    # advantage rescaled to [-m, m]: A <- clip(A, +-adv_clip_max) / adv_clip_max * m.
    c.advantage_max = 0.0
    # The old policy of the ratio, where the references differ: flow_factory = the current
    # weights at each micro-batch (the ratio is 1 in value, its gradient that of log pi) |
    # rollout = the weights the epoch's rollout sampled with (scxue's AWM; ffjax before
    # 2026-12-08).
    c.on_policy_old = "flow_factory"
    # Flow-Factory's asymmetric clip pairs (as GRPO's): () = symmetric; (lo, hi) clips the
    # ratio to [1 + lo, 1 + hi] / the advantage to [lo, hi].
    c.clip_bounds = ()
    c.adv_clip_bounds = ()
    c.weighting = (
        "uniform"  # per-time weight of the matching error: uniform | t | t2 | huber | ghuber
    )
    c.ghuber_p = 0.5  # exponent p of the generalised Huber weighting
    c.kl_beta = 0.0  # weight of the KL to the reference policy
    c.ema_kl_beta = 0.0  # weight of the KL to the EMA policy
    c.timestep_sampler = "uniform"  # training sigmas: see ffjax.flow.schedule.TIMESTEP_SAMPLERS
    c.num_train_timesteps = 0  # sigmas per sample; 0 = int(N (hi - lo)), N = sampling.num_steps
    c.sigma_range = (0.0, 0.99)  # fraction range along denoising (0 = noise, 1 = clean)
    c.time_shift = 1.0  # shift of the logit-normal / uniform samplers
    return c


def make_loss(config: ml_collections.ConfigDict, policy: PolicyFn, *, dynamics: str) -> LossFn:
    """AWM's loss on rows of the "final" layout (spec.py).

    With x_t = (1 - t) x0 + t eps (t = sigma), target u = eps - x0, the matching error
    m_theta = mean_d (v_theta(x_t) - u)^2 and its log-likelihood surrogate

        uniform: log pi = -m            t:      log pi = -t m        t2: log pi = -t^2 m
        huber:   log pi = -t (sqrt(m + e) - sqrt(e))                 (e = 1e-10)
        ghuber:  log pi = -t ((m + e)^p - e^p) / p,

    r = exp(log pi_theta - log pi_old) with pi_old, by `on_policy_old`: "flow_factory" the
    current weights at each micro-batch, log pi_old = sg(log pi_theta), as
    X-GenGroup/Flow-Factory b30dc00 src/flow_factory/trainers/rl/awm.py
    (`_precompute_old_log_probs` per micro-batch under the sampling policy, no optimizer
    step before that micro-batch is trained with automatic accumulation; a0b2bc5
    trainers/awm.py the same), so r = 1 in value; "rollout" the rollout-time weights
    `frozen.snapshot` (so r = 1 exactly before the first update), as
    scxue/advantage_weighted_matching be51372 scripts/train_sd3_awm.py (old log-probs
    precomputed with the epoch's weights; the first accumulation's batches take the
    current ones, the same weights then). A clipped to
    +-adv_clip_max (a = adv_clip_max) and, with `advantage_max` m > 0, rescaled to
    A m / a (scxue/advantage_weighted_matching be51372 scripts/train_sd3_awm.py, its
    configs m = 1 with a = 5; X-GenGroup/Flow-Factory b30dc00
    src/flow_factory/trainers/rl/awm.py and a0b2bc5 trainers/awm.py only clip):

        L = mean_i max(-A r, -A clip(r, 1 - eps, 1 + eps))
            + kl_beta mean_i mean_d (v_theta - v_ref)^2 + ema_kl_beta mean_i mean_d (v_theta - v_ema)^2.

    Follows scxue/advantage_weighted_matching scripts/train_sd3_awm.py
    (`compute_log_prob_awm`, loss_type "exp_first", kl_weight "Uniform") and
    Flow-Factory trainers/rl/awm.py. Both references' off_policy option (the EMA as the
    sampler and old policy) is not offered here.

    Precision: the reference forms m in float64 because the clip range (1e-4) is of
    the order of float32 rounding in a mean over a whole latent. Here the log-ratio is
    formed from elementwise differences,
        m_theta - m_old = mean_d (v_theta - v_old)(v_theta + v_old - 2u),
    with the weightings' differences rewritten stably (sqrt(a) - sqrt(b) =
    (a - b) / (sqrt(a) + sqrt(b)); a^p - b^p = b^p expm1(p log1p((a - b) / b))), so its
    float32 rounding is relative to the small difference, not to m itself.

    Metrics: loss, policy_loss, kl (0 when kl_beta = 0), kl_ema (0 when ema_kl_beta = 0),
    ratio_mean/min/max, clipfrac, approx_kl = 0.5 mean((log pi_theta - log pi_old)^2),
    matching_mse = mean_i m_theta.
    """
    del dynamics
    weighting = str(config.weighting)
    if weighting not in WEIGHTINGS:
        raise ValueError(f"awm: weighting {weighting!r}; allowed: {', '.join(WEIGHTINGS)}")
    p = float(config.ghuber_p)
    if weighting == "ghuber" and p <= 0:
        raise ValueError(f"awm: ghuber_p must be > 0, got {p}")
    eps, adv_clip_max = common.clip_bounds(config)
    advantage_max = float(config.get("advantage_max", 0.0))
    if advantage_max < 0:
        raise ValueError(f"awm: advantage_max must be >= 0 (0 = no rescale), got {advantage_max}")
    if advantage_max > 0 and isinstance(adv_clip_max, tuple):
        raise ValueError(
            "awm: advantage_max rescales by the symmetric adv_clip_max (scxue's AWM);"
            " set adv_clip_bounds=() with it"
        )
    kl_beta = float(config.kl_beta)
    ema_kl_beta = float(config.ema_kl_beta)
    on_policy_old = str(config.get("on_policy_old", "flow_factory"))
    if on_policy_old not in ON_POLICY_OLD:
        raise ValueError(
            f"awm: on_policy_old {on_policy_old!r}; allowed: {', '.join(ON_POLICY_OLD)}"
        )
    current_is_old = on_policy_old == "flow_factory"

    def loss_fn(trainable, frozen, batch, key):
        del key  # the trainer draws batch["noise"]
        x0 = jnp.asarray(batch["x0"], jnp.float32)
        noise = jnp.asarray(batch["noise"], jnp.float32)
        sigma, cond = batch["sigma"], batch["cond"]
        x_t = common.forward_noise(x0, noise, sigma)
        target = noise - x0

        v = policy(trainable, frozen.base, x_t, sigma, cond)
        if current_is_old:  # the same weights, inputs and pass: no second forward
            v_old = jax.lax.stop_gradient(v)
        else:
            snapshot = common.required(frozen.snapshot, "snapshot", "awm (on_policy_old=rollout)")
            v_old = jax.lax.stop_gradient(policy(snapshot, frozen.base, x_t, sigma, cond))

        mse = common.batch_mean(jnp.square(v - target))
        mse_old = common.batch_mean(jnp.square(v_old - target))
        delta = common.batch_mean((v - v_old) * (v + v_old - 2 * target))  # mse - mse_old
        log_ratio = _log_ratio(weighting, p, mse, mse_old, delta, sigma)
        ratio = jnp.exp(log_ratio)
        advantage = common.clip_advantages(batch["advantage"], adv_clip_max)
        if advantage_max > 0:
            advantage = advantage / adv_clip_max * advantage_max
        policy_loss = jnp.mean(common.ppo_clip_loss(ratio, advantage, eps))

        kl = jnp.zeros((), jnp.float32)
        if kl_beta > 0:  # Python-level: no reference forward at all otherwise
            v_ref = jax.lax.stop_gradient(policy(frozen.ref, frozen.base, x_t, sigma, cond))
            kl = common.velocity_mse(v, v_ref)
        kl_ema = jnp.zeros((), jnp.float32)
        if ema_kl_beta > 0:
            ema = common.required(frozen.ema, "ema", "awm (ema_kl_beta > 0)")
            v_ema = jax.lax.stop_gradient(policy(ema, frozen.base, x_t, sigma, cond))
            kl_ema = common.velocity_mse(v, v_ema)
        loss = policy_loss + kl_beta * kl + ema_kl_beta * kl_ema

        metrics = common.ratio_metrics(ratio, log_ratio, eps)
        metrics.update(
            loss=loss, policy_loss=policy_loss, kl=kl, kl_ema=kl_ema, matching_mse=jnp.mean(mse)
        )
        return loss, common.as_metrics(metrics)

    return loss_fn


def _log_ratio(weighting, p, mse, mse_old, delta, sigma):
    """log pi_theta - log pi_old for the weighting, from delta = mse - mse_old (float32[B])."""
    t = jnp.asarray(sigma, jnp.float32)
    if weighting == "uniform":
        return -delta
    if weighting == "t":
        return -delta * t
    if weighting == "t2":
        return -delta * t**2
    a, b = mse + HUBER_EPS, mse_old + HUBER_EPS
    if weighting == "huber":
        return -t * delta / (jnp.sqrt(a) + jnp.sqrt(b))
    # ghuber: (b + delta)^p - b^p = b^p expm1(p log1p(delta / b))
    return -t * b**p * jnp.expm1(p * jnp.log1p(delta / b)) / p


registry.ALGORITHMS.register(
    "awm",
    AlgorithmSpec(
        "awm",
        default_config,
        "final",
        make_loss=make_loss,
        needs_snapshot=lambda c: c.get("on_policy_old") == "rollout",
        choices={
            "weighting": WEIGHTINGS,
            "timestep_sampler": schedule.TIMESTEP_SAMPLERS,
            "on_policy_old": ON_POLICY_OLD,
        },
    ),
)
