"""Every command line's `--help` exits 0 (the `python -m` entry modules, and in-process the
commands with their own flags), and every console script names a callable."""

import importlib
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from ffjax.cli import convert, export, reward_server

ROOT = Path(__file__).resolve().parents[2]
ENTRY_MODULES = ["ffjax.train", "ffjax.sample", "ffjax.export", "ffjax.convert",
                 "ffjax.rewards.server"]  # fmt: skip


@pytest.mark.parametrize("module", ENTRY_MODULES)
def test_help_exits_0(module):
    r = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert "flags:" in r.stdout and "--" in r.stdout and "Traceback" not in r.stderr


def test_train_helpfull_exits_0_and_lists_absl_flags():
    r = subprocess.run([sys.executable, "-m", "ffjax.train", "--helpfull"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert "--dry_run_devices" in r.stdout and "--verbosity" in r.stdout


@pytest.mark.parametrize("cli", [export, convert, reward_server], ids=lambda m: m.__name__)
@pytest.mark.parametrize("arg", ["--help", "-h", "--helpfull"])
def test_own_flag_commands_help_in_process(cli, arg, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([arg])
    out = capsys.readouterr().out
    assert e.value.code == 0
    assert out.startswith(cli.__doc__.splitlines()[0]) and "flags:" in out


def test_console_scripts_name_callables():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(scripts) == {"ffjax-train", "ffjax-sample", "ffjax-export", "ffjax-convert",
                            "ffjax-reward-server"}  # fmt: skip
    for target in scripts.values():
        module, _, name = target.partition(":")
        assert callable(getattr(importlib.import_module(module), name)), target
