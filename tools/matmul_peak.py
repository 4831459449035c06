"""The bf16 matrix-multiply rate JAX reaches on this device: the peak MFU is judged by.

    python tools/matmul_peak.py [--n 8192] [--repeats 10]    # prints "peak_tflops <x>"

An n x n x n bfloat16 product (float32 accumulation, bf16 result), compiled and warmed up,
then timed `--repeats` times; the best rate is the measured peak (a data sheet's
dense figure is reached only by hand-tuned kernels; e.g. H100 SXM 989 TFLOP/s).
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import jax.numpy as jnp


def measure(n: int, repeats: int) -> float:
    """Best TFLOP/s of `repeats` timed n^3 bf16 products (after two warm-up calls)."""
    ka, kb = jax.random.split(jax.random.key(0))
    a = jax.random.normal(ka, (n, n), jnp.bfloat16)
    b = jax.random.normal(kb, (n, n), jnp.bfloat16)
    matmul = jax.jit(lambda a, b: a @ b)
    for _ in range(2):
        matmul(a, b).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        matmul(a, b).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e12


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=8192)
    p.add_argument("--repeats", type=int, default=10)
    args = p.parse_args(argv)
    device = jax.devices()[0]
    print(
        f"# {device.device_kind} ({jax.default_backend()}), {args.n}^3 bf16, best of {args.repeats}"
    )
    print(f"peak_tflops {measure(args.n, args.repeats):.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
