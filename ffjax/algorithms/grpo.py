"""GRPO on flow models (Flow-GRPO, Liu et al. 2025; DanceGRPO, Xue et al. 2025) and GRPO-Guard.

PPO-clip on the stored SDE steps: for step t of sample i with clipped advantage A_i,
    r = exp(log p_theta(x_{t-1} | x_t) - log p_old(x_{t-1} | x_t)),
    L = mean(max(-A r, -A clip(r, 1 - eps, 1 + eps))) + beta KL(p_theta || p_ref).
`grpo-guard` (GRPO-Guard, Wang et al. 2025, arXiv 2510.22319) replaces r by the
ratio-normalised r~ (RatioNorm) and reweights each step's loss by 1 / (-dt) so that
the PPO clip acts alike on every denoising step (see `make_guard_loss`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from ffjax import registry
from ffjax.algorithms import common
from ffjax.algorithms.spec import AlgorithmSpec, LossFn, PolicyFn
from ffjax.flow import steps


def default_config() -> ml_collections.ConfigDict:
    """The `config.algorithm` keys of GRPO (Flow-GRPO defaults)."""
    c = ml_collections.ConfigDict()
    c.clip_range = 1e-4  # eps of the PPO ratio clip (log-probs are per-element means)
    c.adv_clip_max = 5.0  # advantages are clipped to [-adv_clip_max, adv_clip_max]
    c.kl_beta = 0.0  # weight of the KL to the reference policy (0 disables)
    c.kl_type = "x-based"  # x-based: KL of the step Gaussians (means) | v-based: velocity MSE
    # The x-based KL's form, named for its reference (see make_loss): flow_factory (mean
    # square of the mean difference) | flow_grpo (over 2 g^2, g its diffusion coefficient)
    # | gaussian (the exact KL of the two step Gaussians, ffjax before issue 17).
    c.kl_form = "flow_factory"
    # Flow-Factory's asymmetric clip pairs; () = the symmetric (-clip_range, clip_range) /
    # (-adv_clip_max, adv_clip_max). clip_bounds (lo, hi) clips r to [1 + lo, 1 + hi].
    c.clip_bounds = ()
    c.adv_clip_bounds = ()
    # Classifier-free guidance in the training forward too; only for CFG models (Qwen-Image,
    # not FLUX.1). The rollout guides either way (sampling.guidance_scale > 1 and a negative
    # prompt) and its log-probs are the old ones (Flow-GRPO, Flow-Factory). True: training
    # scores them with the same guided velocity (ratio 1 before the first update). False
    # (flow_grpo's train.cfg=False): the conditional pass alone, half the transformer calls,
    # but the old policy is the guided one, so the ratio is not 1 even at the first step.
    c.cfg_in_train = False
    return c


def guard_default_config() -> ml_collections.ConfigDict:
    """The `config.algorithm` keys of GRPO-Guard: GRPO's plus its gradient reweighting."""
    c = default_config()
    # GRPO-Guard gradient reweighting: divide each step's clipped policy loss by
    # -dt = sigma - sigma_next, as the reference code does (False keeps plain weighting).
    c.grad_reweight = True
    return c


def make_loss(config: ml_collections.ConfigDict, policy: PolicyFn, *, dynamics: str) -> LossFn:
    """Flow-GRPO's loss on rows of the "sde_steps" layout (spec.py).

    With v = policy(theta, x_t, sigma), (mu_theta, s, log p_theta) = step(x_t, v) scoring the
    stored x_{t-1}, r = exp(log p_theta - log p_old) and A clipped to +-adv_clip_max:

        L = mean_i max(-A_i r_i, -A_i clip(r_i, 1 - eps, 1 + eps)) + kl_beta KL,
        KL (v-based) = mean_i mean_d (v_theta - v_ref)^2,
        KL (x-based), by `kl_form`, with m_i = mean_d (mu_theta - mu_ref)^2:
          flow_factory: mean_i m_i   (X-GenGroup/Flow-Factory a0b2bc5
                        src/flow_factory/trainers/grpo.py, since d989587; b30dc00
                        trainers/rl/grpo.py `_reference_kl_divergence` the same),
          flow_grpo:    mean_i m_i / (2 g_i^2), g the diffusion coefficient that
                        yifan123/flow_grpo's sde_step_with_logprob returns as std_dev_t
                        (flow_grpo/diffusers_patch/sd3_sde_with_logprob.py, 54809b5;
                        scripts/train_flux.py): g = s / sqrt(-dt) for flow_sde and
                        dance_sde, g = s for cps (its std_dev_t is the step std),
          gaussian:     mean_i m_i / (2 s_i^2), the exact KL of the two step Gaussians
                        of std s (ffjax before issue 17; flow_grpo's times 1 / (-dt)).
        The factor between the forms varies with the step, so no kl_beta converts them.

    With `clip_bounds` (lo, hi) the ratio is clipped to [1 + lo, 1 + hi] and with
    `adv_clip_bounds` (lo, hi) A to [lo, hi] (Flow-Factory's asymmetric pairs).

    mu_ref, v_ref from the reference weights `frozen.ref` under stop_gradient; the
    reference forward runs only when kl_beta > 0. Follows yifan123/flow_grpo
    scripts/train_sd3.py and Flow-Factory trainers/rl/grpo.py.

    Metrics: loss, policy_loss, kl (0 when kl_beta = 0), ratio_mean/min/max, clipfrac,
    approx_kl = 0.5 mean((log p_theta - log p_old)^2).
    """
    return _make(config, policy, dynamics, guard=False)


