"""`python -m ffjax.train --dry_run`: the memory a run needs per device, compiled, never run.

    python -m ffjax.train --config configs/flux_grpo.py:flow_factory --dry_run \
        --config.model.path=/data/FLUX.1-dev --config.data.path=prompts.txt \
        --config.model.param_dtype=bfloat16 --dry_run_device_memory_gb 80
    python -m ffjax.train ... --dry_run --dry_run_devices 8 --config.mesh.fsdp=8
    python -m ffjax.train ... --dry_run --dry_run_topology v5p:2x2x2 --config.mesh.fsdp=8

The run is the trainer's, built by the same builder abstractly from the model's
config.json files (`ffjax.run.build(abstract=True)`, the adapter's `abstract_load`; no
weight is read or allocated, so FLUX.1-dev 12B dry-runs on a laptop): weights, LoRA
adapters and the TrainState are `jax.ShapeDtypeStruct`s carrying the shardings the
trainer gives them. Three of the run's own jitted functions are lowered and compiled
for the mesh, as the trainer calls them: one rollout call (`sampling.batch_size` samples, or the whole
epoch), the VAE decode of the epoch, and one train step of `train.micro_batch_size`
rows; XLA's `memory_analysis()` gives their per-device argument, output, alias and
temporary bytes. `--dry_run_devices N` compiles for N CPU devices (real or fake)
instead of the visible accelerators; `--dry_run_topology NAME` compiles for a TPU slice
that is not there (e.g. "v5e:2x4", "v5p:2x2x2", "v4:2x2x1"): XLA's TPU compiler from
libtpu (`pip install 'jax[tpu]'`, part of the dev extras on Linux x86-64) runs on any
host, so a laptop learns what a pod slice would need before one is rented. NVIDIA GPUs
likewise ("h100:8", "h200:1", "a100:8", "b200:8"; "h100:2x8" = 2 hosts of 8): XLA's
GPU compiler from JAX's CUDA plugin (`pip install -e '.[cuda-compile]'`) compiles for
the card `ffjax.gpu_targets` describes, cuDNN attention included, with no GPU. A
multi-host topology compiles as one program over all its chips, as the trainer's
global arrays are.

Per device means the shard on device 0 (`sharding.shard_shape`), summed over leaves:

    resident   what lives for the whole run: frozen weights (param_dtype), VAE, text
               encoders (sharded by their logical axes, as `place_encoders` puts them),
               trainable weights (float32), optimizer state, EMA, reference copy (full
               fine-tune with KL), the per-epoch old-policy snapshot.
    epoch      the epoch's conditioning and noise, the rollout outputs (final latents
               and trajectory) and the training rows built from them.
    peak       resident + epoch + the largest (outputs - aliased + temporaries) of the
               three programs.

These are estimates for the backend compiled for: XLA on CPU fuses and picks kernels
differently from a GPU or TPU (the CPU attention is the XLA one, which materialises the
logits; on GPU `model.attention=auto` uses cuDNN's fused kernel). Run the dry run on
the target machine, without `--dry_run_devices`, for that backend's own numbers, or
with `--dry_run_topology` for a TPU's or GPU's.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ffjax import configs, errors, gpu_targets
from ffjax import flops as flops_lib
from ffjax import run as run_lib
from ffjax.algorithms.spec import Frozen
from ffjax.dry_run_report import GIB, Bytes, Program, Report, tree_bytes
from ffjax.flow import rollout as rollout_lib
from ffjax.parallel import sharding as sharding_lib
from ffjax.stages import optimize

# XLA's CPU backend has no bfloat16 dot: it computes them in float32, and its
# while-loop-invariant code motion then hoists the float32 conversion of every stacked
# (nn.scan) weight out of the layer loop: a float32 copy of the whole model in the
# temporaries (FLUX.1-dev bf16: +44 GiB), which no GPU or TPU compile has. Without that
# pass the conversion stays per layer (one block's weights, < 1 GiB for FLUX.1-dev).
CPU_COMPILER_OPTIONS = {"xla_disable_hlo_passes": "while-loop-invariant-code-motion"}
# A GPU compile without a GPU cannot autotune, and XLA's Triton GEMM emitter then fails
# on some thin dots ("Couldn't find output tile sizes", e.g. a LoRA rank-8 dot of the
# demo on h100:1, a bf16[32,7] dot of the tiny WAN on h100:8). cuBLAS takes every dot;
# on a real GPU XLA may still pick Triton where autotuning finds it faster.
GPU_COMPILER_OPTIONS = {"xla_gpu_enable_triton_gemm": False}
_COMPILER_OPTIONS = {"cpu": CPU_COMPILER_OPTIONS, "gpu": GPU_COMPILER_OPTIONS}  # by platform
_REEXEC_MARK = "FFJAX_DRY_RUN_REEXEC"
# HBM per chip (GiB) of the TPU generations, by the prefix of a topology name: the
# device memory a topology's verdict uses when --dry_run_device_memory_gb is not given.
TPU_HBM_GIB = {"v2": 8, "v3": 16, "v4": 32, "v5e": 16, "v5litepod": 16, "v5p": 95, "v6e": 32}


# --------------------------------------------------------------------------- devices


def use_cpu_devices(n: int, reexec_argv: Sequence[str] | None = None) -> None:
    """Makes JAX run on `n` CPU devices (fake ones: XLA's host platform device count).

    This works only before JAX's backend starts; if something started it already
    (with another device count), the process re-executes itself as
    `python <reexec_argv>` with XLA_FLAGS=--xla_force_host_platform_device_count=n and
    JAX_PLATFORMS=cpu set (RuntimeError without `reexec_argv`).
    """
    try:
        jax.config.update("jax_num_cpu_devices", n)
        jax.config.update("jax_platforms", "cpu")
        return
    except RuntimeError:  # the backend is already up
        pass
    if jax.default_backend() == "cpu" and jax.device_count() == n:
        return
    if reexec_argv is None or os.environ.get(_REEXEC_MARK):
        raise RuntimeError(
            f"--dry_run_devices {n}: JAX's backend started with {jax.device_count()}"
            f" {jax.default_backend()} device(s) before the device count could be set; run"
            f" with XLA_FLAGS=--xla_force_host_platform_device_count={n} JAX_PLATFORMS=cpu"
        )
    flags = os.environ.get("XLA_FLAGS", "")
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=f"{flags} --xla_force_host_platform_device_count={n}".strip(),
        **{_REEXEC_MARK: "1"},
    )
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, *reexec_argv], env)


def topology_devices(name: str) -> list[Any]:
    """The chips of TPU topology `name` ("v5e:2x4", "v5p:2x2x2"): compile-only devices.

    Raises ConfigError naming `--dry_run_topology` when libtpu is not installed or the
    name is not a topology libtpu knows.
    """
    try:
        import libtpu  # noqa: F401  (XLA's TPU compiler)
    except ImportError:
        raise configs.ConfigError(
            f"--dry_run_topology={name}: compiling for TPU needs libtpu, which is not"
            " installed (pip install 'jax[tpu]'; it runs on any Linux x86-64 host)"
        ) from None
    from jax.experimental import topologies

    # libtpu reads the TPU VM's worker list at start-up and logs an error when there is
    # none (this host is no TPU VM), and takes a host-wide lock meant for processes
    # that drive real chips; this one only compiles, so neither applies.
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    try:
        topology = topologies.get_topology_desc(topology_name=name, platform="tpu")
    except Exception as e:  # libtpu raises XlaRuntimeError / ValueError for bad names
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise configs.ConfigError(
            f"--dry_run_topology={name}: not a TPU topology libtpu knows ({first}); use"
            " GENERATION:CHIPS, e.g. v5e:2x4, v5p:2x2x2, v4:2x2x1, v6e:4x4"
        ) from None
    return list(topology.devices)


def topology_memory_gb(name: str) -> float | None:
    """HBM per chip (GiB) of topology `name`'s TPU generation, None if unknown."""
    return TPU_HBM_GIB.get(name.split(":")[0].lower())


# --------------------------------------------------------------------------- the plan


def _key() -> jax.ShapeDtypeStruct:
    """An abstract PRNG key (made on use: eval_shape at import could start the backend)."""
    return jax.eval_shape(lambda: jax.random.key(0))


def _rows_over_mesh(tree: Any, mesh, axis: int = 0) -> Any:
    """`tree` with axis `axis` of every leaf over the batch mesh axes (data, fsdp)."""
    spec = jax.sharding.PartitionSpec(*([None] * axis), sharding_lib.BATCH_AXES)
    fitted = lambda a: jax.sharding.NamedSharding(mesh, sharding_lib.fit_spec(spec, a.shape, mesh))
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=fitted(a)), tree)


