"""Multi-process training: each process builds, encodes, rolls out and scores only its
rows (`ffjax.parallel.rows`), and 2 real processes on this CPU train exactly like one.

The end-to-end test launches tests/parallel/multiprocess_train.py as 2 processes of 2
fake CPU devices (`jax.distributed` over 127.0.0.1, Gloo CPU collectives, the jax 0.10
default) and as 1 process of 4 devices, and compares them bit for bit. The reference
process also calls `jax.distributed.initialize` (num_processes=1): its cross-device
sums then go through the same Gloo rings. Without it, XLA's in-process CPU
collectives add the 4 shards in another order, and a 2-epoch toy run differs in
rounding (measured 2026-12-01: loss 5.13196e-05 vs 5.13308e-05, grad norm equal to 8
digits, other params_digest; rewards, advantages and eval identical).
"""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ffjax.data.prompts import GroupSampler
from ffjax.parallel import rows as rows_lib
from ffjax.parallel.mesh import make_mesh

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 300  # per launch; the 2-process run takes ~30 s on a busy 2-core CPU


# --------------------------------------------------------------------------- pure logic


def test_blocks_of_data_parallel_hosts():
    # 2 processes x 2 devices, 16 rows over data=4: process p holds rows [8p, 8p + 8).
    rows = {0: [slice(0, 4), slice(4, 8)], 1: [slice(8, 12), slice(12, 16)]}
    assert rows_lib.blocks_of(rows, 16) == (2, [0, 1])
    # Devices listed out of order, processes owning blocks in reverse order.
    rows = {0: [slice(12, 16), slice(8, 12)], 1: [slice(4, 8), slice(0, 4)]}
    assert rows_lib.blocks_of(rows, 16) == (2, [1, 0])


def test_blocks_of_rows_shared_by_processes():
    everything = [slice(None)]
    assert rows_lib.blocks_of({0: everything, 1: everything}, 6) == (1, [0, 0])
    # 4 processes, data=2 across pairs of them (tensor parallel within a pair).
    rows = {0: [slice(0, 4)], 1: [slice(0, 4)], 2: [slice(4, 8)], 3: [slice(4, 8)]}
    assert rows_lib.blocks_of(rows, 8) == (2, [0, 0, 1, 1])


@pytest.mark.parametrize(
    "rows, words",
    [
        ({0: [slice(0, 4), slice(8, 12)], 1: [slice(4, 8), slice(12, 16)]}, "not one contiguous"),
        ({0: [slice(0, 12)], 1: [slice(12, 16)]}, "not equal blocks"),
        ({0: [slice(0, 8)], 1: [slice(4, 12)]}, "not equal blocks"),
    ],
)
def test_blocks_of_refuses_layouts_it_cannot_feed(rows, words):
    with pytest.raises(ValueError, match=words):
        rows_lib.blocks_of(rows, 16)


def test_each_process_gets_whole_groups_of_the_epoch():
    """Simulated process index / count: the blocks are the sampler's host slices, they
    hold whole groups, and together they are the epoch."""
    sampler = GroupSampler(10, prompts_per_epoch=6, group_size=4, seed=3)
    prompt_idx, group_ids = sampler.samples(2)
    for count in (1, 2, 3):
        parts = []
        for p in range(count):
            blocks = rows_lib.RowBlocks(24, count, p, tuple(range(count)))
            mine = group_ids[blocks.local]
            assert np.all(np.bincount(mine - mine[0]) == 4)  # whole groups of K = 4
            np.testing.assert_array_equal(
                prompt_idx[blocks.local], sampler.host_slice(prompt_idx, p, count)
            )
            parts.append(prompt_idx[blocks.local])
        np.testing.assert_array_equal(np.concatenate(parts), prompt_idx)


def test_chunks_take_rows_of_every_block_and_unchunk_restores_the_order():
    mesh = make_mesh({"data": -1})
    x = np.arange(16 * 3, dtype=np.float32).reshape(16, 3)
    blocks = rows_lib.RowBlocks(16, 2, 0, (0, 1))  # as seen by process 0 of 2
    parts = [rows_lib.chunk({"x": x}, start, 3, blocks, mesh)["x"] for start in (0, 3, 6)]
    np.testing.assert_array_equal(parts[0], x[[0, 1, 2, 8, 9, 10]])
    np.testing.assert_array_equal(parts[2], x[[6, 7, 14, 15]])  # cut at the block's end
    np.testing.assert_array_equal(rows_lib.unchunk(parts, blocks), x)
    traj = [np.stack([p, -p]) for p in parts]  # (steps, rows, ...): rows on axis 1
    np.testing.assert_array_equal(rows_lib.unchunk(traj, blocks, axis=1), np.stack([x, -x]))
    one = rows_lib.RowBlocks(16)  # one process: plain slices
    np.testing.assert_array_equal(rows_lib.chunk(x, 4, 8, one, mesh), x[4:12])
    np.testing.assert_array_equal(rows_lib.gather_rows(x, one, 5), x[:5])