def make_guard_loss(
    config: ml_collections.ConfigDict, policy: PolicyFn, *, dynamics: str
) -> LossFn:
    """GRPO-Guard's loss: RatioNorm + gradient reweighting, otherwise as `make_loss`.

    The plain log-ratio of one Gaussian step is centred below 0 (its mean is
    -||mu_theta - mu_old||^2 / (2 s^2)) and its spread grows as 1 / s, so the PPO clip
    misses positive-advantage updates on some steps. RatioNorm (GRPO-Guard eq. 8) adds
    the mean back and rescales by the step's std s = std_dev_t sqrt(-dt):

        log r~ = (log p_theta - log p_old + mean_d (mu_theta - mu_old)^2 / (2 s^2)) s
               = mean_d (mu_theta - mu_old) (x_{t-1} - mu_old) / s,

    and each step's clipped loss is divided by -dt = sigma - sigma_next (when
    grad_reweight), equalising the gradient over noise levels:

        L = mean_i max(-A_i r~_i, -A_i clip(r~_i, 1 - eps, 1 + eps)) / (-dt_i) + kl_beta KL.

    mu_old is recomputed from the rollout-time weights `frozen.snapshot` (as the
    reference recomputes it with its "old" adapter), so `needs_snapshot`. Follows
    verl-omni trainer/diffusion/diffusion_algos.py `GRPOGuardLoss` and the flow_grpo
    GRPO-Guard scripts (`compute_guard_grpo_loss`); Flow-Factory trainers/rl/grpo.py
    `_guard_ratio` has the same ratio without the reweighting. The references apply
    one scalar s and dt per micro-batch (all rows share a step there); rows here may
    mix steps, so s and dt are per row. Only Gaussian steps (flow_sde, dance_sde).

    Metrics: as `make_loss` (ratio_* and clipfrac of r~, approx_kl of the raw
    log-ratio) plus guard_bias = mean_i mean_d (mu_theta - mu_old)^2 / (2 s^2).
    """
    return _make(config, policy, dynamics, guard=True)


