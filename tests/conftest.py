"""Shared pytest set-up: JAX's compilation cache and cheap XLA:CPU compiles for the test run
and every subprocess it starts, the tiny pipeline folders built once per session, and the
`gpu` marker (skipped, with a reason, without a GPU).

Compile time dominates this suite on CPU: hundreds of tiny programs, many compiled again
from fresh `jax.jit` closures (per test, per subprocess, per CLI call). Two settings, made
in the environment before JAX starts so that `subprocess` children inherit them:

- the persistent compilation cache (every program, however small or quick to compile):
  a program compiled once is loaded, not compiled, by every later test and subprocess.
  It lives in the user's cache folder (`~/.cache/ffjax/jax_compilation_cache`, or under
  $XDG_CACHE_HOME), like pip's, so it survives between runs and between clones of the
  repository (CI's clean clone on the same machine too); JAX keys every entry by the
  program, the JAX / XLA versions and the flags, and evicts the least recently used past
  4 GiB. A machine's first run compiles everything (cold). Set JAX_COMPILATION_CACHE_DIR
  to use another folder, or run with `-p no:cacheprovider` for a cache that lives only
  as long as the run.
- XLA:CPU without LLVM's backend optimisation (FFJAX_TEST_XLA_FLAGS below): the tiny programs compile several times faster and run
  a little slower, which on these sizes is a large net win. HLO optimisation is unchanged;
  every comparison in the suite (resume == uninterrupted, 1 == 8 devices, dry run ==
  trainer) compiles both sides with the same flags. Set FFJAX_TEST_XLA_FLAGS= (empty) to
  test with XLA's default CPU pipeline instead.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile

import pytest

FAST_CPU_FLAGS = (
    "--xla_backend_optimization_level=0",
    "--xla_llvm_disable_expensive_passes=true",
)
# Not --xla_cpu_use_fusion_emitters=false (cheaper compiles still): with it and O0,
# a rollout's log-prob and the loss's recomputation of it round differently, and
# tests/algorithms/test_grpo.py's bit-exact "ratio == 1 before the first update" fails.
CACHE_ENV = {
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1",  # -1: no size floor, no override
}
if importlib.util.find_spec("filelock"):  # which JAX needs for a bounded cache
    # A bounded cache evicts least-recently-used entries and, as a side effect, takes a
    # file lock around reads and writes: the multi-process tests share the folder.
    CACHE_ENV["JAX_COMPILATION_CACHE_MAX_SIZE"] = str(4 << 30)
_SESSION_CACHE: str | None = None  # a temporary cache folder this run made (removed after)


def _cache_dir(config) -> str:
    global _SESSION_CACHE
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return os.environ["JAX_COMPILATION_CACHE_DIR"]
    if getattr(config, "cache", None) is None:  # `-p no:cacheprovider`: this run only
        _SESSION_CACHE = tempfile.mkdtemp(prefix="ffjax_jax_cache_")
        return _SESSION_CACHE
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    path = os.path.join(base, "ffjax", "jax_compilation_cache")
    os.makedirs(path, exist_ok=True)
    return path


def pytest_configure(config):
    flags = os.environ.get("FFJAX_TEST_XLA_FLAGS", " ".join(FAST_CPU_FLAGS))
    os.environ["FFJAX_TEST_XLA_FLAGS"] = flags  # subprocesses see what the run used
    present = os.environ.get("XLA_FLAGS", "").split()
    names = {f.split("=")[0] for f in present}
    # A flag already in XLA_FLAGS (set by whoever runs pytest) wins over ours.
    extra = [f for f in flags.split() if f.split("=")[0] not in names]
    if extra:
        os.environ["XLA_FLAGS"] = " ".join(present + extra)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache_dir(config)
    for k, v in CACHE_ENV.items():
        os.environ.setdefault(k, v)
    if "jax" in sys.modules:  # imported before this hook (a plugin): set it in-process too
        import jax

        jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
        for k in CACHE_ENV:
            name = k.lower()
            jax.config.update(name, type(jax.config.values[name])(os.environ[k]))


def pytest_unconfigure(config):
    if _SESSION_CACHE is not None:
        shutil.rmtree(_SESSION_CACHE, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_pipelines(tmp_path_factory):
    """The tiny FLUX / Qwen-Image / WAN pipelines, each built on first use and shared by
    the whole session (tests/tiny_pipelines.py): treat the folders as read-only."""
    from tests.tiny_pipelines import TinyPipelines

    return TinyPipelines(tmp_path_factory.mktemp("tiny_pipelines"))


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