# --------------------------------------------------------------------------- 2 processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(
    tmp_path: Path, name: str, processes: int, devices_each: int, scenario: str = "train"
) -> list[dict]:
    """Runs multiprocess_train.py as `processes` processes; their JSON outputs. A failed
    or hung process gets the others killed (no CI hang): TIMEOUT_S for the whole run."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = " ".join([
        env.get("XLA_FLAGS", ""),
        f"--xla_force_host_platform_device_count={devices_each}",
        "--xla_backend_optimization_level=0",  # halves the compile time; same in every run
    ])  # fmt: skip
    port, procs = _free_port(), []
    data = tmp_path / "prompts"
    data.mkdir(exist_ok=True)
    (data / "train.txt").write_text("\n".join(f"toy prompt {i}" for i in range(4)))
    logs = [tmp_path / f"{name}_{i}.log" for i in range(processes)]
    outs = [tmp_path / f"{name}_{i}.json" for i in range(processes)]
    try:
        for i in range(processes):
            cmd = [sys.executable, "-m", "tests.parallel.multiprocess_train",
                   "--num-processes", str(processes), "--process-id", str(i),
                   "--port", str(port), "--workdir", str(tmp_path / name), "--out", str(outs[i]),
                   "--data", str(data), "--scenario", scenario]  # fmt: skip
            with open(logs[i], "w") as log:
                procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=log))
        deadline = time.monotonic() + TIMEOUT_S
        while any(p.poll() is None for p in procs):
            failed = [i for i, p in enumerate(procs) if p.poll() not in (None, 0)]
            if failed or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for i, p in enumerate(procs):
        tail = logs[i].read_text()[-3000:]
        assert p.returncode == 0, f"{name} process {i} exited with {p.returncode}:\n{tail}"
    return [json.loads(o.read_text()) for o in outs]


def _metrics_rows(workdir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("time/") and k != "samples_per_s"}
            for r in rows]  # fmt: skip


@pytest.mark.slow
def test_two_processes_train_exactly_like_one(tmp_path):
    (ref,) = _launch(tmp_path, "one", 1, 4)
    two = _launch(tmp_path, "two", 2, 2)
    assert (ref["process_count"], ref["devices"]) == (1, 4)
    assert [(o["process_index"], o["process_count"], o["local_devices"]) for o in two] == [
        (0, 2, 2), (1, 2, 2)
    ]  # fmt: skip

    # Same numbers on both processes and in the 1-process run: rewards, advantages (the
    # losses), eval, and the final weights (params_digest, written on every epoch here).
    assert ref["history"][-1]["params_digest"]
    assert two[0]["history"] == ref["history"]
    assert two[1]["history"] == ref["history"]
    # Rollout in chunks of 4 rows per process (async rewards) = chunks of 8 in 1 process.
    assert ref["chunked"][-1]["params_digest"]
    assert two[0]["chunked"] == two[1]["chunked"] == ref["chunked"]
    # Weights sharded over the processes (fsdp=4), checkpointed, restored, resumed.
    assert [r["epoch"] for r in ref["fsdp"]] == [0, 1] and ref["fsdp"][-1]["params_digest"]
    assert two[0]["fsdp"] == two[1]["fsdp"] == ref["fsdp"]

    # Each process encoded only its prompts: half of each call's, together the same.
    calls = ref["encoded"]
    assert len(calls) == 4  # eval before training, epoch 0, epoch 1, eval after
    assert [len(c) for c in two[0]["encoded"]] == [len(c) // 2 for c in calls]
    for i, call in enumerate(calls):
        assert two[0]["encoded"][i] + two[1]["encoded"][i] == call, i

    # Process 0 alone wrote metrics.jsonl (one row per epoch, not one per process) and
    # the grids, which show the same (gathered) images as the 1-process run's.
    assert _metrics_rows(tmp_path / "two") == _metrics_rows(tmp_path / "one")
    assert len(_metrics_rows(tmp_path / "two")) == 3  # before training, epochs 0, 1
    samples = sorted(p.name for p in (tmp_path / "two" / "samples").iterdir())
    assert samples == sorted(p.name for p in (tmp_path / "one" / "samples").iterdir())
    assert samples == ["eval_epoch_0000.png", "eval_epoch_0002.png",
                       "train_epoch_0001.png", "train_epoch_0002.png"]  # fmt: skip
    for name in samples:
        one_png = (tmp_path / "one" / "samples" / name).read_bytes()
        assert (tmp_path / "two" / "samples" / name).read_bytes() == one_png, name

    # Every process wrote its part of each Orbax checkpoint.
    ckpt = tmp_path / "two" / "checkpoints"
    assert sorted(p.name for p in ckpt.iterdir()) == ["1", "2", "config.txt"]
    written = {p.name for p in (ckpt / "2").rglob("*")}
    assert any("process_1" in n for n in written), sorted(written)


@pytest.mark.slow
def test_a_reward_failing_on_one_process_stops_every_process_promptly(tmp_path):
    """Process 1's reward raises (or its prompt file is missing): both processes stop
    with an error that says so, long before jax.distributed's 300 s heartbeat timeout
    would have killed process 0."""
    outs = _launch(tmp_path, "flaky", 2, 2, scenario="reward_fails")
    for mode in ("serial", "async"):
        zero, one = outs[0][mode], outs[1][mode]
        assert "the reward server of process 1 is gone" in one["error"], mode
        assert "rewards failed on process 1" in zero["error"], (mode, zero)
        assert "the reward server of process 1 is gone" in zero["error"], mode
        assert zero["seconds"] < 120 and one["seconds"] < 120, (mode, zero, one)
    # Process 1 cannot read its prompts: it raises its own error, process 0 names it.
    zero, one = outs[0]["setup"], outs[1]["setup"]
    assert one["error"].startswith("FileNotFoundError") and "no_such_prompts" in one["error"]
    assert zero["error"].startswith("TrainingError: setup failed on process 1"), zero
    assert zero["seconds"] < 120, zero
