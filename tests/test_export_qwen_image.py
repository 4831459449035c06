"""ffjax.export for Qwen-Image: what Diffusers loads from an export computes what ffjax does.

On the tiny QwenImagePipeline (two transformer blocks, so a swapped layer index shows):
LoRA with random B on every Dense -> safetensors -> the real
`QwenImagePipeline.load_lora_weights` (PEFT) -> the same transformer output, float32.
Full: changed params -> folder -> `QwenImageTransformer2DModel.from_pretrained` -> the
same output. Run: a one-epoch `configs/qwen_image_grpo.py:tiny` LoRA run exported by
`export_run` and loaded in the pipeline; a family without export is a one-line error.
"""

import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from ffjax import configs, trainer
from ffjax import diffusers_export as export
from ffjax.checkpoint import Checkpointer
from ffjax.cli import export as export_cli
from ffjax.models.lora import init_lora, lora_paths
from ffjax.models.qwen_image import call_like_diffusers, rope_ids
from ffjax.models.qwen_image.convert import load_transformer
from tests.models.flux.tiny import rel_err
from tests.test_export import _lora_modules, _random_b
from tests.test_trainer_qwen_image import PROMPTS, _recipe

# Relative to the output's max |value|, float32 on both sides (as tests/test_export.py).
TOL = 1e-4


@pytest.fixture(scope="module")
def pipeline(tiny_pipelines):
    return tiny_pipelines.qwen_image()  # the session's (tests/conftest.py): read-only


def _inputs(cfg, b=2, h=3, w=5, lt=7, seed=1):
    """QwenImageTransformer2DModel.forward keyword arguments: non-square, padded text."""
    g = torch.Generator().manual_seed(seed)
    mask = (torch.arange(lt)[None] < torch.tensor([lt, 4])[:, None]).long()
    return dict(
        hidden_states=torch.randn(b, h * w, cfg.in_channels, generator=g),
        encoder_hidden_states=torch.randn(b, lt, cfg.joint_attention_dim, generator=g),
        encoder_hidden_states_mask=mask,
        timestep=torch.rand(b, generator=g),
        img_shapes=[[(1, h, w)]] * b,
    )


def _ours(module, variables, kw):
    """ffjax's transformer with any variables (LoRA collections too) on `_inputs`."""
    n_txt = kw["encoder_hidden_states"].shape[1]
    img_ids, txt_ids = rope_ids(kw["img_shapes"], n_txt)
    args = [jnp.asarray(kw[k].numpy()) for k in ("hidden_states", "encoder_hidden_states")]
    args += [jnp.asarray(kw["encoder_hidden_states_mask"].numpy().astype(bool)),
             jnp.asarray(kw["timestep"].numpy()), jnp.asarray(img_ids), jnp.asarray(txt_ids)]  # fmt: skip
    return np.asarray(jax.jit(lambda v: module.apply(v, *args))(variables))


def _diffusers(transformer, kw):
    with torch.no_grad():
        return transformer(**kw).sample.numpy()


def test_lora_loads_in_qwen_image_pipeline_with_the_same_outputs(pipeline, tmp_path):
    from diffusers import QwenImagePipeline

    module, params = load_transformer(Path(pipeline) / "transformer")
    # Every Dense (blocks, modulation, embedders, output), rank 4, alpha 6 (scale 1.5),
    # and per-layer scales that differ, so the fold into B is checked layer by layer.
    lora, scale = init_lora(params, rank=4, alpha=6.0, targets=(r".*",), key=jax.random.key(0))
    lora = _random_b(lora)
    scale = jax.tree.map(lambda s: s * (1 + jnp.arange(s.size).reshape(s.shape)), scale)
    kw = _inputs(module.config)
    ours = _ours(module, {"params": params, "lora": lora, "lora_scale": scale}, kw)

    file = tmp_path / "qwen_lora.safetensors"
    n = export.export_lora(lora, scale, file, config=module.config)
    n_modules = sum(s.size for s in jax.tree.leaves(scale))
    assert n == 2 * n_modules and n_modules == 2 * 14 + 6  # 14 Linear a block, 6 outside

    pipe = QwenImagePipeline.from_pretrained(pipeline)
    plain = _diffusers(pipe.transformer, kw)
    pipe.load_lora_weights(str(file))
    assert _lora_modules(pipe.transformer) == n_modules  # every adapter found its Linear
    theirs = _diffusers(pipe.transformer, kw)
    err, effect = rel_err(ours, theirs), rel_err(plain, theirs)
    print(f"Qwen-Image LoRA export: rel err {err:.2e}, LoRA effect {effect:.2e}")
    assert err < TOL
    assert effect > 100 * TOL  # the adapters change the output: the test can fail
    assert rel_err(_ours(module, {"params": params}, kw), plain) < TOL


