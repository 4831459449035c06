"""Checkpoint machinery shared by every model family: safetensors I/O and key tables.

A family's `convert.py` is a *table*: one `Rule` per parameter, mapping a path in our
Flax params tree to a key in the Diffusers / transformers checkpoint, with the transform
between the two layouts. This module runs any such table, strictly, in both directions:

    rules = [*dense("x_embedder", "x_embedder"), ...]     # the family's table
    params = load_params(rules, SafetensorsCheckpoint.open(folder), expected)
    state = export_params(rules, params)                   # back to checkpoint keys

Strict means: a checkpoint tensor the table does not consume, a table key the
checkpoint lacks, or a tensor whose shape is not what the module expects is an error
naming the key and both shapes; nothing is skipped or guessed.

Safetensors files are read tensor by tensor (the header is parsed once, then each
tensor is one `seek` + `read`), without torch, for every dtype including bfloat16 (via
`ml_dtypes`), so no host ever holds a whole checkpoint twice.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

import ml_dtypes
import numpy as np
from flax import traverse_util
from flax.core import meta

# Raised here (with the subclasses below) and imported from here by much code.
from ffjax.errors import WeightsError as WeightsError

Shape = tuple[int, ...]

# safetensors dtype tags <-> NumPy dtypes (safetensors data is little-endian).
_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_TAGS = {v: k for k, v in _DTYPES.items()}


class CheckpointFormatError(WeightsError):
    """A file or folder that is not a readable checkpoint of the expected kind."""


class ConversionError(WeightsError):
    """Missing, unexpected or mis-shaped tensors between a checkpoint and a key table."""


# --------------------------------------------------------------------------- reading


class TensorSource(Protocol):
    """What a key table reads from: names, shapes, and one tensor at a time."""

    def keys(self) -> Iterable[str]: ...

    def shape(self, key: str) -> Shape: ...

    def read(self, key: str) -> np.ndarray: ...


class SafetensorsFile:
    """One `.safetensors` file; the header is parsed and checked against the file size.

    Raises CheckpointFormatError for a file that is truncated, has a corrupt header,
    or uses an unknown dtype.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        size = os.path.getsize(self.path)
        with open(self.path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointFormatError(
                    f"{self.path}: truncated safetensors file ({size} bytes)"
                )
            (n,) = struct.unpack("<Q", head)
            if 8 + n > size:
                raise CheckpointFormatError(
                    f"{self.path}: truncated safetensors file: header of {n} bytes does not fit"
                    f" in {size} bytes"
                )
            try:
                header = json.loads(f.read(n))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise CheckpointFormatError(f"{self.path}: corrupt safetensors header: {e}") from e
        self.metadata: dict[str, str] = header.pop("__metadata__", None) or {}
        self._data_start = 8 + n
        self._entries: dict[str, tuple[np.dtype, Shape, int, int]] = {}
        for key, e in header.items():
            if e.get("dtype") not in _DTYPES:
                raise CheckpointFormatError(f"{self.path}: tensor {key!r} has unsupported dtype")
            dtype, shape = _DTYPES[e["dtype"]], tuple(e["shape"])
            begin, end = e["data_offsets"]
            if end - begin != math.prod(shape) * dtype.itemsize:
                raise CheckpointFormatError(
                    f"{self.path}: tensor {key!r} size does not match shape"
                )
            if self._data_start + end > size:
                raise CheckpointFormatError(
                    f"{self.path}: truncated safetensors file: tensor {key!r} ends at byte"
                    f" {self._data_start + end} but the file has {size} bytes"
                )
            self._entries[key] = (dtype, shape, begin, end)

    def keys(self) -> list[str]:
        return list(self._entries)

    def shape(self, key: str) -> Shape:
        return self._entries[key][1]

    def dtype(self, key: str) -> np.dtype:
        return self._entries[key][0]

    def read(self, key: str) -> np.ndarray:
        """The tensor `key` as a fresh NumPy array in its stored dtype."""
        dtype, shape, begin, end = self._entries[key]
        with open(self.path, "rb") as f:
            f.seek(self._data_start + begin)
            buf = f.read(end - begin)
        return np.frombuffer(buf, dtype=dtype).reshape(shape).copy()


class SafetensorsCheckpoint:
    """All tensors of a checkpoint: one file, or the shards named by `*.index.json`."""

    def __init__(self, files: Sequence[SafetensorsFile]):
        self._where: dict[str, SafetensorsFile] = {}
        for f in files:
            for k in f.keys():
                if k in self._where:
                    raise CheckpointFormatError(
                        f"tensor {k!r} is in both {self._where[k].path} and {f.path}"
                    )
                self._where[k] = f

    @classmethod
    def open(cls, path: str | os.PathLike, prefix: str | None = None) -> SafetensorsCheckpoint:
        """Opens a `.safetensors` file, an `*.index.json`, or a folder holding either.

        In a folder, `prefix` (e.g. "diffusion_pytorch_model", "model") picks the file
        family when there are several; a sharded index wins over a single file.
        """
        path = os.fspath(path)
        if os.path.isdir(path):
            names = sorted(os.listdir(path))
            if prefix is not None:
                names = [n for n in names if n.startswith(prefix)]
            index = [n for n in names if n.endswith(".safetensors.index.json")]
            single = [n for n in names if n.endswith(".safetensors")]
            if index:
                path = os.path.join(path, index[0])
            elif len(single) == 1:
                path = os.path.join(path, single[0])
            else:
                found = "several: " + ", ".join(single) if single else "none"
                raise CheckpointFormatError(
                    f"{path}: expected one .safetensors file or a .safetensors.index.json"
                    f"{f' starting with {prefix!r}' if prefix else ''}; found {found}"
                )
        if path.endswith(".json"):
            with open(path) as f:
                weight_map = json.load(f).get("weight_map")
            if not isinstance(weight_map, dict):
                raise CheckpointFormatError(f"{path}: index has no 'weight_map'")
            folder = os.path.dirname(path)
            shards = {
                s: SafetensorsFile(os.path.join(folder, s))
                for s in sorted(set(weight_map.values()))
            }
            ckpt = cls(list(shards.values()))
            for k, s in weight_map.items():
                if ckpt._where.get(k) is not shards[s]:
                    raise CheckpointFormatError(
                        f"{path}: tensor {k!r} is not in its listed shard {s}"
                    )
            return ckpt
        return cls([SafetensorsFile(path)])

    def keys(self) -> list[str]:
        return list(self._where)

    def shape(self, key: str) -> Shape:
        return self._where[key].shape(key)

    def dtype(self, key: str) -> np.dtype:
        return self._where[key].dtype(key)

    def read(self, key: str) -> np.ndarray:
        return self._where[key].read(key)


class ArraySource:
    """A TensorSource over an in-memory `{key: array}` (e.g. a torch state dict as NumPy)."""

    def __init__(self, arrays: Mapping[str, Any]):
        self._arrays = {k: np.asarray(v) for k, v in arrays.items()}

    def keys(self) -> list[str]:
        return list(self._arrays)

    def shape(self, key: str) -> Shape:
        return tuple(self._arrays[key].shape)

    def read(self, key: str) -> np.ndarray:
        return self._arrays[key]


# --------------------------------------------------------------------------- writing


def save_safetensors(path: str | os.PathLike, tensors: Mapping[str, np.ndarray], metadata=None):
    """Writes `tensors` as one safetensors file (readable by the `safetensors` package)."""
    header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
    offset, arrays = 0, []
    for key in sorted(tensors):
        a = np.ascontiguousarray(tensors[key])
        if a.dtype not in _TAGS:
            raise WeightsError(f"tensor {key!r}: dtype {a.dtype} cannot be stored in safetensors")
        header[key] = {
            "dtype": _TAGS[a.dtype],
            "shape": list(a.shape),
            "data_offsets": [offset, offset + a.nbytes],
        }
        offset += a.nbytes
        arrays.append(a)
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the format aligns the data section to 8 bytes
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for a in arrays:
            f.write(a.tobytes())


def save_sharded(
    folder: str | os.PathLike, tensors: Mapping[str, np.ndarray], prefix: str, max_shard_bytes: int
):
    """Writes `prefix.safetensors`, or shards plus `prefix.safetensors.index.json` if larger."""
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for key in sorted(tensors):
        nbytes = np.asarray(tensors[key]).nbytes
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = tensors[key]
        size += nbytes
    if len(shards) == 1:
        save_safetensors(os.path.join(folder, f"{prefix}.safetensors"), shards[0])
        return
    weight_map = {}
    for i, shard in enumerate(shards):
        name = f"{prefix}-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_safetensors(os.path.join(folder, name), shard)
        weight_map.update(dict.fromkeys(shard, name))
    total = sum(np.asarray(t).nbytes for t in tensors.values())
    with open(os.path.join(folder, f"{prefix}.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)


# --------------------------------------------------------------------------- key tables


@dataclasses.dataclass(frozen=True)
class Transform:
    """A layout change between a checkpoint tensor ("theirs") and our parameter ("ours")."""

    name: str
    to_ours: Callable[[np.ndarray], np.ndarray]
    to_theirs: Callable[[np.ndarray], np.ndarray]
    ours_shape: Callable[[Shape], Shape]
    theirs_shape: Callable[[Shape], Shape]


IDENTITY = Transform("identity", lambda a: a, lambda a: a, tuple, tuple)


def transpose(perm: Sequence[int]) -> Transform:
    """ours = theirs.transpose(perm) (and back with the inverse permutation)."""
    perm = tuple(perm)
    inv = tuple(int(i) for i in np.argsort(perm))
    return Transform(
        f"transpose{perm}",
        lambda a: np.transpose(a, perm),
        lambda a: np.transpose(a, inv),
        lambda s: tuple(s[i] for i in perm),
        lambda s: tuple(s[i] for i in inv),
    )


LINEAR = transpose((1, 0))  # torch Linear weight (out, in) -> flax Dense kernel (in, out)
CONV2D = transpose((2, 3, 1, 0))  # torch Conv2d (out, in, kh, kw) -> flax Conv (kh, kw, in, out)


def reshape(theirs: Shape, ours: Shape) -> Transform:
    """A fixed reshape between `theirs` and `ours` (e.g. a 1x1 conv stored as a linear)."""
    theirs, ours = tuple(theirs), tuple(ours)
    return Transform(
        f"reshape{theirs}->{ours}",
        lambda a: a.reshape(ours),
        lambda a: a.reshape(theirs),
        lambda s: ours if tuple(s) == theirs else tuple(s),
        lambda s: theirs if tuple(s) == ours else tuple(s),
    )


@dataclasses.dataclass(frozen=True)
class Rule:
    """One row of a key table.

    Attributes:
      ours: '/'-joined path in our params tree, e.g. "double_blocks/attn/to_q/kernel".
      theirs: checkpoint key; with `layers > 0` it contains "{i}", the layer index.
      transform: theirs -> ours layout change.
      layers: 0 for a plain tensor; N > 0 stacks theirs.format(i=0..N-1) along a new
        leading axis of ours (the layer axis of an `nn.scan`).
    """

    ours: str
    theirs: str
    transform: Transform = IDENTITY
    layers: int = 0

    def theirs_keys(self) -> list[str]:
        if self.layers:
            return [self.theirs.format(i=i) for i in range(self.layers)]
        return [self.theirs]


def dense(ours: str, theirs: str, *, layers: int = 0, bias: bool = True) -> list[Rule]:
    """Rules for a torch `nn.Linear` <-> flax `Dense` (kernel transposed)."""
    rules = [Rule(f"{ours}/kernel", f"{theirs}.weight", LINEAR, layers)]
    return rules + ([Rule(f"{ours}/bias", f"{theirs}.bias", IDENTITY, layers)] if bias else [])


def conv(ours: str, theirs: str, *, layers: int = 0) -> list[Rule]:
    """Rules for a torch `nn.Conv2d` <-> flax `Conv` (OIHW -> HWIO)."""
    return [
        Rule(f"{ours}/kernel", f"{theirs}.weight", CONV2D, layers),
        Rule(f"{ours}/bias", f"{theirs}.bias", IDENTITY, layers),
    ]


def norm(ours: str, theirs: str, *, layers: int = 0, bias: bool = True) -> list[Rule]:
    """Rules for an affine norm (LayerNorm / GroupNorm / RMSNorm): weight -> scale."""
    rules = [Rule(f"{ours}/scale", f"{theirs}.weight", IDENTITY, layers)]
    return rules + ([Rule(f"{ours}/bias", f"{theirs}.bias", IDENTITY, layers)] if bias else [])


def _check_table(rules: Sequence[Rule], ours_paths: Iterable[str], what: str) -> None:
    table = [r.ours for r in rules]
    dup = sorted({p for p in table if table.count(p) > 1})
    missing = sorted(set(ours_paths) - set(table))
    extra = sorted(set(table) - set(ours_paths))
    if dup or missing or extra:
        raise ConversionError(
            f"{what}: the key table does not match the module (a bug in the table):"
            f" duplicated {dup[:5]}, params without a rule {missing[:5]}, rules without a"
            f" param {extra[:5]}"
        )


def _raise(what: str, problems: list[str]) -> None:
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise ConversionError(f"{what}: {len(problems)} problem(s):\n  {shown}{more}")


def load_params(
    rules: Sequence[Rule],
    source: TensorSource,
    expected: Mapping[str, Any],
    *,
    dtype: Any = None,
    place: Callable[[str, np.ndarray], Any] | None = None,
    what: str = "checkpoint",
) -> dict[str, Any]:
    """Runs a key table checkpoint -> ours, strictly.

    Args:
      rules: the family's key table.
      source: checkpoint tensors (e.g. `SafetensorsCheckpoint.open(folder)`).
      expected: {ours path: shape or array-like with `.shape`}, e.g. from
        `flat_shapes(jax.eval_shape(module.init, ...))`.
      dtype: cast every tensor to this dtype; None keeps the stored dtype (bit-exact).
      place: called as place(ours_path, array) to put each parameter on its device /
        sharding as soon as it is assembled; default returns the NumPy array.
      what: names the checkpoint in error messages.

    Returns:
      The nested params dict (`{"x_embedder": {"kernel": ...}, ...}`).

    Raises:
      ConversionError naming every missing, unexpected and mis-shaped tensor (with the
      checkpoint shape and the shape the module expects, in checkpoint layout).
    """
    shapes = {k: tuple(getattr(v, "shape", v)) for k, v in expected.items()}
    _check_table(rules, shapes, what)
    present = set(source.keys())
    wanted = {k for r in rules for k in r.theirs_keys()}
    problems = []
    for r in rules:
        want = r.transform.theirs_shape(shapes[r.ours][1:] if r.layers else shapes[r.ours])
        for k in r.theirs_keys():
            if k not in present:
                problems.append(f"missing tensor {k!r} (expected shape {want})")
            elif tuple(source.shape(k)) != want:
                problems.append(
                    f"tensor {k!r} has shape {tuple(source.shape(k))}, expected {want}"
                    f" (for ffjax param {r.ours!r} {shapes[r.ours]})"
                )
    problems += [
        f"unexpected tensor {k!r} with shape {tuple(source.shape(k))}"
        for k in sorted(present - wanted)
    ]
    _raise(what, problems)

    flat = {}
    for r in rules:
        parts = [r.transform.to_ours(source.read(k)) for k in r.theirs_keys()]
        a = np.stack(parts) if r.layers else parts[0]
        if dtype is not None:
            a = a.astype(dtype)
        flat[r.ours] = place(r.ours, a) if place else a
    return traverse_util.unflatten_dict(flat, sep="/")


def export_params(
    rules: Sequence[Rule], params: Mapping[str, Any], *, dtype: Any = None, what: str = "params"
) -> dict[str, np.ndarray]:
    """Runs a key table ours -> checkpoint: returns `{checkpoint key: NumPy array}`.

    `params` is the nested params dict (boxed or not); dtype None keeps each dtype.
    Raises ConversionError if the tree and the table disagree or a shape is off.
    """
    flat = flat_params(params)
    _check_table(rules, flat, what)
    out: dict[str, np.ndarray] = {}
    problems = []
    for r in rules:
        a = np.asarray(flat[r.ours])
        if dtype is not None:
            a = a.astype(dtype)
        if r.layers and (a.ndim == 0 or a.shape[0] != r.layers):
            problems.append(
                f"param {r.ours!r} has shape {a.shape}, expected {r.layers} stacked layers"
            )
            continue
        for i, k in enumerate(r.theirs_keys()):
            out[k] = np.ascontiguousarray(r.transform.to_theirs(a[i] if r.layers else a))
    _raise(what, problems)
    return out


def flat_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """{'/'-joined path: leaf} of a nested params dict, with Flax metadata boxes removed."""
    return traverse_util.flatten_dict(meta.unbox(dict(params)), sep="/")


def flat_shapes(abstract_params: Mapping[str, Any]) -> dict[str, Shape]:
    """{path: shape} of a (boxed or abstract) params tree."""
    return {k: tuple(v.shape) for k, v in flat_params(abstract_params).items()}


def as_stored(abstract_params: Any, dtype: Any) -> Any:
    """A (boxed or abstract) params tree as the `jax.ShapeDtypeStruct`s a loader storing
    every parameter in `dtype` would return (what adapters' `abstract_load` report)."""
    import jax
    import jax.numpy as jnp

    dt = jnp.dtype(dtype)
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, dt), meta.unbox(abstract_params))


DIFFUSERS_WEIGHTS = "diffusion_pytorch_model"  # Diffusers' weight file name stem


def dtype_overrides(dtype: Any) -> dict[str, str]:
    """Config overrides for loading in `dtype`: {"dtype", "param_dtype"} set to its name,
    or {} for None (keep the stored dtype)."""
    import jax.numpy as jnp  # jnp.dtype knows "bfloat16"; this module stays NumPy otherwise

    if dtype is None:
        return {}
    name = jnp.dtype(dtype).name
    return {"dtype": name, "param_dtype": name}


def open_diffusers(path: str | os.PathLike, source: TensorSource | None = None) -> TensorSource:
    """`source`, or the Diffusers component folder `path`'s safetensors (sharded or not)."""
    return (
        source if source is not None else SafetensorsCheckpoint.open(path, prefix=DIFFUSERS_WEIGHTS)
    )


# --------------------------------------------------------------------------- Diffusers folders
# What every family's `convert.py` does around its key tables.


def load_folder(
    path: str | os.PathLike,
    config_cls: Any,
    init_shapes: Callable[[Any], tuple[Any, Any]],
    rules: Callable[[Any], list[Rule]],
    what: str,
    dtype: Any = "float32",
    source: TensorSource | None = None,
    **runtime,
) -> tuple[Any, dict]:
    """(module, params) of a Diffusers component folder (config.json + safetensors).

    The config is `config_cls.from_diffusers(path)` with `dtype` (None: the stored one)
    and the `runtime` fields set; the tensors (`source`, or the folder's safetensors)
    go through the key table `rules(config)` onto the parameters of `init_shapes(config)`.
    `what` names the checkpoint in errors ("WAN VAE" -> "WAN VAE checkpoint PATH").
    """
    config = config_cls.from_diffusers(path, **dtype_overrides(dtype), **runtime)
    module, abstract = init_shapes(config)
    params = load_params(rules(config), open_diffusers(path, source), flat_shapes(abstract),
                         dtype=dtype, what=f"{what} checkpoint {os.fspath(path)}")  # fmt: skip
    return module, params


def component_rules(
    tables: Mapping[str, Callable[[Any], list[Rule]]], family: str, kind: str, config: Any
) -> list[Rule]:
    """`tables[kind](config)`; ValueError naming the allowed kinds for another `kind`."""
    if kind not in tables:
        allowed = ", ".join(repr(k) for k in tables)
        raise ValueError(f"unknown {family} component {kind!r}; allowed: {allowed}")
    return tables[kind](config)


def save_folder(
    rules: Sequence[Rule],
    config: Any,
    params: Mapping[str, Any],
    out_dir: str | os.PathLike,
    *,
    dtype: Any = None,
    max_shard_bytes: int = 10 * 2**30,
) -> int:
    """Writes `params` as a Diffusers folder (config.json + safetensors); returns tensor count.

    config.json is `config.to_diffusers()`; dtype None keeps each parameter's dtype.
    """
    tensors = export_params(rules, params, dtype=dtype)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config.to_diffusers(), f, indent=2)
    save_sharded(out_dir, tensors, DIFFUSERS_WEIGHTS, max_shard_bytes)
    return len(tensors)


