"""ffjax.export for WAN: what Diffusers loads from an export computes what ffjax does.

On the tiny WanPipelines (two transformer blocks, so a swapped layer index shows):
LoRA with random B on every Linear of a Wan 2.1 transformer -> safetensors -> the real
`WanPipeline.load_lora_weights` (PEFT) -> the same transformer output, float32; the same
for a transformer with image cross-attention (Wan 2.1 I2V's add_k_proj / add_v_proj)
in `WanImageToVideoPipeline`. A14B: a `configs/wan_t2v_grpo.py:tiny` LoRA run on both
experts exported by `export_run` -> two files, the second loaded with
`load_into_transformer_2=True`; the same run adapting `transformer` alone -> its file
alone; a full fine-tune of both -> `transformer/` + `transformer_2/` folders for
`WanTransformer3DModel.from_pretrained`.
"""

import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from ffjax import configs, trainer
from ffjax import diffusers_export as export
from ffjax.checkpoint import Checkpointer
from ffjax.cli import export as export_cli
from ffjax.models.lora import init_lora, lora_paths
from ffjax.models.wan import call_like_diffusers
from ffjax.models.wan.convert import load_transformer
from ffjax.state import init_state
from tests.models.flux.tiny import perturb, rel_err
from tests.test_export import _lora_modules, _random_b
from tests.test_trainer_wan import PROMPTS, _recipe
from tests.tiny_wan_pipeline import TRANSFORMER

# Relative to the output's max |value|, float32 on both sides (as tests/test_export.py).
TOL = 1e-4
# Every Linear of the transformer: the patch embedding is a Conv3d in Diffusers (our
# Dense over patches), which no PEFT Linear adapter can be.
EVERY_LINEAR = (r"^(?!patch_embedding).*",)
EXPERTS = ("transformer", "transformer_2")


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tiny_pipelines):
    tmp = tmp_path_factory.mktemp("export_wan")
    out = {v: tiny_pipelines.wan(v)[0] for v in ("t2v", "a14b")}  # the session's: read-only
    (tmp / "prompts").mkdir()
    (tmp / "prompts" / "train.txt").write_text(PROMPTS)
    out["prompts"] = str(tmp / "prompts")
    return out


def _inputs(cfg, b=2, f=3, h=4, w=6, lt=7, seed=1, image_tokens=0):
    """WanTransformer3DModel.forward keyword arguments: odd frames, non-square, padded text."""
    g = torch.Generator().manual_seed(seed)
    text = torch.randn(b, lt, cfg.text_dim, generator=g)
    text[1, 4:] = 0  # WanPipeline zero-pads a shorter prompt
    kw = dict(
        hidden_states=torch.randn(b, cfg.in_channels, f, h, w, generator=g),
        timestep=torch.tensor([900.0, 125.0])[:b],
        encoder_hidden_states=text,
    )
    if image_tokens:
        kw["encoder_hidden_states_image"] = torch.randn(b, image_tokens, cfg.image_dim, generator=g)
    return kw


@functools.lru_cache(maxsize=8)
def _apply(module):
    # One compile per module config and variables structure (the experts share both).
    return jax.jit(lambda variables, *args: module.apply(variables, *args))


def _ours(module, variables, kw):
    """ffjax's transformer with any variables (LoRA collections too) on `_inputs`."""
    x = jnp.asarray(kw["hidden_states"].numpy().transpose(0, 2, 3, 4, 1))
    args = [x] + [jnp.asarray(kw[k].numpy()) for k in ("timestep", "encoder_hidden_states")]
    if "encoder_hidden_states_image" in kw:
        args.append(jnp.asarray(kw["encoder_hidden_states_image"].numpy()))
    out = _apply(module)(variables, *args)
    return np.asarray(out, np.float32).transpose(0, 4, 1, 2, 3)


def _diffusers(transformer, kw):
    with torch.no_grad():
        return transformer(**kw).sample.numpy()


def _every_linear_lora(params, seed=0):
    """rank-4 adapters (alpha 6: scale 1.5) with random B on every Linear, and per-layer
    scales that differ, so the fold into B is checked layer by layer."""
    lora, scale = init_lora(
        params, rank=4, alpha=6.0, targets=EVERY_LINEAR, key=jax.random.key(seed)
    )
    scale = jax.tree.map(lambda s: s * (1 + jnp.arange(s.size).reshape(s.shape)), scale)
    return _random_b(lora, seed=seed), scale


