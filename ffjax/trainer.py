"""The epoch loop (DESIGN.md section 1): the only place that sequences the stages.

    prompts -> encode -> rollout (jit) -> decode (jit) -> rewards (host) -> advantages
    (host, float64) -> shuffled micro-batches x inner epochs -> train_step (jit, donated
    state) -> EMA -> eval (ODE, EMA weights) -> checkpoint -> metrics.jsonl

With `train.async_rewards` (and `sampling.batch_size` splitting the epoch) the rewards
of rollout chunk i are scored in a thread pool while chunk i+1 is sampled
(`_sample_and_score`, `ffjax.rewards.async_pool`): same scores, in order;
`time/reward_s` is then the wait after the last chunk, `time/reward_busy_s` the time
spent scoring.

Model adapters are used through a small protocol (see `ffjax.models.flux.adapter`):
`load(config) -> (adapter, weights)`, `denoiser` (the key of the trained weights),
`lora_targets`, `encode_prompts(prompts, height, width)` (cond pytree, batch axis
first), `init_noise(key, batch, height, width)`, `sigmas(num_steps, height, width)`,
`velocity(variables, x, sigma, cond)`, `decode(vae_weights, x, height, width)` ->
uint8 images. `weights["vae"]` is passed to `decode`. Optional: `logical_specs()` ->
{weights key: logical PartitionSpec tree}; weights without specs are replicated;
`supports_cfg` with `conditional_only(cond)`, the cond whose velocity is the
conditional pass alone (the training forward of `algorithm.cfg_in_train=False`);
`wants_metadata` (`encode_prompts` then also gets `metadata=`, one dict per prompt);
`finish_latents(final, cond)` (applied to every rollout chunk's final latents).

Sharding (`ffjax.parallel`): `setup` builds the mesh of `config.mesh` and places the
weights, the TrainState (trainable, optimizer state, EMA) and the frozen variables on
the shardings of their logical axes (`ffjax.parallel.sharding`); rollout noise and
conditioning, and every training micro-batch, are sharded by rows over (data, fsdp).
The train step's output state has the shardings of its (donated) input state.

Multi-process (`ffjax.parallel.rows`): each process holds the rows on its devices,
whole prompt groups, and encodes, draws noise for, rolls out, decodes and scores only
those; the scores are gathered, so every process computes the same (group-normalised)
advantages and the run is the 1-process run's. `sampling.batch_size` is per process
(a chunk takes that many rows of every process). Reward models with `place` run on
the process's devices. Process 0 writes metrics and grids (of gathered images);
every process writes its shards of each checkpoint.

Training rows. A "sde_steps" algorithm trains on one row per (sample, recorded SDE
step), a "final" algorithm on one row per (sample, training sigma); rows of samples
whose reward is NaN are dropped. Each inner epoch visits the valid rows in a fresh
random order; the last optimizer step of an inner epoch is filled up with randomly
repeated valid rows, so every step sees the same shapes and nothing recompiles.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

from ffjax import configs, optim, registry
from ffjax import ema as ema_lib
from ffjax.algorithms.advantages import compute_advantages
from ffjax.algorithms.spec import REQUIRED_METRICS, AlgorithmSpec, Frozen
from ffjax.checkpoint import Checkpointer
from ffjax.data.prompts import GroupSampler, PromptSet, load_prompts
from ffjax.flow import rollout as rollout_lib
from ffjax.flow import schedule
from ffjax.logging import MetricsWriter, image_grid, save_grid
from ffjax.parallel import offload
from ffjax.parallel import rows as rows_lib
from ffjax.parallel import sharding as sharding_lib
from ffjax.parallel.mesh import OnMesh, make_mesh, maybe_initialize_distributed
from ffjax.rewards.base import RewardError, Samples, call_reward
from ffjax.state import TrainState, init_state

EVAL_SEED_OFFSET = 1_000_003  # eval noise is fixed for the whole run: compare epochs
EVAL_GRID_IMAGES = 64  # images of an eval grid (the first repeat of each prompt first)


class TrainingError(RuntimeError):
    """The run cannot go on (e.g. every reward is NaN); finished epochs are kept."""


class Interrupted(RuntimeError):
    """SIGTERM / SIGINT arrived; the epoch in flight was finished and checkpointed."""


class _StopSignals:
    """Turns SIGTERM / SIGINT into a flag checked between epochs (preemption-safe stop).

    A second signal of the same kind restores the default handler's behaviour.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.received: int | None = None
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.received is not None:  # asked twice: stop now
            signal.signal(signum, self._old.get(signum, signal.SIG_DFL))
            signal.raise_signal(signum)
        self.received = signum
        logging.warning("signal %d: finishing this epoch, checkpointing, then stopping", signum)

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False


# --------------------------------------------------------------------------- setup


@dataclasses.dataclass
class Run:
    """What stays fixed during a run, built once by `setup`."""

    config: configs.ConfigDict
    spec: AlgorithmSpec
    adapter: Any
    weights: dict[str, Any]
    base: Any  # frozen variables passed to the policy
    ref: Any  # reference weights (full fine-tune with KL) or None
    lora: bool
    prompts: PromptSet
    eval_prompts: PromptSet
    sampler: GroupSampler
    rewards: dict[str, tuple[Any, float]]
    eval_rewards: dict[str, tuple[Any, float]]
    optimizer: optax.GradientTransformation
    lr_fn: Callable[[int], Any]
    rows_per_epoch: int
    train_timesteps: int
    train_step: Callable
    ema_step: Callable | None  # (ema, trainable, decay) -> ema; None without EMA
    decode: Callable
    initial: TrainState
    mesh: jax.sharding.Mesh


def _build_rewards(section: configs.ConfigDict) -> dict[str, tuple[Any, float]]:
    out = {}
    for alias, entry in section.items():
        cls = registry.REWARDS.get(entry.get("name", alias))
        try:
            out[alias] = (cls(**dict(entry.get("args", {}))), float(entry.get("weight", 1.0)))
        except RewardError as e:  # e.g. a remote reward whose server is not up
            raise TrainingError(f"reward {alias!r}: {e}") from None
    return out


