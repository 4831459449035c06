"""Optimize: training rows -> shuffled micro-batches x inner epochs -> train_step (jit,
donated state); the EMA step.

Training rows. A "sde_steps" algorithm trains on one row per (sample, recorded SDE
step), a "final" algorithm on one row per (sample, training sigma); rows of samples
whose reward is NaN are dropped. Each inner epoch visits the valid rows in a fresh
random order; the last optimizer step of an inner epoch is filled up with randomly
repeated valid rows, so every step sees the same shapes and nothing recompiles.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ffjax import ema as ema_lib
from ffjax.algorithms.spec import Frozen
from ffjax.flow import schedule
from ffjax.parallel import offload
from ffjax.parallel import sharding as sharding_lib
from ffjax.parallel.mesh import OnMesh
from ffjax.stages import TrainingError
from ffjax.stages.generate import advance, stage_bar
from ffjax.state import TrainState


def make_rows(
    record: str,
    traj: Any,
    advantages: np.ndarray,
    noise_levels: np.ndarray,
    rng: np.random.Generator,
    sigmas: np.ndarray,
    algorithm: Any,
    train_timesteps: int,
) -> dict[str, jax.Array]:
    """All training rows of the epoch (see the module docstring), on device.

    `record` is the algorithm's (`AlgorithmSpec.record`); a "final" algorithm draws
    `train_timesteps` sigmas per sample from `rng` with `algorithm`'s sampler keys.
    """
    n = advantages.shape[0]
    adv = jnp.asarray(advantages, jnp.float32)
    if record == "sde_steps":
        k = traj.x_t.shape[0]
        flat = lambda a: a.reshape((k * n,) + a.shape[2:])
        return {
            "sample": jnp.tile(jnp.arange(n, dtype=jnp.int32), k),
            "x_t": flat(traj.x_t),
            "x_next": flat(traj.x_next),
            "log_prob": flat(traj.log_prob),
            "sigma": jnp.repeat(traj.sigma, n),
            "sigma_next": jnp.repeat(traj.sigma_next, n),
            "noise_level": jnp.repeat(jnp.asarray(noise_levels)[traj.step], n),
            "advantage": jnp.tile(adv, k),
        }
    a, t = algorithm, train_timesteps
    train_sigmas = np.stack([
        schedule.sample_train_sigmas(rng, a.timestep_sampler, t, sigma_range=tuple(a.sigma_range),
                                     schedule=sigmas, time_shift_value=a.get("time_shift", 1.0))
        for _ in range(n)
    ])  # fmt: skip
    return {
        "sample": jnp.repeat(jnp.arange(n, dtype=jnp.int32), t),
        "row_id": jnp.arange(n * t, dtype=jnp.int32),
        "sigma": jnp.asarray(train_sigmas.reshape(-1), jnp.float32),
        "advantage": jnp.repeat(adv, t),
    }


def commit_rows(rows: dict[str, jax.Array], mesh) -> dict[str, jax.Array]:
    """`rows` with the leaves made from host values (not yet committed to a device)
    replicated over `mesh`: every argument of the train step then has a sharding, so its
    program does not depend on how each row array was made (the dry run lowers the same
    program from abstract rows)."""
    rep = sharding_lib.replicated(mesh)
    return {k: a if a.committed else jax.device_put(a, rep) for k, a in rows.items()}


def row_order(rng: np.random.Generator, valid_rows: np.ndarray, step_rows: int) -> np.ndarray:
    """A permutation of the valid rows, filled up to a multiple of `step_rows`."""
    order = rng.permutation(valid_rows)
    short = -len(order) % step_rows
    if short:
        order = np.concatenate([order, rng.choice(valid_rows, short, replace=True)])
    return order.astype(np.int32)


def micro_batches(
    order: np.ndarray, size: int, row_expert: np.ndarray | None, rng: np.random.Generator
) -> list[tuple[np.ndarray, int | None]]:
    """`order` cut into micro-batches of `size` rows, each with the expert all its rows
    use (None: mixed, or a one-expert model).

    With `row_expert` (int per row) each expert's rows, in `order`, fill whole
    micro-batches of that expert; the leftovers share mixed ones; the batches are then
    visited in a random order (`rng`), so neither expert's steps all come first. A
    one-expert micro-batch is traced for that expert alone: its gradient keeps one
    expert's activations, not both branches' of the per-row switch.
    """
    if row_expert is None:
        return [(order[i : i + size], None) for i in range(0, len(order), size)]
    experts = row_expert[order]
    batches, rest = [], []
    for e in np.unique(experts):
        mine = order[experts == e]
        whole = len(mine) - len(mine) % size
        batches += [(mine[i : i + size], int(e)) for i in range(0, whole, size)]
        rest.append(mine[whole:])
    rest = np.concatenate(rest)
    for i in range(0, len(rest), size):
        part = rest[i : i + size]
        single = np.unique(row_expert[part])
        batches.append((part, int(single[0]) if len(single) == 1 else None))
    return [batches[i] for i in rng.permutation(len(batches))]


def gather(samples: dict, rows: dict, idx: jax.Array, noise_key: jax.Array, record: str) -> dict:
    """The micro-batch of rows `idx` in the algorithm's batch layout (spec.py)."""
    sample = rows["sample"][idx]
    batch = {"cond": jax.tree.map(lambda a: a[sample], samples["cond"])}
    batch["advantage"] = rows["advantage"][idx]
    batch["sigma"] = rows["sigma"][idx]
    if record == "sde_steps":
        for k in ("x_t", "x_next", "log_prob", "sigma_next", "noise_level"):
            batch[k] = rows[k][idx]
    else:
        x0 = samples["x0"][sample].astype(jnp.float32)
        # One fixed noise per row for the whole epoch, whatever order rows are visited in.
        draw = lambda r: jax.random.normal(jax.random.fold_in(noise_key, r), x0.shape[1:])
        batch["x0"] = x0
        batch["noise"] = jax.vmap(draw)(rows["row_id"][idx])
    return batch


