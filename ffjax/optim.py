"""The optimizer from `config.train`: clipping, AdamW, a learning-rate schedule and
gradient accumulation, all Optax.

    tx = make_optimizer(config.train, total_steps)
    opt_state = tx.init(trainable)
    updates, opt_state = tx.update(grads, opt_state, trainable)
    trainable = optax.apply_updates(trainable, updates)

`total_steps` counts optimizer updates (after accumulation), not micro-batches.
With `grad_accum_steps = k > 1` the transformation is an `optax.MultiSteps`: each
call takes one micro-batch gradient, the first k - 1 calls return zero updates and
the k-th applies clip + AdamW to the mean of the k gradients (clipping the
accumulated gradient, as Accelerate / Flow-GRPO do). The schedule advances once per
applied update. Use `optax.tree.norm(grads)` for the `grad_norm` metric
(`optax.global_norm` is deprecated).
"""

from __future__ import annotations

from typing import Any

import optax

LR_SCHEDULES = ("constant", "linear", "cosine")


def learning_rate_fn(train_cfg: Any, total_steps: int) -> optax.Schedule:
    """lr(step) for optimizer step `step` (0-based; what AdamW uses for that update).

    With peak lr = `learning_rate`, W = `warmup_steps`, T = `total_steps`:
      warm-up, step < W:  lr * step / W   (0 at the first update, as Diffusers'
                          get_*_schedule_with_warmup)
      then "constant":    lr
           "linear":      lr * (T - step) / (T - W), reaching 0 at T
           "cosine":      lr * (1 + cos(pi * (step - W) / (T - W))) / 2, reaching 0 at T
    (linear and cosine stay at 0 after T).
    """
    lr = float(train_cfg.learning_rate)
    warmup = int(train_cfg.warmup_steps)
    kind = train_cfg.lr_schedule
    if kind not in LR_SCHEDULES:
        raise ValueError(
            f"config.train.lr_schedule={kind!r} is not allowed; allowed: {', '.join(LR_SCHEDULES)}"
        )
    if warmup < 0:
        raise ValueError(f"config.train.warmup_steps={warmup} must be >= 0")
    if kind != "constant" and total_steps <= warmup:
        raise ValueError(
            f"config.train.lr_schedule={kind!r} decays to 0 over total_steps - warmup_steps "
            f"optimizer steps; got total_steps={total_steps}, warmup_steps={warmup}"
        )
    decay_steps = total_steps - warmup
    main = {
        "constant": lambda: optax.constant_schedule(lr),
        "linear": lambda: optax.linear_schedule(lr, 0.0, decay_steps),
        "cosine": lambda: optax.cosine_decay_schedule(lr, decay_steps),
    }[kind]()
    if warmup == 0:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])


def make_optimizer(train_cfg: Any, total_steps: int) -> optax.GradientTransformation:
    """clip_by_global_norm(max_grad_norm) (when > 0) -> AdamW(schedule), accumulated
    over `grad_accum_steps` micro-batches (when > 1).

    AdamW is Optax's (Loshchilov & Hutter 2019): decoupled weight decay
    p <- p - lr * (m_hat / (sqrt(v_hat) + eps) + weight_decay * p), as torch.optim.AdamW,
    applied to every trainable leaf (LoRA A and B included, as Flow-GRPO does).
    """
    schedule = learning_rate_fn(train_cfg, total_steps)
    chain = []
    if train_cfg.max_grad_norm > 0:
        chain.append(optax.clip_by_global_norm(float(train_cfg.max_grad_norm)))
    chain.append(
        optax.adamw(
            learning_rate=schedule,
            b1=float(train_cfg.adam_b1),
            b2=float(train_cfg.adam_b2),
            eps=float(train_cfg.adam_eps),
            weight_decay=float(train_cfg.weight_decay),
        )
    )
    tx = optax.chain(*chain)
    k = int(train_cfg.grad_accum_steps)
    if k < 1:
        raise ValueError(f"config.train.grad_accum_steps={k} must be >= 1")
    if k > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=k).gradient_transformation()
    return tx
