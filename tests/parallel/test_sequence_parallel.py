"""Sequence parallelism (`length` over the `sequence` mesh axis) of the FLUX.1,
Qwen-Image and WAN transformers on 8 fake CPU devices: the same forward and gradient
as one device, and the sequence axis really splits the activations."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import AbstractMesh, AxisType
from jax.sharding import PartitionSpec as P

from ffjax.parallel import axes
from ffjax.parallel import mesh as mesh_lib

ROOT = Path(__file__).resolve().parents[2]
MODELS = ("flux", "qwen-image", "wan")


@pytest.fixture(scope="module")
def results():
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    # Compile time dominates: without the CPU fusion emitters and LLVM optimisation the
    # 15 tiny programs compile ~5x faster; every mesh compiles the same way.
    env["XLA_FLAGS"] = " ".join([
        env.get("XLA_FLAGS", ""),
        "--xla_force_host_platform_device_count=8",
        "--xla_backend_optimization_level=0",
        "--xla_llvm_disable_expensive_passes=true",
        "--xla_cpu_use_fusion_emitters=false",
    ])  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "tests.parallel.sequence_parallel"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    print(json.dumps(out, indent=1))  # the measured errors and memory, for the log
    return out


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["even", "odd"])
@pytest.mark.parametrize("model", MODELS)
def test_data2_x_sequence4_equals_one_device(results, model, layout):
    """Forward output and d mean(out^2) / d params under data=2 x sequence=4 equal the
    1-device numbers to float32 rounding; odd token counts (not divisible by 4) run."""
    r = results[model][layout]
    assert r["max_out"] > 0.1 and r["max_grad"] > 1e-3  # the numbers compared are not ~0
    assert r["max_err_out"] <= 2e-5 * max(1.0, r["max_out"]), r
    assert r["max_err_grad"] <= 2e-5 * max(1.0, r["max_grad"]), r


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
def test_sequence_axis_splits_the_activations(results, model):
    """At the same per-device batch (1 sample), forward + backward on data=2 x sequence=4
    needs well under the temporary memory of data=2 alone (activations split 4 ways over
    tokens), and the compiled output is split over `sequence` along its token axis."""
    r = results[model]["even"]
    assert r["temp_sp4"] < 0.6 * r["temp_sp1"], r
    assert "sequence" in r["out_spec"], r


@pytest.mark.slow
def test_fused_attention_wrapper_equals_the_plain_kernel(results):
    """The shard_map that runs cuDNN / splash per device (queries split over batch and
    length, keys / values whole) gives the kernel's output and gradients, masked or not."""
    errs = results["per_device_attention"]
    assert set(errs) == {"mask", "no mask"}
    assert max(errs.values()) < 1e-5, errs


def test_constrain_is_the_identity_without_a_context_mesh():
    x = jnp.ones((2, 6, 4))
    assert axes.constrain(x, axes.TOKENS) is x
    assert axes.fitted_spec(axes.TOKENS, x.shape) is None
    with pytest.raises(ValueError, match="3 logical axes"):
        axes.constrain(jnp.ones((2, 6)), axes.TOKENS)


def test_constrain_maps_through_the_rules_and_drops_what_cannot_split():
    sp = AbstractMesh((2, 2, 1, 4), mesh_lib.AXES, axis_types=(AxisType.Auto,) * 4)
    with jax.sharding.use_abstract_mesh(sp):
        # batch over (data, fsdp), length over sequence, the width never over fsdp.
        assert axes.fitted_spec(axes.TOKENS, (4, 12, 32)) == P(("data", "fsdp"), "sequence")
        assert axes.fitted_spec(axes.TOKENS, (2, 5, 32)) == P("data")  # odd length: whole
        assert axes.fitted_spec(axes.TOKEN_HEADS, (1, 8, 2, 4)) == P(None, "sequence")
        assert axes.fitted_spec((axes.EMBED, axes.MLP), (8, 8)) == P("fsdp")  # weights
        with pytest.raises(ValueError, match="not in the rules"):
            axes.fitted_spec(("batch", "lenght"), (4, 8))
    # Megatron-style: tokens over sequence x tensor (the `axis_rules` example).
    rules = [(n, ("sequence", "tensor") if n == axes.LENGTH else m) for n, m in axes.DEFAULT_RULES]
    tp = AbstractMesh((2, 1, 2, 2), mesh_lib.AXES, axis_types=(AxisType.Auto,) * 4)
    with jax.sharding.use_abstract_mesh(tp):
        with axes.axis_rules(rules):
            assert axes.fitted_spec(axes.TOKENS, (2, 16, 32)) == P("data", ("sequence", "tensor"))
        assert axes.current_rules() == axes.DEFAULT_RULES
        assert axes.fitted_spec(axes.TOKENS, (2, 16, 32)) == P("data", "sequence")
    manual = AbstractMesh(
        (2, 1, 1, 4), mesh_lib.AXES, axis_types=(AxisType.Auto,) * 3 + (AxisType.Manual,)
    )
    with jax.sharding.use_abstract_mesh(manual):  # inside a shard_map over `sequence`
        assert axes.fitted_spec(axes.TOKENS, (4, 12, 32)) == P("data")
