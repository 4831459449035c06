"""Command-line entry: `python -m ffjax.train --config configs/<recipe>.py[:variant]`.

    python -m ffjax.train --config configs/demo.py:nft --workdir /tmp/run \
        --config.train.num_epochs=5 --config.sampling.noise_level=0.5

Overrides `--config.a.b=value` are parsed by the type of the field they set; an unknown
key, a bad choice or a missing required value stops the run before anything is loaded,
with a message naming the key and what is allowed. Without `--config` the embedded
default recipe (configs/demo.py) runs.
"""

from __future__ import annotations

import logging as std_logging
import os
import sys
import time
from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

from ffjax import configs

_PACKAGE_DIR = str(Path(__file__).resolve().parent) + os.sep
DEFAULT_RECIPE = Path(__file__).resolve().parents[1] / "configs" / "demo.py"

_OVERRIDE_PREFIX = "--config."
_FLAGS: dict[str, flags.FlagHolder] = {}


def _define_flags() -> None:
    """Defines --config and --workdir once.

    config_flags scans sys.argv for `--config.*` when the flag is defined; ffjax applies
    overrides itself (for its error messages), so they are removed from sys.argv first.
    """
    if _FLAGS:
        return
    _FLAGS["config"] = config_flags.DEFINE_config_file(
        "config", str(DEFAULT_RECIPE), "Recipe file, optionally with ':variant'.", lock_config=False
    )
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
        " v5p:2x2x2) with libtpu on this host; judged against its chips' HBM."
    )  # fmt: skip
    _FLAGS["dry_run_programs"] = flags.DEFINE_list(
        "dry_run_programs", ["rollout", "decode", "train"], "With --dry_run: the programs to"
        " compile (a TPU compile of a big VAE decode can take many minutes on a laptop)."
    )  # fmt: skip
    _FLAGS["dry_run_device_memory_gb"] = flags.DEFINE_float(
        "dry_run_device_memory_gb", None, "With --dry_run: memory per device (GiB) to judge"
        " the peak against, e.g. 80."
    )  # fmt: skip


def split_overrides(argv: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Separates `--config.a.b=value` / `--config.a.b value` from the other arguments."""
    rest, overrides = [], []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith(_OVERRIDE_PREFIX):
            key, eq, value = arg[len(_OVERRIDE_PREFIX) :].partition("=")
            if not eq:
                if i + 1 >= len(argv):
                    raise configs.ConfigError(
                        f"--config.{key} needs a value (--config.{key}=VALUE)"
                    )
                value = argv[i + 1]
                i += 1
            overrides.append((key, value))
        else:
            rest.append(arg)
        i += 1
    return rest, overrides


def load_config(
    argv: list[str], overrides: list[tuple[str, str]] = ()
) -> tuple[configs.ConfigDict, list[str]]:
    """Parses flags, applies `--config.*` overrides and validates.

    Overrides found in `argv` are applied after those given in `overrides`.
    Returns (config, remaining argv).
    """
    rest, found = split_overrides(argv)
    overrides = [*overrides, *found]
    _define_flags()
    remaining = flags.FLAGS(rest)
    config = _FLAGS["config"].value
    for key, value in overrides:
        configs.apply_override(config, key, value)
    return configs.validate(config), remaining


def _parse_flags(argv: list[str]) -> list[str]:
    try:
        config, remaining = load_config(argv, _parse_flags.overrides)
    except configs.ConfigError as e:
        sys.stderr.write(f"ffjax.train: {e}\n")
        sys.exit(2)
    except flags.Error as e:
        sys.stderr.write(f"ffjax.train: {e}\nPass --helpfull to see the flags.\n")
        sys.exit(2)
    _parse_flags.config = config
    return remaining


_parse_flags.overrides = []


class _OwnInfoOnly(std_logging.Filter):
    """Passes ffjax's INFO lines and everyone's warnings: Orbax and JAX log a dozen INFO
    lines per checkpoint, which would bury the progress bar."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        own = record.pathname.startswith(_PACKAGE_DIR)
        return record.levelno >= std_logging.WARNING or own


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:  # --verbosity=0 shows everything
        logging.get_absl_handler().addFilter(_OwnInfoOnly())
    dry = _FLAGS["dry_run"].value
    dry_flags = ("dry_run_devices", "dry_run_topology", "dry_run_device_memory_gb")
    if not dry and (
        any(_FLAGS[f].value for f in dry_flags) or flags.FLAGS["dry_run_programs"].present
    ):
        sys.stderr.write(
            "ffjax.train: --dry_run_devices / --dry_run_topology / --dry_run_programs /"
            " --dry_run_device_memory_gb need --dry_run\n"
        )
        sys.exit(2)
    config = _parse_flags.config
    text = configs.to_text(config)
    print("resolved config:\n" + text)
    if dry:
        _dry_run(config)
        return
    workdir = Path(_FLAGS["workdir"].value or Path("runs") / time.strftime("%Y%m%d-%H%M%S"))
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "config.txt").write_text(text + "\n")
    except OSError as e:
        sys.stderr.write(f"ffjax.train: cannot write to --workdir {workdir}: {e}\n")
        sys.exit(2)
    logging.info("wrote %s", workdir / "config.txt")
    if _FLAGS["check_config"].value:
        print("config is valid (--check_config: not training).")
        return
    from ffjax import trainer
    from ffjax.checkpoint import CheckpointError

    try:
        history = trainer.train(config, workdir, resume=_FLAGS["resume"].value)
    except (
        configs.ConfigError,
        trainer.TrainingError,
        CheckpointError,
        FileNotFoundError,
    ) as e:
        sys.stderr.write(f"ffjax.train: {e}\n")
        sys.exit(1)
    except trainer.Interrupted as e:
        sys.stderr.write(f"ffjax.train: {e}\n")
        sys.exit(143)
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
    except configs.ConfigError as e:
        sys.stderr.write(f"ffjax.train: {e}\n")
        sys.exit(1)


def run() -> None:
    """Console-script entry point."""
    # config_flags reads `--config.*` from sys.argv itself; ffjax applies them instead.
    try:
        sys.argv, _parse_flags.overrides = split_overrides(list(sys.argv))
    except configs.ConfigError as e:
        sys.stderr.write(f"ffjax.train: {e}\n")
        sys.exit(2)
    _define_flags()
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    run()
