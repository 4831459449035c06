"""The dry run's accounting and report (`ffjax.dry_run`): bytes per device of pytrees of
(abstract) arrays, XLA's memory analysis of one compiled program, and the printed report
with its verdict. Split from ffjax/dry_run.py, which builds and compiles the run."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

from ffjax.parallel import offload

GIB = 2**30

# --------------------------------------------------------------------------- accounting


@dataclasses.dataclass(frozen=True)
class Bytes:
    """Bytes of a pytree of arrays (or ShapeDtypeStructs with shardings).

    per_device: on device 0 (each leaf's shard; a leaf without sharding counts whole);
    total: the arrays' own size, unsharded; replicated: bytes of the leaves every
    device holds whole (per_device = replicated + the sharded leaves' shards);
    count: elements (parameters, for weights); host: device 0's shards that live in
    pinned host memory (offloaded), not in per_device.
    """

    per_device: int = 0
    total: int = 0
    replicated: int = 0
    count: int = 0
    host: int = 0

    def __add__(self, other: Bytes) -> Bytes:
        pairs = zip(dataclasses.astuple(self), dataclasses.astuple(other), strict=True)
        return Bytes(*(a + b for a, b in pairs))


def tree_bytes(tree: Any) -> Bytes:
    """`Bytes` of every array leaf of `tree` (None leaves are empty subtrees)."""
    out = Bytes()
    for leaf in jax.tree.leaves(tree):
        count = math.prod(leaf.shape)
        itemsize = jnp.dtype(leaf.dtype).itemsize if hasattr(leaf, "dtype") else 0
        sharding = getattr(leaf, "sharding", None)
        shard = tuple(leaf.shape) if sharding is None else tuple(sharding.shard_shape(leaf.shape))
        replicated = count * itemsize if shard == tuple(leaf.shape) else 0
        nbytes = math.prod(shard) * itemsize
        if getattr(sharding, "memory_kind", None) == offload.HOST:
            out += Bytes(0, count * itemsize, 0, count, host=nbytes)
        else:
            out += Bytes(nbytes, count * itemsize, replicated, count)
    return out


@dataclasses.dataclass(frozen=True)
class Program:
    """XLA's per-device `memory_analysis()` of one compiled program (None: not reported)."""

    name: str
    what: str
    argument: int | None
    output: int | None
    alias: int | None
    temp: int | None
    compile_s: float
    hlo: str | None = dataclasses.field(default=None, repr=False)  # plan(keep_hlo=True)
    flops: int | None = None  # matmul FLOPs of one call (`ffjax.flops`, from the jaxpr)
    uncounted_loops: int = 0  # while loops whose trip count the count could not tell
    uncounted_kernels: int = 0  # Pallas kernels (TPU splash attention) not in `flops`

    @property
    def transient(self) -> int | None:
        """Bytes the call adds beyond its arguments: outputs not aliased + temporaries."""
        if self.temp is None:
            return None
        return self.output - self.alias + self.temp


@dataclasses.dataclass
class Report:
    """The dry run's findings; `text()` is what the CLI prints."""

    title: str
    mesh: dict[str, int]
    platform: str
    num_devices: int
    resident: dict[str, tuple[Bytes, str]]  # name -> (bytes, note)
    epoch: dict[str, tuple[Bytes, str]]
    programs: dict[str, Program]
    notes: list[str]
    peak_tflops: float | None = None  # per device, dense bf16 (GPU targets), for a time floor

    def resident_bytes(self) -> int:
        return sum(b.per_device for b, _ in self.resident.values())

    def epoch_bytes(self, phase: str) -> int:
        """Epoch data alive during `phase` ("rollout", "decode" or "train")."""
        keep = {"rollout": ("inputs", "outputs"), "decode": ("inputs", "outputs")}
        names = keep.get(phase, tuple(self.epoch))
        return sum(b.per_device for k, (b, _) in self.epoch.items() if k in names)

    def peak(self, transient: dict[str, int] | None = None) -> tuple[int, str | None]:
        """(peak bytes per device, the key of the program at the peak or None).

        `transient` replaces programs' (outputs - aliased + temporaries) by key; programs
        without memory stats are left out.
        """
        best, where = self.resident_bytes() + self.epoch_bytes("rollout"), None
        for name, p in self.programs.items():
            extra = (transient or {}).get(name, p.transient)
            if extra is None:
                continue
            total = self.resident_bytes() + self.epoch_bytes(name) + extra
            if where is None or total > best:
                best, where = total, name
        return best, where

    def verdict(self, memory_gb: float | None) -> str:
        """One line: the peak and, given the device memory in GiB, whether it fits."""
        peak, where = self.peak()
        at = (f" (during the {self.programs[where].name})" if where
              else " (no temporaries reported by this backend)")  # fmt: skip
        line = f"peak estimate per device: {peak / GIB:.2f} GiB{at}"
        if not memory_gb:
            return line
        budget = memory_gb * GIB
        if peak <= budget:
            line += f"; FITS in {memory_gb:g} GiB ({100 * peak / budget:.0f}% used)"
            if peak > 0.75 * budget:
                line += (
                    "; JAX on GPU preallocates 75% of memory by default: set"
                    " XLA_PYTHON_CLIENT_MEM_FRACTION=0.95"
                )
        else:
            line += (
                f"; does NOT fit in {memory_gb:g} GiB (short by {(peak - budget) / GIB:.2f} GiB)"
            )
        return line

    def text(self, memory_gb: float | None = None) -> str:
        """The report: resident and epoch bytes, compiled programs, notes, the verdict."""
        unit, u = (GIB, "GiB") if self.peak()[0] >= GIB else (2**20, "MiB")
        mesh = " ".join(f"{k}={v}" for k, v in self.mesh.items())
        lines = [
            f"ffjax dry run: {self.title}",
            f"mesh {mesh} on {self.num_devices} {self.platform} device(s); per device = the"
            " shard on device 0",
            "",
            f"{'resident for the run':<40}{u + '/device':>12}{u + ' total':>11}{'params':>10}  note",
        ]

        def row(name, b, note, params=True):
            n = "" if not params else (
                f"{b.count / 1e9:.3f}B" if b.count >= 1e8 else f"{b.count / 1e6:.2f}M")  # fmt: skip
            lines.append(
                f"  {name:<38}{b.per_device / unit:>12.3f}{b.total / unit:>11.3f}{n:>10}  {note}"
            )

        for name, (b, note) in self.resident.items():
            row(name, b, note)
        lines.append(f"  {'= resident':<38}{self.resident_bytes() / unit:>12.3f}")
        lines += ["", f"{'epoch data':<40}{u + '/device':>12}{u + ' total':>11}"]
        for name, (b, note) in self.epoch.items():
            row(name, b, note, params=False)
        lines += [
            "",
            f"{'compiled (XLA memory_analysis)':<40}{'args':>9}{'out':>9}{'alias':>9}"
            f"{'temp':>9}{'compile':>9}  ({u}/device)",
        ]
        for p in self.programs.values():
            if p.temp is None:
                vals = f"{'n/a':>9}" * 4
            else:
                vals = "".join(f"{v / unit:>9.3f}" for v in (p.argument, p.output, p.alias, p.temp))
            lines.append(f"  {p.name + ' (' + p.what + ')':<38}{vals}{p.compile_s:>8.1f}s")
        counted = [p for p in self.programs.values() if p.flops is not None]
        if counted:
            lines += ["", f"{'model FLOPs (matmuls, from the jaxpr)':<40}{'TFLOP':>9}  per call"
                      + (f"; time at {self.num_devices} x {self.peak_tflops:g} TFLOP/s bf16 peak"
                         if self.peak_tflops else "")]  # fmt: skip
            for p in counted:
                floor = (f"  >= {1e3 * p.flops / 1e12 / (self.num_devices * self.peak_tflops):.1f} ms"
                         if self.peak_tflops else "")  # fmt: skip
                loops = (
                    f"  ({p.uncounted_loops} while loop(s) counted once)"
                    if p.uncounted_loops
                    else ""
                ) + (
                    f"  (+ {p.uncounted_kernels} Pallas kernel call(s), e.g. splash attention,"
                    " not counted)"
                    if p.uncounted_kernels
                    else ""
                )
                lines.append(
                    f"  {p.name + ' (' + p.what + ')':<38}{p.flops / 1e12:>9.4g}{floor}{loops}"
                )
        lines.append("")
        lines += [f"note: {n}" for n in self.notes]
        lines.append(self.verdict(memory_gb))
        return "\n".join(lines)
