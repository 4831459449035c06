"""CLIP-family reward models placed on the training mesh (`reward.place(mesh)`): the
same scores as on one device, with the batch rows split over 8 fake CPU devices."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.models.clip.tiny import build_clip
from tests.models.text.tiny import clip_tokenizer

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from transformers import CLIPImageProcessorPil, CLIPProcessor

    model = build_clip("gelu", seed=5)
    path = tmp_path_factory.mktemp("pickscore")
    model.save_pretrained(path)
    s = model.config.vision_config.image_size
    processor = CLIPImageProcessorPil(
        size={"shortest_edge": s}, crop_size={"height": s, "width": s}
    )
    CLIPProcessor(image_processor=processor, tokenizer=clip_tokenizer(path)).save_pretrained(path)
    return path


@pytest.mark.slow
def test_pickscore_on_the_mesh_equals_one_device(folder):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    proc = subprocess.run(
        [sys.executable, "-m", "tests.parallel.reward_mesh", str(folder)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    ref = np.asarray(out.pop("1 device"))
    devices = out.pop("devices")
    assert ref.shape == (11,) and np.isfinite(ref).all()
    for name, scores in out.items():
        np.testing.assert_allclose(scores, ref, rtol=1e-5, atol=1e-6, err_msg=name)
        n_devices, calls = devices[name]
        assert n_devices == 8, name  # the params live on every mesh device
        # batch_size 6 rounds up to 8 rows a call, split over ("data", "fsdp").
        assert calls == [[8, "P(('data', 'fsdp'),)"]] * 2, (name, calls)
