"""`python -m ffjax.sample` as 2 real processes (`jax.distributed` over 127.0.0.1, Gloo
CPU collectives) writes exactly the files of one process on the same 4 devices (the toy
model, from a checkpoint), and a bad argument on one process makes both exit with its
message instead of hanging. (The same holds for the FLUX-architecture demo pipeline,
configs/demo.py with --weights base: checked once on 2026-12-01, 6 PNGs equal byte
for byte; at ~90 s of this CPU it is not part of this file.)

The processes run tests/parallel/multiprocess_sample.py (jax.distributed.initialize,
then the CLI); the reference is the plain CLI in one process of 4 fake CPU devices.
"""

import os
import runpy
import socket
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

from ffjax import sample as sample_lib
from ffjax import trainer

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 150  # per launch; a bad argument must end both processes well before it

RECIPE = """\
import pathlib
from tests.toy_model import toy_config

def get_config(variant=''):
    c = toy_config(pathlib.Path({root!r}))
    c.train.num_epochs = 1
    c.checkpoint.every_epochs = 1
    return c
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(root, recipe): a 1-epoch toy run with EMA in root/run, 5 prompts in prompts.txt."""
    root = tmp_path_factory.mktemp("sample_mp")
    recipe = root / "toy_recipe.py"
    recipe.write_text(RECIPE.format(root=str(root)))
    trainer.train(runpy.run_path(str(recipe))["get_config"](), root / "run", progress=False)
    (root / "prompts.txt").write_text("\n".join(f"toy prompt {i}" for i in (0, 3, 7, 1, 9)))
    return root, recipe


def _env(devices: int) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = " ".join([
        env.get("XLA_FLAGS", ""),
        f"--xla_force_host_platform_device_count={devices}",
        "--xla_backend_optimization_level=0",  # faster compiles; the same in every run
    ])  # fmt: skip
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(args_of_process: list[list[str]], devices_each: int) -> list[subprocess.Popen]:
    """One multiprocess_sample.py process per argument list (a job of that many
    processes); a single list without a job: the plain CLI, `python -m ffjax.sample`."""
    if len(args_of_process) == 1:
        cmds = [[sys.executable, "-m", "ffjax.sample", *map(str, args_of_process[0])]]
    else:
        port, n = _free_port(), len(args_of_process)
        cmds = [[sys.executable, "-m", "tests.parallel.multiprocess_sample",
                 "--num-processes", str(n), "--process-id", str(i), "--port", str(port),
                 "--", *map(str, args)] for i, args in enumerate(args_of_process)]  # fmt: skip
    return [subprocess.Popen(cmd, cwd=ROOT, env=_env(devices_each), text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for cmd in cmds]  # fmt: skip


def _wait(procs: list[subprocess.Popen]) -> list[tuple[int, str, str]]:
    """(exit code, stdout, stderr) of each process. A process still running after
    TIMEOUT_S is killed (exit code -9): a hang fails the test instead of blocking it."""
    deadline = time.monotonic() + TIMEOUT_S
    results = []
    try:
        for p in procs:
            try:
                out, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                out, err = p.communicate()
            results.append((p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return results


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _one_and_two(common: list, root: Path, name: str) -> tuple[dict, dict, list]:
    """Files of `ffjax.sample *common` in 1 process of 4 devices and in 2 of 2 (run at
    the same time), and the (code, stdout, stderr) of the 1-process run and the job."""
    procs = _start([[*common, "--out", root / f"{name}_one"]], 4)
    procs += _start([[*common, "--out", root / f"{name}_two"]] * 2, 2)
    results = _wait(procs)
    for i, (code, _, err) in enumerate(results):
        assert code == 0, f"{['reference', 'process 0', 'process 1'][i]}: {code}\n{err[-3000:]}"
    return _files(root / f"{name}_one"), _files(root / f"{name}_two"), results


def test_batches_are_whole_rows_of_every_device_for_any_process_count():
    # data=2 x fsdp=2 (the mesh's shape, whichever processes hold its devices).
    mesh = types.SimpleNamespace(shape={"data": 2, "fsdp": 2, "tensor": 3, "sequence": 1})
    assert sample_lib._call_rows(10, 0, mesh) == 12  # all 10 images, padded to 3 per device
    assert sample_lib._call_rows(10, 3, mesh) == 4
    assert sample_lib._call_rows(10, 8, mesh) == 8
    one = types.SimpleNamespace(shape={"data": 1, "fsdp": 1, "tensor": 1, "sequence": 1})
    assert sample_lib._call_rows(10, 0, one) == 10 and sample_lib._call_rows(10, 3, one) == 3


@pytest.mark.slow
def test_two_processes_write_the_files_of_one(trained):
    root, recipe = trained
    # 5 prompts x 2 = 10 images in batches of 4 (1 row per device): 3 calls, the last
    # padded; each process encodes and samples 2 rows of each call.
    common = ["--config", recipe, "--config.sampling.batch_size=4", "--checkpoint",
              root / "run", "--prompts", root / "prompts.txt", "--num_per_prompt", 2,
              "--seed", 5]  # fmt: skip
    expected, got, (one, two0, two1) = _one_and_two(common, root, "toy")
    assert "wrote 10 images (5 prompts x 2) with the ema weights of" in one[1]
    assert "wrote 10 images (5 prompts x 2) with the ema weights of" in two0[1]
    assert "(2 processes)" in two0[1]
    assert "sampled this process's rows of 10 images (2 processes); process 0" in two1[1]
    assert sorted(expected) == sorted(
        [f"{i:05d}_{k}.png" for i in range(5) for k in (0, 1)] + ["grid.png", "prompts.jsonl"]
    )
    assert len({expected[f"{i:05d}_{k}.png"] for i in range(5) for k in (0, 1)}) == 10
    assert sorted(got) == sorted(expected)
    for name, data in expected.items():
        assert got[name] == data, name


@pytest.mark.slow
def test_a_bad_argument_on_one_process_ends_both(trained):
    root, recipe = trained
    common = ["--config", recipe, "--checkpoint", root / "run", "--out", root / "bad"]
    good, missing = root / "prompts.txt", root / "no_such_prompts.txt"
    t0 = time.monotonic()
    # Process 1 alone lacks the prompt file (as when it is not on that host's disk);
    # in a second job, both are given a config the checkpoint does not fit (found by
    # every process while restoring, after the first collectives).
    procs = _start([[*common, "--prompts", good], [*common, "--prompts", missing]], 2)
    procs += _start([[*common, "--prompts", good, "--config.train.lora_rank=8"]] * 2, 2)
    results = _wait(procs)
    took = time.monotonic() - t0
    for i, (code, _, err) in enumerate(results):
        assert code == 2 and "Traceback" not in err, f"process {i % 2}: {code}\n{err[-3000:]}"
    own = results[1][2].splitlines()[-1]
    assert own.startswith("ffjax.sample: prompt path") and str(missing) in own, own
    other = results[0][2].splitlines()[-1]
    assert other == own.replace("ffjax.sample: ", "ffjax.sample: process 1: ", 1), other
    for _, _, err in results[2:]:
        assert "does not fit model" in err.splitlines()[-1], err[-3000:]
        assert "train.lora_rank: 4 -> 8" in err.splitlines()[-1]
    assert took < TIMEOUT_S / 2, took  # no process waited out a collective's timeout
    assert not (root / "bad").exists() or not any((root / "bad").iterdir())
