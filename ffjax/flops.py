"""Matmul FLOPs of a JAX function, counted from its jaxpr (the model as written).

A dense layer, an attention score or a convolution is a `dot_general` (or
`conv_general_dilated`) in the traced program; their FLOPs (2 per multiply-add) follow
from the operand shapes alone, so the count is exact for the shapes traced and needs
no compile, no device and no weights: the model FLOPs that a measured time turns into
MFU (`flops / (seconds * devices * peak)`). Elementwise work (norms, activations,
softmax, the optimizer) is left out, as MFU conventionally does; it is < 1-2% of a
transformer's FLOPs at these widths.

Loops count as they run: a `scan` body times its length, a `while` body times its trip
count when the loop is a counted one (`fori_loop`; otherwise once, and
`Count.uncounted_loops` says how many were not), a `cond` its costliest branch; a Pallas
kernel counts its cost estimate, if it has one (splash attention has none: it is left
out and `Count.uncounted_kernels` says so). Inside
`shard_map` shapes are per device: the body counts once per device of its manual axes.
cuDNN's fused attention (`dot_product_attention_{fwd,bwd}_wrapper`) counts its QK^T and
PV matmuls (backward: twice the forward, its four matmuls less the recomputed scores).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.extend import core as jex_core


@dataclasses.dataclass
class Count:
    """FLOPs of a jaxpr and the `while` loops whose trip count it could not tell."""

    flops: int = 0
    uncounted_loops: int = 0
    uncounted_kernels: int = 0  # Pallas kernels without a cost estimate (splash attention)

    def __add__(self, other: Count) -> Count:
        pairs = zip(dataclasses.astuple(self), dataclasses.astuple(other), strict=True)
        return Count(*(a + b for a, b in pairs))

    def __mul__(self, k: int) -> Count:
        return dataclasses.replace(self, flops=self.flops * k)


def _shape(v) -> tuple[int, ...]:
    return tuple(getattr(v.aval, "shape", ()))


def _dot(eqn) -> int:
    (lc, rc), (lb, _) = eqn.params["dimension_numbers"]
    lhs, rhs = _shape(eqn.invars[0]), _shape(eqn.invars[1])
    batch = math.prod(lhs[d] for d in lb)
    contract = math.prod(lhs[d] for d in lc)
    lhs_free = math.prod(n for d, n in enumerate(lhs) if d not in lc and d not in lb)
    rb = eqn.params["dimension_numbers"][1][1]
    rhs_free = math.prod(n for d, n in enumerate(rhs) if d not in rc and d not in rb)
    return 2 * batch * contract * lhs_free * rhs_free


def _conv(eqn) -> int:
    out, rhs = _shape(eqn.outvars[0]), _shape(eqn.invars[1])
    out_features = rhs[eqn.params["dimension_numbers"].rhs_spec[0]]
    # Each output element: (input features per group) x (kernel window) multiply-adds.
    return 2 * math.prod(out) * math.prod(rhs) // out_features


def _attention(eqn, backward: bool) -> int:
    # Operands q, k, v, ... in (B, T, N, H) layout unless params say BNTH; the scores
    # and the weighted sum are 2 * B * N * Tq * Tk * H each.
    q, k = _shape(eqn.invars[0]), _shape(eqn.invars[1])
    layout = eqn.params.get("layout")
    bnth = getattr(layout, "name", str(layout)).upper().endswith("BNTH") or layout == 1
    b, tq, n, h = (q[0], q[2], q[1], q[3]) if bnth else q
    tk = k[2] if bnth else k[1]
    forward = 4 * b * n * tq * tk * h
    return 2 * forward if backward else forward


def _trip_count(eqn) -> int | None:
    """Trip count of a `fori_loop`-shaped while: counter < a literal bound from 0."""
    cond = eqn.params["cond_jaxpr"].jaxpr
    if len(cond.eqns) != 1 or cond.eqns[0].primitive.name != "lt":
        return None
    bound = cond.eqns[0].invars[1]
    value = getattr(bound, "val", None)
    if value is None:
        consts = dict(zip(cond.constvars, eqn.params["cond_jaxpr"].consts, strict=False))
        value = consts.get(bound)
    try:
        return int(np.asarray(value))
    except (TypeError, ValueError):
        return None


def _sub_jaxprs(params: dict[str, Any]):
    for value in params.values():
        for v in value if isinstance(value, tuple | list) else (value,):
            if isinstance(v, jex_core.ClosedJaxpr):
                yield v.jaxpr
            elif isinstance(v, jex_core.Jaxpr):
                yield v


def count_jaxpr(jaxpr) -> Count:
    """`Count` of a (closed) jaxpr."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    total = Count()
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            total += Count(_dot(eqn))
        elif name == "conv_general_dilated":
            total += Count(_conv(eqn))
        elif name.startswith(("dot_product_attention_fwd", "dot_product_attention_bwd")):
            # cuDNN's fused attention (jax.nn.dot_product_attention(implementation="cudnn")):
            # "..._fwd_wrapper" / "..._bwd_wrapper" primitives; fp8 variants are not used.
            total += Count(_attention(eqn, backward="_bwd" in name))
        elif name == "pallas_call":
            estimate = eqn.params.get("cost_estimate")
            if estimate is not None:
                total += Count(int(estimate.flops))
            else:  # a hand-written kernel's FLOPs cannot be read off its block program
                total += Count(uncounted_kernels=1)
        elif name == "scan":
            total += count_jaxpr(eqn.params["jaxpr"]) * eqn.params["length"]
        elif name == "while":
            body = count_jaxpr(eqn.params["body_jaxpr"])
            trips = _trip_count(eqn)
            total += body * trips if trips is not None else body + Count(uncounted_loops=1)
        elif name == "cond":
            branches = [count_jaxpr(b) for b in eqn.params["branches"]]
            total += max(branches, key=lambda c: c.flops)
        elif name == "shard_map":
            mesh, manual = eqn.params["mesh"], eqn.params.get("manual_axes", ())
            copies = math.prod(mesh.shape[a] for a in manual) if manual else 1
            total += count_jaxpr(eqn.params["jaxpr"]) * copies
        else:  # pjit, remat, custom_vjp/jvp calls, closed_call: their bodies
            for sub in _sub_jaxprs(eqn.params):
                total += count_jaxpr(sub)
    return total


def count(fn: Callable, *args) -> Count:
    """`Count` of `fn(*args)` (arrays or ShapeDtypeStructs), traced, not run."""
    return count_jaxpr(jax.make_jaxpr(fn)(*args))