def _memory(compiled) -> dict[str, int | None]:
    try:
        m = compiled.memory_analysis()
    except (NotImplementedError, RuntimeError, AttributeError):
        m = None
    names = ("argument", "output", "alias", "temp")
    if m is None:
        return dict.fromkeys(names)
    return {k: int(getattr(m, f"{k}_size_in_bytes")) for k in names}


def _dtypes(tree: Any) -> str:
    return ", ".join(sorted({jnp.dtype(a.dtype).name for a in jax.tree.leaves(tree)}))


def _host_note(b: Bytes, key: str) -> str:
    if not b.host:
        return ""
    amount = f"{b.host / GIB:.3f} GiB" if b.host >= GIB else f"{b.host / 2**20:.3f} MiB"
    return f"; {key}: in pinned host memory, {amount} per device shard"


def _resident(run: run_lib.Run) -> tuple[dict[str, tuple[Bytes, str]], list[str]]:
    """Rows for what the trainer keeps alive for the whole run, and notes."""
    c, t = run.config, run.config.train
    what = run.adapter.denoiser
    out: dict[str, tuple[Bytes, str]] = {}
    notes = []
    if run.lora:
        out[f"{what} (frozen)"] = (tree_bytes(run.base),
                                   _dtypes(run.weights[what]) + " + lora_scale")  # fmt: skip
    elif jnp.dtype(c.model.param_dtype) != jnp.float32:
        notes.append(
            f"full fine-tune: the loaded {c.model.param_dtype} {what} lives only while"
            " the run builder makes the float32 trainable copy (not counted in the peak)"
        )
    for k, w in run.weights.items():
        if k != what:
            out[k] = (tree_bytes(w), _dtypes(w))
    if run.text is None:
        notes.append(f"text encoders of {c.model.name!r}: not reported by its adapter")
    for k, w in (run.text or {}).items():
        b = tree_bytes(w)
        where = "replicated" if b.per_device == b.replicated else "sharded like the weights"
        out[k] = (b, f"{_dtypes(w)}, {where}")
    kind = f"LoRA r={t.lora_rank}" if run.lora else "full"
    st = run.initial
    out[f"trainable ({kind})"] = (tree_bytes(st.trainable), _dtypes(st.trainable))
    accum = f", MultiSteps x{t.grad_accum_steps} grads" if t.grad_accum_steps > 1 else ""
    out["optimizer state"] = (tree_bytes(st.opt_state), "AdamW mu, nu" + accum)
    if st.ema is not None:
        ema = tree_bytes(st.ema)
        out["EMA"] = (ema, f"decay {c.ema.decay:g}" + _host_note(ema, "ema.offload"))
    if run.ref is not None:
        ref = tree_bytes(run.ref)
        out["reference copy"] = (
            ref, f"kl_beta > 0, {_dtypes(run.ref)}" + _host_note(ref, "train.offload_ref")
        )  # fmt: skip
    if run.spec.wants("needs_snapshot", c.algorithm):
        out["old-policy snapshot"] = (tree_bytes(st.trainable), "copied every epoch")
    return out, notes


