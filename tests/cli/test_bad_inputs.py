"""A bad model folder, config.json, weights file or checkpoint through the real command
lines: one line naming the file, exit 1, no traceback, and nothing compiled (each run
stops while loading, in seconds)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "assets" / "demo"  # the default recipe's FLUX.1 pipeline (configs/demo.py)
WEIGHTS = "transformer/diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """{case: (model folder, a piece of the message naming what is wrong)}."""
    root = tmp_path_factory.mktemp("models")
    (root / "empty").mkdir()
    shutil.copytree(DEMO, root / "unknown_key", ignore=shutil.ignore_patterns("prompts"))
    config = root / "unknown_key" / "transformer" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "bogus_key": 1}))
    shutil.copytree(DEMO, root / "truncated", ignore=shutil.ignore_patterns("prompts"))
    weights = root / "truncated" / WEIGHTS
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return {
        "missing": (root / "missing", f"{root / 'missing' / 'transformer'} does not exist"),
        "empty": (root / "empty", f"no config.json at {root / 'empty' / 'transformer'}"),
        "unknown_key": (
            root / "unknown_key",
            f"{config}: FluxTransformer2DModel config has unknown keys ['bogus_key']",
        ),  # fmt: skip
        "truncated": (root / "truncated", f"{weights}: truncated safetensors file"),
    }


def _run(module: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def _assert_one_line(r: subprocess.CompletedProcess, prog: str, wanted: str) -> None:
    """Exit 1 and one error line (the last on stderr; log lines may precede it)."""
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    lines = r.stderr.splitlines()
    errors = [line for line in lines if line.startswith(f"{prog}: ")]
    assert errors == lines[-1:] and wanted in errors[0], r.stderr[-3000:]


@pytest.mark.parametrize("case", ["missing", "empty", "unknown_key", "truncated"])
def test_train(models, case, tmp_path):
    folder, wanted = models[case]
    r = _run("ffjax.train", "--workdir", tmp_path / "run", f"--config.model.path={folder}")
    _assert_one_line(r, "ffjax.train", wanted)


@pytest.mark.parametrize("case", ["missing", "empty", "unknown_key", "truncated"])
def test_sample(models, case, tmp_path):
    # The base weights (no checkpoint): sample loads the model folder like train does.
    folder, wanted = models[case]
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("two red circles\n")
    r = _run("ffjax.sample", "--weights", "base", f"--config.model.path={folder}",
             "--prompts", prompts, "--out", tmp_path / "out")  # fmt: skip
    _assert_one_line(r, "ffjax.sample", wanted)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.fixture
def run_of(tmp_path):
    """A run folder whose checkpoints/config.txt names `model_path` (what export reads
    before any checkpoint) and whose checkpoint 1 is not an Orbax checkpoint."""

    def make(model_path: Path) -> Path:
        run = tmp_path / "run"
        (run / "checkpoints" / "1").mkdir(parents=True)
        (run / "checkpoints" / "1" / "junk").write_text("not a checkpoint")
        (run / "checkpoints" / "config.txt").write_text(
            f"model.name = 'flux1'\nmodel.path = {str(model_path)!r}\n"
            "train.lora_rank = 4\ntrain.lora_alpha = 4.0\n"
        )
        return run

    return make


@pytest.mark.parametrize("case", ["missing", "empty", "unknown_key"])
def test_export_model_folder(models, case, run_of, tmp_path):
    folder, wanted = models[case]
    if case != "unknown_key":  # export reads the folder's config.json only, named so
        wanted = f"{folder / 'transformer'} has no config.json"
    r = _run("ffjax.export", "--workdir", run_of(folder), "--out", tmp_path / "out")
    _assert_one_line(r, "ffjax.export", wanted)
    assert r.stderr.count("\n") == 1


def test_export_unreadable_checkpoint(run_of, tmp_path):
    # Export reads no model weights (a truncated safetensors file cannot reach it); the
    # weights it reads are the checkpoint's.
    run = run_of(DEMO)
    r = _run("ffjax.export", "--workdir", run, "--out", tmp_path / "out")
    _assert_one_line(r, "ffjax.export", f"cannot read checkpoint {run / 'checkpoints' / '1'}")
    assert r.stderr.count("\n") == 1
