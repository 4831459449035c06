"""One small generic registry: name -> object, used for models, algorithms and rewards.

    MODELS = Registry("model")

    @MODELS.register("flux1")
    class FluxAdapter: ...

    MODELS.get("flux1")                 # the registered object
    MODELS.get("my_pkg.my_mod:MyModel")  # a user's own class, imported on demand

The registry is the only list of valid names: config validation asks it for the
allowed values, so adding an entry needs no edit anywhere else.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class RegistryError(KeyError):
    """A lookup that failed; the message names the registered entries."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly.
        return str(self.args[0]) if self.args else ""


class Registry(Generic[T]):
    """A named table of factories (classes or functions) of one kind.

    Args:
      kind: what the entries are ("model", "algorithm", "reward"); used in messages.
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str, obj: T | None = None) -> Any:
        """Registers `obj` under `name`; used as a decorator when `obj` is omitted.

        Raises ValueError if `name` is already taken by a different object or contains
        ':' (reserved for `package.module:Name` imports).
        """
        if ":" in name:
            raise ValueError(f"{self.kind} name {name!r} may not contain ':'")

        def add(o: T) -> T:
            old = self._entries.get(name)
            if old is not None and old is not o:
                raise ValueError(f"{self.kind} {name!r} is already registered as {old!r}")
            self._entries[name] = o
            return o

        return add if obj is None else add(obj)

    def get(self, name: str) -> T:
        """Returns the entry named `name`, or imports `package.module:Attr`.

        Raises RegistryError listing the registered names (closest first) on a miss,
        or naming the module / attribute that could not be imported.
        """
        if ":" in name:
            return _import_object(name, self.kind)
        try:
            return self._entries[name]
        except KeyError:
            raise RegistryError(self._miss_message(name)) from None

    def names(self) -> list[str]:
        """Sorted registered names."""
        return sorted(self._entries)

    def is_valid(self, name: str) -> bool:
        """True if `name` is registered or has the `package.module:Attr` form."""
        return name in self._entries or ":" in name

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def _miss_message(self, name: str) -> str:
        close = difflib.get_close_matches(name, self.names(), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        return (
            f"unknown {self.kind} {name!r}.{hint} Registered: {', '.join(self.names()) or '(none)'};"
            f" or give 'package.module:Name' to load your own."
        )


def _import_object(spec: str, kind: str) -> Any:
    module_name, _, attr_path = spec.partition(":")
    if not module_name or not attr_path:
        raise RegistryError(f"{kind} {spec!r}: expected 'package.module:Name'")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise RegistryError(f"{kind} {spec!r}: cannot import module {module_name!r}: {e}") from e
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise RegistryError(
                f"{kind} {spec!r}: module {module_name!r} has no attribute {attr_path!r}"
            ) from None
    return obj


MODELS: Registry[Any] = Registry("model")
ALGORITHMS: Registry[Any] = Registry("algorithm")
REWARDS: Registry[Any] = Registry("reward")
