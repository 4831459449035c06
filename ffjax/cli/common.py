"""What every ffjax command line shares: absl flags, `--help`, and one way to fail.

A command fails through `fail(message, code)`: one line `<prog>: <message>` on stderr,
then exit `code`, 2 when the command or its config must change, 1 when a file or folder
it reads is not what it needs (`ffjax.errors`: every `FfjaxError` carries its code).
`--help` (also `-h`, `-?`, `--helpshort`) prints the command's docstring and its own
flags, `--helpfull` every flag (absl's too), both on stdout with exit 0.
"""

from __future__ import annotations

import sys
from typing import Any, NoReturn

from absl import flags
from ml_collections import config_flags

from ffjax import configs

HELP_ARGS = ("-h", "-?", "--help", "--helpshort")
HELPFULL_ARG = "--helpfull"
_OVERRIDE_PREFIX = "--config."
_prog = ["ffjax"]  # the program name `fail` writes; set by `set_prog`
_CONFIG: dict[str, flags.FlagHolder] = {}
_YAML: dict[str, Any] = {}  # the last Flow-Factory YAML's mapping (load_config)


def set_prog(prog: str) -> None:
    """Names the running command (`ffjax.train`, ...) in the lines `fail` writes."""
    _prog[0] = prog


def fail(message: str, code: int = 2) -> NoReturn:
    """Writes `<prog>: <message>` as one line on stderr and exits with status `code`.

    A message of several lines (a converter's list of problems) is joined into one:
    the first line, then the others separated by "; ".
    """
    lines = [line.strip() for line in str(message).strip().splitlines() if line.strip()]
    text = (lines[0] + (" " + "; ".join(lines[1:]) if len(lines) > 1 else "")) if lines else ""
    sys.stderr.write(f"{_prog[0]}: {text or 'failed'}\n")
    sys.stderr.flush()
    sys.exit(code)


def print_help(
    doc: str | None, flag_values: flags.FlagValues = flags.FLAGS, full: bool = False
) -> None:
    """The command's docstring and flags on stdout: its own (those not from absl), or
    with `full` every flag of `flag_values`."""
    text = (doc or "").strip()
    if full:
        listing = flag_values.get_help()
    else:
        own = [
            f
            for module, defined in flag_values.flags_by_module_dict().items()
            if not module.startswith("absl.")
            for f in defined
        ]
        listing = "\n".join(_describe(f) for f in sorted(own, key=lambda f: f.name))
    print(f"{text}\n\nflags:\n{listing}\n\nPass --helpfull to see every flag.".lstrip())


def _describe(flag: flags.Flag) -> str:
    default = f" (default: {flag.default_as_str})" if flag.default_as_str else ""
    return f"  --{flag.name}: {' '.join(flag.help.split())}{default}"


def exit_on_help(
    argv: list[str], doc: str | None, flag_values: flags.FlagValues = flags.FLAGS
) -> None:
    """Prints the help and exits 0 when `argv` (program name first) asks for it."""
    if HELPFULL_ARG in argv[1:]:
        print_help(doc, flag_values, full=True)
        sys.exit(0)
    if any(arg in HELP_ARGS for arg in argv[1:]):
        print_help(doc, flag_values)
        sys.exit(0)


def parse_flags(flag_values: flags.FlagValues, argv: list[str], doc: str | None) -> None:
    """Parses `argv` (program name first) into `flag_values`; any problem `fail`s with 2.

    The commands other than train and sample keep their flags in a FlagValues of their
    own, made per call, so that `main(argv)` may run twice in one process (tests) and
    their flag names never collide with another command's. Positional arguments are
    refused.
    """
    exit_on_help(argv, doc, flag_values)
    try:
        rest = flag_values(argv)
    except flags.Error as e:
        fail(f"{e} (pass --helpfull to see the flags)")
    if len(rest) > 1:
        fail(f"unexpected arguments: {rest[1:]}")


# --------------------------------------------------------------------------- --config


def define_config_flag(default: str) -> flags.FlagHolder:
    """Defines `--config` (a recipe file, optionally with ':variant') once; its holder.

    config_flags scans sys.argv for `--config.*` when the flag is defined; ffjax applies
    overrides itself (for its error messages), so they are removed from sys.argv first
    (`split_overrides`).
    """
    if "config" not in _CONFIG:
        _CONFIG["config"] = config_flags.DEFINE_config_file(
            "config", default, "Recipe file, optionally with ':variant'.", lock_config=False
        )
    return _CONFIG["config"]


def split_overrides(argv: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Separates `--config.a.b=value` / `--config.a.b value` from the other arguments.

    ConfigError for a `--config.a.b` without a value.
    """
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


def split_yaml_config(argv: list[str]) -> tuple[list[str], str | None]:
    """Takes `--config FILE.yaml` / `--config=FILE.yaml` (also .yml) out of `argv`.

    config_flags loads only Python recipes, so a Flow-Factory YAML never reaches it;
    `load_config` maps it with `ffjax.ff_yaml` instead. Returns (rest, the YAML path or
    None); a Python recipe stays in `rest`.
    """
    from ffjax import ff_yaml

    rest, path = [], None
    i = 0
    while i < len(argv):
        arg = argv[i]
        value = arg.partition("=")[2] if arg.startswith("--config=") else None
        if arg == "--config" and i + 1 < len(argv):
            value = argv[i + 1]
        if value is not None and ff_yaml.is_yaml(value):
            path = value
            i += 1 if "=" in arg else 2
            continue
        rest.append(arg)
        i += 1
    return rest, path


def yaml_mapping() -> Any:
    """The `ffjax.ff_yaml.Mapping` of the last `load_config` given a YAML, else None."""
    return _YAML.get("mapping")


def load_config(
    argv: list[str], overrides: list[tuple[str, str]] = ()
) -> tuple[configs.ConfigDict, list[str]]:
    """Parses flags, applies `--config.*` overrides and validates.

    `--config` must be defined (`define_config_flag`). A `--config` that names a
    Flow-Factory YAML file is mapped by `ffjax.ff_yaml` (its mapping: `yaml_mapping()`).
    Overrides found in `argv` are applied after those given in `overrides`. Returns
    (config, remaining argv); raises ConfigError (a bad override, value or YAML key) or
    absl's flags.Error (a bad flag).
    """
    rest, found = split_overrides(argv)
    rest, yaml_path = split_yaml_config(rest)
    remaining = flags.FLAGS(rest)
    _YAML.clear()
    if yaml_path is not None:
        from ffjax import ff_yaml

        _YAML["mapping"] = ff_yaml.load(yaml_path)
        config = _YAML["mapping"].config
    else:
        config = _CONFIG["config"].value
    for key, value in [*overrides, *found]:
        configs.apply_override(config, key, value)
    return configs.validate(config), remaining