@pytest.mark.slow
def test_lora_loads_in_wan_pipeline_with_the_same_outputs(folders, tmp_path):
    from diffusers import WanPipeline

    module, params = load_transformer(Path(folders["t2v"]) / "transformer")
    lora, scale = _every_linear_lora(params)
    kw = _inputs(module.config)
    ours = _ours(module, {"params": params, "lora": lora, "lora_scale": scale}, kw)

    n = export.export_lora(lora, scale, tmp_path / "lora.safetensors", config=module.config)
    n_modules = sum(s.size for s in jax.tree.leaves(scale))
    assert n == 2 * n_modules and n_modules == 2 * 10 + 6  # 10 Linear a block, 6 outside

    pipe = WanPipeline.from_pretrained(folders["t2v"])
    plain = _diffusers(pipe.transformer, kw)
    pipe.load_lora_weights(str(tmp_path / "lora.safetensors"))
    assert _lora_modules(pipe.transformer) == n_modules  # every adapter found its Linear
    theirs = _diffusers(pipe.transformer, kw)
    err, effect = rel_err(ours, theirs), rel_err(plain, theirs)
    print(f"WAN LoRA export: rel err {err:.2e}, LoRA effect {effect:.2e}")
    assert err < TOL
    assert effect > 100 * TOL  # the adapters change the output: the test can fail
    # The plain model is ffjax's without the adapters (B = 0: the compiled forward again).
    zero = jax.tree.map(jnp.zeros_like, lora)
    assert rel_err(_ours(module, {"params": params, "lora": zero, "lora_scale": scale}, kw),
                   plain) < TOL  # fmt: skip


@pytest.mark.slow
def test_i2v_lora_with_image_attention_loads_in_the_i2v_pipeline(tmp_path):
    from diffusers import WanImageToVideoPipeline, WanTransformer3DModel

    # Wan 2.1 I2V: image cross-attention (add_k_proj / add_v_proj) and an image embedder.
    cfg = {**TRANSFORMER, "in_channels": 12, "image_dim": 16, "added_kv_proj_dim": 24}
    torch.manual_seed(0)
    model = perturb(WanTransformer3DModel(**cfg), seed=5).eval()
    model.save_pretrained(tmp_path / "transformer")
    module, params = load_transformer(tmp_path / "transformer")
    lora, scale = _every_linear_lora(params, seed=1)
    assert "blocks/attn2/add_k_proj" in lora_paths(lora)
    kw = _inputs(module.config, lt=512, image_tokens=5)  # Diffusers splits at 512 text tokens
    ours = _ours(module, {"params": params, "lora": lora, "lora_scale": scale}, kw)
    export.export_lora(lora, scale, tmp_path / "i2v.safetensors", config=module.config)

    none = dict.fromkeys(("tokenizer", "text_encoder", "vae", "scheduler", "image_processor",
                          "image_encoder"))  # fmt: skip
    pipe = WanImageToVideoPipeline(transformer=model, **none)
    plain = _diffusers(pipe.transformer, kw)
    pipe.load_lora_weights(str(tmp_path / "i2v.safetensors"))
    assert _lora_modules(pipe.transformer) == sum(s.size for s in jax.tree.leaves(scale))
    theirs = _diffusers(pipe.transformer, kw)
    err, effect = rel_err(ours, theirs), rel_err(plain, theirs)
    print(f"WAN I2V LoRA export: rel err {err:.2e}, LoRA effect {effect:.2e}")
    assert err < TOL and effect > 100 * TOL


def _a14b_run(tmp_path, folders):
    """A `configs/wan_t2v_grpo.py:tiny` LoRA run on the tiny A14B pipeline (both experts:
    the adapter's default targets), as `trainer.train` writes its checkpoint folder
    (config.txt + an Orbax checkpoint of epoch 1) without the rollouts; the EMA and
    current adapters get different random B. Returns (run, state)."""
    c = _recipe().get_config("tiny")
    c.model.path, c.data.path = folders["a14b"], folders["prompts"]
    run = trainer.setup(configs.validate(c))
    state = run.initial.replace(
        epoch=run.initial.epoch + 1,
        trainable=_random_b(run.initial.trainable, seed=1),
        ema=_random_b(run.initial.ema, seed=2),
    )
    _save(tmp_path / "run", run.config, state)
    return run, state


def _save(workdir, config, state):
    ckpt = Checkpointer(workdir, 1, 1)
    with open(Path(ckpt.directory) / "config.txt", "w") as f:
        f.write(configs.to_text(config) + "\n")
    assert ckpt.maybe_save(1, state, force=True)
    ckpt.close()


def _expert_outputs(run, tree, kw, experts=EXPERTS):
    """{expert: ffjax's output} of the run's `experts` with the LoRA `tree` on `kw`."""
    modules = {"transformer": run.adapter.transformer, "transformer_2": run.adapter.transformer_2}
    return {
        name: _ours(modules[name], {"params": run.base["params"][name], "lora": tree[name],
                                    "lora_scale": run.base["lora_scale"][name]}, kw)
        for name in experts
    }  # fmt: skip


