"""Reward curves of runs, drawn with matplotlib (headless, the Agg backend).

`write_reward_curve(workdir)` draws WORKDIR/reward_curve.png from WORKDIR/metrics.jsonl:
the training reward of each epoch, the evaluation reward at each evaluation, and the
base model's evaluation reward (the evaluation before training) as a dashed line. The
trainer calls it after every evaluation and at the end of a run.

`compare_curves(runs, path)` draws several runs' evaluation rewards against wall time
and against samples generated, one line per run (tools/compare_demo.py).

Metric rows (ffjax.trainer): a row with "epoch" -1 holds the evaluation before
training (x = 0); a row of epoch e holds the training reward of epoch e and, when it
evaluated, the evaluation after e + 1 epochs (x = e + 1).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

CURVE_FILE = "reward_curve.png"


def _pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed; safe in threads-free CLIs)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def curve_points(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The curves of one run's metric rows.

    Returns {"train": [(epoch + 1, reward_mean)], "eval": [(epochs done, eval reward)],
    "base": eval reward before training or None}. A resumed run may repeat epochs; the
    last row of an epoch wins.
    """
    train: dict[int, float] = {}
    evals: dict[int, float] = {}
    for row in rows:
        epoch = int(row.get("epoch", 0))
        done = 0 if epoch < 0 else epoch + 1
        if epoch >= 0 and row.get("reward_mean") is not None:
            train[done] = float(row["reward_mean"])
        if row.get("eval/reward_mean") is not None:
            evals[done] = float(row["eval/reward_mean"])
    return {
        "train": sorted(train.items()),
        "eval": sorted(evals.items()),
        "base": evals.get(0),
    }


def reward_curve(
    rows: Sequence[Mapping[str, Any]], path: str | os.PathLike, title: str = ""
) -> str:
    """Draws one run's reward curve (module docstring) to `path` (PNG); returns the path."""
    plt = _pyplot()
    pts = curve_points(rows)
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    if pts["train"]:
        x, y = zip(*pts["train"], strict=True)
        ax.plot(x, y, color="tab:blue", alpha=0.35, lw=1, label="training reward (epoch mean)")
        if len(y) >= 10:  # a 10-epoch running mean shows the trend through rollout noise
            k = 10
            smooth = [sum(y[i - k + 1 : i + 1]) / k for i in range(k - 1, len(y))]
            ax.plot(
                x[k - 1 :], smooth, color="tab:blue", lw=2, label="training reward (10-epoch mean)"
            )
    if pts["eval"]:
        x, y = zip(*pts["eval"], strict=True)
        ax.plot(x, y, "o-", color="tab:orange", lw=2, label="evaluation reward (held-out prompts)")
    if pts["base"] is not None:
        ax.axhline(pts["base"], color="gray", ls="--", lw=1,
                   label=f"base model (evaluation) {pts['base']:.3f}")  # fmt: skip
    ax.set_xlabel("epoch")
    ax.set_ylabel("reward")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    return _save(plt, fig, path)


def _save(plt, fig, path: str | os.PathLike) -> str:
    """Lays `fig` out, writes it to `path` (making its folder) and closes it; the path."""
    fig.tight_layout()
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_reward_curve(workdir: str | os.PathLike, title: str = "") -> str | None:
    """Draws WORKDIR/reward_curve.png from WORKDIR/metrics.jsonl; None if there are no
    metrics yet."""
    workdir = os.fspath(workdir)
    metrics = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(metrics):
        return None
    with open(metrics) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    if not rows:
        return None
    return reward_curve(rows, os.path.join(workdir, CURVE_FILE), title)


def compare_curves(
    runs: Mapping[str, Sequence[tuple[float, float, float]]],
    path: str | os.PathLike,
    title: str = "",
) -> str:
    """Evaluation reward against wall time (left) and against samples (right).

    runs: label -> [(seconds, samples, eval reward)], the first point the base model's
    (0, 0, before). Returns the path written.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.0), dpi=100, sharey=True)
    for label, points in runs.items():
        seconds, samples, reward = zip(*points, strict=True)
        axes[0].plot(seconds, reward, "o-", lw=2, ms=3, label=label)
        axes[1].plot(samples, reward, "o-", lw=2, ms=3, label=label)
    axes[0].set_xlabel("wall time of the epochs (s)")
    axes[1].set_xlabel("samples generated")
    axes[0].set_ylabel("evaluation reward")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.set_ylim(0, 1)
    axes[0].legend(loc="lower right", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(plt, fig, path)
