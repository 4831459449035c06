"""Epoch times of the demo recipe with train.async_rewards off and on (the overlap).

    python tools/bench_rewards.py                      # 4 epochs each, chunks of 32
    python tools/bench_rewards.py --epochs 6 --batch-size 16 --workers 2
    python tools/bench_rewards.py --latency-ms 5   # + 5 ms per sample, as a reward server

Trains configs/demo.py (GRPO, assets/demo, the `shapes` reward) for a few epochs in a
temporary folder, once serial and once with the rewards of rollout chunk i scored in
a thread pool while chunk i+1 is sampled; evaluation, checkpoints and grids are off.
Prints a markdown table of the mean per-epoch times after the first (compile) epoch:
time/epoch_s, time/rollout_s (sampling + decode, and with async the hand-over of
chunks), time/reward_s (async: the wait for rewards after the last chunk) and
time/reward_busy_s (time spent scoring). The rewards of both runs must be equal.
`--latency-ms` adds a sleep per scored sample to every reward (a remote reward
server's latency: the CPU is free meanwhile, as in an HTTP wait).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

KEYS = ("time/epoch_s", "time/rollout_s", "time/reward_s", "time/reward_busy_s")


class Latency:
    """`reward` plus a sleep of `seconds` per sample (a reward server's wait)."""

    def __init__(self, reward, seconds: float):
        self.reward, self.seconds = reward, seconds
        self.name, self.kind = reward.name, reward.kind

    def __call__(self, samples):
        time.sleep(self.seconds * len(samples))
        return self.reward(samples)


def run(async_rewards, epochs, batch_size, workers, workdir, latency_ms=0.0):
    from configs import demo
    from ffjax import configs, trainer
    from ffjax.stages import score

    if latency_ms:
        build = score.build_rewards
        score.build_rewards = lambda section: {
            a: (Latency(r, latency_ms / 1e3), w) for a, (r, w) in build(section).items()
        }

    c = demo.get_config()
    c.train.num_epochs = epochs
    c.train.eval_every = 0
    c.checkpoint.every_epochs = 0
    c.logging.image_grid_every = 0
    c.logging.tensorboard = False
    c.sampling.batch_size = batch_size
    c.train.async_rewards = async_rewards
    c.train.reward_workers = workers
    configs.validate(c)
    try:
        return trainer.train(c, os.path.join(workdir, f"async_{async_rewards}"), progress=False)
    finally:
        if latency_ms:
            score.build_rewards = build


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=32, help="sampling.batch_size (chunk)")
    p.add_argument("--workers", type=int, default=2, help="train.reward_workers")
    p.add_argument("--latency-ms", type=float, default=0.0, help="added sleep per sample")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        hist = {
            f: run(f, a.epochs, a.batch_size, a.workers, tmp, a.latency_ms) for f in (False, True)
        }
    same = [r["reward_mean"] for r in hist[False]] == [r["reward_mean"] for r in hist[True]]
    print(f"\nepochs {a.epochs} (mean of epochs 1..), chunks of {a.batch_size},"
          f" {a.workers} workers, +{a.latency_ms:g} ms per sample; rewards equal: {same}\n")  # fmt: skip
    print("| async_rewards | " + " | ".join(KEYS) + " |")
    print("|---" * (len(KEYS) + 1) + "|")
    for flag, rows in hist.items():
        means = [np.mean([r[k] for r in rows[1:]]) for k in KEYS]
        print(f"| {flag} | " + " | ".join(f"{m:.2f}" for m in means) + " |")


if __name__ == "__main__":
    main()