def identify_folder(
    path: str | os.PathLike, family: str, pipelines: Sequence[str], components: Mapping[str, str]
) -> str:
    """ "pipeline" or a component kind for a Diffusers folder of `family`, by class name.

    A folder with a model_index.json is a pipeline if its `_class_name` is one of
    `pipelines`; one with a config.json is the kind whose class (`components`: kind ->
    Diffusers class) it names. Anything else is a CheckpointFormatError that names what
    does not match (missing config, or the class found).
    """
    path = os.fspath(path)
    wrong = f"{path}: not a {family} checkpoint"
    if os.path.exists(os.path.join(path, "model_index.json")):
        with open(os.path.join(path, "model_index.json")) as f:
            name = json.load(f).get("_class_name")
        if name not in pipelines:
            expected = repr(pipelines[0]) if len(pipelines) == 1 else f"one of {list(pipelines)}"
            raise CheckpointFormatError(
                f"{wrong}: model_index.json _class_name is {name!r}, expected {expected}"
            )
        return "pipeline"
    if not os.path.exists(os.path.join(path, "config.json")):
        raise CheckpointFormatError(f"{wrong}: no model_index.json or config.json")
    with open(os.path.join(path, "config.json")) as f:
        name = json.load(f).get("_class_name")
    for kind, class_name in components.items():
        if name == class_name:
            return kind
    expected = " or ".join(repr(c) for c in components.values())
    raise CheckpointFormatError(
        f"{wrong}: config.json _class_name is {name!r}, expected {expected}"
    )
