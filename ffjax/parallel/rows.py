"""Which rows of a batch each process holds, and moving rows between hosts and devices.

A batch of n rows is sharded over the mesh axes ("data", "fsdp")
(`ffjax.parallel.sharding.batch_shardings`). Across processes that splits it into B
equal contiguous blocks, block b = rows [b*n/B, (b+1)*n/B): B = the process count in
the usual layout (data / fsdp span the hosts, each host owns the rows on its
devices), B = 1 when every process holds every row (a single process, or rows
replicated across hosts). Each process only ever builds, scores and reads its own
block:

    blocks = row_blocks(mesh, n)                 # this process's block: blocks.local
    cond = put_rows(encode(prompts[blocks.local]), mesh, blocks)  # global arrays
    images = local_rows(decode(x), blocks)       # np, this process's rows only
    scores = gather_rows(score(images), blocks)  # np, all n rows, on every process

A rollout split into chunks of c rows per block (`sampling.batch_size`) takes rows
[i*c, (i+1)*c) of every block (`chunk`), so every host works on every chunk;
`unchunk` puts the chunks' outputs back in row order. With B = 1 these are plain
slices and concatenations.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from ffjax.parallel.sharding import batch_shardings


@dataclasses.dataclass(frozen=True)
class RowBlocks:
    """n rows in `count` equal contiguous blocks; this process holds block `index`.

    Attributes:
      n: rows of the batch.
      count: B, the number of distinct blocks (1: every process holds every row).
      index: this process's block.
      of_process: the block of every process, by `jax.process_index()`.
    """

    n: int
    count: int = 1
    index: int = 0
    of_process: tuple[int, ...] = (0,)

    @property
    def size(self) -> int:
        """Rows per block, n / B."""
        return self.n // self.count

    def block(self, b: int) -> slice:
        return slice(b * self.size, (b + 1) * self.size)

    @property
    def local(self) -> slice:
        """This process's rows."""
        return self.block(self.index)

    def resized(self, n: int) -> RowBlocks:
        """The same split of another row count (a chunk of `chunk`: n = B * rows per block)."""
        return dataclasses.replace(self, n=n)


def blocks_of(rows_by_process: Mapping[int, Iterable[slice]], n: int) -> tuple[int, list[int]]:
    """(B, block of each process) from the row slices each process's devices hold.

    Pure (the multi-host logic without hosts): `rows_by_process[p]` lists the row
    slices of process p's devices. Raises ValueError when a process's rows are not one
    contiguous range, or the processes' ranges are not B equal blocks tiling [0, n).
    """
    ranges = {}
    for p, slices in sorted(rows_by_process.items()):
        covered = np.zeros(n, bool)
        for s in slices:
            covered[s] = True
        rows = np.nonzero(covered)[0]
        if not len(rows) or rows[-1] - rows[0] + 1 != len(rows):
            raise ValueError(
                f"process {p} holds rows {_ranges(rows)} of {n}, not one contiguous range;"
                " order the mesh devices so that each process's are neighbours on (data, fsdp)"
            )
        ranges[p] = (int(rows[0]), int(rows[-1]) + 1)
    distinct = sorted(set(ranges.values()))
    size = n // len(distinct)
    if distinct != [(b * size, (b + 1) * size) for b in range(len(distinct))]:
        raise ValueError(
            f"the processes hold rows {distinct} of {n}: not equal blocks tiling [0, {n})"
        )
    return len(distinct), [distinct.index(ranges[p]) for p in sorted(ranges)]


def _ranges(rows: np.ndarray) -> str:
    if not len(rows):
        return "none"
    cuts = np.nonzero(np.diff(rows) != 1)[0]
    starts = [rows[0], *rows[cuts + 1]]
    stops = [*rows[cuts], rows[-1]]
    return ", ".join(f"[{a}, {b + 1})" for a, b in zip(starts, stops, strict=True))


