"""Test-wide setup: CPU by default, and the `gpu` marker's skip rule."""

import os

import jax
import pytest

# Tests compare against float64 references; keep x64 off (ffjax runs float32) but make
# matmuls exact so parity tolerances mean what they say.
jax.config.update("jax_default_matmul_precision", "highest")


def _gpu_visible() -> bool:
    try:
        return any(d.platform == "gpu" for d in jax.devices())
    except RuntimeError:
        return False


def pytest_collection_modifyitems(config, items):
    if _gpu_visible() and not os.environ.get("FFJAX_SKIP_GPU"):
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU visible to JAX (run tools/gpu_check.sh on one)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
