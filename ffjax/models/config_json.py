"""Reading a Diffusers / transformers `config.json` into a frozen config dataclass.

Every model family's config module (`ffjax/models/<family>/config.py`) builds its
dataclasses on `DiffusersConfig` (through `build_config`), so a folder of another model,
an unknown key or an impossible value fails the same way everywhere, naming the key.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, ClassVar, Self

from ffjax.errors import ModelConfigError

# The name this module's callers import: a config.json that does not describe the
# expected model (ffjax.errors.ModelConfigError, exit 1 from a command line).
ConfigError = ModelConfigError


def _config_file(path: str | os.PathLike) -> str:
    """The config.json a path names: a .json file itself, else the file in that folder."""
    path = os.fspath(path)
    is_file = os.path.isfile(path) or (path.endswith(".json") and not os.path.isdir(path))
    return path if is_file else os.path.join(path, "config.json")


def read_config(path_or_dict: str | os.PathLike | dict[str, Any]) -> dict[str, Any]:
    """A config dict from a dict, a `config.json` path, or a folder containing one.

    ConfigError naming the file when it is missing or not a JSON object.
    """
    if isinstance(path_or_dict, dict):
        return dict(path_or_dict)
    path = _config_file(path_or_dict)
    if not os.path.exists(path):
        folder = os.path.dirname(path)
        gone = f" (the folder {folder} does not exist)" if not os.path.isdir(folder) else ""
        raise ConfigError(f"no config.json at {path}{gone}")
    try:
        with open(path) as f:
            config = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: cannot read it as JSON: {e}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: not a JSON object")
    return config


def build_config(
    cls,
    config: dict[str, Any],
    class_name: str,
    overrides: dict[str, Any],
    what: str = "",
    keys: dict[str, tuple[str, ...]] | None = None,
):
    """`cls(**config, **overrides)`, validated (`cls.validate()`).

    Args:
      cls: a frozen dataclass whose fields are the config's keys (+ runtime fields).
      config: the config.json dict; keys starting with "_" are metadata.
      class_name: the `_class_name` the folder must have (another family fails here).
      overrides: runtime fields (dtype, remat, ...) to set.
      what: a description for the wrong-class message, e.g. "Qwen-Image VAE".
      keys: the config.json keys `cls` takes, each with the fields it sets (default:
        every field, named as itself); for a Diffusers class that spells a field of a
        shared dataclass its own way (`AutoencoderKLQwenImage.input_channels`).

    Lists become tuples (the dataclasses are hashable: they are static jit arguments).
    """
    got = config.get("_class_name", class_name)
    if got != class_name:
        hint = f" (not a {what} folder)" if what else ""
        raise ConfigError(f"config.json _class_name is {got!r}, expected {class_name!r}{hint}")
    if keys is None:
        keys = {f.name: (f.name,) for f in dataclasses.fields(cls)}
    given = {k: v for k, v in config.items() if not k.startswith("_")}
    unknown = sorted(set(given) - set(keys))
    if unknown:
        raise ConfigError(f"{class_name} config has unknown keys {unknown}; known: {sorted(keys)}")
    kwargs = {f: v for k, v in given.items() for f in keys[k]}
    kwargs.update(overrides)
    for k, v in kwargs.items():
        if isinstance(v, list):
            kwargs[k] = tuple(v)
    out = cls(**kwargs)
    out.validate()
    return out


def check(ok: bool, key: str, value: Any, allowed: str) -> None:
    """ConfigError "config key KEY=VALUE is invalid; expected ALLOWED" unless `ok`."""
    if not ok:
        raise ConfigError(f"config key {key}={value!r} is invalid; expected {allowed}")


DTYPES = ("float32", "bfloat16", "float16")  # what dtype / param_dtype may be
REMAT_POLICIES = ("none", "full", "save_dots")  # per-block rematerialisation policies


class DiffusersConfig:
    """Base of the frozen config dataclasses that mirror a Diffusers class's config.json.

    A subclass (a frozen dataclass whose fields are the config.json keys, then ffjax
    runtime fields) sets `CLASS_NAME` (the `_class_name` its folders carry), `WHAT` (for
    the wrong-folder message), `RUNTIME` (its runtime fields, never in a config.json)
    and, for a Diffusers class that spells fields its own way, `KEYS` (see
    `build_config`); it implements `validate`, calling `check_runtime`.
    """

    CLASS_NAME: ClassVar[str] = ""
    WHAT: ClassVar[str] = ""
    RUNTIME: ClassVar[tuple[str, ...]] = ("dtype", "param_dtype")
    KEYS: ClassVar[dict[str, tuple[str, ...]] | None] = None

    @classmethod
    def from_diffusers(cls, config: str | os.PathLike | dict[str, Any], **overrides) -> Self:
        """From a `config.json` (path, folder or dict); `overrides` set runtime fields.

        A ConfigError about the contents of a file names the file first.
        """
        values = read_config(config)
        try:
            return build_config(cls, values, cls.CLASS_NAME, overrides, cls.WHAT, keys=cls.KEYS)
        except ConfigError as e:
            if isinstance(config, dict):
                raise
            raise ConfigError(f"{_config_file(config)}: {e}") from None

    def to_diffusers(self) -> dict[str, Any]:
        """The Diffusers config dict (runtime fields dropped, tuples as lists)."""
        keys = self.KEYS or {f.name: (f.name,) for f in dataclasses.fields(self)}
        d = {k: getattr(self, f[0]) for k, f in keys.items() if k not in self.RUNTIME}
        return {
            "_class_name": self.CLASS_NAME,
            **{k: list(v) if isinstance(v, tuple) else v for k, v in d.items()},
        }

    def check_runtime(self) -> None:
        """ConfigError naming the first runtime field whose value is not allowed."""
        from ffjax.models.layers import ATTENTION_IMPLEMENTATIONS  # jax; this module is not

        allowed = {"dtype": DTYPES, "param_dtype": DTYPES, "remat": REMAT_POLICIES,
                   "attention": ATTENTION_IMPLEMENTATIONS}  # fmt: skip
        for key in self.RUNTIME:
            v = getattr(self, key)
            check(v in allowed[key], key, v, f"one of {allowed[key]}")
