"""Checkpoint writes that fail (disk full, permissions) stop clearly and keep the last one."""

import errno

import numpy as np
import orbax.checkpoint as ocp
import pytest

from ffjax import configs, trainer
from ffjax.checkpoint import Checkpointer, CheckpointError
from tests.toy_model import toy_config


def _fail_on_step(monkeypatch, bad_step):
    real_save = ocp.CheckpointManager.save

    def save(self, step, *args, **kwargs):
        if step == bad_step:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "save", save)


def test_failed_save_names_the_folder_and_keeps_the_previous(tmp_path, monkeypatch):
    state = {"w": np.arange(4, dtype=np.float32)}
    ckpt = Checkpointer(tmp_path, every=1, keep=3)
    assert ckpt.maybe_save(1, state)
    _fail_on_step(monkeypatch, 2)
    with pytest.raises(CheckpointError) as e:
        ckpt.maybe_save(2, {"w": state["w"] + 1})
    assert "No space left on device" in str(e.value)
    assert f"under {ckpt.directory}" in str(e.value) and "(1) is intact" in str(e.value)
    assert ckpt.latest() == 1
    np.testing.assert_array_equal(ckpt.restore(1, state)["w"], state["w"])
    ckpt.close()


def test_training_stops_on_a_full_disk_with_the_last_checkpoint_intact(tmp_path, monkeypatch):
    c = toy_config(tmp_path)
    c.train.num_epochs = 3
    c.checkpoint.every_epochs = 1
    configs.validate(c)
    _fail_on_step(monkeypatch, 2)
    workdir = tmp_path / "run"
    with pytest.raises(CheckpointError, match=r"checkpoint 2 .*\(1\) is intact"):
        trainer.train(c, workdir, progress=False)
    monkeypatch.undo()
    # The same command resumes from checkpoint 1 and finishes.
    history = trainer.train(c, workdir, progress=False)
    assert [r["epoch"] for r in history] == [1, 2]
