"""Reading a Diffusers / transformers `config.json` into a frozen config dataclass.

Every model family's config module (`ffjax/models/<family>/config.py`) builds its
dataclasses through `build_config`, so a folder of another model, an unknown key or an
impossible value fails the same way everywhere, naming the key.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any


class ConfigError(ValueError):
    """A config.json that does not describe the expected model; the message names the key."""


def read_config(path_or_dict: str | os.PathLike | dict[str, Any]) -> dict[str, Any]:
    """A config dict from a dict, a `config.json` path, or a folder containing one."""
    if isinstance(path_or_dict, dict):
        return dict(path_or_dict)
    path = os.fspath(path_or_dict)
    if os.path.isdir(path):
        path = os.path.join(path, "config.json")
    if not os.path.exists(path):
        raise ConfigError(f"no config.json at {path}")
    with open(path) as f:
        return json.load(f)


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
