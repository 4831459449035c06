"""The generic registry: lookup, helpful misses, user classes by import path."""

import pytest

from ffjax.registry import Registry, RegistryError


class MyModel:
    pass


def test_register_and_get():
    reg = Registry("model")

    @reg.register("alpha")
    class Alpha:
        pass

    reg.register("beta", MyModel)
    assert reg.get("alpha") is Alpha and reg.get("beta") is MyModel
    assert reg.names() == ["alpha", "beta"] and "alpha" in reg


def test_miss_lists_registered_names_and_suggests():
    reg = Registry("reward")
    for name in ("brightness", "symmetry", "pickscore"):
        reg.register(name, object())
    with pytest.raises(RegistryError) as e:
        reg.get("brightnes")
    msg = str(e.value)
    assert "unknown reward 'brightnes'" in msg
    assert "Did you mean 'brightness'" in msg
    assert "brightness, pickscore, symmetry" in msg


def test_import_path_loads_user_class(tmp_path, monkeypatch):
    pkg = tmp_path / "user_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "rewards.py").write_text("class Mine:\n    name = 'mine'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = Registry("reward")
    assert reg.get("user_pkg.rewards:Mine").name == "mine"
    assert reg.is_valid("user_pkg.rewards:Mine")
    with pytest.raises(RegistryError, match="cannot import module 'no_such_pkg.mod'"):
        reg.get("no_such_pkg.mod:X")
    with pytest.raises(RegistryError, match="has no attribute 'Nope'"):
        reg.get("user_pkg.rewards:Nope")


def test_conflicting_registration_is_an_error():
    reg = Registry("algorithm")
    reg.register("grpo", MyModel)
    reg.register("grpo", MyModel)  # same object again is fine (module re-import)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("grpo", object())
    with pytest.raises(ValueError, match="may not contain ':'"):
        reg.register("a:b", object())


# ----------------------------------------------------------------- the family table


def _models():
    from ffjax.registry import FAMILIES

    return [(f, m) for f in FAMILIES.values() for m in f.models]


def test_models_registry_is_the_family_tables_adapters():
    import ffjax.models  # noqa: F401  (registers the adapters)
    from ffjax.models.adapter import AdapterBase
    from ffjax.registry import MODELS

    assert MODELS.names() == sorted(m.name for _, m in _models())
    for family, m in _models():
        cls = MODELS.get(m.name)
        assert cls is MODELS.get(m.adapter) and issubclass(cls, AdapterBase)
        assert cls.__module__.startswith(family.package + ".")


def test_loaders_export_and_convert_tables_derive_from_the_family_table():
    import importlib

    from ffjax import diffusers_convert as convert
    from ffjax import diffusers_export as export
    from ffjax import models
    from ffjax.registry import FAMILIES

    for family in FAMILIES.values():
        conv = family.converter_module()
        assert models.LOADERS[family.name] == {
            c: f"{family.converter}:load_{c}" for c in family.components
        }
        for c in family.components:
            assert callable(getattr(conv, f"load_{c}"))
        for c in ("transformer", "vae"):
            assert callable(family.config_class(c).from_diffusers)
        for name in family.spellings:
            assert convert.CONVERTERS[name] == family.converter
        assert callable(importlib.import_module(family.package).call_like_diffusers)
    assert set(convert.CONVERTERS) == {s for f in FAMILIES.values() for s in f.spellings}
    assert set(export.FAMILIES) == {m.name for _, m in _models()}
    for family, m in _models():
        row = export.FAMILIES[m.name]
        conv = family.converter_module()
        assert row.label == m.label and row.experts == family.experts
        assert row.config is family.config_class("transformer")
        assert row.rules is conv.transformer_rules and row.save_diffusers is conv.save_diffusers


def test_every_spelling_accepted_before_is_still_accepted():
    from ffjax import diffusers_convert as convert
    from ffjax import diffusers_export as export
    from ffjax import models
    from ffjax.registry import MODELS, family_of

    assert {"flux", "qwen_image", "wan", "text", "clip"} <= set(models.LOADERS)
    assert {"flux1", "qwen-image", "wan2-t2v", "wan2-i2v"} <= set(MODELS.names())
    assert {"flux1", "qwen-image", "wan2-t2v", "wan2-i2v"} == set(export.FAMILIES)
    assert "flux1" in convert.CONVERTERS
    assert [export.FAMILIES[n].label for n in export.FAMILIES] == [
        "FLUX.1", "Qwen-Image", "WAN T2V", "WAN I2V"]  # fmt: skip
    for spelling, family in [("flux", "flux"), ("flux1", "flux"), ("qwen-image", "qwen_image"),
                             ("qwen_image", "qwen_image"), ("wan2-i2v", "wan")]:  # fmt: skip
        assert family_of(spelling).name == family
    with pytest.raises(RegistryError, match="unknown model family 'flux2'. Did you mean 'flux"):
        family_of("flux2")


def test_load_pretrained_takes_model_names_too(monkeypatch):
    from ffjax import models
    from ffjax.models.flux import convert as flux_convert

    calls = []
    monkeypatch.setattr(flux_convert, "load_vae", lambda path, dtype: calls.append(path) or 1)
    assert models.load_pretrained("flux1", "vae", "/x") == 1
    assert models.load_pretrained("flux", "vae", "/y") == 1
    assert calls == ["/x", "/y"]
    with pytest.raises(ValueError, match="unknown model family 'nope'"):
        models.load_pretrained("nope", "vae", "/x")
