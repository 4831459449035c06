"""The device mesh from `config.mesh`, and multi-host start-up.

The mesh always has the four axes of `AXES`, in that order; an axis of size 1 costs
nothing, so model code and the logical rules of `ffjax.parallel.axes` never need to
know which ones a run uses:

    mesh = make_mesh(config.mesh)            # data=-1: every device not used by the others
    mesh.shape  # {'data': 2, 'fsdp': 4, 'tensor': 1, 'sequence': 1} on 8 devices, fsdp=4

Axis types are `Auto` (jax >= 0.10 makes `jax.make_mesh` default to `Explicit`): the
model is written in the `with_sharding_constraint` style, shardings are given to
`jax.jit` and `jax.device_put`, and XLA propagates the rest.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.sharding import AxisType

from ffjax.configs import ConfigError

# Mesh axes, outermost first: data parallel, parameter sharding (FSDP), tensor
# parallel, sequence parallel. Inner axes get neighbouring devices (fastest links).
AXES: tuple[str, ...] = ("data", "fsdp", "tensor", "sequence")


def mesh_shape(mesh_config: Mapping[str, int], num_devices: int) -> tuple[int, ...]:
    """Axis sizes (in `AXES` order) for `num_devices` devices, one -1 resolved to the rest.

    Raises ConfigError naming the `config.mesh.*` keys and the device count when more
    than one size is -1, a size is not a positive int, the fixed sizes do not divide
    the device count (with a -1), or their product is not the device count (without).
    """
    sizes = {axis: mesh_config.get(axis, 1) for axis in AXES}
    keys = ", ".join(f"config.mesh.{a}={s}" for a, s in sizes.items())
    where = f"({keys}) on {num_devices} device(s)"
    bad = [a for a, s in sizes.items() if not isinstance(s, int) or (s < 1 and s != -1)]
    if bad:
        raise ConfigError(
            f"config.mesh.{bad[0]} must be a positive int or -1 (the rest), got {where}"
        )
    free = [a for a, s in sizes.items() if s == -1]
    if len(free) > 1:
        raise ConfigError(
            f"only one mesh axis may be -1 (the rest), but {', '.join(free)} are {where}"
        )
    fixed = math.prod(s for s in sizes.values() if s != -1)
    if free:
        if num_devices % fixed:
            raise ConfigError(
                f"the fixed mesh axes multiply to {fixed}, which does not divide the device"
                f" count {where}; config.mesh.{free[0]}=-1 cannot take the rest"
            )
        sizes[free[0]] = num_devices // fixed
    elif fixed != num_devices:
        raise ConfigError(
            f"the mesh axes multiply to {fixed}, not the device count {where}; make the"
            " product equal the device count or set one axis to -1"
        )
    return tuple(sizes[a] for a in AXES)


def make_mesh(mesh_config: Mapping[str, int], devices: Sequence[Any] | None = None):
    """A `jax.sharding.Mesh` with axes `AXES` (all `AxisType.Auto`) from `config.mesh`.

    Args:
      mesh_config: {"data", "fsdp", "tensor", "sequence"} sizes, at most one -1.
      devices: the devices, in mesh order; default every device of every process,
        arranged by `jax.make_mesh` for the physical topology (TPU / GPU links).
    """
    auto = (AxisType.Auto,) * len(AXES)
    if devices is None:
        shape = mesh_shape(mesh_config, jax.device_count())
        return jax.make_mesh(shape, AXES, axis_types=auto)
    devices = list(devices)
    shape = mesh_shape(mesh_config, len(devices))
    grid = np.empty(len(devices), dtype=object)
    grid[:] = devices
    return jax.sharding.Mesh(grid.reshape(shape), AXES, axis_types=auto)


@dataclasses.dataclass(frozen=True)
class OnMesh:
    """A jitted function that is called and lowered under `jax.set_mesh(mesh)`.

    The models' activation constraints (`ffjax.parallel.axes.constrain`: batch rows,
    tokens over `sequence`) read the context mesh when the call is traced, and jit's
    cache is keyed on it; binding the mesh here means no caller can forget it (outside
    the context the same function would retrace without any constraint).
    """

    fn: Callable
    mesh: jax.sharding.Mesh

    def __call__(self, *args, **kwargs):
        with jax.set_mesh(self.mesh):
            return self.fn(*args, **kwargs)

    def lower(self, *args, **kwargs):
        with jax.set_mesh(self.mesh):
            return self.fn.lower(*args, **kwargs)


# --------------------------------------------------------------------------- multi-host


def _int(value: str | None) -> int:
    try:
        return int(str(value).split("(")[0])  # SLURM may write "4(x2)"
    except ValueError:
        return 0


def multi_process_environment(env: Mapping[str, str] | None = None) -> str | None:
    """Why `env` (default `os.environ`) looks like one process of a multi-process job,
    or None for a single-process run.

    Detected: `JAX_COORDINATOR_ADDRESS`; a SLURM step or job with more than one task;
    Open MPI with more than one rank; a TPU pod slice with more than one worker host
    (`TPU_WORKER_HOSTNAMES`); TPU multislice (`MEGASCALE_*`).
    """
    env = os.environ if env is None else env
    if env.get("JAX_COORDINATOR_ADDRESS"):
        return f"JAX_COORDINATOR_ADDRESS={env['JAX_COORDINATOR_ADDRESS']}"
    if "SLURM_JOB_ID" in env:
        tasks = _int(env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS"))
        if tasks > 1:
            return f"SLURM job {env['SLURM_JOB_ID']} with {tasks} tasks"
    if _int(env.get("OMPI_COMM_WORLD_SIZE")) > 1:
        return f"Open MPI with {env['OMPI_COMM_WORLD_SIZE']} ranks"
    hosts = [h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]
    if len(hosts) > 1:
        return f"TPU pod slice with {len(hosts)} worker hosts"
    megascale = sorted(k for k in env if k.startswith("MEGASCALE_"))
    if megascale:
        return f"TPU multislice ({megascale[0]} is set)"
    return None


def maybe_initialize_distributed(env: Mapping[str, str] | None = None) -> bool:
    """Calls `jax.distributed.initialize()` in a multi-process job; otherwise nothing.

    Must run before anything touches a JAX backend. JAX's cluster detection reads the
    coordinator, process count and id from the same environment. Returns True when
    the process is (now) part of a multi-process job.
    """
    reason = multi_process_environment(env)
    if reason is None:
        return False
    if not jax.distributed.is_initialized():
        logging.info("multi-process environment (%s): jax.distributed.initialize()", reason)
        jax.distributed.initialize()
    return True
