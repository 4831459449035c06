"""Generate: prompts -> encode -> noise -> chunked rollout (jit) -> decode (jit).

One path for training epochs, evaluation and `ffjax.sample`. Each process encodes,
rolls out and decodes only its rows (`ffjax.parallel.rows`): the prompts given here
are this process's, the noise is the global (row-sharded) array. A rollout call takes
`Generator.batch_size` rows of every process (0: all at once); chunk i's decode is
dispatched right after its rollout and its images are fetched to the host after chunk
i+1's rollout was dispatched, so the device always has the next chunk queued (and a
reward pool can score chunk i meanwhile: `ffjax.stages.score.generate_and_score`).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from ffjax.flow import rollout as rollout_lib
from ffjax.flow import unipc as unipc_lib
from ffjax.parallel import rows as rows_lib
from ffjax.parallel import sharding as sharding_lib


@dataclasses.dataclass(frozen=True)
class Rollout:
    """The jitted rollout (`flow.rollout`) with the run's static choices bound, called
    and lowered under `mesh` (the models' activation constraints read it). The trainer
    calls it and the dry run lowers it: one function object, one program."""

    velocity: Callable
    mesh: jax.sharding.Mesh
    dynamics: str
    storage_dtype: Any
    prepare_fn: Callable | None = None

    def _args(self, variables, cond, noise, sigmas, levels, key, record):
        sigmas = jnp.asarray(sigmas, jnp.float32)
        levels = jnp.asarray(levels, jnp.float32)
        if not isinstance(noise, jax.ShapeDtypeStruct):
            rollout_lib._check_rollout_args(noise, sigmas, levels, record)
        record = None if record is None else jnp.asarray(record, jnp.int32)
        return (self.velocity, variables, cond, noise, sigmas, levels, key, record)

    def _kwargs(self) -> dict:
        return dict(dynamics=self.dynamics, storage_dtype=jnp.dtype(self.storage_dtype),
                    prepare_fn=self.prepare_fn)  # fmt: skip

    def __call__(self, variables, cond, noise, sigmas, levels, key, record=None):
        """(final latents, Trajectory or None) of one rollout call (`flow.rollout`)."""
        with jax.set_mesh(self.mesh):
            args = self._args(variables, cond, noise, sigmas, levels, key, record)
            return rollout_lib._rollout_jit(*args, **self._kwargs())

    def eval_shape(self, variables, cond, noise, sigmas, levels, key, record=None):
        """`jax.eval_shape` of the call above: its outputs' shapes and dtypes."""
        with jax.set_mesh(self.mesh):
            _, *args = self._args(variables, cond, noise, sigmas, levels, key, record)
            kwargs = self._kwargs()
            return jax.eval_shape(
                lambda *a: rollout_lib._rollout_jit(self.velocity, *a, **kwargs), *args
            )

    def lower(self, variables, cond, noise, sigmas, levels, key, record=None):
        """`jax.jit(...).lower` of the call above (abstract arguments allowed)."""
        with jax.set_mesh(self.mesh):
            args = self._args(variables, cond, noise, sigmas, levels, key, record)
            return rollout_lib._rollout_jit.lower(*args, **self._kwargs())


@dataclasses.dataclass(frozen=True)
class Generator:
    """What generation needs, fixed for a run (built by `ffjax.run.build`)."""

    adapter: Any
    mesh: jax.sharding.Mesh
    rollout: Rollout
    decode: Callable  # jit(adapter.decode): (vae weights, latents, height, width) -> uint8
    vae: Any  # the VAE weights `decode` takes
    base: Any  # frozen variables beside the trained weights (LoRA: params, lora_scale)
    lora: bool
    height: int
    width: int
    batch_size: int  # rows of every process per rollout call; 0: all at once
    progress: bool = False  # a bar per stage (`logging.step_progress`)
    # (order, solver_type) of the UniPC solver ("unipc" solver): the pipeline folder's
    # scheduler's (`flow.unipc.scheduler_options`).
    unipc: tuple[int, str] = unipc_lib.DEFAULT_OPTIONS

    def variables(self, weights: Any) -> dict:
        """The model variables of trained `weights` (LoRA adapters or the full denoiser)."""
        return variables(self.lora, self.base, weights)


# Evaluation settings (Flow-Factory's eval.guidance_scale, eval.guidance_scale_2,
# eval.num_frames): config key -> the adapter constructor arguments it sets, by family.
EVAL_ADAPTER_KEYS = (
    ("sampling.eval_guidance_scale", ("guidance_scale", "true_cfg_scale")),
    ("model.eval_guidance_scale_2", ("guidance_scale_2",)),
    ("model.eval_num_frames", ("num_frames",)),
)


def eval_generator(gen: Generator, config: Any) -> Generator:
    """The Generator evaluation samples with: `gen` with the evaluation settings of
    `config` (a 0 leaves the training value): guidance scale(s) and frame count through
    the adapter's constructor (`AdapterBase.replace`), size `model.eval_height` /
    `eval_width`. `gen` itself when none is set. ConfigError (naming the key) for a
    setting the model does not have or a size it cannot take. As X-GenGroup/Flow-Factory
    6c7882b src/flow_factory/hparams/training_args/_base.py `EvaluationArguments`
    (resolution, height, width, num_frames, guidance_scale) and a0b2bc5."""
    from ffjax.configs import ConfigError

    m = config.model
    params = inspect.signature(type(gen.adapter).__init__).parameters
    changes = {}
    for key, names in EVAL_ADAPTER_KEYS:
        section, name = key.split(".")
        value = config[section].get(name, 0)
        if not value:
            continue
        arg = next((n for n in names if n in params), None)
        if arg is None:
            raise ConfigError(
                f"config.{key}={value!r}: model {m.name!r} has no {names[0]} setting; leave it 0"
            )
        changes[arg] = int(value) if arg == "num_frames" else float(value)
    height, width = m.get("eval_height", 0) or gen.height, m.get("eval_width", 0) or gen.width
    if not changes and (height, width) == (gen.height, gen.width):
        return gen
    try:
        adapter = gen.adapter.replace(**changes) if changes else gen.adapter
        # init_noise checks the size (abstractly: nothing is drawn)
        jax.eval_shape(lambda k: adapter.init_noise(k, 1, height, width), jax.random.key(0))
    except ValueError as e:  # e.g. a size the VAE / patching cannot take
        raise ConfigError(
            f"the evaluation settings (config.model.eval_height={height}, eval_width={width},"
            f" {changes or 'no adapter changes'}) do not fit model {m.name!r}: {e}"
        ) from None
    rollout = dataclasses.replace(gen.rollout, velocity=adapter.velocity,
                                  prepare_fn=adapter.prepare_cond)  # fmt: skip
    return dataclasses.replace(
        gen, adapter=adapter, rollout=rollout, height=height, width=width,
        decode=jax.jit(adapter.decode, static_argnums=(2, 3)),
    )  # fmt: skip


def variables(lora: bool, base: Any, weights: Any) -> dict:
    """Model variables for `weights`: LoRA {params, lora, lora_scale} (`weights` None:
    the frozen base alone) or full {params}."""
    if lora:
        out = {"params": base["params"]}
        if weights is not None:
            out["lora"] = weights
            out["lora_scale"] = base["lora_scale"]
        return out
    if weights is None:
        raise ValueError("full fine-tuning has no base-only policy; pass ref weights")
    return {"params": weights}


def encode_prompts(adapter, prompts: list[str], height: int, width: int, metadata: list) -> Any:
    """`adapter.encode_prompts`, given the prompts' metadata too when the adapter declares
    `wants_metadata` (wan2-i2v reads each prompt's conditioning image from it)."""
    if adapter.wants_metadata:
        return adapter.encode_prompts(prompts, height, width, metadata=metadata)
    return adapter.encode_prompts(prompts, height, width)


def encode(
    gen: Generator, prompts: list[str], metadata: list, blocks: rows_lib.RowBlocks,
    group_size: int = 1,
) -> Any:  # fmt: skip
    """Conditioning of this process's rows `prompts` (`blocks.local` of the global rows),
    placed as rows over (data, fsdp). With `group_size` k the prompts come in groups of k
    equal ones: each group's prompt is encoded once and repeated."""
    k = group_size
    cond = encode_prompts(gen.adapter, prompts[::k], gen.height, gen.width, metadata[::k])
    if k > 1:
        cond = jax.tree.map(lambda a: jnp.repeat(a, k, axis=0), cond)
    return rows_lib.put_rows(cond, gen.mesh, blocks)


@functools.partial(jax.jit, static_argnums=(0, 2, 3, 4, 5))
def init_noise(adapter, key: jax.Array, n: int, height: int, width: int, mesh) -> jax.Array:
    """`adapter.init_noise` with rows over (data, fsdp): each device draws only its rows,
    the values of one global draw (jax_threefry_partitionable, the default)."""
    noise = adapter.init_noise(key, n, height, width)
    return jax.lax.with_sharding_constraint(noise, sharding_lib.batch_shardings(noise, mesh))


def image_noise(adapter, seed: int, index, k, height: int, width: int) -> jax.Array:
    """Initial noise of images (index[j], k[j]), one key per image: an image depends on
    the seed, the weights and its own prompt only (`ffjax.sample`)."""
    root = jax.random.key(seed)

    def one(i, j):
        key = jax.random.fold_in(jax.random.fold_in(root, i), j)
        return adapter.init_noise(key, 1, height, width)[0]

    return jax.vmap(one)(jnp.asarray(index, jnp.uint32), jnp.asarray(k, jnp.uint32))


def ode_grid(adapter, solver: str, num_steps: int, height: int, width: int) -> tuple:
    """(sigmas, noise levels) of a deterministic sampling run (evaluation, `ffjax.sample`)
    with `solver` (`sampling.eval_solver`): "euler" steps the adapter's rollout grid with
    noise level 0; "unipc" (WAN) gives the UniPC solver's (sigmas, model sigmas) pair
    (`adapter.unipc_sigmas`) and no noise levels."""
    if solver == "unipc":
        return adapter.unipc_sigmas(num_steps, height, width), None
    return adapter.sigmas(num_steps, height, width), np.zeros(num_steps, np.float32)


def stage_bar(progress: bool, total: int, desc: str, unit: str):
    """A progress bar with ETA for one stage of an epoch (`logging.step_progress`)."""
    return tqdm(total=total, desc=desc, unit=unit, leave=False, disable=not progress)


def advance(bar, result: Any) -> None:
    """Counts one unit of `bar` once `result` is computed. Waiting makes the bar and its
    ETA true (dispatch is asynchronous) at the cost of the overlap between units, so it
    only waits when the bar is shown."""
    if not bar.disable:
        jax.block_until_ready(result)
        bar.update(1)


def rollout_and_decode(
    gen: Generator,
    weights: Any,
    cond: Any,
    noise: jax.Array,
    sigmas: np.ndarray,
    noise_levels: np.ndarray,
    key: jax.Array,
    record: np.ndarray | None = None,
    on_images: Callable[[np.ndarray, int], None] | None = None,
    solver: str = "euler",
) -> tuple[jax.Array, Any, np.ndarray]:
    """(final latents, trajectory or None, uint8 images of this process's rows).

    `solver` "unipc" (`ode_grid`): `sigmas` is the (solver sigmas, model sigmas) pair and
    each call is the deterministic UniPC multistep solve (`flow.unipc`; no trajectory)
    of order and solver type `gen.unipc`.

    Rollout in calls of `gen.batch_size` rows of every process, trajectories
    concatenated on the batch axis; each call's final latents are decoded in the same
    chunks (one VAE call over a whole FLUX.1 epoch would need hundreds of GiB).
    `on_images(images, start)` gets each chunk's images (this process's rows from
    `start`) once they are on the host.
    """
    blocks = rows_lib.row_blocks(gen.mesh, noise.shape[0])
    chunk = gen.batch_size or blocks.size
    model_vars = gen.variables(weights)
    finals, trajs, parts, pending = [], [], [], []

    def hand_over() -> None:
        # Waits for this chunk's decode only; this process's rows of it.
        images = rows_lib.local_rows(pending.pop(0), blocks, gen.mesh)
        if on_images is not None:
            on_images(images, sum(len(p) for p in parts))
        parts.append(images)

    bar = stage_bar(gen.progress, -(-blocks.size // chunk), "rollout", "chunk")
    for start in range(0, blocks.size, chunk):
        chunk_cond, chunk_noise = rows_lib.chunk((cond, noise), start, chunk, blocks, gen.mesh)
        if solver == "unipc":
            with jax.set_mesh(gen.mesh):  # the models' activation constraints read it
                final, traj = unipc_lib.unipc_sample(
                    gen.adapter.velocity, model_vars, chunk_cond, chunk_noise, sigmas[0],
                    model_sigmas=sigmas[1], order=gen.unipc[0], solver_type=gen.unipc[1],
                    prepare_fn=gen.adapter.prepare_cond,
                ), None  # fmt: skip
        else:
            final, traj = gen.rollout(model_vars, chunk_cond, chunk_noise, sigmas, noise_levels,
                                      jax.random.fold_in(key, start), record)  # fmt: skip
        final = gen.adapter.finish_latents(final, chunk_cond)  # e.g. TI2V pins frame 0
        finals.append(final)
        trajs.append(traj)
        pending.append(gen.decode(gen.vae, final, gen.height, gen.width))
        if len(pending) > 1:
            hand_over()
        advance(bar, final)
    bar.close()
    while pending:
        hand_over()
    images = np.concatenate(parts)
    final = rows_lib.unchunk(finals, blocks)
    if record is None:
        return final, None, images
    if len(trajs) == 1:
        return final, trajs[0], images
    cat = lambda name: rows_lib.unchunk([getattr(t, name) for t in trajs], blocks, axis=1)
    traj = dataclasses.replace(
        trajs[0], x_t=cat("x_t"), x_next=cat("x_next"), log_prob=cat("log_prob")
    )  # sigma, sigma_next, step are the same for every chunk
    return final, traj, images


@dataclasses.dataclass(frozen=True)
class Generated:
    """One generation's outputs: conditioning and final latents (global, rows over
    (data, fsdp)), trajectory (or None), and this process's uint8 images."""

    cond: Any
    final: jax.Array
    traj: Any
    images: np.ndarray


def generate(
    gen: Generator,
    weights: Any,
    prompts: list[str],
    metadata: list,
    noise: jax.Array,
    sigmas: np.ndarray,
    noise_levels: np.ndarray,
    key: jax.Array,
    record: np.ndarray | None = None,
    *,
    group_size: int = 1,
    on_images: Callable[[np.ndarray, int], None] | None = None,
    solver: str = "euler",
) -> Generated:
    """encode -> rollout -> decode of this process's rows: `prompts` / `metadata` are
    its rows (groups of `group_size` equal prompts), `noise` the global initial latents.
    `solver`: see `rollout_and_decode` (sigmas / noise levels from `ode_grid`)."""
    blocks = rows_lib.row_blocks(gen.mesh, noise.shape[0])
    cond = encode(gen, prompts, metadata, blocks, group_size)
    final, traj, images = rollout_and_decode(
        gen, weights, cond, noise, sigmas, noise_levels, key, record, on_images, solver
    )
    return Generated(cond, final, traj, images)