@dataclasses.dataclass
class Epoch:
    """One epoch's abstract arrays, as `trainer.run_epoch` makes them (epoch 0)."""

    samples: int
    cond: Any
    noise: Any
    final: Any
    traj: Any
    rows: Any
    sigmas: np.ndarray
    levels: np.ndarray
    record: np.ndarray | None
    variables: Any  # the rollout's model variables


def abstract_epoch(run: run_lib.Run) -> Epoch:
    """Epoch 0's arrays of `run` (abstract, with the shardings the trainer's have): the
    conditioning and noise, the rollout's outputs and the training rows built from them
    by the trainer's own functions."""
    c, m, s = run.config, run.config.model, run.config.sampling
    n, h, w = c.data.prompts_per_epoch * c.data.group_size, m.height, m.width
    cond = _rows_over_mesh(run.adapter.abstract_cond(n, h, w), run.mesh)
    noise = jax.eval_shape(lambda k: run.adapter.init_noise(k, n, h, w), _key())
    noise = _rows_over_mesh(noise, run.mesh)
    sigmas = np.asarray(run.adapter.sigmas(s.num_steps, h, w), np.float32)
    window = rollout_lib.sde_window(
        c.seed, 0, run_lib.sde_candidates(c), run_lib.sde_count(c),
        contiguous=s.sde_window == "contiguous",
    )  # fmt: skip
    levels = np.asarray(rollout_lib.noise_levels_for(s.num_steps, window, s.noise_level))
    record = np.asarray(window, np.int32) if run.spec.record == "sde_steps" else None
    variables = run.gen.variables(run.initial.trainable)
    final, traj = run.rollout.eval_shape(variables, cond, noise, sigmas, levels, _key(), record)
    final = _rows_over_mesh(final, run.mesh)
    if traj is not None:  # [k, B, ...]: the samples are axis 1
        traj = traj.replace(**{f: _rows_over_mesh(getattr(traj, f), run.mesh, axis=1)
                               for f in ("x_t", "x_next", "log_prob")})  # fmt: skip
    # The training rows as the trainer builds them from the trajectory, with the
    # shardings XLA propagates to them (its reshapes of the sharded trajectory replicate).
    rng = np.random.default_rng(0)
    make_rows = jax.jit(
        lambda tr: optimize.make_rows(run.spec.record, tr, np.zeros(n), levels, rng, sigmas,
                                      c.algorithm, run.train_timesteps)
    )  # fmt: skip
    rows = run_lib.with_shardings(
        jax.eval_shape(make_rows, traj), make_rows.lower(traj).compile().output_shardings
    )
    return Epoch(n, cond, noise, final, traj, rows, sigmas, levels, record, variables)


