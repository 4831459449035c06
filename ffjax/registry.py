"""One small generic registry: name -> object, used for models, algorithms and rewards;
and the model-family table.

    ALGORITHMS = Registry("algorithm")

    @ALGORITHMS.register("grpo")
    def grpo_spec(): ...

    ALGORITHMS.get("grpo")                  # the registered object
    MODELS.get("my_pkg.my_mod:MyModel")     # a user's own class, imported on demand

The registry is the only list of valid names: config validation asks it for the
allowed values, so adding an entry needs no edit anywhere else.

`FAMILIES` is the one table of model families: each entry names its package (the
family name `ffjax.models.load_pretrained` takes), its adapters (`config.model.name`,
e.g. "flux1", each with the label exports show), converter module, transformer / VAE
config classes and experts. Every other name table is derived from it: `MODELS`
(filled when `ffjax.models` is imported), `ffjax.models.LOADERS`, `ffjax.export.FAMILIES`
and `ffjax.convert.CONVERTERS`. Entries are import paths, so this module imports no
model code; `family_of` resolves any spelling of a family (family or model name).
"""

from __future__ import annotations

import dataclasses
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

    def values(self) -> list[T]:
        """The registered entries, in the order of `names()`."""
        return [self._entries[n] for n in self.names()]

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


# --------------------------------------------------------------------------- model families


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    """One adapter of a family: `config.model.name`, its class ("module:Class") and the
    label exports and messages show."""

    name: str
    adapter: str
    label: str


@dataclasses.dataclass(frozen=True)
class ModelFamily:
    """One model family (see the module docstring).

    Attributes:
      name: the family name, also its package `ffjax.models.<name>` (whose `convert.py`
        loads, saves and identifies checkpoints and whose `call_like_diffusers` is the
        parity seam).
      label: the family in messages.
      models: its adapters, one per `config.model.name`.
      transformer_config, vae_config: the config classes ("module:Class") of the
        components, each with `from_diffusers(folder)`.
      experts: the pipeline components that can hold a transformer, first the one every
        pipeline has; a pipeline with more (model_index.json lists them) trains the tree
        {expert: params} (WAN 2.2 A14B).
      components: what `load_pretrained(name, component, path)` loads (the converter's
        `load_<component>`).
    """

    name: str
    label: str
    models: tuple[ModelEntry, ...]
    transformer_config: str
    vae_config: str
    experts: tuple[str, ...] = ("transformer",)
    components: tuple[str, ...] = ("transformer", "vae")

    @property
    def package(self) -> str:
        return f"ffjax.models.{self.name}"

    @property
    def converter(self) -> str:
        """The converter module's name (`transformer_rules`, `load_transformer`, ...)."""
        return f"{self.package}.convert"

    @property
    def spellings(self) -> tuple[str, ...]:
        """Every name of the family: its own, then its models'."""
        return (self.name, *(m.name for m in self.models))

    def converter_module(self) -> Any:
        """The imported converter module."""
        return importlib.import_module(self.converter)

    def config_class(self, component: str) -> type:
        """The imported config class of "transformer" or "vae"."""
        spec = {"transformer": self.transformer_config, "vae": self.vae_config}[component]
        return _import_object(spec, "config class")


FAMILIES: Registry[ModelFamily] = Registry("model family")
for _family in (
    ModelFamily(
        "flux", "FLUX.1",
        (ModelEntry("flux1", "ffjax.models.flux.adapter:Flux1Adapter", "FLUX.1"),),
        transformer_config="ffjax.models.flux.config:FluxTransformerConfig",
        vae_config="ffjax.models.flux.config:FluxVAEConfig",
    ),
    ModelFamily(
        "qwen_image", "Qwen-Image",
        (ModelEntry("qwen-image", "ffjax.models.qwen_image.adapter:QwenImageAdapter",
                    "Qwen-Image"),),
        transformer_config="ffjax.models.qwen_image.config:QwenImageTransformerConfig",
        vae_config="ffjax.models.qwen_image.config:QwenImageVAEConfig",
    ),
    ModelFamily(
        "wan", "WAN",
        (ModelEntry("wan2-t2v", "ffjax.models.wan.adapter:WanT2VAdapter", "WAN T2V"),
         ModelEntry("wan2-i2v", "ffjax.models.wan.adapter_i2v:WanI2VAdapter", "WAN I2V")),
        transformer_config="ffjax.models.wan.config:WanTransformerConfig",
        vae_config="ffjax.models.wan.config:WanVAEConfig",
        experts=("transformer", "transformer_2"),
    ),
):  # fmt: skip
    FAMILIES.register(_family.name, _family)
del _family


def family_of(name: str) -> ModelFamily:
    """The family `name` spells: a family name ("flux", "qwen_image", "wan") or one of its
    model names ("flux1", "qwen-image", "wan2-t2v", "wan2-i2v"). RegistryError otherwise."""
    for family in FAMILIES.values():
        if name in family.spellings:
            return family
    spellings = sorted(s for f in FAMILIES.values() for s in f.spellings)
    close = difflib.get_close_matches(name, spellings, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    raise RegistryError(f"unknown model family {name!r}.{hint} Known: {', '.join(spellings)}")
