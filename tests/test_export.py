"""ffjax.export: what Diffusers loads from an export computes what ffjax computes.

LoRA: adapters with random B on every Dense of a FLUX transformer with two blocks per
stack (a swapped layer index would show) -> safetensors -> the real
`FluxPipeline.load_lora_weights` (PEFT) -> the same transformer output, float32. Full:
changed params -> folder -> `FluxTransformer2DModel.from_pretrained` -> the same output.
CLI: a one-epoch training run on the tiny FluxPipeline, exported and loaded; errors.
"""

import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from ffjax import diffusers_export as export
from ffjax import trainer
from ffjax.checkpoint import Checkpointer
from ffjax.cli import export as export_cli
from ffjax.models.flux import call_like_diffusers
from ffjax.models.flux.convert import load_transformer
from ffjax.models.lora import init_lora, lora_paths
from ffjax.models.weights import Rule, SafetensorsFile, reshape
from tests.models.flux.tiny import image_ids, perturb, rel_err
from tests.test_trainer_flux import _config

ROOT = Path(__file__).resolve().parents[1]
# Relative to the output's max |value|, float32 on both sides. What remains (up to ~4e-5
# with these random weights) is ffjax's sinusoidal time/guidance embedding, whose
# frequencies are rounded from float64 where Diffusers exponentiates in float32; the
# export itself is exact (Diffusers with the LoRA = Diffusers with merged weights to 6e-7).
TOL = 1e-4


@pytest.fixture(scope="module")
def pipeline(tiny_pipelines):
    return tiny_pipelines.flux()  # the session's (tests/conftest.py): read-only


def _deep_transformer(folder):
    """A random FluxTransformer2DModel shaped like the pipeline's, 2 double + 2 single blocks."""
    from diffusers import FluxTransformer2DModel

    cfg = dict(FluxTransformer2DModel.load_config(Path(folder) / "transformer"))
    cfg.update(num_layers=2, num_single_layers=2)
    torch.manual_seed(0)
    cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
    return perturb(FluxTransformer2DModel(**cfg), seed=11)


def _inputs(cfg, b=2, h=3, w=5, lt=7, seed=1):
    """FluxTransformer2DModel.forward keyword arguments (torch), non-square, odd lengths."""
    g = torch.Generator().manual_seed(seed)
    return dict(
        hidden_states=torch.randn(b, h * w, cfg.in_channels, generator=g),
        encoder_hidden_states=torch.randn(b, lt, cfg.joint_attention_dim, generator=g),
        pooled_projections=torch.randn(b, cfg.pooled_projection_dim, generator=g),
        timestep=torch.rand(b, generator=g),
        img_ids=torch.from_numpy(image_ids(h, w)),
        txt_ids=torch.zeros(lt, 3),
        guidance=torch.full((b,), 3.5),  # FluxPipeline's default
    )


def _ours(module, variables, kw):
    args = [jnp.asarray(kw[k].numpy()) for k in kw]
    return np.asarray(jax.jit(lambda v: module.apply(v, *args))(variables))


def _diffusers(transformer, kw):
    with torch.no_grad():
        return transformer(**kw).sample.numpy()


def _random_b(lora, seed=0, std=0.1):
    rng = np.random.default_rng(seed)
    leaf = lambda p, x: (
        x + std * rng.standard_normal(x.shape, np.float32) if p[-1].key == "b" else x
    )
    return jax.tree_util.tree_map_with_path(leaf, lora)


def _lora_modules(transformer) -> int:
    return sum(hasattr(m, "lora_A") and "default_0" in m.lora_A for m in transformer.modules())


def test_lora_loads_in_diffusers_with_the_same_outputs(pipeline, tmp_path):
    from diffusers import FluxPipeline

    model = _deep_transformer(pipeline)
    model.save_pretrained(tmp_path / "transformer")
    module, params = load_transformer(tmp_path / "transformer")
    # Every Dense (blocks, embedders, AdaLN, output), rank 4, alpha 6 (scale 1.5, not 1),
    # and per-layer scales that differ, so the fold into B is checked layer by layer.
    lora, scale = init_lora(params, rank=4, alpha=6.0, targets=(r".*",), key=jax.random.key(0))
    lora = _random_b(lora)
    scale = jax.tree.map(lambda s: s * (1 + jnp.arange(s.size).reshape(s.shape)), scale)
    kw = _inputs(module.config)
    ours = _ours(module, {"params": params, "lora": lora, "lora_scale": scale}, kw)

    n = export.export_lora(lora, scale, tmp_path / "lora.safetensors", config=module.config)
    n_modules = sum(s.size for s in jax.tree.leaves(scale))
    assert n == 2 * n_modules

    pipe = FluxPipeline.from_pretrained(pipeline, transformer=model)
    plain = _diffusers(pipe.transformer, kw)
    pipe.load_lora_weights(str(tmp_path / "lora.safetensors"))
    assert _lora_modules(pipe.transformer) == n_modules  # every adapter found its Linear
    theirs = _diffusers(pipe.transformer, kw)
    err, effect = rel_err(ours, theirs), rel_err(plain, theirs)
    print(f"LoRA export: rel err {err:.2e}, LoRA effect {effect:.2e}")
    assert err < TOL
    assert effect > 100 * TOL  # the adapters change the output: the test can fail
    # The plain model is ffjax's model without the adapters (the base of the comparison).
    assert rel_err(_ours(module, {"params": params}, kw), plain) < TOL


