"""`python -m ffjax.convert` (`ffjax.cli.convert`, in-process): Diffusers -> Orbax -> Diffusers,
bit-exact; a foreign folder is one line and exit 1."""

import json
import shutil

import pytest
import safetensors.numpy

from ffjax.cli.convert import main


def _pipeline_folder(tmp_path, tiny_transformers, tiny_vaes):
    root = tmp_path / "pipe"
    root.mkdir()
    (root / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    shutil.copytree(tiny_transformers["guided"][1], root / "transformer")
    shutil.copytree(tiny_vaes["flux"][1], root / "vae")
    return root


def test_cli_round_trip(tmp_path, tiny_transformers, tiny_vaes, capsys):
    src = _pipeline_folder(tmp_path, tiny_transformers, tiny_vaes)
    assert (
        main(["--model", "flux1", "--from-diffusers", str(src), "--out", str(tmp_path / "jax")])
        == 0
    )
    out = capsys.readouterr().out
    assert "transformer: " in out and "vae: " in out and "tensors" in out and "float32" in out
    assert (tmp_path / "jax" / "transformer" / "params").is_dir()
    assert (
        main(
            [
                "--model",
                "flux1",
                "--to-diffusers",
                str(tmp_path / "jax"),
                "--out",
                str(tmp_path / "back"),
            ]
        )
        == 0
    )
    for part in ("transformer", "vae"):
        name = f"{part}/diffusion_pytorch_model.safetensors"
        a, b = (
            safetensors.numpy.load_file(src / name),
            safetensors.numpy.load_file(tmp_path / "back" / name),
        )
        assert sorted(a) == sorted(b)
        assert all(a[k].tobytes() == b[k].tobytes() for k in a)


def test_cli_refuses_foreign_folder(tmp_path, capsys):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "WanPipeline"}))
    with pytest.raises(SystemExit) as e:
        main(["--model", "flux1", "--from-diffusers", str(tmp_path), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert e.value.code == 1 and err.startswith("ffjax.convert: ") and err.count("\n") == 1
    assert "not a FLUX.1 checkpoint" in err and "WanPipeline" in err
    with pytest.raises(SystemExit) as e:
        main(["--model", "sd3", "--from-diffusers", str(tmp_path), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert (
        e.value.code == 2
        and err.startswith("ffjax.convert: --model 'sd3' has no converter; known: [")
        and "'flux1'" in err
        and "'qwen-image'" in err
        and "'wan2-t2v'" in err
    )
    with pytest.raises(SystemExit) as e:  # exactly one of --from-diffusers / --to-diffusers
        main(["--model", "flux1", "--out", str(tmp_path / "o")])
    assert (
        e.value.code == 2
        and "Exactly one of (from-diffusers, to-diffusers)" in capsys.readouterr().err
    )
