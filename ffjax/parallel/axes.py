"""Logical axis names, defined once, the default logical -> mesh axis rules, and
`constrain`, which pins an activation's sharding by its logical axes.

Model code annotates parameters (`nn.with_logical_partitioning`) and activations
(`constrain`) with these names only; which mesh axis (`data`, `fsdp`, `tensor`,
`sequence`) each maps to is a config choice (a rules table like `DEFAULT_RULES`), so
one model definition shards any way the run asks for.

Activations and parameters share `batch`, `length`, `heads` and `kv`, but not the
model width: a weight's `embed` axis is split over `fsdp` (FSDP shards weights), while
an activation's width is `activation_embed`, replicated by default; its rows are
already split over `fsdp` through `batch` (a mesh axis splits one dimension only), and
split features would need an all-gather before every matmul.

Sequence parallelism is `length` over `sequence`: each device holds L / sequence
tokens of every (B, L, D) activation the models pin with `constrain(x, TOKENS)`, and
`layers.dot_product_attention` keeps the queries split but gathers the keys / values
over `sequence` (every query sees every key: GSPMD inserts the all-gather for the XLA
kernel; a shard_map runs the fused cuDNN / splash kernels per device).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator, Sequence

import flax.linen as nn
import jax
from jax.sharding import AxisType, PartitionSpec

# Activation axes.
BATCH = "batch"  # samples in a batch
LENGTH = "length"  # tokens of a sequence (image patches, text tokens, video patches)
ACT_EMBED = "activation_embed"  # model width of an activation (not `embed`: see above)
# Parameter (and attention-head) axes.
EMBED = "embed"  # model width (hidden size) of a weight
HEADS = "heads"  # attention heads
KV = "kv"  # per-head feature dimension
MLP = "mlp"  # feed-forward hidden width (and other "wide" projections, e.g. AdaLN outputs)
LAYERS = "layers"  # stacked layers of an `nn.scan`
VOCAB = "vocab"  # token embedding table rows
CONV_IN = "conv_in"  # input channels of a convolution kernel
CONV_OUT = "conv_out"  # output channels of a convolution kernel

ALL = (BATCH, LENGTH, ACT_EMBED, EMBED, HEADS, KV, MLP, LAYERS, VOCAB, CONV_IN, CONV_OUT)

# The logical axes of the transformers' token streams.
TOKENS = (BATCH, LENGTH, ACT_EMBED)  # (B, L, D) hidden states
TOKEN_HEADS = (BATCH, LENGTH, HEADS, KV)  # (B, L, H, Dh) queries / keys / values

# FSDP over `fsdp`, tensor parallelism over `tensor`, batch over `data` (+ `fsdp`),
# sequence parallelism over `sequence`. An axis absent from the mesh is ignored.
DEFAULT_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    (BATCH, ("data", "fsdp")),
    (LENGTH, "sequence"),
    (ACT_EMBED, None),
    (EMBED, "fsdp"),
    (HEADS, "tensor"),
    (KV, None),
    (MLP, "tensor"),
    (LAYERS, None),
    (VOCAB, "tensor"),
    (CONV_IN, None),
    (CONV_OUT, None),
)

Rules = Sequence[tuple[str, str | tuple[str, ...] | None]]
_RULES: contextvars.ContextVar[Rules] = contextvars.ContextVar("ffjax_axis_rules")


@contextlib.contextmanager
def axis_rules(rules: Rules) -> Iterator[None]:
    """Makes `rules` the table `constrain` maps through, inside the `with` block.

    Activations only: parameter shardings take their rules as an argument
    (`param_shardings`, `sharding.logical_shardings`), so pass the same table there.

    The rules are read when a function is traced, so enter this around the first call
    (or the `.lower`) of a jitted function, like `jax.set_mesh`. Unlike the context
    mesh, they are not part of `jax.jit`'s cache key: a function already traced under
    other rules keeps them (make a fresh `jax.jit` to change them). Example:
    Megatron-style sequence parallelism over the tensor axis as well,

        rules = [(axes.LENGTH, ("sequence", "tensor")) if n == axes.LENGTH else (n, m)
                 for n, m in axes.DEFAULT_RULES]
        with jax.set_mesh(mesh), axes.axis_rules(rules):
            step(...)
    """
    token = _RULES.set(tuple(rules))
    try:
        yield
    finally:
        _RULES.reset(token)


def current_rules() -> Rules:
    """The rules of the innermost `axis_rules` block; `DEFAULT_RULES` outside any."""
    return _RULES.get(DEFAULT_RULES)


def fit_spec(spec: PartitionSpec, shape: Sequence[int], mesh) -> PartitionSpec:
    """`spec` (mesh axes) fitted to len(shape), without the axes that cannot split their dim.

    Per dimension, each named axis is kept (in order) while it is in the mesh, has
    size > 1 and the product of the kept sizes divides the dimension; a dimension left
    with none is replicated. `mesh` is a `Mesh` or an `AbstractMesh`.
    """
    sizes = dict(mesh.shape)
    entries = (tuple(spec) + (None,) * len(shape))[: len(shape)]
    out = []
    for dim, entry in zip(shape, entries, strict=True):
        names = (entry,) if isinstance(entry, str) else tuple(entry or ())
        kept: tuple[str, ...] = ()
        for n in names:  # keep each axis (in order) while the product divides the dimension
            if sizes.get(n, 1) > 1 and dim % math.prod(sizes[m] for m in (*kept, n)) == 0:
                kept = (*kept, n)
        out.append(None if not kept else kept[0] if len(kept) == 1 else kept)
    while out and out[-1] is None:
        out.pop()
    return PartitionSpec(*out)


def mesh_spec(logical_axes: Sequence[str | None], rules: Rules | None = None) -> PartitionSpec:
    """Logical axes -> mesh-axis `PartitionSpec` through `rules` (default `current_rules()`).

    A name absent from the rules is an error (a typo would silently replicate).
    """
    rules = current_rules() if rules is None else rules
    known = {name for name, _ in rules}
    unknown = [a for a in logical_axes if a is not None and a not in known]
    if unknown:
        raise ValueError(f"logical axes {unknown} are not in the rules; known: {sorted(known)}")
    return nn.logical_to_mesh_axes(tuple(logical_axes), list(rules))


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
    """`x` with its sharding pinned to `logical_axes`, one name (or None) per dimension.

    E.g. `constrain(h, axes.TOKENS)` on (B, L, D) hidden states under a mesh
    data=2 x sequence=4 pins P("data", "sequence"): each device holds B/2 samples of
    L/4 tokens, every feature.

    - No context mesh (`jax.sharding.get_abstract_mesh()` empty, i.e. outside
      `jax.set_mesh`): returns `x` unchanged, so single-device code is untouched.
    - Otherwise the names map through `current_rules()` (see `axis_rules`) to mesh
      axes; an axis that is not `Auto` in the context mesh (Manual inside a
      `shard_map`, Explicit), of size 1, or that does not divide its dimension (with
      the axes before it) is dropped for that dimension (`fit_spec`): odd token
      counts still run, that dimension replicated. The result goes to
      `jax.lax.with_sharding_constraint`, which works on every backend (CPU fake
      devices included, unlike `nn.with_logical_constraint`, which also needs a Flax
      rules context).

    Raises ValueError if len(logical_axes) != x.ndim or a name is not in the rules.
    """
    if len(logical_axes) != x.ndim:
        raise ValueError(
            f"{len(logical_axes)} logical axes {tuple(logical_axes)} for shape {x.shape}"
        )
    spec = fitted_spec(logical_axes, x.shape)
    return x if spec is None else jax.lax.with_sharding_constraint(x, spec)


def fitted_spec(logical_axes: Sequence[str | None], shape: Sequence[int]) -> PartitionSpec | None:
    """The mesh-axis spec `constrain` applies for `shape`, or None without a context mesh
    (or with no `Auto` axis in it)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return None
    auto = {n for n, t in zip(mesh.axis_names, mesh.axis_types, strict=True) if t == AxisType.Auto}
    if not auto:
        return None
    only_auto = lambda e: tuple(n for n in ((e,) if isinstance(e, str) else e or ()) if n in auto)
    spec = mesh_spec(logical_axes)
    return fit_spec(PartitionSpec(*(only_auto(e) for e in spec)), shape, mesh)


def param_shardings(abstract_params, mesh: jax.sharding.Mesh, rules: Rules = DEFAULT_RULES):
    """NamedShardings for a (boxed, e.g. `jax.eval_shape(module.init, ...)`) param tree.

    Leaves without logical annotations are replicated.
    """
    specs = nn.get_partition_spec(abstract_params)
    return nn.logical_to_mesh_sharding(specs, mesh, list(rules))
