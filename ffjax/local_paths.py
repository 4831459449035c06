"""Hub IDs where ffjax needs a local folder: one line naming the key to set instead.

Flow-Factory configs name weights by hub ID (`black-forest-labs/FLUX.1-dev`, PickScore's
`yuvalkirstain/PickScore_v1`) and download them; ffjax never downloads weights. A config
keeps such IDs as given (`--check_config` passes on them); `check(config)` runs when a
run is about to load (ffjax/cli/train.py; `ffjax.sample.sample`, which loads no reward,
checks `model.path` alone) and refuses any `model.path` or reward path argument that is a
hub ID and not a local folder, naming the `--config.` key to pass.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from typing import Any

from ffjax.errors import ModelFolderError

# owner/name, as hub repositories are spelled; a relative path that exists is a folder.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_hub_id(value: Any) -> bool:
    """Whether `value` reads as a hub ID (owner/name) and names no local file or folder."""
    if not isinstance(value, str) or not _HUB_ID.match(value):
        return False
    return not os.path.exists(os.path.expanduser(value))


def _paths(config: Any, rewards: bool) -> Iterator[tuple[str, Any]]:
    """(config key, value) of every weights location: model.path, rewards' *path args."""
    yield "model.path", config.model.path
    for section in ("rewards", "eval_rewards") if rewards else ():
        for alias, entry in (config.get(section) or {}).items():
            for key, value in (entry.get("args") or {}).items():
                if key == "path" or key.endswith("_path"):
                    yield f"{section}.{alias}.args.{key}", value


def check(config: Any, *, rewards: bool = True) -> None:
    """ModelFolderError (exit 1) for the first hub ID among the config's weights paths
    (`rewards` False: model.path only, for a run that loads no reward)."""
    for key, value in _paths(config, rewards):
        if is_hub_id(value):
            name = value.rsplit("/", 1)[1]
            raise ModelFolderError(
                f"config.{key}={value!r} is a hub ID, not a local folder; ffjax never"
                f" downloads weights: pass a local folder with --config.{key}=/path/to/{name}"
            )
