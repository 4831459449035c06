"""Train: `python -m ffjax.train --config configs/<recipe>.py[:variant]` (or `ffjax-train`).

    python -m ffjax.train --config configs/demo.py:nft --workdir /tmp/run \
        --config.train.num_epochs=5 --config.sampling.noise_level=0.5
    python -m ffjax.train --config flow_factory_run.yaml --check_config   # Flow-Factory YAML

Overrides `--config.a.b=value` are parsed by the type of the field they set; an unknown
key, a bad choice or a missing required value stops the run before anything is loaded,
with a message naming the key and what is allowed (exit 2). Without `--config` the
embedded default recipe (configs/demo.py) runs. A model folder, config.json, weights
file, prompt file or checkpoint that cannot be used stops it with one line naming the
file (exit 1); SIGTERM / SIGINT checkpoint and exit 143. `--dry_run` compiles and
measures the run without loading or writing anything (ffjax/dry_run.py).
"""

from __future__ import annotations

import logging as std_logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from absl import app, flags, logging

from ffjax import configs
from ffjax.cli import common
from ffjax.cli.common import fail
from ffjax.errors import FfjaxError, UsageError

PROG = "ffjax.train"
_PACKAGE_DIR = str(Path(__file__).resolve().parents[1]) + os.sep
DEFAULT_RECIPE = Path(__file__).resolve().parents[2] / "configs" / "demo.py"
_FLAGS: dict[str, flags.FlagHolder] = {}
_DRY_FLAGS = ("dry_run_devices", "dry_run_topology", "dry_run_device_memory_gb")


def define_flags() -> None:
    """Defines --config, --workdir, --resume, --check_config and the --dry_run flags once."""
    if _FLAGS:
        return
    _FLAGS["config"] = common.define_config_flag(str(DEFAULT_RECIPE))
    _FLAGS["workdir"] = flags.DEFINE_string(
        "workdir", None, "Output folder (metrics, checkpoints, samples); default runs/<time>."
    )
    _FLAGS["resume"] = flags.DEFINE_bool(
        "resume", True, "Continue from the latest checkpoint in --workdir if there is one."
    )
    _FLAGS["check_config"] = flags.DEFINE_bool(
        "check_config", False, "Validate and print the resolved config, write it, and stop."
    )
    _FLAGS["dry_run"] = flags.DEFINE_bool(
        "dry_run", False, "Compile rollout and train step, print memory per device, stop"
        " (reads only the model's config.json files; writes nothing)."
    )  # fmt: skip
    _FLAGS["dry_run_devices"] = flags.DEFINE_integer(
        "dry_run_devices", 0, "With --dry_run: compile for this many (fake) CPU devices;"
        " 0 = the visible devices."
    )  # fmt: skip
    _FLAGS["dry_run_topology"] = flags.DEFINE_string(
        "dry_run_topology", None, "With --dry_run: compile for this TPU slice (e.g. v5e:2x4,"
        " v5p:2x2x2; libtpu) or these NVIDIA GPUs (h100:8, h200:1, a100:8, b200:8; h100:2x8 ="
        " 2 hosts of 8; the CUDA plugin) on this host; judged against their HBM."
    )  # fmt: skip
    _FLAGS["dry_run_programs"] = flags.DEFINE_list(
        "dry_run_programs", ["rollout", "decode", "train"], "With --dry_run: the programs to"
        " compile (a TPU compile of a big VAE decode can take many minutes on a laptop)."
    )  # fmt: skip
    _FLAGS["dry_run_device_memory_gb"] = flags.DEFINE_float(
        "dry_run_device_memory_gb", None, "With --dry_run: memory per device (GiB) to judge"
        " the peak against, e.g. 80."
    )  # fmt: skip


def load_config(
    argv: list[str], overrides: list[tuple[str, str]] = (), doc: str | None = None
) -> tuple[configs.ConfigDict, list[str]]:
    """`common.load_config` with the train flags defined.

    `--help` in `argv` prints `doc` (default: the `__main__` module's docstring; ffjax.sample
    parses its flags here too) and the flags, and exits 0.
    """
    define_flags()
    common.exit_on_help(argv, doc or getattr(sys.modules.get("__main__"), "__doc__", None))
    return common.load_config(argv, overrides)


def parse_config_flags(
    argv: list[str], overrides: list[tuple[str, str]], doc: str | None
) -> tuple[configs.ConfigDict, list[str]]:
    """`load_config`, with every problem (a bad key or value, a bad flag, a stray
    positional argument) one line and exit 2: the flags parser of train and sample."""
    try:
        config, remaining = load_config(argv, overrides, doc)
    except configs.ConfigError as e:
        fail(str(e), 2)
    except flags.Error as e:
        fail(f"{e} (pass --helpfull to see the flags)", 2)
    if len(remaining) > 1:
        fail(f"unexpected arguments: {remaining[1:]}", 2)
    return config, remaining


