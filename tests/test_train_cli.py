"""`python -m ffjax.train` end to end in a subprocess: exit codes and messages."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(*args):
    return subprocess.run(
        [sys.executable, "-m", "ffjax.train", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_default_recipe_validates_and_writes_config(tmp_path):
    r = _run(
        "--check_config",
        "--workdir",
        str(tmp_path),
        "--config.train.num_epochs=3",
        "--config.sampling.noise_level",
        "0.5",
    )
    assert r.returncode == 0, r.stderr
    assert "train.num_epochs = 3" in r.stdout and "sampling.noise_level = 0.5" in r.stdout
    assert "algorithm.name = 'grpo'" in r.stdout
    assert "train.num_epochs = 3" in (tmp_path / "config.txt").read_text()


def test_variant_and_bad_keys_fail_with_clear_messages():
    r = _run("--config", "configs/demo.py:nft", "--config.train.num_epoch=3")
    assert r.returncode == 2
    assert "unknown key config.train.num_epoch; did you mean config.train.num_epochs" in r.stderr
    assert "Traceback" not in r.stderr
    r = _run(
        "--config",
        "configs/demo.py:awm",
        "--config.sampling.dynamics=sde",
        "--config.algorithm.weighting=t3",
    )
    assert r.returncode == 2
    assert "allowed: ode, flow_sde, dance_sde, cps" in r.stderr
    assert "allowed: uniform, t, t2, huber, ghuber" in r.stderr


def test_cli_trains_and_prints_the_reward_table(tmp_path):
    recipe = tmp_path / "toy_recipe.py"
    recipe.write_text(
        "import pathlib\n"
        "from tests.toy_model import toy_config\n\n"
        "def get_config(variant=''):\n"
        f"    return toy_config(pathlib.Path({str(tmp_path)!r}), variant or 'grpo')\n"
    )
    r = _run("--config", f"{recipe}:nft", "--workdir", str(tmp_path / "run"),
             "--config.sampling.noise_level=0", "--config.algorithm.num_train_timesteps=2")  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert "reward_mean" in r.stdout and "outputs in" in r.stdout
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2
    r = _run("--config", str(recipe), "--workdir", str(tmp_path / "bad"),
             "--config.train.micro_batch_size=5")  # fmt: skip
    assert r.returncode == 1 and "not divisible" in r.stderr and "Traceback" not in r.stderr