def test_full_export_loads_with_the_same_outputs(pipeline, tmp_path):
    from diffusers import QwenImageTransformer2DModel

    module, params = load_transformer(Path(pipeline) / "transformer")
    rng = np.random.default_rng(3)
    tuned = jax.tree.map(lambda p: p + 0.05 * rng.standard_normal(p.shape, np.float32), params)
    n = export.export_full(tuned, module.config, tmp_path / "full")
    model = QwenImageTransformer2DModel.from_pretrained(tmp_path / "full").eval()
    assert n == len(model.state_dict())  # one tensor per layer of each stacked param
    kw = _inputs(module.config)
    theirs = _diffusers(model, kw)
    ours = call_like_diffusers(
        "transformer", module, tuned,
        **{k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in kw.items()},
    )  # fmt: skip
    err = rel_err(ours, theirs)
    print(f"Qwen-Image full export: rel err {err:.2e}")
    assert err < TOL
    assert rel_err(_ours(module, {"params": params}, kw), theirs) > 100 * TOL
    bad = {**tuned, "proj_out": {**tuned["proj_out"], "bias": np.zeros(3, np.float32)}}
    with pytest.raises(export.ExportError, match=r"proj_out/bias is \(3,\) in the params"):
        export.export_full(bad, module.config, tmp_path / "bad")
    with pytest.raises(export.ExportError, match=r"no export for a dict; export supports FLUX"):
        export.export_full(tuned, {}, tmp_path / "bad")


def _lora_run(tmp_path, pipeline):
    """A `configs/qwen_image_grpo.py:tiny` LoRA run's checkpoint folder as `trainer.train`
    writes it (config.txt + an Orbax checkpoint of epoch 1), without the rollouts: the
    EMA and current adapters get different random B. Returns (config, run, state)."""
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "train.txt").write_text(PROMPTS)
    c = _recipe().get_config("tiny")
    c.model.path, c.data.path = pipeline, str(tmp_path / "prompts")
    c = configs.validate(c)
    run = trainer.setup(c)
    state = run.initial.replace(
        epoch=run.initial.epoch + 1,
        trainable=_random_b(run.initial.trainable, seed=1),
        ema=_random_b(run.initial.ema, seed=2),
    )
    ckpt = Checkpointer(tmp_path / "run", 1, 1)
    with open(Path(ckpt.directory) / "config.txt", "w") as f:
        f.write(configs.to_text(run.config) + "\n")
    assert ckpt.maybe_save(1, state, force=True)
    ckpt.close()
    return c, run, state


@pytest.mark.slow
def test_lora_run_exports_for_the_pipeline_and_other_families_error(pipeline, tmp_path, capsys):
    from diffusers import QwenImagePipeline

    c, run, state = _lora_run(tmp_path, pipeline)
    assert len(lora_paths(state.ema)) == 10  # stacked over the 2 blocks
    kw = _inputs(run.adapter.config)
    variables = {"params": run.base["params"], "lora_scale": run.base["lora_scale"]}
    ckpt = tmp_path / "run" / "checkpoints" / "1"
    for weights, out in (("ema", tmp_path / "out"), ("current", tmp_path / "cur.safetensors")):
        summary = export.export_run(
            tmp_path / "run", out, weights=None if weights == "ema" else weights
        )
        file = out if out.suffix else out / export.LORA_WEIGHT_NAME
        assert summary == (
            f"exported the {weights} weights of {ckpt}: 20 LoRA adapters (rank 4, alpha 8)"
            f" as {file}"
        )  # QWEN_IMAGE_TARGETS: 10 Linear in each of the 2 blocks
        tree = state.ema if weights == "ema" else state.trainable
        ours = _ours(run.adapter.transformer, {**variables, "lora": tree}, kw)
        pipe = QwenImagePipeline.from_pretrained(c.model.path)
        plain = _diffusers(pipe.transformer, kw)
        pipe.load_lora_weights(str(out))
        theirs = _diffusers(pipe.transformer, kw)
        err, effect = rel_err(ours, theirs), rel_err(plain, theirs)
        with capsys.disabled():
            print(f"Qwen-Image run export ({weights}): rel err {err:.2e}, effect {effect:.2e}")
        assert err < TOL and effect > 100 * TOL

    # A run of a family without export (a made-up name here) fails with one line naming
    # those with.
    other = tmp_path / "sd3_run"
    shutil.copytree(tmp_path / "run", other)
    cfg = other / "checkpoints" / "config.txt"
    cfg.write_text(cfg.read_text().replace("'qwen-image'", "'sd3'"))
    capsys.readouterr()  # what the loads above wrote
    with pytest.raises(SystemExit) as e:
        export_cli.main(["--workdir", str(other), "--out", str(tmp_path / "o")])
    assert e.value.code == 2
    assert capsys.readouterr().err == (
        "ffjax.export: export supports FLUX.1 (model.name 'flux1'), Qwen-Image (model.name"
        " 'qwen-image'), WAN T2V (model.name 'wan2-t2v'), WAN I2V (model.name 'wan2-i2v')"
        " runs, not 'sd3'\n"
    )
