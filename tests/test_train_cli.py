"""`python -m ffjax.train` end to end in a subprocess: exit codes and messages."""

import subprocess
import sys
from pathlib import Path

import pytest

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


@pytest.mark.slow
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
    # Orbax's INFO lines (a dozen per checkpoint, burying the progress bar) are filtered.
    assert "checkpoint_manager.py" not in r.stderr, r.stderr[-2000:]
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2
    r = _run("--config", str(recipe), "--workdir", str(tmp_path / "bad"),
             "--config.train.micro_batch_size=5")  # fmt: skip
    assert r.returncode == 1 and "not divisible" in r.stderr and "Traceback" not in r.stderr


# The SIGTERM and SIGKILL tests resume to the same uninterrupted run (`straight`, once).
RESUME_EPOCHS = 12
RESUME_RECIPE = """\
import pathlib
from tests.toy_model import toy_config

def get_config(variant=''):
    c = toy_config(pathlib.Path({root!r}))
    c.train.num_epochs = {epochs}
    c.checkpoint.every_epochs = 1 if variant == 'every_epoch' else 0
    return c
"""


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """(recipe, params_digest): the toy recipe of both resume tests (':every_epoch'
    checkpoints each epoch; checkpoints do not change the parameters) and the final
    parameters' digest of its uninterrupted run, where both resumed runs must end."""
    import runpy

    from ffjax import trainer

    root = tmp_path_factory.mktemp("resume")
    recipe = root / "toy_recipe.py"
    recipe.write_text(RESUME_RECIPE.format(root=str(root), epochs=RESUME_EPOCHS))
    c = runpy.run_path(str(recipe))["get_config"]()
    history = trainer.train(c, root / "straight", progress=False)
    return recipe, history[-1]["params_digest"]


@pytest.mark.slow
def test_sigterm_checkpoints_and_the_resumed_run_matches(tmp_path, straight):
    import json
    import signal
    import time

    recipe, digest = straight
    workdir = tmp_path / "run"
    cmd = [sys.executable, "-m", "ffjax.train", "--config", str(recipe), "--workdir", str(workdir)]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    metrics = workdir / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().strip()):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert "run the same command to resume" in err
    stopped = [json.loads(x) for x in metrics.read_text().splitlines()]
    k = stopped[-1]["epoch"] + 1
    assert 1 <= k < RESUME_EPOCHS and stopped[-1]["params_digest"]
    assert (workdir / "checkpoints" / str(k)).is_dir()  # no periodic ones: the SIGTERM's

    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    resumed = [json.loads(x) for x in metrics.read_text().splitlines()]
    assert [row["epoch"] for row in resumed] == list(range(RESUME_EPOCHS))
    assert resumed[-1]["params_digest"] == digest


def test_unwritable_workdir_is_a_clear_error(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    r = _run("--check_config", "--workdir", str(blocker / "run"))
    assert r.returncode == 2
    assert f"cannot write to --workdir {blocker / 'run'}" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.slow
def test_killed_run_resumes_to_the_uninterrupted_parameters(tmp_path, straight):
    """SIGKILL (no chance to checkpoint): the rerun continues from the last periodic
    checkpoint and ends with the uninterrupted run's params_digest."""
    import json
    import signal
    import time

    recipe, digest = straight
    workdir = tmp_path / "run"
    cmd = [sys.executable, "-m", "ffjax.train", "--config", f"{recipe}:every_epoch",
           "--workdir", str(workdir)]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = workdir / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (
        metrics.exists() and len(metrics.read_text().splitlines()) >= 3
    ):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    done = [json.loads(x)["epoch"] for x in metrics.read_text().splitlines()]
    assert 3 <= len(done) < RESUME_EPOCHS, done  # killed mid-run

    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    resumed = [json.loads(x) for x in metrics.read_text().splitlines()]
    assert [row["epoch"] for row in resumed] == list(range(RESUME_EPOCHS))
    assert resumed[-1]["params_digest"] == digest