def _make(config, policy: PolicyFn, dynamics: str, *, guard: bool) -> LossFn:
    name = "grpo-guard" if guard else "grpo"
    if dynamics not in steps.DYNAMICS:
        raise ValueError(f"{name}: unknown dynamics {dynamics!r}; allowed: {steps.DYNAMICS}")
    if dynamics == "ode":
        raise ValueError(f"{name} needs stochastic steps; dynamics='ode' has no log-prob")
    if guard and dynamics == "cps":
        raise ValueError(
            "grpo-guard's RatioNorm assumes the Gaussian step log-prob of flow_sde or"
            " dance_sde; cps uses a simplified log-prob"
        )
    kl_type = str(config.kl_type)
    if kl_type not in _CHOICES["kl_type"]:
        raise ValueError(f"{name}: kl_type {kl_type!r}; allowed: {_CHOICES['kl_type']}")
    kl_form = str(config.get("kl_form", "flow_factory"))
    if kl_form not in _CHOICES["kl_form"]:
        raise ValueError(f"{name}: kl_form {kl_form!r}; allowed: {_CHOICES['kl_form']}")
    eps, adv_clip_max = common.clip_bounds(config)
    kl_beta = float(config.kl_beta)
    reweight = guard and bool(config.grad_reweight)

    def loss_fn(trainable, frozen, batch, key):
        del key  # deterministic: the stored x_next is the action
        snapshot = common.required(frozen.snapshot, "snapshot", name) if guard else None
        # x_t goes to the policy in its stored dtype, exactly as the rollout passed it,
        # so that the rollout-time weights reproduce the stored log-prob bit for bit.
        x_t = batch["x_t"]
        sigma, sigma_next, eta = batch["sigma"], batch["sigma_next"], batch["noise_level"]
        cond, x_next = batch["cond"], batch["x_next"]

        def score(weights, stop):
            v = policy(weights, frozen.base, x_t, sigma, cond)
            if stop:
                v = jax.lax.stop_gradient(v)
            _, mean, std, log_prob = steps.step(
                dynamics, x_t, v, sigma, sigma_next, eta, x_next=x_next
            )
            return v, mean, std.reshape(-1), log_prob

        v, mean, std, log_prob = score(trainable, stop=False)
        log_ratio = log_prob - jnp.asarray(batch["log_prob"], jnp.float32)
        advantage = common.clip_advantages(batch["advantage"], adv_clip_max)
        # Rows with std 0 (an Euler step) carry no likelihood; keep them finite.
        noisy = std > 0
        safe_std = jnp.where(noisy, std, 1.0)
        extra = {}
        if guard:
            _, mean_old, _, _ = score(snapshot, stop=True)
            bias = common.batch_mean(jnp.square(mean - mean_old)) / (2 * safe_std**2)
            ratio = jnp.exp(jnp.where(noisy, (log_ratio + bias) * safe_std, 0.0))
            per_row = common.ppo_clip_loss(ratio, advantage, eps)
            if reweight:
                per_row = per_row / (jnp.asarray(sigma, jnp.float32) - sigma_next)
            extra["guard_bias"] = jnp.mean(jnp.where(noisy, bias, 0.0))
        else:
            ratio = jnp.exp(log_ratio)
            per_row = common.ppo_clip_loss(ratio, advantage, eps)
        policy_loss = jnp.mean(per_row)

        kl = jnp.zeros((), jnp.float32)
        if kl_beta > 0:  # Python-level: no reference forward at all otherwise
            v_ref, mean_ref, _, _ = score(frozen.ref, stop=True)
            if kl_type == "v-based":
                kl = common.velocity_mse(v, v_ref)
            else:
                kl = x_kl(kl_form, dynamics, mean, mean_ref, std, sigma, sigma_next)
        loss = policy_loss + kl_beta * kl

        metrics = common.ratio_metrics(ratio, log_ratio, eps)
        metrics.update(extra, loss=loss, policy_loss=policy_loss, kl=kl)
        return loss, common.as_metrics(metrics)

    return loss_fn


def x_kl(
    kl_form: str,
    dynamics: str,
    mean: jax.Array,
    mean_ref: jax.Array,
    std: jax.Array,
    sigma: jax.Array,
    sigma_next: jax.Array,
) -> jax.Array:
    """The x-based KL of `make_loss` in form `kl_form`, float32[] (rows with s = 0: 0)."""
    m = common.batch_mean(jnp.square(mean - mean_ref))
    if kl_form == "flow_factory":
        return jnp.mean(m)
    std = jnp.asarray(std, jnp.float32).reshape(-1)
    noisy = std > 0
    var = jnp.where(noisy, std, 1.0) ** 2
    if kl_form == "flow_grpo" and dynamics != "cps":
        # g^2 = s^2 / (-dt): flow_grpo's std_dev_t has no sqrt(-dt).
        var = var / (jnp.asarray(sigma, jnp.float32) - jnp.asarray(sigma_next, jnp.float32))
    return jnp.mean(jnp.where(noisy, m / (2 * var), 0.0))


_CHOICES = {
    "kl_type": ("x-based", "v-based"),
    "kl_form": ("flow_factory", "flow_grpo", "gaussian"),
}

registry.ALGORITHMS.register(
    "grpo",
    AlgorithmSpec("grpo", default_config, "sde_steps", make_loss=make_loss, choices=_CHOICES),
)
registry.ALGORITHMS.register(
    "grpo-guard",
    AlgorithmSpec(
        "grpo-guard",
        guard_default_config,
        "sde_steps",
        make_loss=make_guard_loss,
        needs_snapshot=True,
        choices=_CHOICES,
    ),
)
