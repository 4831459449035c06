"""The kinds of failure ffjax reports to a user: one class per kind, each with its exit code.

Library code raises these with a message that names the file, folder or key at fault;
every command line (`ffjax.cli`) catches `FfjaxError`, prints the message as one line
`<prog>: <message>` on stderr and exits with the class's `exit_code` (no traceback):

    FfjaxError                  1  base
      ConfigError               2  the run's config (recipe, --config.* overrides)
      UsageError                2  a command-line argument, or what it points at
      ModelFolderError          1  a model folder (model.path, --model_path)
        ModelConfigError        1  a config.json in it
      WeightsError              1  a weights (safetensors) file, or its fit to the model
      CheckpointError           1  a run's Orbax checkpoint that cannot be read

2 means "change the command", 1 "a file on disk is not what the command needs". The old
names stay importable where code imports them: `ffjax.configs.ConfigError`,
`ffjax.models.config_json.ConfigError` (= ModelConfigError) and
`ffjax.models.weights.WeightsError`.

This module imports nothing of ffjax, so any module may import it.
"""

from __future__ import annotations

from typing import ClassVar


class FfjaxError(Exception):
    """Base of every error ffjax reports as one line; the message names what and where.

    Raised only through a subclass. `exit_code` is the status a command line exits with.
    """

    exit_code: ClassVar[int] = 1


class ConfigError(FfjaxError, ValueError):
    """The run's config cannot run: an unknown key, a bad value, a missing required value
    or a combination of values that does not fit (batch sizes, mesh, algorithm needs).
    Raised by `ffjax.configs` (validation, overrides) and by the checks of a run's set-up;
    the message names the `config.*` key and what is allowed."""

    exit_code: ClassVar[int] = 2


class UsageError(FfjaxError):
    """A command-line argument that cannot be used, or a run folder / checkpoint that it
    names and that does not hold what the command needs (no checkpoint of that epoch, no
    EMA weights, no config.txt). Raised by the commands' library functions
    (`ffjax.diffusers_export.ExportError` is one)."""

    exit_code: ClassVar[int] = 2


class ModelFolderError(FfjaxError, ValueError):
    """A model folder (`config.model.path`, `--model_path`, a converter's input) that does
    not exist, lacks a component's files, or holds another model. The message names the
    folder or file."""


class ModelConfigError(ModelFolderError):
    """A Diffusers / transformers `config.json` that does not describe the expected model:
    missing, another `_class_name`, an unknown key or an impossible value. Raised by
    `ffjax.models.config_json` (there also named `ConfigError`); the message names the
    file (when read from one) and the key."""


class WeightsError(FfjaxError, ValueError):
    """A weights file that cannot be read (truncated, corrupt header, unsupported dtype) or
    that does not fit the model: a missing, unexpected or mis-shaped tensor of a strict
    converter. Raised by `ffjax.models.weights` (its `CheckpointFormatError` and
    `ConversionError` are subclasses); the message names the file or the tensor."""


class CheckpointError(FfjaxError, RuntimeError):
    """A run's Orbax checkpoint that cannot be read (or written); the message names its
    folder."""


class CompileError(FfjaxError, RuntimeError):
    """XLA could not compile one of the run's programs for the chosen backend (a dry run
    for a GPU or TPU target); the message names the program, the target and XLA's first
    line."""
