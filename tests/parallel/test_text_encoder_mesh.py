"""Text encoders sharded on the training mesh (`ffjax.models.text.placement`,
`adapter.place_encoders(mesh)`): the same embeddings as on one device, with each
device holding about 1/fsdp of the parameters, on 8 fake CPU devices."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.models.text.tiny import (
    CLIP_CONFIGS,
    QWEN_IMAGE_TEXT,
    QWEN_IMAGE_VISION,
    T5_CONFIGS,
    build,
    qwen2_tokenizer,
    t5_tokenizer,
)

ROOT = Path(__file__).resolve().parents[2]
# Widths divisible by 8 so that every big matrix splits over fsdp=8.
ENCODERS = {
    "clip": ("clip_text", *CLIP_CONFIGS["legacy"]),
    "t5": ("t5", *T5_CONFIGS["t5_gated"]),
    "umt5": ("umt5", *T5_CONFIGS["umt5_gated"]),
    "qwen2_5_vl": ("qwen2_5_vl", "Qwen2_5_VLForConditionalGeneration",
                   dict(text_config=QWEN_IMAGE_TEXT, vision_config=QWEN_IMAGE_VISION)),
}  # fmt: skip
TOKENIZERS = {"umt5": t5_tokenizer, "qwen2_5_vl": qwen2_tokenizer}
FSDP = {"fsdp=8": 8, "data=2 x fsdp=4": 4}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    spec = {"encoders": {}, "flux": str(ROOT / "assets" / "demo")}
    for i, (name, (component, cls, cfg)) in enumerate(ENCODERS.items()):
        path = tmp_path_factory.mktemp(f"mesh_{name}")
        build(cls, cfg, seed=40 + i).save_pretrained(path / "text_encoder")
        if component in TOKENIZERS:
            TOKENIZERS[component](path / "tokenizer")
        spec["encoders"][name] = [component, str(path)]
    spec["cache"] = str(tmp_path_factory.mktemp("embed_cache"))
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    proc = subprocess.run(
        [sys.executable, "-m", "tests.parallel.text_encoder_mesh", json.dumps(spec)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    print(json.dumps(out, indent=1))  # the measured numbers, with `pytest -s`
    assert out["devices"] == 8
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", ENCODERS)
def test_sharded_encoder_equals_one_device(report, name):
    for mesh, r in report["encoders"][name].items():
        assert r["direct"] < 1e-5 and r["placed"] < 1e-5, (name, mesh, r)
        assert r["same_shardings"], (name, mesh)  # read onto the mesh == placed after
        assert r["out_devices"] == 8, (name, mesh)  # outputs replicated on the mesh


@pytest.mark.slow
@pytest.mark.parametrize("name", ENCODERS)
def test_sharded_encoder_splits_its_parameters(report, name):
    for mesh, r in report["encoders"][name].items():
        fsdp = FSDP[mesh]
        nbytes, dev0, n_devices, spec = r["biggest"]
        assert n_devices == 8 and "fsdp" in spec, (name, mesh, r["biggest"])
        assert dev0 * fsdp == nbytes, (name, mesh, r["biggest"])  # exactly 1/fsdp
        # Everything together: about 1/fsdp (small tables such as T5's relative
        # position bias stay replicated).
        assert r["device0"] < 1.25 * r["total"] / fsdp, (name, mesh, r)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["umt5", "qwen2_5_vl"])
def test_wan_and_qwen_image_prompt_encoding_on_the_mesh(report, name):
    assert report["prompts"][name] < 1e-5, report["prompts"]


@pytest.mark.slow
def test_flux_adapter_place_encoders(report):
    flux = report["flux"]
    assert flux.pop("ref_on_device")
    for mesh, r in flux.items():
        assert r["abstract_shardings_match"], mesh  # text_encoder_specs: what dry runs see
        fsdp = FSDP[mesh]
        assert r["placed"] < 1e-5 and r["cache_written"] < 1e-5, (mesh, r)
        assert r["cache_read"] == 0.0 and r["entries"] == 3, (mesh, r)
        assert r["t5_device0"] < 1.25 * r["t5_total"] / fsdp, (mesh, r)
        assert r["clip_device0"] < 1.25 * r["clip_total"] / fsdp, (mesh, r)


@pytest.mark.slow
def test_sharded_encoder_never_holds_all_its_weights(report):
    # A 34 MB UMT5 on fsdp=8: the compiled call takes 1/8 of the weights per device
    # and its scratch space stays below another 1/8 (gathering every layer's weights
    # at once, e.g. an all-gather hoisted out of the layer scan, would need 7/8 more).
    r = report["compiled"]
    assert r["total"] > 30e6, r
    assert r["argument"] < 1.05 * r["total"] / 8, r
    assert r["temp"] < r["total"] / 8, r