def _train_timesteps(config) -> int:
    n = config.algorithm.get("num_train_timesteps", 0)
    return n if n > 0 else max(1, int(0.9 * config.sampling.num_steps))


def _sde_candidates(config) -> list[int]:
    cand = list(config.sampling.sde_candidates)
    return cand or list(range(max(config.sampling.num_steps - 1, 1)))


def _sde_count(config) -> int:
    return config.sampling.sde_num_steps or len(_sde_candidates(config))


def _check_run_shapes(config, spec: AlgorithmSpec, process_count: int) -> int:
    """Rows per epoch; ConfigError if the batch sizes do not divide them."""
    t, d = config.train, config.data
    if d.prompts_per_epoch % process_count:
        raise configs.ConfigError(
            f"config.data.prompts_per_epoch={d.prompts_per_epoch} must be divisible by the"
            f" number of processes ({process_count})"
        )
    # Training rows are global (the train step draws micro-batches from every host's
    # rows); a rollout chunk (sampling.batch_size) is per process.
    samples = d.prompts_per_epoch * d.group_size
    if spec.record == "sde_steps":
        per_sample, what = _sde_count(config), "SDE steps per sample (sampling.sde_num_steps)"
    else:
        per_sample, what = _train_timesteps(config), "training sigmas per sample"
    rows = samples * per_sample
    step_rows = t.micro_batch_size * t.grad_accum_steps
    if rows % step_rows:
        raise configs.ConfigError(
            f"an epoch has {rows} training rows ({samples} samples x {per_sample} {what}),"
            f" not divisible by config.train.micro_batch_size x config.train.grad_accum_steps"
            f" = {t.micro_batch_size} x {t.grad_accum_steps} = {step_rows}; change one of them"
        )
    per_process = samples // process_count
    if config.sampling.batch_size and per_process % config.sampling.batch_size:
        hosts = f" / {process_count} processes" if process_count > 1 else ""
        raise configs.ConfigError(
            f"config.sampling.batch_size={config.sampling.batch_size} must divide the"
            f" {per_process} samples of an epoch (data.prompts_per_epoch x data.group_size"
            f"{hosts})"
        )
    return rows


def _check_row_blocks(config, mesh) -> None:
    """ConfigError unless every process holds whole groups of the epoch's rows (so its
    prompts are encoded, and its groupwise rewards scored, where its rows live)."""
    d = config.data
    try:
        blocks = rows_lib.row_blocks(mesh, d.prompts_per_epoch * d.group_size)
    except ValueError as e:
        raise configs.ConfigError(f"config.mesh: {e}") from None
    if blocks.size % d.group_size:
        raise configs.ConfigError(
            f"each process holds {blocks.size} rows of an epoch, not a whole number of groups"
            f" of config.data.group_size={d.group_size}; make config.data.prompts_per_epoch"
            f" a multiple of {blocks.count} (the processes holding distinct rows)"
        )


def _check_algorithm_needs(config, spec: AlgorithmSpec) -> None:
    a = config.algorithm
    if config.ema.decay == 0:
        if spec.name == "nft" and a.get("off_policy", False):
            raise configs.ConfigError(
                "config.algorithm.off_policy=True uses the EMA as the old policy, but"
                " config.ema.decay=0 disables the EMA; set ema.decay > 0 or off_policy=False"
            )
        if a.get("ema_kl_beta", 0) > 0:
            raise configs.ConfigError(
                "config.algorithm.ema_kl_beta > 0 needs the EMA; set config.ema.decay > 0"
            )
    if spec.make_loss is None:
        raise configs.ConfigError(f"algorithm {spec.name!r} has no loss (make_loss) registered")
    if config.ema.offload and config.ema.decay == 0:
        raise configs.ConfigError(
            "config.ema.offload=True keeps the EMA in host memory, but config.ema.decay=0"
            " disables the EMA; set ema.decay > 0 or ema.offload=False"
        )
    if config.train.offload_ref and not _has_ref_copy(config):
        raise configs.ConfigError(
            "config.train.offload_ref=True keeps the KL reference copy in host memory, but"
            " this run has none (only a full fine-tune, train.lora_rank=0, with"
            " algorithm.kl_beta > 0 keeps one; LoRA's reference is the frozen base); set"
            " train.offload_ref=False"
        )


def _has_ref_copy(config) -> bool:
    """Whether the run keeps a reference copy of the denoiser (full fine-tune with KL)."""
    return config.train.lora_rank == 0 and config.algorithm.get("kl_beta", 0) > 0


def ref_shardings(config, shardings: Any) -> Any:
    """Where the reference copy lives: the weights' shardings, in host memory when
    `config.train.offload_ref`."""
    return offload.host_shardings(shardings) if config.train.offload_ref else shardings


def check_offload(config, mesh) -> None:
    """ConfigError when an offload key is set but the devices have no host memory kind."""
    for key in ("ema.offload", "train.offload_ref"):
        if config[key.split(".")[0]][key.split(".")[1]]:
            offload.check_host_memory(mesh, key)


def cfg_in_train(config: configs.ConfigDict) -> bool:
    """Whether the training forward guides like the rollout: `config.algorithm.cfg_in_train`
    where the algorithm has that key (GRPO), else True (NFT and AWM train the velocity
    the rollout samples with). Only models with `supports_cfg` guide at all."""
    return bool(config.algorithm.get("cfg_in_train", True))


def make_policy(adapter, lora: bool, cfg: bool = True) -> Callable:
    """policy(weights, base, x, sigma, cond) -> v for the algorithms (spec.py contract).

    cfg=False (`cfg_in_train` False on a `supports_cfg` model): every training-time call,
    the reference's too, drops the guidance (`adapter.conditional_only(cond)`, the
    conditional pass alone); the rollout, which does not go through here, still guides.
    """
    strip = None if cfg or not getattr(adapter, "supports_cfg", False) else adapter.conditional_only

    def policy(weights, base, x, sigma, cond):
        if strip is not None:
            cond = strip(cond)
        if lora:
            variables = {"params": base["params"]}
            if weights is not None:
                variables["lora"] = weights
                variables["lora_scale"] = base["lora_scale"]
        else:
            if weights is None:
                raise ValueError("full fine-tuning has no base-only policy; pass ref weights")
            variables = {"params": weights}
        return adapter.velocity(variables, x, sigma, cond)

    return policy