PROGRAMS = ("rollout", "decode", "train")  # what `plan` compiles, by key


@dataclasses.dataclass(frozen=True)
class Call:
    """One call of a run's jitted function, with abstract arguments: what the dry run
    lowers (`lower`) and counts the FLOPs of (`flops`)."""

    name: str
    what: str
    fn: Any  # the run's jitted function (or its wrapper), with `.lower`
    args: tuple
    kwargs: dict
    # The same function callable inside a trace (the wrappers enter `jax.set_mesh`,
    # which a trace may not), and the mesh to trace it under.
    inner: Callable
    mesh: jax.sharding.Mesh

    def lower(self) -> jax.stages.Lowered:
        return self.fn.lower(*self.args, **self.kwargs)

    def flops(self) -> flops_lib.Count:
        """Matmul FLOPs of the call, from its jaxpr (`ffjax.flops`); nothing compiled."""
        leaves, tree = jax.tree.flatten((self.args, self.kwargs))
        traced = [i for i, leaf in enumerate(leaves) if isinstance(leaf, jax.ShapeDtypeStruct)]

        def call(*values):
            full = list(leaves)
            for i, v in zip(traced, values, strict=True):
                full[i] = v
            args, kwargs = jax.tree.unflatten(tree, full)
            return self.inner(*args, **kwargs)

        with jax.set_mesh(self.mesh):
            return flops_lib.count(call, *(leaves[i] for i in traced))


def _rollout_inner(rollout) -> Callable:
    """`rollout` (a `stages.generate.Rollout`) as a function of its call's arguments
    that does not enter the mesh itself: `flow.rollout`'s jitted function."""

    def call(variables, cond, noise, sigmas, levels, key, record=None):
        record = None if record is None else jnp.asarray(record, jnp.int32)
        return rollout_lib._rollout_jit(
            rollout.velocity, variables, cond, noise, jnp.asarray(sigmas, jnp.float32),
            jnp.asarray(levels, jnp.float32), key, record, dynamics=rollout.dynamics,
            storage_dtype=jnp.dtype(rollout.storage_dtype), prepare_fn=rollout.prepare_fn,
        )  # fmt: skip

    return call