def test_lora_errors_name_the_module():
    a, b = np.zeros((3, 2), np.float32), np.zeros((2, 5), np.float32)
    lora, scale = {"x": {"a": a, "b": b}}, {"x": {"scale": np.float32(1)}}
    fused = [Rule("x/kernel", "x.weight", reshape((5, 3), (3, 5)))]
    with pytest.raises(export.ExportError, match=r"'x'.*reshape.*fused or split"):
        export.lora_state_dict(lora, scale, fused, {"x/kernel": (3, 5)})
    with pytest.raises(export.ExportError, match="'x' has no Dense kernel in the key table"):
        export.lora_state_dict(lora, scale, [Rule("y/kernel", "y.weight")], {"y/kernel": (3, 5)})
    linear = [Rule("x/kernel", "x.weight", export.LINEAR)]
    with pytest.raises(export.ExportError, match=r"'x': a \(3, 2\), b \(2, 5\).*kernel \(4, 5\)"):
        export.lora_state_dict(lora, scale, linear, {"x/kernel": (4, 5)})
    got = export.lora_state_dict(lora, scale, linear, {"x/kernel": (3, 5)}, prefix="unet")
    assert {k: v.shape for k, v in got.items()} == {
        "unet.x.lora_A.weight": (2, 3),
        "unet.x.lora_B.weight": (5, 2),
    }


def test_full_export_loads_with_the_same_outputs(pipeline, tmp_path):
    from diffusers import FluxTransformer2DModel

    module, params = load_transformer(Path(pipeline) / "transformer")
    rng = np.random.default_rng(3)
    tuned = jax.tree.map(lambda p: p + 0.05 * rng.standard_normal(p.shape, np.float32), params)
    n = export.export_full(tuned, module.config, tmp_path / "full")
    assert n == len(jax.tree.leaves(params))
    model = FluxTransformer2DModel.from_pretrained(tmp_path / "full").eval()
    kw = _inputs(module.config)
    theirs = _diffusers(model, kw)
    ours = call_like_diffusers(
        "transformer", module, tuned, **{k: v.numpy() for k, v in kw.items()}
    )
    err = rel_err(ours, theirs)
    print(f"full export: rel err {err:.2e}")
    assert err < TOL
    assert rel_err(_ours(module, {"params": params}, kw), theirs) > 100 * TOL
    bad = {**tuned, "proj_out": {**tuned["proj_out"], "bias": np.zeros(3, np.float32)}}
    with pytest.raises(export.ExportError, match=r"proj_out/bias is \(3,\) in the params"):
        export.export_full(bad, module.config, tmp_path / "bad")


# --------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def runs(pipeline, tmp_path_factory):
    """A one-epoch LoRA run with EMA (root/lora) and a full fine-tune without (root/full)."""
    root = tmp_path_factory.mktemp("export_runs")
    (root / "l").mkdir(), (root / "f").mkdir()
    lora = _config(root / "l", pipeline, "grpo")
    full = _config(root / "f", pipeline, "grpo")
    full.train.lora_rank, full.ema.decay = 0, 0.0
    lora.train.learning_rate = 1e-2  # two steps that move the adapters visibly
    for name, c in (("lora", lora), ("full", full)):
        c.train.num_epochs, c.train.eval_every = 1, 0
        trainer.train(c, root / name, progress=False)
    return root, lora, full


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "ffjax.export", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def _restored(config, workdir):
    run = trainer.setup(config)
    ckpt = Checkpointer(workdir, 0, 1)
    state = ckpt.restore(ckpt.latest(), run.initial)
    ckpt.close()
    return run, state


