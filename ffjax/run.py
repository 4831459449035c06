"""The run builder: one function makes a run from a config, for `train`, `--dry_run`,
`ffjax.sample` and evaluation alike.

    build(config)                   concrete: weights loaded, placed, TrainState made
    build(config, abstract=True)    shapes and shardings only (jax.ShapeDtypeStruct),
                                    from the model's config.json files (`--dry_run`)
    build(config, training=False)   inference only: no optimizer, no training prompts,
                                    no rewards unless asked (`ffjax.sample`)

The order is big_vision's / maxtext's: `jax.eval_shape(init)` -> shardings of its
logical axes (`ffjax.parallel.sharding`) -> `jax.jit(init, out_shardings=...)` (the
abstract run stops before the last step). The run holds the jitted functions every
caller uses, made once here: the rollout (`stages.generate.Rollout`), the decode, the
train step and the EMA step (`stages.optimize`); the dry run lowers these very objects.

Model adapters are used through `ffjax.models.adapter.ModelAdapter` (the required
members) and `AdapterBase` (the optional capabilities with their defaults), so the
builder and the stages call every member without probing.

Sharding: the mesh of `config.mesh`; weights, the TrainState (trainable, optimizer
state, EMA) and the frozen variables on the shardings of their logical axes; the train
step's output state has the shardings of its (donated) input state.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from ffjax import configs, optim, registry
from ffjax.algorithms import common
from ffjax.algorithms.spec import AlgorithmSpec
from ffjax.data.prompts import GroupSampler, PromptSet, load_prompts
from ffjax.flow import rollout as rollout_lib
from ffjax.flow import unipc as unipc_lib
from ffjax.models import adapter as adapter_lib
from ffjax.parallel import offload
from ffjax.parallel import rows as rows_lib
from ffjax.parallel import sharding as sharding_lib
from ffjax.parallel.mesh import make_mesh
from ffjax.stages import generate, on_every_process, optimize, score
from ffjax.state import TrainState, init_state


@dataclasses.dataclass
class Run:
    """What stays fixed during a run, built once by `build`.

    In an abstract run the arrays (weights, base, ref, initial) are ShapeDtypeStructs
    carrying their shardings; in an inference-only run the training fields are None
    (prompts, sampler, optimizer, lr_fn, rows_per_epoch, train_step, ema_step) or empty
    (rewards; eval_rewards unless asked) and `initial` has no optimizer state or EMA.
    """

    config: configs.ConfigDict
    spec: AlgorithmSpec
    adapter: Any
    mesh: jax.sharding.Mesh
    weights: dict[str, Any]
    base: Any  # frozen variables passed to the policy
    ref: Any  # reference weights (full fine-tune with KL) or None
    lora: bool
    gen: generate.Generator  # the rollout and decode, for the generate stage
    # evaluation's (`generate.eval_generator`: the eval guidance / size / frames; `gen`
    # itself when none is set)
    eval_gen: generate.Generator
    initial: TrainState
    state_shardings: TrainState
    abstract: bool
    training: bool
    prompts: PromptSet | None
    eval_prompts: PromptSet | None
    sampler: GroupSampler | None
    rewards: score.Rewards
    eval_rewards: score.Rewards
    optimizer: optax.GradientTransformation | None
    lr_fn: Callable[[int], Any] | None
    rows_per_epoch: int | None
    train_timesteps: int
    train_step: Callable | None
    ema_step: Callable | None  # (ema, trainable, decay) -> ema; None without EMA
    text: dict[str, Any] | None = None  # abstract: text encoder weights, if reported

    @property
    def rollout(self) -> generate.Rollout:
        return self.gen.rollout

    @property
    def decode(self) -> Callable:
        return self.gen.decode


# --------------------------------------------------------------------------- checks


def train_timesteps(config) -> int:
    """Training sigmas per sample of a "final" algorithm (`common.num_train_timesteps`)."""
    return common.num_train_timesteps(config.algorithm, config.sampling.num_steps)


def sde_candidates(config) -> list[int]:
    """Steps an SDE window may be drawn from."""
    cand = list(config.sampling.sde_candidates)
    return cand or list(range(max(config.sampling.num_steps - 1, 1)))


def sde_window(config, epoch: int) -> np.ndarray:
    """The epoch's SDE steps (`flow.rollout.sde_window` with `sampling.sde_window`)."""
    s = config.sampling
    progressive = None
    if s.sde_window == "progressive":
        progressive = (s.window_interval, s.window_stride, s.window_roll_back)
    return rollout_lib.sde_window(
        config.seed, epoch, sde_candidates(config), sde_count(config),
        contiguous=s.sde_window == "contiguous", progressive=progressive,
    )  # fmt: skip