def calls(run: run_lib.Run, ep: Epoch, which: Sequence[str] = PROGRAMS) -> dict[str, Call]:
    """{key: Call} of the programs in `which`: one rollout call, one decode call (both of
    `sampling.batch_size` samples, or the epoch) and one train step, of the run's own
    jitted functions (`run.rollout`, `run.decode`, `run.train_step`) on the mesh."""
    c, m, s, t = run.config, run.config.model, run.config.sampling, run.config.train
    chunk = s.batch_size or ep.samples
    take = lambda tree: _rows_over_mesh(jax.tree.map(
        lambda a: jax.ShapeDtypeStruct((chunk, *a.shape[1:]), a.dtype), tree), run.mesh)  # fmt: skip
    out = {}
    if "rollout" in which:
        out["rollout"] = Call("rollout", f"{chunk} samples x {s.num_steps} steps", run.rollout, (
            ep.variables, take(ep.cond), take(ep.noise), ep.sigmas, ep.levels, _key(), ep.record,
        ), {}, _rollout_inner(run.rollout), run.mesh)  # fmt: skip
    if "decode" in which:
        # The trainer decodes in chunks of sampling.batch_size, like the rollout.
        final = jax.ShapeDtypeStruct((chunk, *ep.final.shape[1:]), ep.final.dtype)
        size = f"{m.height}x{m.width}"
        what = (f"{chunk} videos {m.num_frames}x{size}" if m.num_frames > 1
                else f"{chunk} images {size}")  # fmt: skip
        out["decode"] = Call("decode", what, run.decode,
                             (run.weights["vae"], final, m.height, m.width), {},
                             run.decode, run.mesh)  # fmt: skip
    if "train" in which:
        # Two experts (WAN A14B): the trainer's micro-batches are one expert's rows, but
        # for the leftovers; compile that common case.
        expert = None if run.adapter.experts_of(np.ones(1)) is None else 0
        st = run.initial
        snapshot = st.trainable if run.spec.wants("needs_snapshot", c.algorithm) else None
        frozen = Frozen(base=run.base, ref=run.ref, ema=None, snapshot=snapshot)
        samples = {"cond": ep.cond, "x0": ep.final}
        idx = jax.ShapeDtypeStruct((t.micro_batch_size,), jnp.int32)
        out["train"] = Call("train step", f"{t.micro_batch_size} rows", run.train_step, (
            st, frozen, samples, ep.rows, idx, _key(), _key()), {"expert": expert},
            run.train_step.fn, run.mesh)  # fmt: skip
    return out


def lower(run: run_lib.Run, ep: Epoch, which: Sequence[str] = PROGRAMS) -> dict[str, tuple]:
    """{key: (name, what, jax.stages.Lowered)} of the programs in `which` (`calls`),
    lowered for the mesh."""
    return {k: (cl.name, cl.what, cl.lower()) for k, cl in calls(run, ep, which).items()}


def _programs(
    run: run_lib.Run, ep: Epoch, which: Sequence[str] = PROGRAMS, keep_hlo: bool = False
) -> dict[str, Program]:
    """The programs of `lower`, compiled; XLA's memory analysis of each (and, with
    `keep_hlo`, the optimized HLO text the backend compiled)."""
    options = _COMPILER_OPTIONS.get(run.mesh.devices.flat[0].platform)
    out = {}
    for key in PROGRAMS:
        if key not in which:
            continue
        t0 = time.perf_counter()
        ((call),) = calls(run, ep, (key,)).values()
        try:
            compiled = call.lower().compile(options)
        except jax.errors.JaxRuntimeError as e:  # XLA's message: its first line says why
            platform = run.mesh.devices.flat[0].platform
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise errors.CompileError(
                f"XLA could not compile the {key} program for {platform}: {first}"
            ) from e
        seconds = time.perf_counter() - t0
        hlo = compiled.as_text() if keep_hlo else None
        count = call.flops()
        out[key] = Program(call.name, call.what, **_memory(compiled), compile_s=seconds,
                           hlo=hlo, flops=count.flops, uncounted_loops=count.uncounted_loops,
                           uncounted_kernels=count.uncounted_kernels)  # fmt: skip
    return out