@pytest.mark.slow
def test_a14b_lora_run_exports_one_file_per_adapted_expert(folders, tmp_path, capsys):
    from diffusers import WanPipeline

    run, state = _a14b_run(tmp_path, folders)
    assert {p.split("/")[0] for p in lora_paths(state.ema)} == set(EXPERTS)
    kw = _inputs(run.adapter.config)
    ckpt = tmp_path / "run" / "checkpoints" / "1"
    out = tmp_path / "out"
    files = [out / export.LORA_WEIGHT_NAME, out / "pytorch_lora_weights_transformer_2.safetensors"]
    assert export.export_run(tmp_path / "run", out) == (
        f"exported the ema weights of {ckpt}: 40 LoRA adapters (rank 4, alpha 8) as"
        f" {files[0]} (20 on transformer) and {files[1]} (20 on transformer_2)"
    )  # WAN_TARGETS: 10 Linear in each of the 2 blocks of each expert
    ours = _expert_outputs(run, state.ema, kw)
    pipe = WanPipeline.from_pretrained(folders["a14b"])
    plain = {e: _diffusers(getattr(pipe, e), kw) for e in EXPERTS}
    pipe.load_lora_weights(str(out))
    pipe.load_lora_weights(str(out), weight_name=files[1].name, load_into_transformer_2=True)
    for e in EXPERTS:
        theirs = _diffusers(getattr(pipe, e), kw)
        err, effect = rel_err(ours[e], theirs), rel_err(plain[e], theirs)
        with capsys.disabled():
            print(f"WAN A14B run export ({e}): rel err {err:.2e}, effect {effect:.2e}")
        assert err < TOL and effect > 100 * TOL

    # configs/wan_t2v_grpo.py:a14b adapts the high-noise expert alone: its file alone.
    high = {k: v for k, v in state.trainable.items() if k == "transformer"}
    _save(tmp_path / "high", run.config, state.replace(trainable=high, ema=None))
    capsys.readouterr()  # what the loads above wrote
    file = tmp_path / "high.safetensors"
    assert export_cli.main(["--workdir", str(tmp_path / "high"), "--out", str(file)]) == 0
    want = f"20 LoRA adapters (rank 4, alpha 8) as {file} (20 on transformer)\n"
    assert capsys.readouterr().out.endswith(want)
    assert not (tmp_path / "high_transformer_2.safetensors").exists()
    pipe = WanPipeline.from_pretrained(folders["a14b"])
    pipe.load_lora_weights(str(file))
    ours = _expert_outputs(run, high, kw, ("transformer",))["transformer"]
    assert rel_err(ours, _diffusers(pipe.transformer, kw)) < TOL
    assert rel_err(plain["transformer_2"], _diffusers(pipe.transformer_2, kw)) == 0

    # The pair's adapters on a one-expert pipeline (a wrong --model_path) and back.
    with pytest.raises(export.ExportError, match="'transformer/blocks/attn1/to_k' has no Dense"):
        export.export_run(tmp_path / "run", tmp_path / "x", model_path=folders["t2v"])
    _save(tmp_path / "one", run.config, state.replace(trainable=high["transformer"], ema=None))
    with pytest.raises(export.ExportError, match=r"holds \['blocks'\] beside the pipeline's"):
        export.export_run(tmp_path / "one", tmp_path / "x")


@pytest.mark.slow
def test_a14b_full_export_loads_with_the_same_outputs(folders, tmp_path):
    from diffusers import WanTransformer3DModel

    # A full fine-tune's checkpoint: both experts' params, changed, no LoRA.
    c = _recipe().get_config("tiny")
    c.model.path, c.data.path = folders["a14b"], folders["prompts"]
    c.train.lora_rank, c.ema.decay = 0, 0.0
    c = configs.validate(c)
    rng = np.random.default_rng(3)
    tuned, module = {}, {}
    for e in EXPERTS:
        module[e], params = load_transformer(Path(folders["a14b"]) / e)
        tuned[e] = jax.tree.map(lambda p: p + 0.05 * rng.standard_normal(p.shape, np.float32),
                                params)  # fmt: skip
    state = init_state(tuned, optax.identity(), ema=False)
    _save(tmp_path / "run", c, state.replace(epoch=state.epoch + 1))
    summary = export.export_run(tmp_path / "run", tmp_path / "full")
    kw, n = _inputs(module["transformer"].config), 0
    for e in EXPERTS:
        model = WanTransformer3DModel.from_pretrained(tmp_path / "full", subfolder=e).eval()
        n += len(model.state_dict())
        ours = call_like_diffusers(
            "transformer", module[e], tuned[e], **{k: v.numpy() for k, v in kw.items()}
        )
        err = rel_err(ours, _diffusers(model, kw))
        print(f"WAN A14B full export ({e}): rel err {err:.2e}")
        assert err < TOL
    full, ckpt = tmp_path / "full", tmp_path / "run" / "checkpoints" / "1"
    assert summary == (
        f"exported the current weights of {ckpt}: the experts transformer, transformer_2"
        f" ({n} tensors) as the Diffusers folders {full / 'transformer'}, {full / 'transformer_2'}"
    )