@pytest.mark.slow
def test_cli_lora_run(runs, pipeline):
    from diffusers import FluxPipeline

    root, config, _ = runs
    r = _cli("--workdir", root / "lora", "--out", root / "lora_ema")
    assert r.returncode == 0, r.stderr[-3000:]
    ckpt = root / "lora" / "checkpoints" / "1"
    want = f"exported the ema weights of {ckpt}: 15 LoRA adapters (rank 4, alpha 64) as "
    assert r.stdout == f"{want}{root / 'lora_ema' / export.LORA_WEIGHT_NAME}\n"
    summary = export.export_run(root / "lora", root / "cur.safetensors", epoch=1, weights="current")
    assert summary.startswith(f"exported the current weights of {ckpt}")
    export.export_run(root / "lora", root / "bf16.safetensors", dtype="bfloat16")
    bf16 = SafetensorsFile(root / "bf16.safetensors")
    assert {str(bf16.dtype(k)) for k in bf16.keys()} == {"bfloat16"} and len(bf16.keys()) == 30

    # What Diffusers loads from each file is the trained ffjax model (EMA / current).
    run, state = _restored(config, root / "lora")
    assert len(lora_paths(state.trainable)) == 15  # FLUX_TARGETS: 12 double-block + 3 single
    kw = _inputs(run.adapter.config)
    frozen = {"params": run.base["params"], "lora_scale": run.base["lora_scale"]}
    for weights, out in (
        (state.ema, root / "lora_ema"),
        (state.trainable, root / "cur.safetensors"),
    ):
        ours = _ours(run.adapter.transformer, {**frozen, "lora": weights}, kw)
        pipe = FluxPipeline.from_pretrained(pipeline)
        plain = _diffusers(pipe.transformer, kw)
        pipe.load_lora_weights(str(out))
        theirs = _diffusers(pipe.transformer, kw)
        err, effect = rel_err(ours, theirs), rel_err(plain, theirs)
        print(f"CLI LoRA export {out.name}: rel err {err:.2e}, LoRA effect {effect:.2e}")
        assert err < TOL and effect > 10 * TOL


@pytest.mark.slow
def test_cli_full_run(runs, pipeline):
    from diffusers import FluxTransformer2DModel

    root, _, config = runs
    summary = export.export_run(root / "full", root / "full_out")
    assert "exported the current weights of" in summary and "Diffusers folder" in summary
    run, state = _restored(config, root / "full")
    model = FluxTransformer2DModel.from_pretrained(root / "full_out").eval()
    kw = _inputs(run.adapter.config)
    err = rel_err(
        _ours(run.adapter.transformer, {"params": state.trainable}, kw), _diffusers(model, kw)
    )
    print(f"CLI full export: rel err {err:.2e}")
    assert err < TOL
    with open(root / "full_out" / "config.json") as f:
        assert json.load(f)["_class_name"] == "FluxTransformer2DModel"


@pytest.mark.slow
def test_cli_errors_are_one_line(runs, tmp_path, capsys):
    root = runs[0]
    r = _cli("--workdir", tmp_path / "missing", "--out", tmp_path / "o")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == f"ffjax.export: run workdir {tmp_path / 'missing'} does not exist\n"

    def fails(*args, code: int = 2) -> str:
        with pytest.raises(SystemExit) as e:
            export_cli.main([*map(str, args)])
        err = capsys.readouterr().err
        assert e.value.code == code, err
        assert err.startswith("ffjax.export: ") and err.count("\n") == 1, err
        return err

    out = ("--out", tmp_path / "o")
    err = fails("--workdir", root / "lora", "--weights", "base", *out)
    assert "flag --weights=base: value should be one of <ema|current>" in err
    (tmp_path / "empty").mkdir()
    assert "no checkpoint in" in fails("--workdir", tmp_path / "empty", *out)
    assert "no checkpoint of epoch 7 in" in fails("--workdir", root / "lora", "--epoch", 7, *out)
    assert "epochs: 1)" in fails("--workdir", root / "lora", "--epoch", 7, *out)
    assert "has no EMA weights" in fails("--workdir", root / "full", "--weights", "ema", *out)
    assert "give --out a folder" in fails(
        "--workdir", root / "full", "--out", tmp_path / "x.safetensors"
    )
    # The model folder is not there: a file on disk, not the command, is wrong (exit 1).
    moved = fails("--workdir", root / "lora", "--model_path", tmp_path / "gone", *out, code=1)
    assert f"{tmp_path / 'gone' / 'transformer'} has no config.json" in moved
    assert "--dtype 'int4x'" in fails("--workdir", root / "lora", "--dtype", "int4x", *out)