def plan(
    config: configs.ConfigDict,
    devices: Sequence[Any] | None = None,
    *,
    compile: bool = True,
    programs: Sequence[str] = PROGRAMS,
    keep_hlo: bool = False,
) -> Report:
    """The dry run of `config` on `devices` (default: every visible device).

    The run is the trainer's, built abstractly (`ffjax.run.build(abstract=True)`); the
    programs are its own jitted functions, lowered for one epoch's abstract arrays. With
    `compile=False` only the resident and epoch bytes are computed; `programs` (keys of
    `PROGRAMS`) chooses which programs are compiled; `keep_hlo` keeps each one's
    optimized HLO text (`Program.hlo`).
    """
    unknown = sorted(set(programs) - set(PROGRAMS))
    if unknown:
        raise ValueError(f"unknown programs {unknown}; choose from {PROGRAMS}")
    run = run_lib.build(config, devices, abstract=True)
    resident, notes = _resident(run)
    ep = abstract_epoch(run)
    storage = jnp.dtype(config.sampling.storage_dtype).name
    epoch = {
        "inputs": (tree_bytes((ep.cond, ep.noise)), f"{ep.samples} samples: conditioning + noise"),
        "outputs": (tree_bytes((ep.final, ep.traj)), "final latents + recorded trajectory"),
        "training rows": (tree_bytes(ep.rows), f"{run.rows_per_epoch} rows, {storage} latents"),
    }
    programs = _programs(run, ep, programs, keep_hlo) if compile else {}
    m = config.model
    platform = run.mesh.devices.flat[0].platform
    kind = f"LoRA r={config.train.lora_rank}" if run.lora else "full fine-tune"
    report = Report(f"{m.name} {m.path}, {kind}, {run.spec.name}, {m.height}x{m.width},"
                    f" param_dtype={m.param_dtype}", dict(run.mesh.shape), platform,
                    run.mesh.devices.size, resident, epoch, programs, notes)  # fmt: skip
    notes.append(
        f"compiled for {platform}, attention={m.attention}, remat={m.remat}, dtype={m.dtype};"
        " another backend fuses and picks kernels differently"
        + (": the CPU attention materialises the logits (GPU auto: cuDNN)" if platform == "cpu" else "")
        + ("; compare with remat=full" if platform == "cpu" and m.remat != "full" else "")
    )  # fmt: skip
    if programs:
        notes.append(
            "model FLOPs: 2 per multiply-add of every matmul, convolution and attention in"
            " the program as traced (MFU = FLOPs / (seconds x devices x peak))"
            + (f"; the train step's include remat={m.remat}'s recomputed forward"
               if m.remat != "none" and "train" in programs else "")
        )  # fmt: skip
    return report


def main(
    config: configs.ConfigDict,
    *,
    devices: int = 0,
    topology: str | None = None,
    memory_gb: float | None = None,
    reexec_argv: Sequence[str] | None = None,
    programs: Sequence[str] = PROGRAMS,
    keep_hlo: bool = False,
) -> Report:
    """The CLI's dry run: prints the report. `devices` > 0 compiles for that many CPU
    devices (see `use_cpu_devices`); `topology` for that TPU slice (`topology_devices`)
    or those NVIDIA GPUs ("h100:8", `ffjax.gpu_targets`), judged against their HBM
    unless `memory_gb` is given. `keep_hlo`: see `plan`."""
    if devices and topology:
        raise configs.ConfigError("--dry_run_devices and --dry_run_topology exclude each other")
    unknown = sorted(set(programs) - set(PROGRAMS))
    if unknown or not programs:
        raise configs.ConfigError(
            f"--dry_run_programs={','.join(programs)}: choose one or more of {','.join(PROGRAMS)}"
        )
    gpu = None
    if devices:
        use_cpu_devices(devices, reexec_argv)
        chosen = jax.devices()[:devices]
    elif topology and gpu_targets.is_gpu_topology(topology):
        gpu = gpu_targets.parse(topology)
        chosen = gpu_targets.devices(gpu)
        if memory_gb is None:
            memory_gb = round(gpu.target.memory_gib, 2)
    elif topology:
        chosen = topology_devices(topology)
        if memory_gb is None:
            memory_gb = topology_memory_gb(topology)
    else:
        chosen = None
    report = plan(config, chosen, programs=programs, keep_hlo=keep_hlo)
    if gpu is not None:
        report.peak_tflops = gpu.target.bf16_tflops
        cudnn, cuda = gpu_targets.library_versions()
        report.notes.append(
            f"GPU topology {topology} ({gpu}) compiled by XLA's CUDA plugin on this host"
            f" (nothing ran; cuDNN {'.'.join(map(str, cudnn))}, CUDA"
            f" {'.'.join(map(str, cuda))}); {memory_gb:g} GiB HBM per GPU"
        )
    elif topology:
        report.notes.append(
            f"TPU topology {topology} compiled by libtpu on this host (nothing ran);"
            + (f" {memory_gb:g} GiB HBM per chip" if memory_gb else " HBM per chip unknown:"
               " pass --dry_run_device_memory_gb")
        )  # fmt: skip
    print(report.text(memory_gb))
    return report