@functools.lru_cache(maxsize=64)
def row_blocks(mesh: jax.sharding.Mesh, n: int) -> RowBlocks:
    """How a batch of n rows sharded over ("data", "fsdp") of `mesh` splits over processes."""
    if jax.process_count() == 1:
        return RowBlocks(n)
    sharding = batch_shardings(jax.ShapeDtypeStruct((n,), jnp.float32), mesh)
    by_process: dict[int, list[slice]] = {p: [] for p in range(jax.process_count())}
    for device, index in sharding.devices_indices_map((n,)).items():
        by_process[device.process_index].append(index[0])
    count, of_process = blocks_of(by_process, n)
    return RowBlocks(n, count, of_process[jax.process_index()], tuple(of_process))


def local_mesh(mesh: jax.sharding.Mesh) -> jax.sharding.Mesh:
    """This process's devices of `mesh`, same axes and types (`mesh` itself for one
    process): where host-local work such as a reward model on its rows runs."""
    if jax.process_count() == 1:
        return mesh
    local = mesh.local_mesh
    return jax.sharding.Mesh(local.devices, local.axis_names, axis_types=mesh.axis_types)


def put_rows(tree: Any, mesh: jax.sharding.Mesh, blocks: RowBlocks) -> Any:
    """Global arrays of `blocks.n` rows, sharded over (data, fsdp), from this process's
    block (every leaf: `blocks.size` rows). One process: `jax.device_put`."""
    if jax.process_count() == 1:
        return jax.device_put(tree, batch_shardings(tree, mesh))

    def one(a):
        shape = (blocks.n, *a.shape[1:])
        sharding = batch_shardings(jax.ShapeDtypeStruct(shape, a.dtype), mesh)
        return jax.make_array_from_process_local_data(sharding, np.asarray(a), shape)

    return jax.tree.map(one, tree)


def local_rows(x: jax.Array, blocks: RowBlocks, mesh: jax.sharding.Mesh) -> np.ndarray:
    """This process's rows (block `blocks.index` of `blocks.n`) of global `x`, on the host.

    Read from the addressable shards; an `x` whose shards do not hold them (XLA chose
    another layout) is first resharded over (data, fsdp), which every process does alike.
    """
    if jax.process_count() == 1:
        return np.asarray(x)
    want = blocks.resized(x.shape[0]).local
    target = batch_shardings(x, mesh)
    if not x.sharding.is_equivalent_to(target, x.ndim):
        x = jax.device_put(x, target)
    out = np.empty((want.stop - want.start, *x.shape[1:]), x.dtype)
    filled = np.zeros(len(out), bool)
    for shard in x.addressable_shards:
        rows = range(*shard.index[0].indices(x.shape[0]))
        lo, hi = max(rows.start, want.start), min(rows.stop, want.stop)
        if lo < hi:
            data = np.asarray(shard.data)
            out[lo - want.start : hi - want.start] = data[lo - rows.start : hi - rows.start]
            filled[lo - want.start : hi - want.start] = True
    if not filled.all():
        raise ValueError(f"rows {want} of a {x.shape} array are not on this process's devices")
    return out


def gather_rows(local: np.ndarray, blocks: RowBlocks, limit: int | None = None) -> np.ndarray:
    """All `blocks.n` rows (or the first `limit`) on every process, from each process's
    block `local`.

    Exact for any dtype: the bytes are gathered, so float64 scores stay float64
    without `jax_enable_x64`. A collective: every process must call it.
    """
    n = blocks.n if limit is None else min(limit, blocks.n)
    if jax.process_count() == 1:
        return local[:n]
    m = min(n, blocks.size)  # the most rows of one block among the first n
    local = np.ascontiguousarray(local[:m])
    flat = local.reshape(m, -1).view(np.uint8)
    everyone = np.asarray(multihost_utils.process_allgather(flat))  # [processes, m, bytes]
    out = np.empty((n, *local.shape[1:]), local.dtype)
    for p, b in enumerate(blocks.of_process):
        start = b * blocks.size
        if start < n:
            rows = everyone[p].view(local.dtype).reshape(local.shape)
            out[start : start + min(m, n - start)] = rows[: n - start]
    return out


