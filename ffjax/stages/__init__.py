"""The stages of an epoch (DESIGN.md section 1), each a module of plain functions with
explicit inputs: `generate` (encode -> noise -> chunked rollout -> decode), `score`
(rewards, async pool, weighting, advantages), `optimize` (training rows, micro-batches,
the train and EMA steps). `ffjax.trainer` sequences them; `ffjax.run` builds what they
share.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ffjax.errors import FfjaxError
from ffjax.parallel import rows as rows_lib


class TrainingError(FfjaxError, RuntimeError):
    """The run cannot go on (e.g. every reward is NaN, a reward server died, a non-finite
    loss); finished epochs, metrics and checkpoints are kept. Exit 1."""


def on_every_process(what: str, fn: Callable[[], Any]) -> Any:
    """fn(); if it raises on any process, every process raises (`rows.on_every_process`):
    the failing one its own exception, the others TrainingError naming the process and
    its error. One process: just fn()."""

    def elsewhere(i: int, message: str) -> Exception:
        return TrainingError(
            f"{what} failed on process {i} ({message}); stopping every process. Finished"
            " epochs, metrics and checkpoints are kept."
        )

    return rows_lib.on_every_process(fn, elsewhere)
