"""Meshes from config (sizes, errors), multi-process detection, and the sharding
equality of the train step on 8 fake CPU devices (DESIGN.md section 4)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from jax.sharding import AxisType, PartitionSpec

from ffjax import configs
from ffjax.parallel import mesh as mesh_lib
from ffjax.parallel.sharding import fit_spec

ROOT = Path(__file__).resolve().parents[2]


class FakeDevice:
    def __init__(self, i):
        self.id = i

    def __repr__(self):
        return f"FakeDevice({self.id})"


def fake(n):
    return [FakeDevice(i) for i in range(n)]


@pytest.mark.parametrize(
    "sizes, n, shape",
    [
        ({"data": -1}, 8, (8, 1, 1, 1)),
        ({"data": -1, "fsdp": 4, "tensor": 2}, 8, (1, 4, 2, 1)),
        ({"data": 2, "fsdp": -1}, 12, (2, 6, 1, 1)),
        ({"data": 3, "fsdp": 1, "tensor": 1, "sequence": -1}, 6, (3, 1, 1, 2)),
        ({"data": 2, "fsdp": 2, "tensor": 2, "sequence": 2}, 16, (2, 2, 2, 2)),
        ({"data": 1}, 1, (1, 1, 1, 1)),
    ],
)
def test_sizes_resolve_one_minus_one_to_the_rest(sizes, n, shape):
    assert mesh_lib.mesh_shape(sizes, n) == shape
    mesh = mesh_lib.make_mesh(sizes, fake(n))
    assert mesh.axis_names == mesh_lib.AXES
    assert tuple(mesh.shape.values()) == shape
    assert mesh.axis_types == (AxisType.Auto,) * 4
    assert [d.id for d in mesh.devices.ravel()] == list(range(n))  # given order kept


@pytest.mark.parametrize(
    "sizes, n, words",
    [
        ({"data": -1, "fsdp": -1}, 8, ["only one mesh axis", "data, fsdp", "8 device(s)"]),
        ({"data": 2, "fsdp": 2}, 8, ["multiply to 4", "config.mesh.data=2", "8 device(s)"]),
        ({"data": 4, "fsdp": 4}, 8, ["multiply to 16", "config.mesh.fsdp=4"]),
        ({"data": -1, "fsdp": 3}, 8, ["does not divide", "config.mesh.fsdp=3", "8 device(s)"]),
        ({"data": -1, "tensor": 0}, 8, ["config.mesh.tensor must be"]),
    ],
)
def test_bad_sizes_name_the_keys_and_the_device_count(sizes, n, words):
    with pytest.raises(configs.ConfigError) as e:
        mesh_lib.make_mesh(sizes, fake(n))
    for w in words:
        assert w in str(e.value)


def test_default_config_is_one_data_parallel_mesh_of_every_device():
    mesh = mesh_lib.make_mesh(configs.base_config().mesh)
    assert dict(mesh.shape) == {"data": jax.device_count(), "fsdp": 1, "tensor": 1, "sequence": 1}
    assert mesh.axis_types == (AxisType.Auto,) * 4


def test_fit_spec_drops_axes_that_do_not_divide():
    mesh = mesh_lib.make_mesh({"data": 2, "fsdp": 4}, fake(8))
    P = PartitionSpec
    assert fit_spec(P(("data", "fsdp")), (16, 3), mesh) == P(("data", "fsdp"))
    assert fit_spec(P(("data", "fsdp")), (6,), mesh) == P("data")
    assert fit_spec(P("fsdp", "tensor"), (8, 5), mesh) == P("fsdp")  # tensor has size 1
    assert fit_spec(P(None, "fsdp"), (8, 6), mesh) == P()
    assert fit_spec(P(("data", "fsdp")), (), mesh) == P()  # a scalar in a batch


@pytest.mark.parametrize(
    "env, multi",
    [
        ({}, False),
        ({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"}, True),
        ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}, False),
        ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"}, True),
        ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4", "SLURM_STEP_NUM_TASKS": "1"}, False),
        ({"SLURM_NTASKS": "4"}, False),  # not inside a SLURM job
        ({"OMPI_COMM_WORLD_SIZE": "2"}, True),
        ({"TPU_WORKER_HOSTNAMES": "localhost"}, False),  # single-host TPU VM
        ({"TPU_WORKER_HOSTNAMES": "t1k-w-0,t1k-w-1"}, True),
        ({"MEGASCALE_COORDINATOR_ADDRESS": "10.0.0.2"}, True),
    ],
)
def test_multi_process_environment(env, multi):
    assert (mesh_lib.multi_process_environment(env) is not None) == multi


def test_distributed_is_initialized_only_in_a_multi_process_environment(monkeypatch):
    calls = []
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **k: calls.append(1))
    assert mesh_lib.maybe_initialize_distributed({"SLURM_JOB_ID": "1"}) is False
    assert calls == []
    assert mesh_lib.maybe_initialize_distributed({"SLURM_JOB_ID": "1", "SLURM_NTASKS": "2"})
    assert calls == [1]


@pytest.mark.slow
def test_train_step_gives_the_same_numbers_on_every_mesh():
    """Same loss, grad norm and updated LoRA weights on 1 device and on 8 fake CPU
    devices as data=8, fsdp=8, tensor=2 x fsdp=4 and sequence=4 x data=2; the weights
    really are sharded."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    # Optimisation level 0 halves the compile time; every mesh compiles the same way.
    env["XLA_FLAGS"] = " ".join([
        env.get("XLA_FLAGS", ""),
        "--xla_force_host_platform_device_count=8",
        "--xla_backend_optimization_level=0",
    ])  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "tests.parallel.sharded_step"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    ref = out.pop("1 device")
    assert set(out) == {"data=8", "fsdp=8", "tensor=2 x fsdp=4", "sequence=4 x data=2"}
    moved = max(np.abs(np.asarray(v)).max() for k, v in ref["trainable"].items() if k.endswith("b"))
    assert moved > 1e-4  # B starts at zero: the steps changed the weights
    for name, got in out.items():
        np.testing.assert_allclose(got["loss"], ref["loss"], rtol=1e-5, err_msg=name)
        np.testing.assert_allclose(got["grad_norm"], ref["grad_norm"], rtol=1e-5, err_msg=name)
        assert got["trainable"].keys() == ref["trainable"].keys()
        for k, v in ref["trainable"].items():
            # Adam's first steps move each weight by ~lr = 1e-3 whatever the gradient's
            # size: atol is 1% of such a step.
            np.testing.assert_allclose(got["trainable"][k], v, rtol=1e-5, atol=1e-5, err_msg=k)
    specs = {name: {t: " ".join(s) for t, s in got["specs"].items()} for name, got in out.items()}
    for tree in ("trainable", "opt_state", "ema", "base_params"):
        assert "fsdp" not in specs["data=8"][tree] and "tensor" not in specs["data=8"][tree]
        assert "fsdp" in specs["fsdp=8"][tree], (tree, specs["fsdp=8"][tree])
        assert "tensor" in specs["tensor=2 x fsdp=4"][tree], tree
        assert "fsdp" in specs["tensor=2 x fsdp=4"][tree], tree
