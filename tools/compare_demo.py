"""GRPO, DiffusionNFT and AWM on the embedded demo, on one budget of samples.

    python tools/compare_demo.py --out /tmp/compare                    # 3 x 2 seeds
    python tools/compare_demo.py --out /tmp/c --seeds 0 --samples 4096 --variants grpo,nft

Each (variant, seed) is `configs/demo.py:<variant>` trained in this process until it
has generated `--samples` samples (epochs = ceil(samples / samples per epoch)),
evaluated `--evals` times on the held-out set (64 test prompts x 4 fixed noises) and
written to OUT/<variant>_s<seed>/ like any run (metrics.jsonl, reward_curve.png,
grids). OUT/compare.md holds the table (before -> after evaluation reward, seconds,
the seconds each variant took to reach GRPO's final reward of the same seed) and
OUT/compare.png the evaluation reward against wall time and against samples, one line
per variant and seed.

Seconds are the sum of the epochs' `time/epoch_s` (rollout, rewards, optimizer; the
first epoch includes compiling), without evaluation and checkpoint time: the
evaluation is the same for every variant and would hide the difference.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import demo  # noqa: E402
from ffjax import configs, plots, trainer  # noqa: E402
from ffjax.logging import read_metrics  # noqa: E402


def curve(rows: Sequence[dict[str, Any]], samples_per_epoch: int) -> list[tuple[float, int, float]]:
    """[(seconds, samples, eval reward)] of a run's metric rows, from the base model's
    (0, 0, before) on."""
    out, seconds = [], 0.0
    for row in rows:
        epoch = int(row["epoch"])
        if epoch >= 0:
            seconds += float(row["time/epoch_s"])
        if row.get("eval/reward_mean") is not None:
            out.append((seconds, (epoch + 1) * samples_per_epoch, float(row["eval/reward_mean"])))
    return out


def time_to_reach(points: Sequence[tuple[float, int, float]], target: float) -> float | None:
    """Seconds of the first evaluation at or above `target` (None if none is)."""
    return next((s for s, _, r in points if r >= target), None)


def run_one(variant: str, seed: int, samples: int, evals: int, out: str) -> dict[str, Any]:
    """Trains one variant for the budget; returns its curve and settings."""
    c = demo.get_config(variant)
    per_epoch = c.data.prompts_per_epoch * c.data.group_size
    c.seed = seed
    c.train.num_epochs = math.ceil(samples / per_epoch)
    c.train.eval_every = max(1, c.train.num_epochs // evals)
    c.checkpoint.every_epochs = 0
    c.logging.tensorboard = False
    c.logging.image_grid_every = 0
    configs.validate(c)
    workdir = os.path.join(out, f"{variant}_s{seed}")
    trainer.train(c, workdir, progress=False, resume=False)
    points = curve(read_metrics(workdir), per_epoch)
    return {"variant": variant, "seed": seed, "epochs": c.train.num_epochs,
            "samples_per_epoch": per_epoch, "points": points}  # fmt: skip


def table(results: Sequence[dict[str, Any]]) -> str:
    """The markdown table of `results` (module docstring)."""
    lines = [
        "| variant | seed | epochs x samples | seconds | eval before -> after | gain |"
        " seconds to GRPO's final |",
        "|---|---|---|---|---|---|---|",
    ]
    grpo_final = {r["seed"]: r["points"][-1][2] for r in results if r["variant"] == "grpo"}
    for r in results:
        pts = r["points"]
        (_, _, before), (seconds, _, after) = pts[0], pts[-1]
        target = grpo_final.get(r["seed"])
        reach = time_to_reach(pts[1:], target) if target is not None else None
        lines.append(
            f"| {r['variant']} | {r['seed']} | {r['epochs']} x {r['samples_per_epoch']} |"
            f" {seconds:.0f} | {before:.3f} -> {after:.3f} | {after - before:+.3f} |"
            f" {'-' if reach is None else f'{reach:.0f}'} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder for the runs, compare.md, compare.png")
    p.add_argument("--variants", default=",".join(demo.VARIANTS))
    p.add_argument("--seeds", default="0,1", help="comma-separated seeds")
    p.add_argument("--samples", type=int, default=12288, help="samples generated per run")
    p.add_argument("--evals", type=int, default=6, help="evaluations per run (after epoch 0)")
    args = p.parse_args(argv)
    results = [
        run_one(v, int(s), args.samples, args.evals, args.out)
        for s in args.seeds.split(",")
        for v in args.variants.split(",")
    ]
    text = table(results)
    with open(os.path.join(args.out, "compare.md"), "w") as f:
        f.write(text + "\n")
    plots.compare_curves(
        {f"{r['variant']} seed {r['seed']}": r["points"] for r in results},
        os.path.join(args.out, "compare.png"),
        title=f"configs/demo.py, {args.samples} samples per run",
    )
    print(text)
    return results


if __name__ == "__main__":
    main()