def sde_count(config) -> int:
    """SDE steps per rollout (the window's length)."""
    return config.sampling.sde_num_steps or len(sde_candidates(config))


def check_run_shapes(config, spec: AlgorithmSpec, process_count: int) -> int:
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
        per_sample, what = sde_count(config), "SDE steps per sample (sampling.sde_num_steps)"
    else:
        per_sample, what = train_timesteps(config), "training sigmas per sample"
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


def check_row_blocks(config, mesh) -> None:
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


def check_algorithm_needs(config, spec: AlgorithmSpec) -> None:
    """ConfigError when the algorithm's keys ask for something this config turns off."""
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
    if config.train.offload_ref and not has_ref_copy(config):
        raise configs.ConfigError(
            "config.train.offload_ref=True keeps the KL reference copy in host memory, but"
            " this run has none (only a full fine-tune, train.lora_rank=0, with"
            " algorithm.kl_beta > 0 keeps one; LoRA's reference is the frozen base); set"
            " train.offload_ref=False"
        )
    if spec.record == "sde_steps" and config.sampling.noise_level == 0:
        raise configs.ConfigError(
            f"{spec.name} trains on stochastic steps; config.sampling.noise_level=0 makes"
            " every step deterministic (set it > 0)"
        )


def has_ref_copy(config) -> bool:
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
    strip = None if cfg or not adapter.supports_cfg else adapter.conditional_only

    def policy(weights, base, x, sigma, cond):
        if strip is not None:
            cond = strip(cond)
        return adapter.velocity(generate.variables(lora, base, weights), x, sigma, cond)

    return policy


def state_shardings(
    state: TrainState, trainable_specs, optimizer, mesh, ema_offload: bool = False
) -> TrainState:
    """Shardings of a TrainState: trainable and EMA by their logical specs (the EMA in
    pinned host memory with `ema_offload`), optimizer state like the trainable tree it
    mirrors (None without an optimizer), counters replicated."""
    rep = sharding_lib.replicated(mesh)
    trainable = sharding_lib.logical_shardings(state.trainable, trainable_specs, mesh)
    ema = None
    if state.ema is not None:
        ema = offload.host_shardings(trainable) if ema_offload else trainable
    opt = None
    if optimizer is not None:
        opt = sharding_lib.opt_state_shardings(optimizer, state.opt_state, trainable, mesh)
    return TrainState(step=rep, epoch=rep, trainable=trainable, opt_state=opt, ema=ema)


def device_copy(tree: Any) -> Any:
    """`tree` itself, or a device copy of it where it lives in host memory (an offloaded
    EMA or reference): what a rollout or evaluation samples with."""
    if tree is None or not offload.on_host(jax.tree.map(lambda a: a.sharding, tree)):
        return tree
    return offload.to_device(tree, jax.tree.map(lambda a: a.sharding, tree))


def with_shardings(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs of `tree`'s leaves carrying `shardings` (same structure)."""
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree, shardings
    )


# --------------------------------------------------------------------------- inputs


def _read_inputs(config, training: bool, rewards: bool) -> tuple:
    """(train prompts, eval prompts, rewards, eval rewards, adapter, weights), read on
    this process alone; an inference-only run reads the model (and the eval rewards if
    asked) only."""
    prompts = eval_prompts = None
    train_rewards, eval_rewards = {}, {}
    if training:
        prompts = load_prompts(config.data.path, "train")
        try:
            eval_prompts = load_prompts(config.data.path, "test")
        except FileNotFoundError:
            eval_prompts = prompts
        train_rewards = score.build_rewards(config.rewards)
    if training or rewards:
        eval_rewards = (
            score.build_rewards(config.eval_rewards) if config.eval_rewards
            else train_rewards or score.build_rewards(config.rewards)
        )  # fmt: skip
    adapter, weights = adapter_lib.adapter_class(config.model.name).load(config)
    return prompts, eval_prompts, train_rewards, eval_rewards, adapter, weights


def _abstract_model(config) -> tuple[Any, dict, dict | None]:
    """(adapter, abstract weights, abstract text encoder weights or None) from the
    model's config.json files (the adapter's `abstract_load`)."""
    adapter_cls = adapter_lib.adapter_class(config.model.name)
    try:  # the base's abstract_load raises the ConfigError "cannot be dry-run"
        adapter, weights = adapter_cls.abstract_load(config)
        text = adapter_cls.abstract_text_encoders(config)
    except configs.ConfigError:
        raise
    except (ValueError, OSError) as e:  # a missing or wrong config.json
        raise configs.ConfigError(f"config.model.path={config.model.path}: {e}") from None
    return adapter, weights, text


