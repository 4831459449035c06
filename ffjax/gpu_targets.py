"""NVIDIA GPUs to compile for without one: `--dry_run_topology h100:8` and friends.

XLA's GPU compiler needs a description of the card it compiles for (its
`GpuTargetConfigProto`: SM count, shared memory, L2, memory size and bandwidth, compute
capability, the cuDNN and CUDA versions it will run with). On a machine with the GPU
the plugin reads them from the driver; here they are written once per card, so a CPU
host with the CUDA plugin installed (`pip install -e '.[cuda-compile]'`) compiles the
run's programs for N GPUs that are not there and XLA's memory analysis says what one
of them would hold.

The hardware figures are the SXM parts' as NVIDIA's data sheets give them and as XLA
keeps them for its own offline compiles (openxla/xla, xla/tools/hlo_opt/gpu_specs/
{a100_sxm_80,h100_sxm,b200}.txtpb; the H200 is the H100's die with 141 GB of HBM3e at
4.8 TB/s, and the 143771 MiB and 60 MB of L2 that this workplace's H200s report). `bf16_tflops` is the data sheet's dense bfloat16 tensor-core peak, used for
the dry run's FLOP time floor, never measured here.

    python -m ffjax.train --config configs/flux_grpo.py:flow_factory --dry_run \
        --dry_run_topology h100:8 --config.mesh.fsdp=8      # 1 host of 8 H100s
    ... --dry_run_topology h100:2x8 --config.mesh.fsdp=16  # 2 hosts of 8
"""

from __future__ import annotations

import dataclasses
import os
import re
from importlib import metadata
from typing import Any

from ffjax.errors import UsageError

GIB = 2**30
_GB = 10**9


@dataclasses.dataclass(frozen=True)
class GpuTarget:
    """One GPU model as XLA's GPU compiler needs it (bytes, bytes/s, GHz)."""

    name: str  # what --dry_run_topology calls it
    description: str  # the driver's device name
    compute_capability: tuple[int, int]
    sm_count: int
    fpus_per_sm: int
    clock_ghz: float
    shared_memory_per_sm: int
    shared_memory_per_block_optin: int
    l2_cache: int
    memory: int  # HBM bytes the driver reports
    memory_bandwidth: int  # bytes/s
    bf16_tflops: float  # dense bfloat16 tensor-core peak (data sheet)

    @property
    def memory_gib(self) -> float:
        """HBM per GPU in GiB (what the dry run's verdict is judged against)."""
        return self.memory / GIB

    def target_config(self, cudnn: tuple[int, int, int], cuda: tuple[int, int]) -> str:
        """XLA's `GpuTargetConfigProto` of this card in text format, for `cudnn` and
        `cuda` (major, minor[, patch]) versions."""
        major, minor = self.compute_capability
        info = {
            "threads_per_block_limit": 1024,
            "threads_per_warp": 32,
            "shared_memory_per_block": 48 * 1024,
            "shared_memory_per_core": self.shared_memory_per_sm,
            "threads_per_core_limit": 2048,
            "core_count": self.sm_count,
            "fpus_per_core": self.fpus_per_sm,
            "block_dim_limit_x": 2**31 - 1,
            "block_dim_limit_y": 65535,
            "block_dim_limit_z": 65535,
            "memory_bandwidth": self.memory_bandwidth,
            "l2_cache_size": self.l2_cache,
            "clock_rate_ghz": self.clock_ghz,
            "device_memory_size": self.memory,
            "shared_memory_per_block_optin": self.shared_memory_per_block_optin,
            "registers_per_core_limit": 65536,
            "registers_per_block_limit": 65536,
        }
        lines = ["gpu_device_info {"]
        lines += [f"  {k}: {v}" for k, v in info.items()]
        lines += [f"  cuda_compute_capability {{ major: {major} minor: {minor} }}", "}"]
        lines += [
            'platform_name: "CUDA"',
            "dnn_version_info {{ major: {} minor: {} patch: {} }}".format(*cudnn),
            "runtime_version {{ major: {} minor: {} }}".format(*cuda[:2]),
            f'device_description_str: "{self.description}"',
        ]
        return "\n".join(lines) + "\n"


