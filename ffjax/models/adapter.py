"""The model-adapter interface: what the trainer, the dry run and `sample` see of a model.

`ModelAdapter` (a `typing.Protocol`) writes down every member they use, with shapes,
dtypes and conventions; `AdapterBase` gives the optional capabilities their defaults,
so callers use every member unconditionally (no `hasattr` probing). Every adapter
subclasses `AdapterBase`:

    class MyAdapter(AdapterBase):
        denoiser = "transformer"
        lora_targets = (r"attn/to_[qkv]$",)

        @classmethod
        def load(cls, config): ...
        def encode_prompts(self, prompts, height, width): ...
        def init_noise(self, key, batch, height, width): ...
        def sigmas(self, num_steps, height, width): ...
        def velocity(self, variables, x, sigma, cond): ...
        def decode(self, vae_weights, x, height, width): ...

Adapters are immutable after construction: they are static arguments of jitted
functions (`velocity`, `prepare_cond` and `decode` are passed to `jax.jit` as bound
methods), and a compiled program must not depend on fields that change behind its
back. Assigning a field raises `dataclasses.FrozenInstanceError`; `replace(**changes)`
builds a new adapter through the constructor. Equality and hash stay object identity,
so one adapter object keeps hitting its compilation caches. Mutable state an adapter
needs at run time lives in holder objects it owns, not in its fields: the text
encoders (`place_encoders` moves their params onto a mesh; they are never part of a
jitted adapter method) and caches such as wan2-i2v's encoded image conditions.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any, ClassVar, Protocol, runtime_checkable

import jax
import numpy as np


@runtime_checkable
class ModelAdapter(Protocol):
    """Every member the trainer, the dry run and `sample` use; `AdapterBase` defaults the
    optional ones (below "capabilities").

    Conventions (DESIGN.md section 3): sigma in [0, 1], x_sigma = (1 - sigma) x0 + sigma
    noise, velocity v = noise - x0; a model that takes t * 1000 converts inside its
    adapter. Latents handed to samplers are float32 in the layout the adapter chooses
    (packed tokens for FLUX.1 / Qwen-Image, [B, f, h, w, C] for WAN); `cond` is a
    pytree whose leaves have the batch axis first (so rows can be indexed, shuffled and
    sharded like any batch).
    """

    denoiser: str
    """Key of the trained weights in the `load` weights dict (e.g. "transformer")."""

    @property
    def lora_targets(self) -> tuple[str, ...]:
        """Default LoRA targets: regexes on Dense module paths of the denoiser."""
        ...

    @classmethod
    def load(cls, config: Any) -> tuple[Any, dict[str, Any]]:
        """(adapter, weights) from a run config (`config.model`, `config.sampling`).

        weights: {name: params pytree}, at least `denoiser` and "vae" (passed to
        `decode`); stored in `config.model.param_dtype`, activations in `config.model.dtype`.
        The adapter holds its text encoders, ready for `encode_prompts`.
        """
        ...

    def encode_prompts(self, prompts: list[str], height: int, width: int) -> Any:
        """cond pytree for `len(prompts)` rows (batch axis first) at an H x W output.

        With `wants_metadata` it is also given `metadata=`, one dict per prompt.
        """
        ...

    def init_noise(self, key: jax.Array, batch: int, height: int, width: int) -> jax.Array:
        """Standard normal latents float32[batch, ...] at sigma = 1."""
        ...

    def sigmas(self, num_steps: int, height: int, width: int) -> np.ndarray:
        """The family's schedule: float32[num_steps + 1], strictly decreasing from ~1 to 0."""
        ...

    def velocity(self, variables: Any, x: jax.Array, sigma: jax.Array, cond: Any) -> jax.Array:
        """v = noise - x0 predicted at x (float32 latents), sigma float32[B], cond of B rows.

        variables: the denoiser's {"params": ...} plus, when training LoRA, the "lora"
        and "lora_scale" collections. Guidance (embedded or classifier-free) is applied
        here as the family requires. Returns float32 shaped like x. The only member
        algorithms call.
        """
        ...

    def decode(self, vae_weights: Any, x: jax.Array, height: int, width: int) -> jax.Array:
        """Final latents -> uint8 images [B, H, W, 3] (videos [B, T, H, W, 3]); jitted by
        the trainer with height and width static."""
        ...

    # ----------------------------------------------------------------- capabilities

    supports_cfg: bool
    """Classifier-free guidance in `velocity`: `config.algorithm.cfg_in_train` applies and
    `conditional_only` drops the guidance. Default False."""

    wants_metadata: bool
    """`encode_prompts` also takes `metadata=` (wan2-i2v reads each prompt's image from
    it). Default False."""

    prepare_cond: Callable[[Any, Any], Any] | None
    """`prepare_cond(variables, cond) -> cond`, run once per rollout before the steps
    (the rollout's static `prepare_fn`): what every step would recompute from cond and
    the fixed weights alone (WAN's cross-attention keys / values). Default None: no
    preparation, and no call in the compiled rollout."""

    def conditional_only(self, cond: Any) -> Any:
        """`cond` without its guidance: `velocity` then runs the conditional pass alone
        (the training forward of `cfg_in_train=False`). Default: `cond` unchanged."""
        ...

    def finish_latents(self, final: jax.Array, cond: Any) -> jax.Array:
        """Applied to each rollout chunk's final latents (TI2V pins frame 0 to the image).
        Default: `final` itself."""
        ...

    def place_encoders(self, mesh: jax.sharding.Mesh) -> None:
        """Shards the text encoders' params on `mesh` by their logical axes (it moves the
        params inside the encoder objects; the adapter's fields do not change). Default:
        nothing."""
        ...

    def logical_specs(self) -> dict[str, Any]:
        """{weights key: logical PartitionSpec tree} of the `load` weights; weights
        without specs are replicated. Default {}."""
        ...

    def experts_of(self, sigma: np.ndarray) -> np.ndarray | None:
        """int32[N] expert index of rows at noise levels sigma float32[N] (host), or None
        for a one-expert model (the default). The trainer groups micro-batches by it."""
        ...

    def with_expert(self, cond: Any, expert: int) -> Any:
        """`cond` whose rows all use expert `expert` (static int), so only that expert is
        traced. Default: `cond` (one expert, index 0)."""
        ...

    @classmethod
    def abstract_load(cls, config: Any) -> tuple[Any, dict[str, Any]]:
        """`load` from config.json files alone (for `--dry_run`): weights as
        `jax.ShapeDtypeStruct`s, no text encoders. Default: ConfigError (cannot dry-run)."""
        ...

    @classmethod
    def abstract_text_encoders(cls, config: Any) -> dict[str, Any] | None:
        """{name: params as `jax.ShapeDtypeStruct`s} of the encoders `load` sets up, or
        None (the default: none to report)."""
        ...

    @classmethod
    def text_encoder_specs(cls, config: Any) -> dict[str, Any] | None:
        """Logical PartitionSpecs of `abstract_text_encoders(config)` (same keys), as
        `place_encoders` shards them, or None (the default: not placed)."""
        ...

    def abstract_cond(self, batch: int, height: int, width: int) -> Any:
        """The `encode_prompts` result for `batch` prompts as `jax.ShapeDtypeStruct`s
        (dry runs). Default: NotImplementedError."""
        ...

    def replace(self, **changes: Any) -> Any:
        """A new adapter: the constructor called again with these arguments changed."""
        ...


