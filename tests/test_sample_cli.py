"""`python -m ffjax.sample` on checkpoints of the toy model: outputs, weights, errors."""

import dataclasses
import json
import runpy
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

from ffjax import configs, trainer
from ffjax import sample as sample_lib
from ffjax.checkpoint import Checkpointer
from ffjax.stages import generate

ROOT = Path(__file__).resolve().parents[1]


RECIPE = """\
import pathlib
from tests.toy_model import toy_config

def get_config(variant=''):
    c = toy_config(pathlib.Path({root!r}))
    c.checkpoint.every_epochs = 1
    if variant == 'noema':
        c.ema.decay = 0.0
        c.train.num_epochs = 1
    return c
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A 2-epoch run with EMA (root/run), a 1-epoch one without (root/noema), the recipe."""
    root = tmp_path_factory.mktemp("sample")
    recipe = root / "toy_recipe.py"
    recipe.write_text(RECIPE.format(root=str(root)))
    get_config = runpy.run_path(str(recipe))["get_config"]
    trainer.train(get_config(), root / "run", progress=False)
    trainer.train(get_config("noema"), root / "noema", progress=False)
    return root, recipe, get_config


def _sample(recipe, *args):
    return subprocess.run(
        [sys.executable, "-m", "ffjax.sample", "--config", str(recipe), *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _images(out: Path, n: int, per_prompt: int) -> np.ndarray:
    return np.stack([
        np.asarray(Image.open(out / f"{i:05d}_{k}.png").convert("RGB"))
        for i in range(n) for k in range(per_prompt)
    ])  # fmt: skip


@pytest.mark.slow
def test_samples_files_and_in_process_equality(runs):
    root, recipe, get_config = runs
    out = root / "out_ema"
    r = _sample(recipe, "--checkpoint", root / "run", "--prompts", root / "prompts",
                "--out", out, "--num_per_prompt", 2, "--seed", 5)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert "wrote 8 images (4 prompts x 2) with the ema weights of" in r.stdout
    assert f"{root / 'run' / 'checkpoints' / '2'}" in r.stdout
    assert "sampling" in r.stderr  # the progress bar
    rows = [json.loads(x) for x in (out / "prompts.jsonl").read_text().splitlines()]
    assert [(row["index"], row["k"]) for row in rows] == [(i, k) for i in range(4) for k in (0, 1)]
    for row in rows:  # the folder has no test split: its train split is read
        assert row["prompt"] == f"toy prompt {row['index']}"
        assert row["file"] == f"{row['index']:05d}_{row['k']}.png" and (out / row["file"]).is_file()
    assert (out / "grid.png").is_file()

    # The same images in-process: restored EMA, one noise key per (index, k), ODE.
    config = get_config()
    run = trainer.setup(config)
    ckpt = Checkpointer(root / "run", 0, 5)
    state = ckpt.restore(ckpt.latest(), like=run.initial)
    ckpt.close()
    m = config.model
    keys = [jax.random.fold_in(jax.random.fold_in(jax.random.key(5), i), k)
            for i in range(4) for k in (0, 1)]  # fmt: skip
    noise = np.concatenate([run.adapter.init_noise(key, 1, m.height, m.width) for key in keys])
    prompts = [f"toy prompt {i}" for i in range(4) for _ in (0, 1)]
    cond = run.adapter.encode_prompts(prompts, m.height, m.width)
    sigmas = run.adapter.sigmas(config.sampling.eval_num_steps, m.height, m.width)
    levels = np.zeros(config.sampling.eval_num_steps, np.float32)
    gen = dataclasses.replace(run.gen, batch_size=0)
    _, _, images = generate.rollout_and_decode(gen, state.ema, cond, noise, sigmas, levels,
                                               jax.random.key(5))  # fmt: skip
    np.testing.assert_array_equal(_images(out, 4, 2), images)
    # Sampling deletes no checkpoint (its Checkpointer never saves).
    assert sorted(p.name for p in (root / "run" / "checkpoints").iterdir())[:2] == ["1", "2"]


@pytest.mark.slow
def test_weights_batches_and_seeds(runs):
    root, recipe, get_config = runs
    common = ("--prompts", root / "prompts", "--seed", 5)
    r = _sample(recipe, "--checkpoint", root / "run" / "checkpoints" / "2", "--weights",
                "current", "--num_per_prompt", 2, "--out", root / "cur", *common)  # fmt: skip
    assert r.returncode == 0 and "current weights" in r.stdout, r.stderr[-3000:]
    current = _images(root / "cur", 4, 2).astype(int)
    # Batches of 8 (the last one padded): the same images for the same (index, k).
    config = get_config()
    config.sampling.batch_size = 8
    kw = dict(checkpoint=str(root / "run"), prompts=str(root / "prompts"), weights="current",
              progress=False)  # fmt: skip
    summary = sample_lib.sample(config, out=root / "cur3", seed=5, num_per_prompt=3, **kw)
    assert summary.startswith("wrote 12 images (4 prompts x 3)")
    batched = _images(root / "cur3", 4, 3)[np.arange(12) % 3 < 2].astype(int)
    assert np.abs(current - batched).max() <= 1
    r = _sample(recipe, "--weights", "base", "--num_per_prompt", 2, "--out", root / "base", *common)
    assert r.returncode == 0 and "base weights of the pretrained model" in r.stdout, r.stderr
    base = _images(root / "base", 4, 2).astype(int)
    assert np.abs(base - current).max() > 0  # the trained LoRA changes the images
    # Another seed: other images; the same seed again: the same images.
    config = get_config()
    sample_lib.sample(config, out=root / "seed6", seed=6, num_per_prompt=2, **kw)
    assert np.abs(_images(root / "seed6", 4, 2).astype(int) - current).max() > 0
    sample_lib.sample(config, out=root / "seed5", seed=5, num_per_prompt=2, **kw)
    np.testing.assert_array_equal(_images(root / "seed5", 4, 2), current)


@pytest.mark.slow
def test_errors_exit_2_with_one_line(runs):
    root, recipe, get_config = runs
    common = ("--prompts", root / "prompts", "--out", root / "err")
    r = _sample(recipe, "--checkpoint", root / "missing", *common)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr == f"ffjax.sample: checkpoint folder {root / 'missing'} does not exist\n"
    r = _sample(recipe, "--checkpoint", root / "noema", "--weights", "ema", *common)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert r.stderr.splitlines()[-1].startswith("ffjax.sample: the checkpoint has no EMA weights")

    # The rest in-process (SampleError is what the CLI turns into exit 2).
    config = get_config()
    kw = dict(prompts=str(root / "prompts"), out=root / "err", progress=False)
    (root / "empty" / "checkpoints").mkdir(parents=True)
    with pytest.raises(sample_lib.SampleError, match=r"no checkpoint in .*empty/checkpoints"):
        sample_lib.sample(config, checkpoint=str(root / "empty"), **kw)
    with pytest.raises(sample_lib.SampleError, match=r"no checkpoint in .*prompts: expected"):
        sample_lib.sample(config, checkpoint=str(root / "prompts"), **kw)
    other = get_config()
    other.train.lora_rank = 8
    with pytest.raises(sample_lib.SampleError) as e:
        sample_lib.sample(other, checkpoint=str(root / "run"), **kw)
    msg = str(e.value)
    assert f"checkpoint {root / 'run' / 'checkpoints' / '2'} does not fit model" in msg
    assert "'tests.toy_model:ToyAdapter'" in msg and "train.lora_rank: 4 -> 8" in msg
    assert "trainable.fc1.a is (25, 4) in the checkpoint, (25, 8) in the model" in msg
    assert "\n" not in msg
    with pytest.raises(sample_lib.SampleError, match="prompt path"):
        sample_lib.sample(config, checkpoint=str(root / "run"), **{**kw, "prompts": "/nope.txt"})
    # An EMA config on a checkpoint without EMA restores it and samples the current weights.
    summary = sample_lib.sample(config, checkpoint=str(root / "noema"), **kw)
    assert "with the current weights of" in summary and "noema/checkpoints/1" in summary


def test_sampling_needs_no_reward(runs, tmp_path):
    """An inference-only run: a recipe whose remote reward server is down (a closed
    port) samples all the same, and reads no training prompt."""
    root, _, get_config = runs
    config = get_config()
    config.rewards = configs.ConfigDict()
    down = dict(name="remote", url="http://127.0.0.1:9", retries=0)
    configs.add_reward(config, "srv", **down)
    configs.add_reward(config, "srv", section="eval_rewards", **down)
    configs.validate(config)
    with pytest.raises(trainer.TrainingError, match=r"^reward 'srv': "):  # training needs it
        trainer.setup(config)
    config.data.path = str(tmp_path / "no_such_prompts")  # training prompts are not read
    summary = sample_lib.sample(config, checkpoint=str(root / "run"),
                                prompts=str(root / "prompts"), out=tmp_path / "out",
                                progress=False)  # fmt: skip
    assert "wrote 4 images (4 prompts x 1) with the ema weights of" in summary
