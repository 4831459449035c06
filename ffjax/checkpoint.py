"""Orbax checkpoints of the whole `TrainState`, written atomically under WORKDIR/checkpoints."""

from __future__ import annotations

import os
from typing import Any

import orbax.checkpoint as ocp

from ffjax import errors

# A checkpoint could not be written (the message names the folder and says which complete
# checkpoint is still there) or read: one class for both, exit 1.
CheckpointError = errors.CheckpointError


class Checkpointer:
    """Saves a TrainState every `every` epochs, keeping the last `keep`.

    A checkpoint is only visible once complete (Orbax writes to a temporary folder and
    renames it), so a crash mid-save leaves the previous checkpoint intact.
    """

    def __init__(self, workdir: str | os.PathLike, every: int, keep: int):
        self.every = every
        self.directory = os.path.join(os.path.abspath(os.fspath(workdir)), "checkpoints")
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max(1, keep), create=True),
        )

    def maybe_save(self, epoch: int, state: Any, *, force: bool = False) -> bool:
        """Saves `state` as checkpoint `epoch` if due (or `force`); True if it saved."""
        if not force and (self.every <= 0 or epoch % self.every):
            return False
        if epoch in self._manager.all_steps():
            return False
        try:
            self._manager.save(epoch, args=ocp.args.StandardSave(state))
            self._manager.wait_until_finished()
        except Exception as e:  # OSError (disk full, permissions) or a tensorstore error
            self._manager.reload()  # forget the failed step; list what is on disk
            last = self.latest()
            raise CheckpointError(
                f"could not write checkpoint {epoch} under {self.directory}: {e}; the last"
                f" complete checkpoint ({last if last is not None else 'none'}) is intact"
            ) from e
        return True

    def latest(self) -> int | None:
        """The newest complete checkpoint's epoch, or None."""
        return self._manager.latest_step()

    def restore(self, epoch: int, like: Any) -> Any:
        """The TrainState saved at `epoch`, with the structure and shardings of `like`."""
        return self._manager.restore(epoch, args=ocp.args.StandardRestore(like))

    def close(self) -> None:
        self._manager.close()