# --------------------------------------------------------------------------- the builder


def build(
    config: configs.ConfigDict,
    devices: Sequence[Any] | None = None,
    *,
    abstract: bool = False,
    training: bool = True,
    rewards: bool = False,
) -> Run:
    """The run of `config` on `devices` (default: all) laid out in `config.mesh`.

    `abstract`: from config.json files, nothing loaded or allocated; the same checks
    (ConfigErrors for batch sizes, mesh sizes, algorithm needs) as one process of the
    concrete run. `training=False`: inference only (sampling, evaluation): none of the
    epoch's checks (a run trained on N processes may be sampled on any number), no
    optimizer, training prompts or rewards; `rewards=True` builds the eval rewards.
    """
    spec = registry.ALGORITHMS.get(config.algorithm.name)
    rows = None
    if training:
        check_algorithm_needs(config, spec)
        rows = check_run_shapes(config, spec, 1 if abstract else jax.process_count())
        if not config.rewards:
            raise configs.ConfigError("config.rewards is empty; add at least one reward")

    text = None
    prompts = eval_prompts = sampler = None
    train_rewards, eval_rewards = {}, {}
    if abstract:
        adapter, weights, text = _abstract_model(config)
    else:
        # Prompts, rewards and weights are read by each process on its own (no
        # collectives): a file missing on one host stops every process here, none
        # waits for it later.
        prompts, eval_prompts, train_rewards, eval_rewards, adapter, weights = on_every_process(
            "setup", lambda: _read_inputs(config, training, rewards)
        )
    if training and not abstract:
        n_eval = config.train.eval_prompts or config.data.prompts_per_epoch
        # Each eval prompt is sampled `eval_repeats` times (fixed noise): a reward read
        # off one image per prompt is too noisy to show a change of a few hundredths.
        r = config.train.eval_repeats
        eval_prompts = PromptSet(eval_prompts.prompts[:n_eval] * r,
                                 eval_prompts.metadata[:n_eval] * r)  # fmt: skip
        sampler = GroupSampler(len(prompts.prompts), config.data.prompts_per_epoch,
                               config.data.group_size, config.seed,
                               shuffle=config.data.shuffle)  # fmt: skip
    if training and config.algorithm.get("cfg_in_train", False):
        if not adapter.supports_cfg:
            raise configs.ConfigError(
                f"config.algorithm.cfg_in_train=True, but model {config.model.name!r} has no"
                " classifier-free guidance (FLUX.1 embeds guidance instead); set it to False"
            )
    mesh = make_mesh(config.mesh, devices)
    if training and not abstract:
        check_row_blocks(config, mesh)
    check_offload(config, mesh)
    place = with_shardings if abstract else jax.device_put
    if abstract:
        ts = type(adapter).text_encoder_specs(config) if text is not None else None
        if ts is not None:  # as place_encoders shards them
            local = rows_lib.local_mesh(mesh)
            text = {k: place(w, sharding_lib.logical_shardings(w, ts.get(k), local))
                    for k, w in text.items()}  # fmt: skip
    else:
        for reward, _ in [*train_rewards.values(), *eval_rewards.values()]:
            if hasattr(reward, "place"):  # reward models run on the mesh beside the generator,
                reward.place(rows_lib.local_mesh(mesh))  # this process's part: its rows
        # Text encoders sharded beside the generator, each process its prompts (no-op for
        # adapters that keep them replicated).
        adapter.place_encoders(rows_lib.local_mesh(mesh))
    specs = adapter.logical_specs()
    weights = {
        k: place(w, sharding_lib.logical_shardings(w, specs.get(k), mesh))
        for k, w in weights.items()
    }

    # eval_shape -> shardings -> jit(init, out_shardings): the TrainState (and LoRA's
    # scales) are made on their shardings, never whole on one device first.
    t = config.train
    lora = t.lora_rank > 0
    denoiser = weights[adapter.denoiser]
    trainable_specs = specs.get(adapter.denoiser)
    optimizer = lr_fn = None
    if training:
        steps_per_epoch = t.inner_epochs * rows // t.micro_batch_size
        total_steps = max(1, t.num_epochs * steps_per_epoch // t.grad_accum_steps)
        optimizer = optim.make_optimizer(t, total_steps)
        lr_fn = optim.learning_rate_fn(t, total_steps)
    keep_ema = training and config.ema.decay > 0
    targets = tuple(t.lora_targets) or tuple(adapter.lora_targets)

    def init(denoiser, key):
        scale = None
        if lora:
            from ffjax.models.lora import init_lora

            trainable, scale = init_lora(denoiser, rank=t.lora_rank, alpha=t.lora_alpha,
                                         targets=targets, init=t.lora_init, key=key)  # fmt: skip
        else:
            trainable = denoiser
        if optimizer is None:  # inference: the weights alone
            trainable = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), trainable)
            zero = jnp.zeros((), jnp.int32)
            return TrainState(step=zero, epoch=zero, trainable=trainable, opt_state=None,
                              ema=None), scale  # fmt: skip
        return init_state(trainable, optimizer, ema=keep_ema), scale

    key = jax.random.fold_in(jax.random.key(config.seed), 1)
    shapes, scale_shapes = jax.eval_shape(init, denoiser, key)
    scale_specs = None
    if lora and trainable_specs is not None:
        from ffjax.models.lora import lora_partition_specs

        trainable_specs, scale_specs = lora_partition_specs(trainable_specs, shapes.trainable)
    shardings = state_shardings(shapes, trainable_specs, optimizer, mesh,
                                ema_offload=config.ema.offload)  # fmt: skip
    scale_shardings = None
    if lora:
        scale_shardings = sharding_lib.logical_shardings(scale_shapes, scale_specs, mesh)
    if abstract:
        initial = place(shapes, shardings)
        lora_scale = None if scale_shapes is None else place(scale_shapes, scale_shardings)
    else:
        initial, lora_scale = jax.jit(init, out_shardings=(shardings, scale_shardings))(
            denoiser, key
        )
    ref = None
    if lora:
        base = {"params": denoiser, "lora_scale": lora_scale}
    else:
        base = {}
        if training and has_ref_copy(config):
            where = ref_shardings(config, jax.tree.map(lambda a: a.sharding, denoiser))
            if abstract:
                ref = place(denoiser, where)
            elif config.train.offload_ref:  # copied straight to host memory, never twice
                ref = jax.device_put(denoiser, where)
            else:
                ref = jax.tree.map(jnp.copy, denoiser)
        # The float32 trainable copy replaces the loaded weights: keeping both would hold
        # the denoiser twice (FLUX.1-dev: 24 GB in bfloat16 beside 48 GB in float32).
        weights = {k: w for k, w in weights.items() if k != adapter.denoiser}
        del denoiser
    if not abstract:
        specs_used = sorted({str(sh.spec) for sh in jax.tree.leaves(shardings.trainable)})
        logging.info("mesh %s; trainable weights sharded as %s", dict(mesh.shape), specs_used)

    s, m = config.sampling, config.model
    rollout = generate.Rollout(
        adapter.velocity, mesh, s.dynamics, jnp.dtype(s.storage_dtype),
        adapter.prepare_cond,  # None unless the family precomputes per rollout
    )  # fmt: skip
    gen = generate.Generator(
        adapter=adapter, mesh=mesh, rollout=rollout,
        decode=jax.jit(adapter.decode, static_argnums=(2, 3)), vae=weights.get("vae"),
        base=base, lora=lora, height=m.height, width=m.width, batch_size=s.batch_size,
        progress=config.logging.step_progress,
        unipc=unipc_lib.scheduler_options(m.path if s.eval_solver == "unipc" else None),
    )  # fmt: skip
    train_step = ema_step = None
    if training:
        policy = make_policy(adapter, lora, cfg_in_train(config))
        loss_fn = spec.make_loss(config.algorithm, policy, dynamics=s.dynamics)
        train_step = optimize.make_train_step(
            loss_fn, optimizer, spec.record, mesh, shardings,
            ref_shardings=None if ref is None else jax.tree.map(lambda a: a.sharding, ref),
            with_expert=adapter.with_expert,
        )  # fmt: skip
        ema_step = optimize.make_ema_step(shardings.ema)
    return Run(
        config=config, spec=spec, adapter=adapter, mesh=mesh, weights=weights, base=base,
        ref=ref, lora=lora, gen=gen, eval_gen=generate.eval_generator(gen, config),
        initial=initial, state_shardings=shardings,
        abstract=abstract, training=training, prompts=prompts, eval_prompts=eval_prompts,
        sampler=sampler, rewards=train_rewards, eval_rewards=eval_rewards,
        optimizer=optimizer, lr_fn=lr_fn, rows_per_epoch=rows,
        train_timesteps=train_timesteps(config), train_step=train_step, ema_step=ema_step,
        text=text,
    )  # fmt: skip
