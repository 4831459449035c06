"""Weights & Biases logging through MetricsWriter, with a stand-in `wandb` module (the
real package is not a dependency): what is logged, the resumable run id, clear errors."""

import sys
import types

import numpy as np
import pytest

from ffjax import configs
from ffjax.logging import MetricsWriter, read_metrics


@pytest.fixture
def fake_wandb(monkeypatch):
    calls = {"init": [], "log": [], "finish": 0}

    class Run:
        def log(self, data, step):
            calls["log"].append((step, data))

        def finish(self):
            calls["finish"] += 1

    module = types.ModuleType("wandb")
    module.init = lambda **kw: calls["init"].append(kw) or Run()
    module.Image = lambda array: ("image", np.asarray(array).shape)
    monkeypatch.setitem(sys.modules, "wandb", module)
    return calls


def test_metrics_and_images_go_to_wandb(tmp_path, fake_wandb):
    w = MetricsWriter(tmp_path, tensorboard=False, wandb={"project": "p", "mode": "offline"})
    w.write(1, {"epoch": 0, "reward_mean": 0.5, "kl": None, "params_digest": "ab12"})
    w.image("eval/samples", 1, np.zeros((4, 6, 3), np.uint8))
    w.close()
    (init,) = fake_wandb["init"]
    assert init["project"] == "p" and init["mode"] == "offline" and init["resume"] == "allow"
    assert init["dir"] == str(tmp_path)
    # Only numbers are logged (None and strings stay in metrics.jsonl).
    assert fake_wandb["log"] == [
        (1, {"epoch": 0, "reward_mean": 0.5}),
        (1, {"eval/samples": ("image", (4, 6, 3))}),
    ]
    assert fake_wandb["finish"] == 1
    assert read_metrics(tmp_path)[0]["params_digest"] == "ab12"
    # The same workdir (a resumed run) gets the same W&B run id; another one does not.
    MetricsWriter(tmp_path, tensorboard=False, wandb={"project": "p"}).close()
    MetricsWriter(tmp_path / "other", tensorboard=False, wandb={"project": "p"}).close()
    ids = [kw["id"] for kw in fake_wandb["init"]]
    assert ids[0] == ids[1] != ids[2]


def test_missing_wandb_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    with pytest.raises(configs.ConfigError, match="wandb_project is set but wandb is not"):
        MetricsWriter(tmp_path, tensorboard=False, wandb={"project": "p"})


def test_wandb_mode_is_validated():
    c = configs.base_config()
    c.model.path = c.data.path = "/x"
    c.logging.wandb_mode = "sometimes"
    with pytest.raises(configs.ConfigError, match="logging.wandb_mode"):
        configs.validate(c)


def test_a_training_run_logs_every_epoch_to_wandb(tmp_path, fake_wandb):
    from ffjax import trainer
    from tests.toy_model import toy_config

    c = toy_config(tmp_path)
    c.logging.wandb_project = "ffjax-test"
    c.logging.wandb_name = "toy"
    configs.validate(c)
    trainer.train(c, tmp_path / "run", progress=False)
    (init,) = fake_wandb["init"]
    assert init["name"] == "toy" and init["config"]["train"]["num_epochs"] == 2
    steps = [step for step, data in fake_wandb["log"] if "reward_mean" in data]
    assert steps == [1, 2] and fake_wandb["finish"] == 1