_KIB, _MIB = 1024, 2**20
TARGETS: dict[str, GpuTarget] = {
    t.name: t
    for t in (
        GpuTarget("a100", "NVIDIA A100-SXM4-80GB", (8, 0), 108, 64, 1.41, 164 * _KIB,
                  163 * _KIB, 40 * _MIB, 85_100_068_864, 2_039 * _GB, 312.0),
        GpuTarget("h100", "NVIDIA H100 80GB HBM3", (9, 0), 132, 128, 1.98, 228 * _KIB,
                  227 * _KIB, 50 * _MIB, 84_978_434_048, 3_352 * _GB, 989.0),
        GpuTarget("h200", "NVIDIA H200", (9, 0), 132, 128, 1.98, 228 * _KIB, 227 * _KIB,
                  60 * _MIB, 150_754_820_096, 4_800 * _GB, 989.0),
        GpuTarget("b200", "NVIDIA B200", (10, 0), 148, 128, 1.965, 228 * _KIB, 227 * _KIB,
                  int(126.5 * _MIB), 191_514_673_152, 7_672 * _GB, 2_250.0),
    )
}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class GpuTopology:
    """`hosts` hosts of `gpus_per_host` GPUs of one model."""

    target: GpuTarget
    hosts: int
    gpus_per_host: int

    @property
    def num_devices(self) -> int:
        return self.hosts * self.gpus_per_host

    def __str__(self) -> str:
        hosts = f"{self.hosts} hosts x " if self.hosts > 1 else ""
        return f"{hosts}{self.gpus_per_host} x {self.target.description}"


def is_gpu_topology(name: str) -> bool:
    """Whether `name` ("h100:8") names a GPU (vs a TPU slice such as "v5e:2x4")."""
    return re.match(r"v\d", name.strip().lower()) is None  # TPU generations: v4, v5e, ...


def parse(name: str) -> GpuTopology:
    """`GpuTopology` of "GPU:N" (one host of N) or "GPU:MxN" (M hosts of N GPUs).

    Raises UsageError (exit 2) naming `--dry_run_topology` for an unknown GPU or a bad count.
    """
    gpu, _, count = name.strip().partition(":")
    target = TARGETS.get(gpu.lower())
    if target is None:
        raise UsageError(
            f"--dry_run_topology={name}: unknown GPU {gpu!r}; GPUs: {', '.join(TARGETS)}"
            " (e.g. h100:8, h100:2x8), TPU slices: v5e:2x4, v5p:2x2x2, ..."
        )
    m = re.fullmatch(r"(?:(\d+)x)?(\d+)", count.strip().lower())
    if not m or int(m.group(2)) < 1 or (m.group(1) is not None and int(m.group(1)) < 1):
        raise UsageError(
            f"--dry_run_topology={name}: the GPU count must be N (GPUs on one host) or"
            f" MxN (M hosts of N GPUs), e.g. {gpu.lower()}:8 or {gpu.lower()}:2x8"
        )
    return GpuTopology(target, int(m.group(1) or 1), int(m.group(2)))


def _version(dist: str, parts: int) -> tuple[int, ...] | None:
    try:
        numbers = [int(x) for x in re.findall(r"\d+", metadata.version(dist))[:parts]]
    except metadata.PackageNotFoundError:
        return None
    return tuple(numbers + [0] * (parts - len(numbers)))


def library_versions() -> tuple[tuple[int, int, int], tuple[int, int]]:
    """(cuDNN, CUDA) versions of the installed NVIDIA wheels the compiler links with;
    (9.12.0, 13.0), the lowest the CUDA 13 plugin accepts, where they are not wheels."""
    cudnn = _version("nvidia-cudnn-cu13", 3) or (9, 12, 0)
    cuda = _version("nvidia-cuda-runtime", 2) or _version("nvidia-cuda-runtime-cu13", 2)
    return cudnn, cuda or (13, 0)


def devices(topology: GpuTopology) -> list[Any]:
    """Compile-only devices of `topology` (XLA's CUDA plugin, no GPU needed).

    Raises UsageError (exit 2) when the plugin is not installed.
    """
    try:
        import jax_plugins.xla_cuda13  # noqa: F401  (the CUDA 13 PJRT plugin)
    except ImportError:
        raise UsageError(
            f"--dry_run_topology: compiling for {topology.target.name} needs JAX's CUDA"
            " plugin, which is not installed (pip install -e '.[cuda-compile]'; no GPU needed)"
        ) from None
    # The plugin checks the CUDA libraries against a driver at start-up; there is none.
    os.environ["JAX_SKIP_CUDA_CONSTRAINTS_CHECK"] = "1"
    from jax.experimental import topologies

    cudnn, cuda = library_versions()
    desc = topologies.get_topology_desc(
        platform="cuda",
        target_config=topology.target.target_config(cudnn, cuda),
        topology=f"1x{topology.hosts}x{topology.gpus_per_host}",
    )
    return list(desc.devices)
