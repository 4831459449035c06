"""`python -m ffjax.convert --model qwen-image` (in-process): a Diffusers Qwen-Image
pipeline folder becomes Orbax checkpoints holding exactly the params `load_pretrained`
reads (the converter table covers every family, not FLUX.1 alone)."""

import json
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp

from ffjax.convert import main
from ffjax.models import load_pretrained


def test_from_diffusers_pipeline(tmp_path, tiny_transformers, tiny_vaes, capsys):
    src = tmp_path / "pipe"
    src.mkdir()
    (src / "model_index.json").write_text(json.dumps({"_class_name": "QwenImagePipeline"}))
    shutil.copytree(tiny_transformers["one_block"][1], src / "transformer")
    shutil.copytree(tiny_vaes["small"][1], src / "vae")
    out = tmp_path / "jax"
    assert main(["--model", "qwen-image", "--from-diffusers", str(src), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "transformer: " in printed and "vae: " in printed
    assert (out / "model_index.json").is_file()
    for component in ("transformer", "vae"):
        _, want = load_pretrained("qwen_image", component, src / component)
        with ocp.StandardCheckpointer() as ckptr:
            got = ckptr.restore(str(out / component / "params"))
        assert jax.tree.structure(got) == jax.tree.structure(want)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
