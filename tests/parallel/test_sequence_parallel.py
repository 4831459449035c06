"""Sequence parallelism (`length` over the `sequence` mesh axis) of the FLUX.1,
Qwen-Image and WAN transformers on 8 fake CPU devices: the same forward and gradient
as one device, and the sequence axis really splits the activations."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODELS = ("flux", "qwen-image", "wan")


@pytest.fixture(scope="module")
def results():
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    # Optimisation level 0 halves the compile time; every mesh compiles the same way.
    env["XLA_FLAGS"] = " ".join([
        env.get("XLA_FLAGS", ""),
        "--xla_force_host_platform_device_count=8",
        "--xla_backend_optimization_level=0",
        "--xla_llvm_disable_expensive_passes=true",
    ])  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "tests.parallel.sequence_parallel"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    print(json.dumps(out, indent=1))  # the measured errors and memory, for the log
    return out


@pytest.mark.parametrize("layout", ["even", "odd"])
@pytest.mark.parametrize("model", MODELS)
def test_data2_x_sequence4_equals_one_device(results, model, layout):
    """Forward output and d mean(out^2) / d params under data=2 x sequence=4 equal the
    1-device numbers to float32 rounding; odd token counts (not divisible by 4) run."""
    r = results[model][layout]
    assert r["max_out"] > 0.1 and r["max_grad"] > 1e-3  # the numbers compared are not ~0
    assert r["max_err_out"] <= 2e-5 * max(1.0, r["max_out"]), r
    assert r["max_err_grad"] <= 2e-5 * max(1.0, r["max_grad"]), r


@pytest.mark.parametrize("model", MODELS)
def test_sequence_axis_splits_the_activations(results, model):
    """At the same per-device batch (1 sample), forward + backward on data=2 x sequence=4
    needs well under the temporary memory of data=2 alone (activations split 4 ways over
    tokens), and the compiled output is split over `sequence` along its token axis."""
    r = results[model]["even"]
    assert r["temp_sp4"] < 0.6 * r["temp_sp1"], r
    assert "sequence" in r["out_spec"], r
