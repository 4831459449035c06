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