def any_process(flag: bool) -> bool:
    """True on every process when `flag` is True on any (a collective)."""
    if jax.process_count() == 1:
        return bool(flag)
    return bool(np.asarray(multihost_utils.process_allgather(np.int32(flag))).any())


# --------------------------------------------------------------------------- chunks


def chunk(tree: Any, start: int, size: int, blocks: RowBlocks, mesh: jax.sharding.Mesh) -> Any:
    """Rows [start, start + size) of every block of every leaf (leading axis `blocks.n`):
    `blocks.count * size` rows, block by block (size is cut at the end of a block)."""
    if blocks.count == 1:
        return jax.tree.map(lambda a: a[start : start + size], tree)
    size = min(size, blocks.size - start)
    return _chunk_jit(tree, start, size, blocks.count, mesh)


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4))
def _chunk_jit(tree, start, size, count, mesh):
    def one(a):
        a = a.reshape(count, -1, *a.shape[1:])[:, start : start + size]
        return a.reshape(count * size, *a.shape[2:])

    out = jax.tree.map(one, tree)
    return jax.lax.with_sharding_constraint(out, batch_shardings(out, mesh))


def unchunk(parts: Sequence[jax.Array], blocks: RowBlocks, axis: int = 0) -> jax.Array:
    """Inverse of `chunk` along `axis`: the chunks' rows back in row order."""
    if blocks.count == 1:
        return jnp.concatenate(parts, axis=axis)
    return _unchunk_jit(tuple(parts), blocks.count, axis)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _unchunk_jit(parts, count, axis):
    split = [p.reshape(*p.shape[:axis], count, -1, *p.shape[axis + 1 :]) for p in parts]
    out = jnp.concatenate(split, axis=axis + 1)
    return out.reshape(*out.shape[:axis], -1, *out.shape[axis + 2 :])


def process_messages(message: str, size: int = 4096) -> list[str]:
    """Every process's `message` (its first `size` UTF-8 bytes), by process index, on
    every process (a collective: every process must call it, e.g. with "" for no error).
    One process: `[message]`."""
    if jax.process_count() == 1:
        return [message]
    raw = message.encode()[:size]
    buf = np.zeros(size + 4, np.uint8)  # 4 bytes of length, then the text
    buf[:4] = np.frombuffer(np.uint32(len(raw)).tobytes(), np.uint8)
    buf[4 : 4 + len(raw)] = np.frombuffer(raw, np.uint8)
    everyone = np.asarray(multihost_utils.process_allgather(buf))  # [processes, size + 4]
    lengths = everyone[:, :4].copy().view(np.uint32)[:, 0]
    texts = (row[4 : 4 + n].tobytes() for row, n in zip(everyone, lengths, strict=True))
    return [t.decode(errors="replace") for t in texts]


def on_every_process(
    fn: Callable[[], Any],
    elsewhere: Callable[[int, str], Exception],
    describe: Callable[[Exception], str] = lambda e: f"{type(e).__name__}: {e}",
) -> Any:
    """fn(); if it raises on any process, every process raises, instead of the others
    waiting in the next collective until jax.distributed's heartbeat timeout kills them.

    After fn, one exchange of error texts (`process_messages`, `describe(error)` or "").
    The failing process re-raises its own exception; the others raise
    `elsewhere(index, text)` of the first failed process. `fn` must not itself run
    collectives before it can fail (they would wait for the failed process). One
    process: just fn().
    """
    if jax.process_count() == 1:
        return fn()
    error, result = None, None
    try:
        result = fn()
    except Exception as e:  # any kind: the others must hear of it, then it is re-raised
        error = e
    messages = process_messages("" if error is None else describe(error))
    if error is not None:
        raise error
    failed = [(i, m) for i, m in enumerate(messages) if m]
    if failed:
        raise elsewhere(*failed[0])
    return result
