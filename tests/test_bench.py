"""tools/bench.py --family wan: the tiny size runs end to end (ffjax and Diffusers on the
same converted weights), prints every row, and both sides agree. The timings themselves
are benchmarks (docs/benchmarks.md), not tests."""

import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tool():
    spec = importlib.util.spec_from_file_location("bench", ROOT / "tools" / "bench.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while decorating
    spec.loader.exec_module(module)
    return module


def test_wan_tiny_rows_and_agreement(capsys, monkeypatch):
    bench = _tool()
    # Smaller than the tiny size, to compile in seconds: one block, a two-stage VAE.
    tiny = bench.WAN_SIZES["tiny"]
    monkeypatch.setitem(bench.WAN_SIZES, "tiny", dict(
        tiny, transformer=dict(tiny["transformer"], num_layers=1),
        vae=dict(base_dim=8, dim_mult=[1, 2], num_res_blocks=1, temperal_downsample=[True],
                 scale_factor_temporal=2, scale_factor_spatial=2)))  # fmt: skip
    argv = ["--family", "wan", "--size", "tiny", "--repeats", "1", "--torch-threads", "1",
            "--video", "1", "16", "16", "--vae-frames", "5"]  # fmt: skip
    assert bench.main(argv) == 0
    out = capsys.readouterr().out
    for row in ("transformer step", "context_kv", "transformer step, kv= (rollout path)",
                "VAE decode 5 frames"):  # fmt: skip
        assert f"| {row}" in out, out
    assert re.search(r"VAE decode 5 frames, compiled: temp [\d.]+ MiB", out), out
    errs = re.search(r"max \|ffjax - PyTorch\| / max \|PyTorch\|: (.*)", out).group(1)
    values = [float(v) for v in re.findall(r"\d\.\de[-+]\d+", errs)]
    assert len(values) == 3 and max(values) < 1e-4, errs


def test_wan_only_flags_are_refused_for_other_families():
    bench = _tool()
    with pytest.raises(SystemExit):
        bench.main(["--family", "flux", "--layers", "2"])