def encode_prompts(adapter, prompts: list[str], height: int, width: int, metadata: list) -> Any:
    """`adapter.encode_prompts`, given the prompts' metadata too when the adapter declares
    `wants_metadata` (wan2-i2v reads each prompt's conditioning image from it)."""
    if getattr(adapter, "wants_metadata", False):
        return adapter.encode_prompts(prompts, height, width, metadata=metadata)
    return adapter.encode_prompts(prompts, height, width)


def _read_inputs(config: configs.ConfigDict) -> tuple:
    """(train prompts, eval prompts, rewards, eval rewards, adapter, weights), read on
    this process alone."""
    prompts = load_prompts(config.data.path, "train")
    try:
        eval_prompts = load_prompts(config.data.path, "test")
    except FileNotFoundError:
        eval_prompts = prompts
    rewards = _build_rewards(config.rewards)
    eval_rewards = _build_rewards(config.eval_rewards) if config.eval_rewards else rewards
    adapter, weights = registry.MODELS.get(config.model.name).load(config)
    return prompts, eval_prompts, rewards, eval_rewards, adapter, weights


def setup(config: configs.ConfigDict, devices: list | None = None, *, training: bool = True) -> Run:
    """Loads model, data and rewards and builds the jitted functions; no training yet.

    `devices` (default: all) are laid out in the mesh of `config.mesh`. `training=False`
    (`ffjax.sample`) skips the checks of how the epoch splits over the processes: a
    run trained on N processes may be sampled on any number.
    """
    spec = registry.ALGORITHMS.get(config.algorithm.name)
    _check_algorithm_needs(config, spec)
    rows = _check_run_shapes(config, spec, jax.process_count() if training else 1)
    if spec.record == "sde_steps" and config.sampling.noise_level == 0:
        raise configs.ConfigError(
            f"{spec.name} trains on stochastic steps; config.sampling.noise_level=0 makes"
            " every step deterministic (set it > 0)"
        )
    if not config.rewards:
        raise configs.ConfigError("config.rewards is empty; add at least one reward")

    # Prompts, rewards and weights are read by each process on its own (no collectives):
    # a file missing on one host stops every process here, none waits for it later.
    prompts, eval_prompts, rewards, eval_rewards, adapter, weights = on_every_process(
        "setup", lambda: _read_inputs(config)
    )
    n_eval = config.train.eval_prompts or config.data.prompts_per_epoch
    # Each eval prompt is sampled `eval_repeats` times (fixed noise): a reward read off
    # one image per prompt is too noisy to show a change of a few hundredths.
    r = config.train.eval_repeats
    eval_prompts = PromptSet(eval_prompts.prompts[:n_eval] * r, eval_prompts.metadata[:n_eval] * r)
    sampler = GroupSampler(
        len(prompts.prompts),
        config.data.prompts_per_epoch,
        config.data.group_size,
        config.seed,
        shuffle=config.data.shuffle,
    )
    if config.algorithm.get("cfg_in_train", False) and not getattr(adapter, "supports_cfg", False):
        raise configs.ConfigError(
            f"config.algorithm.cfg_in_train=True, but model {config.model.name!r} has no"
            " classifier-free guidance (FLUX.1 embeds guidance instead); set it to False"
        )
    mesh = make_mesh(config.mesh, devices)
    if training:
        _check_row_blocks(config, mesh)
    check_offload(config, mesh)
    for reward, _ in [*rewards.values(), *eval_rewards.values()]:
        if hasattr(reward, "place"):  # reward models run on the mesh beside the generator,
            reward.place(rows_lib.local_mesh(mesh))  # this process's part: they see its rows
    if hasattr(adapter, "place_encoders"):  # text encoders sharded beside the generator,
        adapter.place_encoders(rows_lib.local_mesh(mesh))  # each process encodes its prompts
    specs = adapter.logical_specs() if hasattr(adapter, "logical_specs") else {}
    weights = {
        k: jax.device_put(w, sharding_lib.logical_shardings(w, specs.get(k), mesh))
        for k, w in weights.items()
    }
    denoiser = weights[adapter.denoiser]
    trainable_specs = specs.get(adapter.denoiser)
    t = config.train
    key = jax.random.key(config.seed)
    lora = t.lora_rank > 0
    if lora:
        from ffjax.models.lora import init_lora

        trainable, lora_scale = init_lora(
            denoiser,
            rank=t.lora_rank,
            alpha=t.lora_alpha,
            targets=tuple(t.lora_targets) or tuple(adapter.lora_targets),
            init=t.lora_init,
            key=jax.random.fold_in(key, 1),
        )
        scale_specs = None
        if trainable_specs is not None:
            from ffjax.models.lora import lora_partition_specs

            trainable_specs, scale_specs = lora_partition_specs(trainable_specs, trainable)
        lora_scale = jax.device_put(
            lora_scale, sharding_lib.logical_shardings(lora_scale, scale_specs, mesh)
        )
        base, ref = {"params": denoiser, "lora_scale": lora_scale}, None
    else:
        trainable, base = denoiser, {}
        ref = None
        if config.train.offload_ref:  # copied straight to host memory, never twice on device
            shardings = jax.tree.map(lambda a: a.sharding, denoiser)
            ref = jax.device_put(denoiser, offload.host_shardings(shardings))
        elif _has_ref_copy(config):
            ref = jax.tree.map(jnp.copy, denoiser)

    steps_per_epoch = t.inner_epochs * rows // t.micro_batch_size
    total_steps = max(1, t.num_epochs * steps_per_epoch // t.grad_accum_steps)
    optimizer = optim.make_optimizer(t, total_steps)
    lr_fn = optim.learning_rate_fn(t, total_steps)
    policy = make_policy(adapter, lora, cfg_in_train(config))
    loss_fn = spec.make_loss(config.algorithm, policy, dynamics=config.sampling.dynamics)
    initial = init_state(trainable, optimizer, ema=config.ema.decay > 0)
    if not lora:
        # The float32 trainable copy replaces the loaded weights: keeping both would hold
        # the denoiser twice (FLUX.1-dev: 24 GB in bfloat16 beside 48 GB in float32).
        weights = {k: w for k, w in weights.items() if k != adapter.denoiser}
        del denoiser, trainable
    state_shardings = _state_shardings(
        initial, trainable_specs, optimizer, mesh, ema_offload=config.ema.offload
    )
    initial = jax.device_put(initial, state_shardings)
    specs_used = sorted({str(sh.spec) for sh in jax.tree.leaves(state_shardings.trainable)})
    logging.info("mesh %s; trainable weights sharded as %s", dict(mesh.shape), specs_used)

    return Run(
        config=config,
        spec=spec,
        adapter=adapter,
        weights=weights,
        base=base,
        ref=ref,
        lora=lora,
        prompts=prompts,
        eval_prompts=eval_prompts,
        sampler=sampler,
        rewards=rewards,
        eval_rewards=eval_rewards,
        optimizer=optimizer,
        lr_fn=lr_fn,
        rows_per_epoch=rows,
        train_timesteps=_train_timesteps(config),
        train_step=_make_train_step(
            loss_fn,
            optimizer,
            spec.record,
            mesh,
            state_shardings,
            ref_shardings=None if ref is None else jax.tree.map(lambda a: a.sharding, ref),
            with_expert=getattr(adapter, "with_expert", None),
        ),
        ema_step=_make_ema_step(state_shardings.ema),
        decode=jax.jit(adapter.decode, static_argnums=(2, 3)),
        initial=initial,
        mesh=mesh,
    )


def _state_shardings(
    state: TrainState, trainable_specs, optimizer, mesh, ema_offload: bool = False
) -> TrainState:
    """Shardings of a TrainState: trainable and EMA by their logical specs (the EMA in
    pinned host memory with `ema_offload`), optimizer state like the trainable tree it
    mirrors, counters replicated."""
    rep = sharding_lib.replicated(mesh)
    trainable = sharding_lib.logical_shardings(state.trainable, trainable_specs, mesh)
    ema = None
    if state.ema is not None:
        ema = offload.host_shardings(trainable) if ema_offload else trainable
    return TrainState(
        step=rep,
        epoch=rep,
        trainable=trainable,
        opt_state=sharding_lib.opt_state_shardings(optimizer, state.opt_state, trainable, mesh),
        ema=ema,
    )


def device_copy(tree: Any) -> Any:
    """`tree` itself, or a device copy of it where it lives in host memory (an offloaded
    EMA or reference): what a rollout or evaluation samples with."""
    if tree is None or not offload.on_host(jax.tree.map(lambda a: a.sharding, tree)):
        return tree
    return offload.to_device(tree, jax.tree.map(lambda a: a.sharding, tree))


# --------------------------------------------------------------------------- jitted step


def _gather(samples: dict, rows: dict, idx: jax.Array, noise_key: jax.Array, record: str) -> dict:
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


def _make_train_step(
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
        batch = _gather(samples, rows, idx, noise_key, record)
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


def _make_ema_step(ema_shardings: Any) -> Callable | None:
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


# --------------------------------------------------------------------------- one epoch


def _variables(run: Run, weights: Any) -> Any:
    """Rollout-time model variables for trainable `weights` (LoRA or full)."""
    if run.lora:
        return {"params": run.base["params"], "lora": weights, "lora_scale": run.base["lora_scale"]}
    return {"params": weights}


def _sample(
    run: Run,
    weights: Any,
    cond: Any,
    noise: jax.Array,
    sigmas: np.ndarray,
    noise_levels: np.ndarray,
    key: jax.Array,
    record: np.ndarray | None,
    on_chunk: Callable[[jax.Array], None] | None = None,
) -> tuple[jax.Array, Any]:
    """Rollout in chunks of `sampling.batch_size`; trajectories concatenated on the batch axis.

    A chunk holds `sampling.batch_size` rows of every process (`ffjax.parallel.rows`).
    `on_chunk(final)` is called with each chunk's final latents right after the chunk
    is dispatched (JAX dispatch is asynchronous: the device is still running it).
    """
    c = run.config.sampling
    blocks = rows_lib.row_blocks(run.mesh, noise.shape[0])
    chunk = c.batch_size or blocks.size
    finals, trajs = [], []
    bar = _stage_bar(run, -(-blocks.size // chunk), "rollout", "chunk")
    for start in range(0, blocks.size, chunk):
        chunk_cond, chunk_noise = rows_lib.chunk((cond, noise), start, chunk, blocks, run.mesh)
        with jax.set_mesh(run.mesh):  # the models' activation constraints (axes.constrain)
            final, traj = rollout_lib.rollout(
                run.adapter.velocity,
                _variables(run, weights),
                chunk_cond,
                chunk_noise,
                sigmas,
                noise_levels,
                jax.random.fold_in(key, start),
                record,
                dynamics=c.dynamics,
                storage_dtype=jnp.dtype(c.storage_dtype),
                prepare_fn=getattr(run.adapter, "prepare_cond", None),
            )
        if hasattr(run.adapter, "finish_latents"):  # e.g. TI2V pins frame 0 to the image
            final = run.adapter.finish_latents(final, chunk_cond)
        finals.append(final)
        trajs.append(traj)
        if on_chunk is not None:
            on_chunk(final)
        _advance(bar, final)
    bar.close()
    final = rows_lib.unchunk(finals, blocks)
    if record is None:
        return final, None
    if len(trajs) == 1:
        return final, trajs[0]
    cat = lambda name: rows_lib.unchunk([getattr(t, name) for t in trajs], blocks, axis=1)
    traj = dataclasses.replace(
        trajs[0], x_t=cat("x_t"), x_next=cat("x_next"), log_prob=cat("log_prob")
    )  # sigma, sigma_next, step are the same for every chunk
    return final, traj


def _stage_bar(run: Run, total: int, desc: str, unit: str):
    """A progress bar with ETA for one stage of an epoch (`logging.step_progress`)."""
    return tqdm(total=total, desc=desc, unit=unit, leave=False,
                disable=not run.config.logging.step_progress)  # fmt: skip


def _advance(bar, result: Any) -> None:
    """Counts one unit of `bar` once `result` is computed. Waiting makes the bar and its
    ETA true (dispatch is asynchronous) at the cost of the overlap between units, so it
    only waits when the bar is shown."""
    if not bar.disable:
        jax.block_until_ready(result)
        bar.update(1)


def _decode(run: Run, latents: jax.Array) -> np.ndarray:
    """uint8 images of this process's rows of `latents`, decoded in chunks of
    `sampling.batch_size` (as the rollout runs): one VAE call over a whole FLUX.1 epoch
    would need hundreds of GiB."""
    m = run.config.model
    blocks = rows_lib.row_blocks(run.mesh, latents.shape[0])
    chunk = run.config.sampling.batch_size or blocks.size
    parts = []
    for i in range(0, blocks.size, chunk):
        x = rows_lib.chunk(latents, i, chunk, blocks, run.mesh)
        images = run.decode(run.weights["vae"], x, m.height, m.width)
        parts.append(rows_lib.local_rows(images, blocks, run.mesh))
    return np.concatenate(parts)


def _sample_and_score(
    run: Run, weights, cond, noise, sigmas, noise_levels, key, record, samples_of
) -> tuple[jax.Array, Any, np.ndarray, dict[str, np.ndarray], dict[str, float]]:
    """`_sample` + `_decode` + `_score` with the rewards of chunk i scored in a thread
    pool (`ffjax.rewards.async_pool`) while chunk i+1 is rolled out (train.async_rewards).

    Chunk i's decode is dispatched right after its rollout; its images are fetched to
    the host (and handed to the pool) after chunk i+1's rollout has been dispatched,
    so the device always has the next chunk queued. Same chunks, keys and decode calls
    as the serial path: the same images and scores. samples_of(images, start) ->
    Samples of the chunk starting at `start`. Returns (final, traj, images, scores,
    {"rollout_s", "reward_s", "reward_busy_s"}).
    """
    from ffjax.rewards.async_pool import AsyncScorer

    m = run.config.model
    blocks = rows_lib.row_blocks(run.mesh, noise.shape[0])
    t0 = time.perf_counter()
    parts: list[np.ndarray] = []
    pending: list[jax.Array] = []
    # With several processes a failure waits for `finish`: the other processes are
    # rolling out the next chunks, whose collectives need this one too.
    stop_early = jax.process_count() == 1
    with AsyncScorer(run.rewards, run.config.train.reward_workers, _score_one,
                     stop_early=stop_early) as scorer:  # fmt: skip

        def hand_over() -> None:
            # Waits for this chunk's decode only; this process's rows of it.
            images = rows_lib.local_rows(pending.pop(0), blocks, run.mesh)
            scorer.submit(samples_of(images, sum(len(p) for p in parts)))
            parts.append(images)

        def on_chunk(final: jax.Array) -> None:
            pending.append(run.decode(run.weights["vae"], final, m.height, m.width))
            if len(pending) > 1:
                hand_over()

        final, traj = _sample(run, weights, cond, noise, sigmas, noise_levels, key, record,
                              on_chunk)  # fmt: skip
        while pending:
            hand_over()
        images = np.concatenate(parts)
        t1 = time.perf_counter()
        scores = scorer.finish(samples_of(images, None))
        times = {"rollout_s": t1 - t0, "reward_s": time.perf_counter() - t1}
        times["reward_busy_s"] = scorer.busy_s
    return final, traj, images, scores, times


def on_every_process(what: str, fn: Callable[[], Any]) -> Any:
    """fn(); if it raises on any process, every process raises (one exchange of error
    texts after it: `rows.process_messages`), instead of the others waiting in the next
    collective until jax.distributed's heartbeat timeout kills them. `fn` must not
    itself run collectives before it can fail (they would wait for the failed process).

    The failing process re-raises its own exception; the others raise TrainingError
    naming the process and its error. One process: just fn().
    """
    if jax.process_count() == 1:
        return fn()
    error, result = None, None
    try:
        result = fn()
    except Exception as e:  # shared below, then re-raised
        error = e
    messages = rows_lib.process_messages(
        "" if error is None else f"{type(error).__name__}: {error}"
    )
    if error is not None:
        raise error
    failed = [(i, m) for i, m in enumerate(messages) if m]
    if failed:
        i, m = failed[0]
        raise TrainingError(
            f"{what} failed on process {i} ({m}); stopping every process. Finished epochs,"
            " metrics and checkpoints are kept."
        )
    return result


def _score_one(alias: str, reward: Any, samples: Samples) -> np.ndarray:
    """float64[B] scores of one reward; RewardError / a wrong shape -> TrainingError."""
    try:
        scores = call_reward(reward, samples)  # videos: per frame or per clip, as declared
    except RewardError as e:  # e.g. the reward server died: stop, keep what is done
        raise TrainingError(
            f"reward {alias!r}: {e}; stopping. Finished epochs, metrics and checkpoints are kept."
        ) from None
    if scores.shape != (len(samples),):
        raise TrainingError(
            f"reward {alias!r} returned shape {scores.shape} for {len(samples)} samples"
        )
    return scores


def _score(
    rewards: dict[str, tuple[Any, float]], samples: Samples, progress: bool = False
) -> dict[str, np.ndarray]:
    """{alias: float64[B]} of every reward, one after another (a bar per reward with
    `progress`: reward models can take as long as the rollout)."""
    bar = tqdm(rewards.items(), desc="rewards", unit="reward", leave=False, disable=not progress)
    return {alias: _score_one(alias, reward, samples) for alias, (reward, _) in bar}


def _make_rows(
    run: Run, traj: Any, advantages: np.ndarray, noise_levels: np.ndarray, rng, sigmas
) -> dict[str, jax.Array]:
    """All training rows of the epoch (see the module docstring), on device."""
    n = advantages.shape[0]
    adv = jnp.asarray(advantages, jnp.float32)
    if run.spec.record == "sde_steps":
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
    a = run.config.algorithm
    t = run.train_timesteps
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


def _row_order(rng: np.random.Generator, valid_rows: np.ndarray, step_rows: int) -> np.ndarray:
    """A permutation of the valid rows, filled up to a multiple of `step_rows`."""
    order = rng.permutation(valid_rows)
    short = -len(order) % step_rows
    if short:
        order = np.concatenate([order, rng.choice(valid_rows, short, replace=True)])
    return order.astype(np.int32)


def _micro_batches(
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


def _summarise(steps: list[dict[str, Any]]) -> dict[str, float]:
    """Means over micro-steps; min / max for ratio_min / ratio_max."""
    out = {}
    for k in steps[0]:
        vals = np.asarray([float(s[k]) for s in steps], np.float64)
        out[k] = (
            vals.min() if k.endswith("_min") else vals.max() if k.endswith("_max") else vals.mean()
        )
    return out


@functools.partial(jax.jit, static_argnums=(0, 2, 3, 4, 5))
def _init_noise(adapter, key: jax.Array, n: int, height: int, width: int, mesh) -> jax.Array:
    """`adapter.init_noise` with rows over (data, fsdp): each device draws only its rows,
    the values of one global draw (jax_threefry_partitionable, the default)."""
    noise = adapter.init_noise(key, n, height, width)
    return jax.lax.with_sharding_constraint(noise, sharding_lib.batch_shardings(noise, mesh))


def run_epoch(run: Run, state: TrainState) -> tuple[TrainState, dict[str, Any], np.ndarray]:
    """One rollout + optimisation epoch; returns (state, metrics, this process's epoch
    images)."""
    c = run.config
    m, t = c.model, c.train
    epoch = int(state.epoch)
    key = jax.random.fold_in(jax.random.key(c.seed), epoch)
    t0 = time.perf_counter()

    prompt_idx, group_ids = run.sampler.samples(epoch)
    n = len(prompt_idx)
    # This process's rows of the epoch, whole groups (setup checks): it encodes, rolls
    # out, decodes and scores only those; the scores are then gathered.
    blocks = rows_lib.row_blocks(run.mesh, n)
    mine = blocks.local
    prompts = [run.prompts.prompts[i] for i in prompt_idx[mine]]
    metadata = [run.prompts.metadata[i] for i in prompt_idx[mine]]
    k = c.data.group_size
    unique = [prompts[i] for i in range(0, len(prompts), k)]
    cond = encode_prompts(run.adapter, unique, m.height, m.width, metadata[::k])
    cond = jax.tree.map(lambda a: jnp.repeat(a, k, axis=0), cond)

    sigmas = run.adapter.sigmas(c.sampling.num_steps, m.height, m.width)
    window = rollout_lib.sde_window(
        c.seed, epoch, _sde_candidates(c), _sde_count(c),
        contiguous=c.sampling.sde_window == "contiguous",
    )  # fmt: skip
    noise_levels = rollout_lib.noise_levels_for(
        c.sampling.num_steps, window, c.sampling.noise_level
    )
    record = window if run.spec.record == "sde_steps" else None
    noise = _init_noise(run.adapter, jax.random.fold_in(key, 0), n, m.height, m.width, run.mesh)
    cond = rows_lib.put_rows(cond, run.mesh, blocks)  # rows over (data, fsdp)
    snapshot = None
    if run.spec.wants("needs_snapshot", c.algorithm):
        snapshot = jax.tree.map(jnp.copy, state.trainable)  # the state is donated below
    sample_weights = state.trainable
    if run.spec.wants("sample_with_ema", c.algorithm):
        sample_weights = device_copy(state.ema)
    sample_args = (sample_weights, cond, noise, sigmas, noise_levels,
                   jax.random.fold_in(key, 1), record)  # fmt: skip
    if t.async_rewards and 0 < c.sampling.batch_size < blocks.size:

        def samples_of(images: np.ndarray, start: int | None) -> Samples:
            sl = slice(None) if start is None else slice(start, start + len(images))
            return Samples.of(prompts[sl], images, metadata=metadata[sl],
                           group_ids=np.asarray(group_ids)[mine][sl])  # fmt: skip

        final, traj, images, raw, times = on_every_process(
            "rewards", lambda: _sample_and_score(run, *sample_args, samples_of)
        )
        t_rollout, t_reward, t_reward_busy = (
            times["rollout_s"], times["reward_s"], times["reward_busy_s"]
        )  # fmt: skip
    else:
        final, traj = _sample(run, *sample_args)
        images = _decode(run, final)
        t_rollout = time.perf_counter() - t0

        t1 = time.perf_counter()
        # group_ids: a groupwise reward scores within the sampler's groups (rewards/base.py).
        epoch_samples = Samples.of(prompts, images, metadata=metadata, group_ids=group_ids[mine])
        raw = on_every_process(
            "rewards", lambda: _score(run.rewards, epoch_samples, run.config.logging.step_progress)
        )
        t_reward = t_reward_busy = time.perf_counter() - t1
    # Every process gets every row's scores, so all compute the same advantages.
    raw = {a: rows_lib.gather_rows(v, blocks) for a, v in raw.items()}
    weights = {a: w for a, (_, w) in run.rewards.items()}
    combined = sum(weights[a] * raw[a] for a in raw)
    try:
        adv = compute_advantages(
            raw, weights, group_ids, group_size=k, method=t.advantage_method, std=t.advantage_std
        )
    except ValueError as e:
        bad = [a for a in raw if not np.isfinite(raw[a]).any()]
        raise TrainingError(
            f"epoch {epoch}: {e} (rewards with no finite value: {bad or 'none'}); stopping."
            " Finished epochs, metrics and checkpoints are kept."
        ) from None

    t2 = time.perf_counter()
    rng = np.random.default_rng([c.seed, epoch, 7])
    rows = _make_rows(run, traj, np.nan_to_num(adv.values), noise_levels, rng, sigmas)
    valid_rows = np.nonzero(np.asarray(adv.valid)[np.asarray(rows["sample"])])[0]
    samples = {"cond": cond, "x0": final}
    frozen = Frozen(base=run.base, ref=run.ref, ema=None, snapshot=snapshot)
    step_rows = t.micro_batch_size * t.grad_accum_steps
    noise_key = jax.random.fold_in(key, 2)
    step_metrics = []
    per_inner = -(-len(valid_rows) // step_rows) * t.grad_accum_steps
    bar = _stage_bar(run, t.inner_epochs * per_inner, "train", "micro-batch")
    experts_of = getattr(run.adapter, "experts_of", None)  # two-expert models (WAN A14B)
    row_expert = None if experts_of is None else experts_of(np.asarray(rows["sigma"]))
    for inner in range(t.inner_epochs):
        order = _row_order(rng, valid_rows, step_rows)
        batches = _micro_batches(order, t.micro_batch_size, row_expert, rng)
        for j, (part, expert) in enumerate(batches):
            idx = jnp.asarray(part)
            step_key = jax.random.fold_in(jax.random.fold_in(key, 3 + inner), j)
            state, metrics = run.train_step(
                state, frozen, samples, rows, idx, noise_key, step_key, expert=expert
            )
            step_metrics.append(metrics)
            _advance(bar, metrics["loss"])
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
    if state.ema is not None:
        decay = ema_lib.ema_decay(c.ema, epoch)
        state = state.replace(ema=run.ema_step(state.ema, state.trainable, float(decay)))
    state = state.replace(epoch=state.epoch + 1)
    jax.block_until_ready(state.trainable)
    t_train = time.perf_counter() - t2

    valid = adv.valid
    summary = _summarise(step_metrics)
    out: dict[str, Any] = {
        "epoch": epoch,
        "reward_mean": float(np.mean(combined[valid])),
        "reward_std": float(np.std(combined[valid])),
    }
    for a in raw:
        out[f"reward/{a}"] = float(np.nanmean(raw[a])) if np.isfinite(raw[a]).any() else None
    out["num_dropped"] = int(adv.num_dropped)
    for key_name in REQUIRED_METRICS:
        out[key_name] = summary.pop(key_name, None)
    out["grad_norm"] = summary.pop("grad_norm")
    out["lr"] = float(run.lr_fn(int(state.step) // t.grad_accum_steps))
    out.update(summary)
    out["time/rollout_s"] = t_rollout
    out["time/reward_s"] = t_reward  # async_rewards: the wait after the last chunk
    out["time/reward_busy_s"] = t_reward_busy  # time spent scoring (summed over workers)
    out["time/train_s"] = t_train
    out["time/epoch_s"] = time.perf_counter() - t0
    out["samples_per_s"] = n / out["time/epoch_s"]
    return state, out, images


def evaluate(run: Run, state: TrainState) -> tuple[dict[str, float], np.ndarray, list[str]]:
    """ODE samples of the eval prompts with the EMA (or current) weights.

    Returns ({"eval/reward_mean": ..., "eval/reward/<alias>": ...}, uint8 images of the
    first EVAL_GRID_IMAGES samples, captions). Each process samples and scores its rows
    (`ffjax.parallel.rows`); scores and grid images are gathered.
    """
    c = run.config
    m = c.model
    prompts = run.eval_prompts.prompts
    blocks = rows_lib.row_blocks(run.mesh, len(prompts))
    mine = blocks.local
    metadata = run.eval_prompts.metadata[mine]
    cond = encode_prompts(run.adapter, prompts[mine], m.height, m.width, metadata)
    cond = rows_lib.put_rows(cond, run.mesh, blocks)
    key = jax.random.key(c.seed + EVAL_SEED_OFFSET)
    noise = _init_noise(run.adapter, key, len(prompts), m.height, m.width, run.mesh)
    sigmas = run.adapter.sigmas(c.sampling.eval_num_steps, m.height, m.width)
    levels = np.zeros(c.sampling.eval_num_steps, np.float32)
    weights = device_copy(state.ema) if state.ema is not None else state.trainable
    final, _ = _sample(run, weights, cond, noise, sigmas, levels, key, None)
    images = _decode(run, final)
    raw = on_every_process(
        "eval rewards",
        lambda: _score(run.eval_rewards, Samples.of(prompts[mine], images, metadata=metadata)),
    )
    raw = {a: rows_lib.gather_rows(v, blocks) for a, v in raw.items()}
    images = rows_lib.gather_rows(images, blocks, EVAL_GRID_IMAGES)
    w = {a: wt for a, (_, wt) in run.eval_rewards.items()}
    combined = sum(w[a] * raw[a] for a in raw)
    out = {"eval/reward_mean": float(np.nanmean(combined))}
    out.update({f"eval/reward/{a}": float(np.nanmean(v)) for a, v in raw.items()})
    captions = [f"{combined[i]:.2f} {p}" for i, p in enumerate(prompts)]
    return out, images, captions


# --------------------------------------------------------------------------- the loop


# Keys that may change when a run is resumed (length, logging and checkpoint cadence).
RESUMABLE_CHANGES = ("train.num_epochs", "train.eval_every", "checkpoint.", "logging.")


def params_digest(tree: Any) -> str:
    """sha256 (hex, 16 chars) over the bytes of every leaf, in tree order: equal weights,
    equal digest — the resume-equality check of metrics.jsonl."""
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(tree):
        if isinstance(leaf, jax.Array) and not (
            leaf.is_fully_addressable or leaf.is_fully_replicated
        ):  # sharded over processes (e.g. fsdp): a collective, as every process digests
            leaf = multihost_utils.process_allgather(leaf, tiled=True)
        a = np.ascontiguousarray(np.asarray(jax.device_get(leaf)))
        h.update(str((a.dtype, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def _check_resumable(config_file: str, text: str) -> None:
    """ConfigError naming the keys whose values differ from the checkpointed run's."""
    with open(config_file) as f:
        old = dict(line.split(" = ", 1) for line in f.read().splitlines() if " = " in line)
    new = dict(line.split(" = ", 1) for line in text.splitlines() if " = " in line)
    changed = sorted(
        k
        for k in set(old) | set(new)
        if old.get(k) != new.get(k) and not k.startswith(RESUMABLE_CHANGES)
    )
    if changed:
        detail = ", ".join(f"{k}: {old.get(k)} -> {new.get(k)}" for k in changed[:8])
        raise configs.ConfigError(
            f"the checkpoints in {os.path.dirname(config_file)} come from a run with another"
            f" config ({detail}); use a new --workdir or the same config"
        )


def _drop_rows_after(path: str, epoch: int) -> None:
    """Keeps metrics.jsonl rows of epochs before `epoch` (they will be run again)."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        rows = [line for line in f if line.strip()]
    keep = [line for line in rows if json.loads(line).get("epoch", -1) < epoch]
    with open(path + ".tmp", "w") as f:
        f.writelines(keep)
    os.replace(path + ".tmp", path)


def train(
    config: configs.ConfigDict,
    workdir: str | os.PathLike,
    *,
    progress: bool = True,
    resume: bool = True,
):
    """Runs epochs until `config.train.num_epochs`; writes everything under `workdir`.

    Outputs: metrics.jsonl (one row per epoch; `params_digest` on checkpoint epochs),
    tb/ (TensorBoard), samples/ (eval grids, epoch 0 = before training), checkpoints/
    (Orbax, every `checkpoint.every_epochs` and at the end). With `resume` and a
    checkpoint in `workdir`, the run continues from the latest one (same config
    required, except the keys in RESUMABLE_CHANGES) and ends with the parameters of an
    uninterrupted run. Returns the metric rows of the epochs run by this call.
    """
    maybe_initialize_distributed()  # a no-op unless this is one process of a multi-host job
    workdir = os.fspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    run = setup(config)
    c = run.config
    ckpt = Checkpointer(workdir, c.checkpoint.every_epochs, c.checkpoint.keep)
    config_file = os.path.join(ckpt.directory, "config.txt")
    text = configs.to_text(c)
    state = run.initial
    latest = ckpt.latest() if resume else None
    if latest is not None:
        if os.path.exists(config_file):
            _check_resumable(config_file, text)
        state = ckpt.restore(latest, run.initial)
        if jax.process_index() == 0:  # the only writer of metrics.jsonl
            _drop_rows_after(os.path.join(workdir, "metrics.jsonl"), latest)
        logging.info("resumed from %s/%d", ckpt.directory, latest)
    elif jax.process_index() == 0:
        with open(config_file, "w") as f:
            f.write(text + "\n")
    wandb = None
    if c.logging.wandb_project:
        wandb = dict(project=c.logging.wandb_project, mode=c.logging.wandb_mode,
                     name=c.logging.wandb_name or None, config=c.to_dict())  # fmt: skip
    writer = MetricsWriter(workdir, tensorboard=c.logging.tensorboard, wandb=wandb)
    history: list[dict[str, Any]] = []

    def do_eval(epoch: int) -> dict[str, float]:
        metrics, images, captions = evaluate(run, state)
        n = min(len(images), EVAL_GRID_IMAGES)
        grid = image_grid(images[:n], captions[:n], columns=8, scale=max(1, 128 // c.model.width))
        save_grid(os.path.join(workdir, "samples", f"eval_epoch_{epoch:04d}.png"), grid)
        writer.image("eval/samples", epoch, grid)
        return metrics

    stop = _StopSignals()
    try:
        stop.__enter__()
        start = int(state.epoch)
        if c.train.eval_every and start == 0:
            before = do_eval(0)
            logging.info("before training: %s", before)
            writer.write(0, {"epoch": -1, **before})
        bar = tqdm(
            range(start, c.train.num_epochs),
            desc="epochs",
            disable=not progress,
            unit="epoch",
            initial=start,
            total=c.train.num_epochs,
        )
        for epoch in bar:
            state, metrics, images = run_epoch(run, state)
            done = epoch + 1
            if c.train.eval_every and (
                done % c.train.eval_every == 0 or done == c.train.num_epochs
            ):
                metrics.update(do_eval(done))
            if c.logging.image_grid_every and done % c.logging.image_grid_every == 0:
                k = c.data.group_size
                blocks = rows_lib.row_blocks(run.mesh, run.sampler.prompts_per_epoch * k)
                shown = rows_lib.gather_rows(images, blocks, 4 * k)  # the first 4 groups
                grid = image_grid(shown, columns=k)
                save_grid(os.path.join(workdir, "samples", f"train_epoch_{done:04d}.png"), grid)
            # Every process stops after the same epoch, whichever got the signal.
            stopping = rows_lib.any_process(stop.received is not None)
            last = done == c.train.num_epochs or stopping
            if ckpt.maybe_save(done, state, force=last):
                metrics["params_digest"] = params_digest(state.trainable)
            writer.write(done, metrics)
            history.append(metrics)
            bar.set_postfix(reward=f"{metrics['reward_mean']:.4f}", loss=f"{metrics['loss']:.4g}")
            if stopping and done < c.train.num_epochs:
                raise Interrupted(
                    f"stopped by signal {stop.received or 'on another process'} after epoch"
                    f" {done}; checkpoint"
                    f" {ckpt.directory}/{done} written; run the same command to resume"
                )
    finally:
        stop.__exit__()
        writer.close()
        ckpt.close()
    return history


def summary_table(history: list[dict[str, Any]], eval_before: float | None = None) -> str:
    """A fixed-width table of reward (and eval reward) per epoch; with `eval_before`
    (the evaluation before training) a first row "before" and a closing line with the
    change of the evaluation reward."""
    lines = [f"{'epoch':>6}  {'reward_mean':>11}  {'reward_std':>10}  {'eval_reward':>11}"]
    if eval_before is not None:
        lines.append(f"{'before':>6}  {'':>11}  {'':>10}  {eval_before:>11.4f}")
    for row in history:
        ev = row.get("eval/reward_mean")
        lines.append(
            f"{row['epoch']:>6}  {row['reward_mean']:>11.4f}  {row['reward_std']:>10.4f}  "
            + (f"{ev:>11.4f}" if ev is not None else f"{'':>11}")
        )
    last = next((r["eval/reward_mean"] for r in reversed(history) if "eval/reward_mean" in r), None)
    if eval_before is not None and last is not None:
        lines.append(
            f"eval reward: {eval_before:.4f} before training -> {last:.4f} after"
            f" ({last - eval_before:+.4f})"
        )
    return "\n".join(lines)