class _FrozenAfterInit(type):
    """Metaclass of `AdapterBase`: records the constructor arguments (for `replace`) and
    freezes the instance once the outermost `__init__` has returned."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        obj = super().__call__(*args, **kwargs)
        bound = inspect.signature(cls.__init__).bind(obj, *args, **kwargs)
        init_args = dict(bound.arguments)
        init_args.pop(next(iter(init_args)))  # self
        object.__setattr__(obj, "_init_args", init_args)
        object.__setattr__(obj, "_frozen", True)
        return obj


class AdapterBase(metaclass=_FrozenAfterInit):
    """Base of every model adapter: immutability, `replace`, and the optional
    capabilities of `ModelAdapter` with their defaults (each documented there)."""

    supports_cfg: ClassVar[bool] = False
    wants_metadata: ClassVar[bool] = False
    # None, not an identity method: the rollout's prepare_fn is a static jit argument,
    # and None compiles no preparation at all.
    prepare_cond: ClassVar[Callable[[Any, Any], Any] | None] = None
    _frozen: ClassVar[bool] = False  # True on an instance once constructed

    def __setattr__(self, name: str, value: Any) -> None:
        if self._frozen:
            raise dataclasses.FrozenInstanceError(
                f"cannot assign to {type(self).__name__}.{name}: adapters are immutable after"
                f" construction (they are static jit arguments); use .replace({name}=...)"
            )
        object.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        if self._frozen:
            raise dataclasses.FrozenInstanceError(
                f"cannot delete {type(self).__name__}.{name}: adapters are immutable"
            )
        object.__delattr__(self, name)

    def replace(self, **changes: Any) -> Any:
        """A new adapter of this class: the constructor called with the arguments this
        one was built with, `changes` replacing some (derived fields are recomputed and
        checks rerun). Raises TypeError for a name the constructor does not take."""
        params = inspect.signature(type(self).__init__).parameters
        unknown = sorted(set(changes) - set(params) - {"self"})
        if unknown:
            raise TypeError(
                f"{type(self).__name__}.replace: {unknown} are not constructor arguments;"
                f" allowed: {[p for p in params if p != 'self']}"
            )
        return type(self)(**{**self._init_args, **changes})

    # ----------------------------------------------------------------- capabilities

    def conditional_only(self, cond: Any) -> Any:
        return cond

    def finish_latents(self, final: jax.Array, cond: Any) -> jax.Array:
        return final

    def place_encoders(self, mesh: jax.sharding.Mesh) -> None:
        return None

    def logical_specs(self) -> dict[str, Any]:
        return {}

    def experts_of(self, sigma: np.ndarray) -> np.ndarray | None:
        return None

    def with_expert(self, cond: Any, expert: int) -> Any:
        if expert != 0:
            raise ValueError(f"{type(self).__name__} has one expert; got expert={expert}")
        return cond

    @classmethod
    def abstract_load(cls, config: Any) -> tuple[Any, dict[str, Any]]:
        from ffjax.configs import ConfigError

        raise ConfigError(
            f"model {config.model.name!r} cannot be dry-run: its adapter has no"
            " abstract_load(config) (see Flux1Adapter.abstract_load)"
        )

    @classmethod
    def abstract_text_encoders(cls, config: Any) -> dict[str, Any] | None:
        return None

    @classmethod
    def text_encoder_specs(cls, config: Any) -> dict[str, Any] | None:
        return None

    def abstract_cond(self, batch: int, height: int, width: int) -> Any:
        raise NotImplementedError(f"{type(self).__name__} has no abstract_cond (dry runs)")


def adapter_class(name: str) -> type[AdapterBase]:
    """The adapter class `config.model.name` names (a registered model or a user's
    "package.module:Class"); ConfigError unless it subclasses `AdapterBase`, whose
    defaults callers rely on. RegistryError for an unknown name."""
    from ffjax import registry
    from ffjax.configs import ConfigError

    cls = registry.MODELS.get(name)
    if not (isinstance(cls, type) and issubclass(cls, AdapterBase)):
        raise ConfigError(
            f"config.model.name={name!r} is {cls!r}, not a model adapter: adapters subclass"
            " ffjax.models.adapter.AdapterBase (see its ModelAdapter protocol)"
        )
    return cls