def _parse_flags(argv: list[str]) -> list[str]:
    _parse_flags.config, remaining = parse_config_flags(argv, _parse_flags.overrides, __doc__)
    return remaining


_parse_flags.overrides = []


class _OwnInfoOnly(std_logging.Filter):
    """Passes ffjax's INFO lines and everyone's warnings: Orbax and JAX log a dozen INFO
    lines per checkpoint, which would bury the progress bar."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        own = record.pathname.startswith(_PACKAGE_DIR)
        return record.levelno >= std_logging.WARNING or own


def main(argv: list[str]) -> None:
    """The command after flag parsing (absl's `app.run`): check, dry-run or train."""
    del argv  # positional arguments were refused by _parse_flags
    if not flags.FLAGS["verbosity"].present:  # --verbosity=0 shows everything
        logging.get_absl_handler().addFilter(_OwnInfoOnly())
    dry = _FLAGS["dry_run"].value
    if not dry and (
        any(_FLAGS[f].value for f in _DRY_FLAGS) or flags.FLAGS["dry_run_programs"].present
    ):
        fail(
            "--dry_run_devices / --dry_run_topology / --dry_run_programs /"
            " --dry_run_device_memory_gb need --dry_run",
            2,
        )
    config = _parse_flags.config
    text = configs.to_text(config)
    mapping = common.yaml_mapping()
    if mapping is not None:
        from ffjax import ff_yaml

        print("Flow-Factory YAML mapped to ffjax:\n" + ff_yaml.table(mapping) + "\n")
    print("resolved config:\n" + text)
    if not _FLAGS["check_config"].value:
        from ffjax import local_paths

        try:  # a hub ID where a local folder must be: one line before anything loads
            local_paths.check(config)
        except FfjaxError as e:
            fail(str(e), e.exit_code)
    if dry:
        _dry_run(config)
        return
    workdir = Path(_FLAGS["workdir"].value or Path("runs") / time.strftime("%Y%m%d-%H%M%S"))
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "config.txt").write_text(text + "\n")
    except OSError as e:
        fail(f"cannot write to --workdir {workdir}: {e}", 2)
    logging.info("wrote %s", workdir / "config.txt")
    if _FLAGS["check_config"].value:
        print("config is valid (--check_config: not training).")
        return
    from ffjax import trainer

    try:
        history = trainer.train(config, workdir, resume=_FLAGS["resume"].value)
    except trainer.Interrupted as e:
        fail(str(e), e.exit_code)
    except (FfjaxError, FileNotFoundError) as e:
        # Exit 1, a ConfigError included: one found while building the run (batch sizes
        # against the mesh, the model's needs), after the config itself validated.
        fail(str(e), 1)
    from ffjax.logging import read_metrics

    before = [r for r in read_metrics(workdir) if r.get("epoch") == -1]
    print(trainer.summary_table(history, before[0]["eval/reward_mean"] if before else None))
    print(f"outputs in {workdir}: metrics.jsonl, tb/, samples/, checkpoints/")


def _dry_run(config: configs.ConfigDict) -> None:
    """--dry_run (ffjax/dry_run.py): nothing is loaded, run or written, --workdir unused."""
    from ffjax import dry_run

    # If JAX's backend is already up, --dry_run_devices re-runs this command line.
    argv = ["-m", "ffjax.train", *sys.argv[1:]]
    argv += [f"--config.{k}={v}" for k, v in _parse_flags.overrides]
    try:
        dry_run.main(
            config,
            devices=_FLAGS["dry_run_devices"].value,
            topology=_FLAGS["dry_run_topology"].value,
            programs=_FLAGS["dry_run_programs"].value,
            memory_gb=_FLAGS["dry_run_device_memory_gb"].value,
            reexec_argv=argv,
        )
    except UsageError as e:  # a GPU --dry_run_topology that names no GPU, or no CUDA plugin
        fail(str(e), 2)
    except FfjaxError as e:  # a ConfigError too: the run does not fit, exit 1 as before
        fail(str(e), 1)


def run_with_config(prog: str, main: Callable, parse_flags: Callable) -> None:
    """absl's `app.run(main)` for a command that takes the train flags (--config and its
    `--config.*` overrides): train and sample. `parse_flags.overrides` gets the overrides."""
    common.set_prog(prog)
    # config_flags reads `--config.*` from sys.argv itself; ffjax applies them instead.
    try:
        sys.argv, parse_flags.overrides = common.split_overrides(list(sys.argv))
    except configs.ConfigError as e:
        fail(str(e), 2)
    define_flags()
    app.run(main, flags_parser=parse_flags)


def run() -> None:
    """Console-script entry point (`ffjax-train`, `python -m ffjax.train`)."""
    run_with_config(PROG, main, _parse_flags)
