"""Shared pytest hooks: tests marked `gpu` are skipped, with a reason, without a GPU."""

import pytest


def _has_gpu() -> bool:
    import jax

    try:
        return bool(jax.devices("gpu"))
    except RuntimeError:
        return False


def pytest_collection_modifyitems(config, items):
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if gpu_items and not _has_gpu():
        skip = pytest.mark.skip(reason="needs an NVIDIA GPU visible to JAX (none found)")
        for item in gpu_items:
            item.add_marker(skip)
