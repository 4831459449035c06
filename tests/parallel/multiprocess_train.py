"""One process of the multi-process training test (tests/parallel/test_multiprocess.py).

Trains the toy model (tests/toy_model.py) three times: GRPO for 2 epochs on data=4
with eval, image grids, a checkpoint every epoch and a reward model run on the mesh
(the process's part of it); NFT for 1 epoch rolled out in chunks with async rewards;
full fine-tuning with the weights sharded over the processes (fsdp=4), 1 epoch, then
resumed to 2. Writes JSON to --out: this process's index, the prompts it encoded (per
call) and the runs' metric rows. Run by the test in fresh processes, e.g. 2
processes of 2 fake CPU devices each:

    XLA_FLAGS=--xla_force_host_platform_device_count=2 JAX_PLATFORMS=cpu \\
        python -m tests.parallel.multiprocess_train --num-processes 2 --process-id 0 \\
        --port 12345 --workdir /tmp/run --out /tmp/out0.json --data /tmp/prompts

or the 1-process reference with 4 devices (--num-processes 1 --port P: it initialises
jax.distributed too, so its collectives also run through Gloo). `--scenario
reward_fails` instead trains with a reward that fails on process 1 only and records
each process's error.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import jax
import numpy as np

from tests.toy_model import ToyAdapter


class CountingAdapter(ToyAdapter):
    """The toy adapter, recording every prompt it encodes (a class attribute: one
    adapter per process)."""

    encoded: list[list[str]] = []

    def encode_prompts(self, prompts, height, width):
        CountingAdapter.encoded.append(list(prompts))
        return super().encode_prompts(prompts, height, width)


class MeshBrightness:
    """Brightness computed on the mesh `place` gives it, rows split over (data, fsdp),
    as the CLIP-family rewards run (`_CLIPReward.place`): on this process's devices."""

    kind = "pointwise"
    name = "mesh_brightness"
    mesh = None

    def place(self, mesh) -> None:
        self.mesh = mesh

    def __call__(self, samples):
        from jax.sharding import NamedSharding, PartitionSpec

        from ffjax.parallel.sharding import BATCH_AXES

        assert {d.process_index for d in self.mesh.devices.flat} == {jax.process_index()}
        images = jax.device_put(samples.images, NamedSharding(self.mesh, PartitionSpec(BATCH_AXES)))
        return np.asarray(
            jax.jit(lambda x: x.astype(np.float32).mean(axis=(1, 2, 3)) / 255)(images)
        )


class FailsOnProcess1:
    """Brightness that raises a RewardError on process 1 only (a reward server that
    died behind one host): every process must stop, none may wait for the others."""

    kind = "pointwise"
    name = "fails_on_process_1"

    def __call__(self, samples):
        from ffjax.rewards.base import RewardError

        if jax.process_index() == 1:
            raise RewardError("the reward server of process 1 is gone")
        return samples.images.astype(np.float32).mean(axis=(1, 2, 3)) / 255


def reward_fails(toy, workdir: Path) -> dict:
    """GRPO with FailsOnProcess1, scored serially and asynchronously: {mode: error text
    and the seconds to it}."""
    from ffjax import configs, trainer

    out = {}
    for mode in ("serial", "async"):
        c = toy()
        c.rewards = {}
        configs.add_reward(c, "flaky", name="tests.parallel.multiprocess_train:FailsOnProcess1")
        if mode == "async":
            c.sampling.batch_size = 8 // jax.process_count()
            c.train.async_rewards = True
        t0 = time.monotonic()
        try:
            trainer.train(configs.validate(c), workdir.with_name(f"{workdir.name}_{mode}"),
                          progress=False)  # fmt: skip
            out[mode] = {"error": None}
        except trainer.TrainingError as e:
            out[mode] = {"error": str(e), "seconds": time.monotonic() - t0}
    return out


