"""One linter and formatter for the whole tree (STYLE.md): ruff, checked in CI."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TREE = ["ffjax", "tests", "configs", "tools", "examples"]


def _ruff(*args):
    exe = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    return subprocess.run([exe, *args, *TREE], cwd=ROOT, capture_output=True, text=True)


@pytest.mark.parametrize("args", [("check",), ("format", "--check")])
def test_ruff_clean(args):
    r = _ruff(*args)
    assert r.returncode == 0, r.stdout + r.stderr
