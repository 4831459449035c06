"""A toy training run on a `remote` reward whose server dies after the first checkpoint."""

import json
from urllib.parse import urlparse

import pytest

from ffjax import configs, trainer
from ffjax.checkpoint import Checkpointer
from tests.rewards.fixtures import ServerProcess
from tests.toy_model import toy_config


@pytest.mark.slow
def test_server_death_stops_the_run_clearly_and_keeps_the_checkpoint(tmp_path, monkeypatch):
    log = tmp_path / "server.txt"
    server = ServerProcess("--reward", "brightness", log=log)
    try:
        c = toy_config(tmp_path)
        c.train.num_epochs = 3
        c.checkpoint.every_epochs = 1
        c.rewards = configs.ConfigDict()
        configs.add_reward(c, "srv", name="remote", url=server.url, retries=1, backoff_s=0.05)
        configs.validate(c)

        class KillAfterFirstSave(Checkpointer):
            def maybe_save(self, epoch, state, *, force=False):
                saved = super().maybe_save(epoch, state, force=force)
                if saved and epoch == 1:
                    server.kill()
                return saved

        monkeypatch.setattr(trainer, "Checkpointer", KillAfterFirstSave)
        workdir = tmp_path / "run"
        with pytest.raises(trainer.TrainingError) as e:
            trainer.train(c, workdir, progress=False)
        monkeypatch.undo()
        message = str(e.value)
        assert "\n" not in message, message
        assert message.startswith(f"reward 'srv': reward server {server.url}/compute failed 2")
        assert message.endswith("checkpoints are kept.")
        rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
        assert [r["epoch"] for r in rows] == [0]
        assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["1", "config.txt"]

        # The operator restarts the server (same port) and reruns the same command.
        server.close()
        server = ServerProcess("--reward", "brightness", port=urlparse(server.url).port, log=log)
        ckpt = Checkpointer(workdir, 1, 3)
        assert ckpt.latest() == 1
        state = ckpt.restore(1, trainer.setup(c).initial)  # intact: the recorded weights
        ckpt.close()
        assert int(state.epoch) == 1
        assert trainer.params_digest(state.trainable) == rows[0]["params_digest"]
        rest = trainer.train(c, workdir, progress=False)
        assert [r["epoch"] for r in rest] == [1, 2]
    finally:
        server.close()


def test_no_server_at_setup_is_a_one_line_training_error(tmp_path):
    c = toy_config(tmp_path)
    c.rewards = configs.ConfigDict()
    configs.add_reward(c, "srv", name="remote", url="http://127.0.0.1:9", retries=0)
    with pytest.raises(trainer.TrainingError, match=r"^reward 'srv': .*Start one with") as e:
        trainer.setup(configs.validate(c))
    assert "\n" not in str(e.value)
