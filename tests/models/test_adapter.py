"""The adapter interface (`ffjax.models.adapter`): every registered adapter subclasses
`AdapterBase` and has every `ModelAdapter` member; adapters are immutable; the base's
defaults answer as the trainer's former `hasattr` / `getattr` probes did."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from ffjax import configs
from ffjax.models.adapter import AdapterBase, ModelAdapter
from ffjax.models.flux import Flux1Adapter, FluxTransformer, FluxTransformerConfig, FluxVAEConfig
from ffjax.models.qwen_image import QwenImageAdapter, QwenImageTransformer
from ffjax.models.qwen_image import QwenImageTransformerConfig as QwenConfig
from ffjax.models.wan import WanI2VAdapter, WanT2VAdapter, WanTransformer, WanTransformerConfig
from ffjax.registry import MODELS

# Module objects only (no params): constructing an adapter allocates nothing.
ADAPTERS = {
    "flux1": lambda: Flux1Adapter(FluxTransformer(FluxTransformerConfig()), None, FluxVAEConfig()),
    "qwen-image": lambda: QwenImageAdapter(QwenImageTransformer(QwenConfig())),
    "wan2-t2v": lambda: WanT2VAdapter(WanTransformer(WanTransformerConfig()), num_frames=5),
    "wan2-i2v": lambda: WanI2VAdapter(
        WanT2VAdapter(WanTransformer(WanTransformerConfig(in_channels=36)), num_frames=5)
    ),
}
# What the trainer's probes answered before the base existed, per model:
# (supports_cfg, wants_metadata, has prepare_cond, has own finish_latents, has experts_of).
CAPABILITIES = {
    "flux1": (False, False, False, False, False),
    "qwen-image": (True, False, False, False, False),
    "wan2-t2v": (True, False, True, False, True),
    "wan2-i2v": (True, True, True, True, True),
}


def _members() -> set[str]:
    """The members `ModelAdapter` declares (methods, properties and annotated fields)."""
    names = {n for n in vars(ModelAdapter) if not n.startswith("_")}
    return names | set(ModelAdapter.__annotations__)


def test_every_registered_model_is_covered():
    assert sorted(ADAPTERS) == MODELS.names() == sorted(CAPABILITIES)


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_registered_adapter_satisfies_the_protocol(name):
    cls = MODELS.get(name)
    assert issubclass(cls, AdapterBase)
    missing = sorted(m for m in _members() if not hasattr(cls, m))
    assert not missing, f"{cls.__name__} lacks {missing}"
    adapter = ADAPTERS[name]()
    assert type(adapter) is cls and isinstance(adapter, ModelAdapter)
    assert isinstance(adapter.denoiser, str) and adapter.lora_targets
    assert all(isinstance(t, str) for t in adapter.lora_targets)


def test_protocol_names_the_required_members():
    required = {"denoiser", "lora_targets", "load", "encode_prompts", "init_noise", "sigmas",
                "velocity", "decode"}  # fmt: skip
    assert required <= _members()

    class NoVelocity(AdapterBase):  # the base defaults the optional members only
        denoiser, lora_targets = "transformer", ()

    assert not isinstance(NoVelocity(), ModelAdapter)


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_capabilities_answer_as_the_probes_did(name):
    adapter = ADAPTERS[name]()
    cfg, meta, prepare, finish, experts = CAPABILITIES[name]
    assert adapter.supports_cfg is cfg and adapter.wants_metadata is meta
    # The rollout's static prepare_fn: None compiles no preparation, as getattr(..., None) gave.
    assert (adapter.prepare_cond is not None) is prepare
    assert (type(adapter).finish_latents is not AdapterBase.finish_latents) is finish
    assert (type(adapter).experts_of is not AdapterBase.experts_of) is experts
    if not experts:
        assert adapter.experts_of(np.float32([0.9, 0.1])) is None


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_adapters_are_immutable(name):
    adapter = ADAPTERS[name]()
    with pytest.raises(dataclasses.FrozenInstanceError, match="immutable"):
        adapter.max_sequence_length = 77
    with pytest.raises(dataclasses.FrozenInstanceError):
        adapter.denoiser = "vae"  # a class attribute cannot be shadowed either
    with pytest.raises(dataclasses.FrozenInstanceError):
        del adapter.config
    assert "denoiser" not in vars(adapter)


def test_replace_builds_a_new_adapter_through_the_constructor():
    a = ADAPTERS["flux1"]()
    b = a.replace(max_sequence_length=77, guidance_scale=2.0)
    assert (a.max_sequence_length, a.guidance_scale) == (512, 3.5)
    assert (b.max_sequence_length, b.guidance_scale) == (77, 2.0)
    assert b.transformer is a.transformer and b.config is a.config
    # Identity equality and hash (jit caches on the adapter): a copy is another adapter.
    assert a == a and a != b and hash(a) == object.__hash__(a)
    with pytest.raises(TypeError, match=r"\['text_encoder'\] are not constructor arguments"):
        a.replace(text_encoder=None)
    # Checks rerun: WAN's frame count is validated again.
    with pytest.raises(ValueError, match="num_frames=6"):
        ADAPTERS["wan2-t2v"]().replace(num_frames=6)
    i2v = ADAPTERS["wan2-i2v"]()
    again = i2v.replace(core=i2v.core.replace(embed_cache="cache"))
    assert again.embed_cache == "cache" and i2v.embed_cache is None


def test_base_defaults():
    class Minimal(AdapterBase):
        denoiser = "denoiser"

        def __init__(self, seed: int = 0):
            self.seed = seed  # fields are set freely inside __init__

    a = Minimal(3)
    assert a.seed == 3 and a.replace(seed=4).seed == 4
    cond, x = {"emb": jnp.ones((2, 3))}, jnp.zeros((2, 4))
    assert a.prepare_cond is None and not a.supports_cfg and not a.wants_metadata
    assert a.conditional_only(cond) is cond and a.finish_latents(x, cond) is x
    assert a.place_encoders(None) is None and a.logical_specs() == {}
    assert a.experts_of(np.ones(3)) is None and a.with_expert(cond, 0) is cond
    with pytest.raises(ValueError, match="one expert"):
        a.with_expert(cond, 1)
    c = configs.base_config()
    c.model.name = "tests.models.test_adapter:Minimal"
    with pytest.raises(configs.ConfigError, match="cannot be dry-run: its adapter has no"):
        Minimal.abstract_load(c)
    assert Minimal.abstract_text_encoders(c) is None and Minimal.text_encoder_specs(c) is None
    with pytest.raises(NotImplementedError, match="abstract_cond"):
        a.abstract_cond(1, 8, 8)


class NotAnAdapter:
    """What a user's adapter that predates `AdapterBase` looks like."""

    denoiser = "transformer"


def test_adapter_class_resolves_names_and_refuses_non_adapters():
    from ffjax.models.adapter import adapter_class

    assert adapter_class("flux1") is Flux1Adapter
    with pytest.raises(configs.ConfigError, match="NotAnAdapter.*subclass.*AdapterBase"):
        adapter_class("tests.models.test_adapter:NotAnAdapter")