def make_train_step(
    loss_fn,
    optimizer,
    record: str,
    mesh,
    state_shardings,
    ref_shardings: Any = None,
    with_expert: Callable | None = None,
) -> Callable:
    """jit(train_step), called under `mesh` (`OnMesh`): the state is donated and comes
    back with `state_shardings`; the other arguments keep the shardings they were
    committed to. An EMA or reference in
    host memory (`state_shardings.ema` / `ref_shardings` with memory kind pinned_host)
    is moved to the devices inside the step, only if the loss reads it. `expert`
    (static; two-expert adapters' `with_expert`): every row of the micro-batch uses that
    expert, and only it is traced."""

    def train_step(state: TrainState, frozen: Frozen, samples, rows, idx, noise_key, key,
                   expert: int | None = None):  # fmt: skip
        batch = gather(samples, rows, idx, noise_key, record)
        if expert is not None:
            batch = dict(batch, cond=with_expert(batch["cond"], expert))
        batch = jax.lax.with_sharding_constraint(batch, sharding_lib.batch_shardings(batch, mesh))
        # The EMA lives in the donated state; hand the loss that copy, never an alias.
        ema = state.ema
        if ema is not None and offload.on_host(state_shardings.ema):
            ema = offload.to_device(ema, state_shardings.ema)
        frozen = frozen.replace(ema=ema)
        if frozen.ref is not None and offload.on_host(ref_shardings):
            frozen = frozen.replace(ref=offload.to_device(frozen.ref, ref_shardings))
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (loss, metrics), grads = grad_fn(state.trainable, frozen, batch, key)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.trainable)
        trainable = optax.apply_updates(state.trainable, updates)
        metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads))
        state = state.replace(step=state.step + 1, trainable=trainable, opt_state=opt_state)
        return state, metrics

    out_shardings = (state_shardings, sharding_lib.replicated(mesh))  # metrics replicated
    jitted = jax.jit(
        train_step, donate_argnums=(0,), static_argnames=("expert",), out_shardings=out_shardings
    )
    return OnMesh(jitted, mesh)


def make_ema_step(ema_shardings: Any) -> Callable | None:
    """jit(ema, trainable, decay) -> the updated EMA, with `ema_shardings` (the EMA is
    donated; one in host memory is updated on the devices and goes back to the host)."""
    if ema_shardings is None:
        return None
    on_host = offload.on_host(ema_shardings)

    def ema_step(ema, trainable, decay):
        if on_host:
            ema = offload.to_device(ema, ema_shardings)
        return ema_lib.ema_update(ema, trainable, decay)

    return jax.jit(ema_step, donate_argnums=(0,), out_shardings=ema_shardings)


def optimize(
    train_step: Callable,
    state: TrainState,
    frozen: Frozen,
    samples: dict,
    rows: dict,
    valid_rows: np.ndarray,
    *,
    micro_batch_size: int,
    grad_accum_steps: int,
    inner_epochs: int,
    row_expert: np.ndarray | None,
    key: jax.Array,
    rng: np.random.Generator,
    epoch: int,
    progress: bool = False,
) -> tuple[TrainState, list[dict[str, Any]]]:
    """Inner epochs of train steps over the valid rows; (state, per-step metrics on host).

    Step keys: fold_in(fold_in(key, 3 + inner), j); per-row noise from fold_in(key, 2).
    TrainingError on a non-finite loss or gradient (before the weights are used).
    """
    step_rows = micro_batch_size * grad_accum_steps
    noise_key = jax.random.fold_in(key, 2)
    step_metrics = []
    per_inner = -(-len(valid_rows) // step_rows) * grad_accum_steps
    bar = stage_bar(progress, inner_epochs * per_inner, "train", "micro-batch")
    for inner in range(inner_epochs):
        order = row_order(rng, valid_rows, step_rows)
        batches = micro_batches(order, micro_batch_size, row_expert, rng)
        for j, (part, expert) in enumerate(batches):
            idx = jnp.asarray(part)
            step_key = jax.random.fold_in(jax.random.fold_in(key, 3 + inner), j)
            state, metrics = train_step(
                state, frozen, samples, rows, idx, noise_key, step_key, expert=expert
            )
            step_metrics.append(metrics)
            advance(bar, metrics["loss"])
    bar.close()
    step_metrics = jax.device_get(step_metrics)
    bad = [i for i, mt in enumerate(step_metrics) if not np.isfinite(mt["loss"])]
    if bad or not all(np.isfinite(mt["grad_norm"]) for mt in step_metrics):
        raise TrainingError(
            f"epoch {epoch}: non-finite loss or gradient at optimizer step"
            f" {bad[0] if bad else '?'} of the epoch; stopping before the weights are used."
            " Finished epochs, metrics and checkpoints are kept; lower train.learning_rate"
            " or check the rewards."
        )
    return state, step_metrics


def summarise(steps: list[dict[str, Any]]) -> dict[str, float]:
    """Means over micro-steps; min / max for ratio_min / ratio_max."""
    out = {}
    for k in steps[0]:
        vals = np.asarray([float(s[k]) for s in steps], np.float64)
        out[k] = (
            vals.min() if k.endswith("_min") else vals.max() if k.endswith("_max") else vals.mean()
        )
    return out