def setup_fails(toy, workdir: Path) -> dict:
    """Process 1's prompt file is missing (not on that host's disk): {error, seconds}."""
    from ffjax import configs, trainer

    c = toy()
    if jax.process_index() == 1:
        c.data.path = str(workdir.parent / "no_such_prompts")
    t0 = time.monotonic()
    try:
        trainer.train(configs.validate(c), workdir.with_name(f"{workdir.name}_setup"),
                      progress=False)  # fmt: skip
        return {"error": None}
    except (trainer.TrainingError, FileNotFoundError) as e:
        return {"error": f"{type(e).__name__}: {e}", "seconds": time.monotonic() - t0}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--num-processes", type=int, required=True)
    p.add_argument("--process-id", type=int, default=0)
    p.add_argument("--port", type=int, default=0, help="coordinator port; 0: no jax.distributed")
    p.add_argument("--workdir", required=True)
    p.add_argument("--data", required=True, help="folder of the prompts (train.txt)")
    p.add_argument("--out", required=True)
    p.add_argument("--scenario", default="train", choices=("train", "reward_fails"))
    args = p.parse_args()
    if args.port:  # also for one process: its collectives then run through Gloo too
        jax.distributed.initialize(
            coordinator_address=f"127.0.0.1:{args.port}",
            num_processes=args.num_processes,
            process_id=args.process_id,
            initialization_timeout=120,
        )
    from ffjax import configs, trainer
    from tests.parallel import multiprocess_train as counting  # the module, not __main__
    from tests.toy_model import toy_config

    workdir = Path(args.workdir)
    # toy_config writes a prompt file; each process its own, no write race. The runs
    # read the shared one (--data): the config, checked on resume, is every process's.
    private = workdir.parent / f"data_{args.num_processes}_{args.process_id}"
    private.mkdir(parents=True, exist_ok=True)

    def toy(algorithm: str = "grpo"):
        c = toy_config(private, algorithm)
        c.data.path = c.model.path = args.data
        c.mesh.data = 4
        return c

    if args.scenario == "reward_fails":
        out = {"process_index": jax.process_index(), **reward_fails(toy, workdir)}
        _write(args.out, dict(out, setup=setup_fails(toy, workdir)))
        return

    c = toy()
    c.model.name = "tests.parallel.multiprocess_train:CountingAdapter"
    c.train.eval_every = 2
    c.checkpoint.every_epochs = 1
    c.logging.image_grid_every = 1
    configs.add_reward(c, "placed", name="tests.parallel.multiprocess_train:MeshBrightness")
    history = trainer.train(configs.validate(c), workdir, progress=False)
    encoded = list(counting.CountingAdapter.encoded)

    # Rollout chunks (8 rows: sampling.batch_size rows of every process) scored while
    # the next is sampled. ODE sampling (NFT), so no rollout noise depends on which
    # rows share a chunk: equal to one process with batch_size 8.
    c = toy("nft")
    c.sampling.noise_level = 0.0
    c.algorithm.num_train_timesteps = 2
    c.train.num_epochs = 1
    c.sampling.batch_size = 8 // jax.process_count()
    c.train.async_rewards = True
    chunked = trainer.train(
        configs.validate(c), workdir.with_name(workdir.name + "_chunked"), progress=False
    )

    # Full fine-tuning with the weights (and Adam state) sharded over processes
    # (fsdp=4): params_digest gathers them; 1 epoch, then resumed from its checkpoint.
    c = toy()
    c.mesh.data, c.mesh.fsdp = 1, 4
    c.train.lora_rank = 0
    c.checkpoint.every_epochs = 1
    c.train.num_epochs = 1
    fsdp_dir = workdir.with_name(workdir.name + "_fsdp")
    fsdp = trainer.train(configs.validate(c), fsdp_dir, progress=False)
    c.train.num_epochs = 2
    fsdp += trainer.train(configs.validate(c), fsdp_dir, progress=False)
    out = {
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "local_devices": jax.local_device_count(),
        "devices": jax.device_count(),
        "encoded": encoded,
        "history": _numbers(history),
        "chunked": _numbers(chunked),
        "fsdp": _numbers(fsdp),
    }
    _write(args.out, out)


def _write(path: str, out: dict) -> None:
    with open(path + ".tmp", "w") as f:
        json.dump(out, f)
    os.replace(path + ".tmp", path)


def _numbers(history: list[dict]) -> list[dict]:
    """Metric rows without the timings (which differ from run to run)."""
    skip = lambda k: k.startswith("time/") or k == "samples_per_s"
    return [{k: v for k, v in r.items() if not skip(k)} for r in history]


if __name__ == "__main__":
    main()
