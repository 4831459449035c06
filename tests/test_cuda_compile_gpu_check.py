"""tools/gpu_check.sh's argument handling, on any machine (the check itself needs a GPU;
`--rehearse` runs it on CPU in ~5 minutes, too long for CI). Not under tests/gpu/: the
`gpu` keyword of that folder would skip these without a GPU (tests/conftest.py)."""

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _check(*args):
    return subprocess.run(["bash", "tools/gpu_check.sh", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)  # fmt: skip


def test_unknown_argument_exits_2_naming_the_options():
    r = _check("--bogus")
    assert r.returncode == 2
    assert "unknown argument '--bogus' (--kit DIR, --report FILE, --rehearse)" in r.stderr


def test_missing_kit_exits_2_and_says_how_to_make_it(tmp_path):
    r = _check("--kit", str(tmp_path / "none"))
    assert r.returncode == 2 and "run tools/device_kit.sh" in r.stderr, r.stderr


def test_help_prints_the_header():
    r = _check("--help")
    assert r.returncode == 0 and "bash tools/device_kit.sh" in r.stdout
