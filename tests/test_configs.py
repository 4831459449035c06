"""Config validation: unknown keys, choices, required values, overrides; recipes load."""

import importlib.util
from pathlib import Path

import pytest

from ffjax import configs

ROOT = Path(__file__).resolve().parents[1]


def _recipe(name, variant=""):
    spec = importlib.util.spec_from_file_location("recipe", ROOT / "configs" / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(variant)


def _valid():
    c = configs.base_config()
    c.model.path = "/some/pipeline"
    configs.set_algorithm(c, "grpo")
    configs.add_reward(c, "bright", name="brightness", weight=2.0)
    return c


@pytest.mark.parametrize("variant", ["", "grpo", "nft", "awm"])
def test_demo_recipe_variants_validate(variant):
    c = configs.validate(_recipe("demo.py", variant))
    assert c.algorithm.name == (variant or "grpo")


def test_unknown_key_names_key_and_nearest():
    c = _valid()
    c.sampling.noise_levl = 0.5
    with pytest.raises(
        configs.ConfigError,
        match=r"unknown key config.sampling.noise_levl; did you mean config.sampling.noise_level",
    ):
        configs.validate(c)


def test_unknown_key_without_neighbour_lists_section_keys():
    c = _valid()
    c.mesh.zzz = 1
    with pytest.raises(
        configs.ConfigError,
        match=r"unknown key config.mesh.zzz; valid keys here: data, fsdp, sequence, tensor",
    ):
        configs.validate(c)


def test_bad_choice_lists_allowed_values():
    c = _valid()
    c.sampling.dynamics = "sde"
    with pytest.raises(
        configs.ConfigError,
        match="config.sampling.dynamics='sde' is not allowed; allowed: ode, flow_sde, dance_sde, cps",
    ):
        configs.validate(c)


def test_registry_backed_choice():
    c = _valid()
    c.algorithm.name = "ppo"
    with pytest.raises(
        configs.ConfigError,
        match="config.algorithm.name='ppo' is not allowed; allowed: awm, grpo, grpo-guard, nft",
    ):
        configs.validate(c)


def test_algorithm_section_keys_and_choices():
    c = _valid()
    c.algorithm.clip_rang = 0.1
    with pytest.raises(configs.ConfigError, match="did you mean config.algorithm.clip_range"):
        configs.validate(c)
    c = _valid()
    c.algorithm.kl_type = "js"
    with pytest.raises(
        configs.ConfigError, match="kl_type='js' is not allowed for grpo; allowed: x-based, v-based"
    ):
        configs.validate(c)


def test_missing_required_value():
    c = _valid()
    c.model.path = None
    with pytest.raises(
        configs.ConfigError,
        match=r"missing required value config.model.path \(the Diffusers pipeline folder",
    ):
        configs.validate(c)


def test_bounds_and_cross_checks_reported_together():
    c = _valid()
    c.data.group_size = 1
    c.sampling.sde_candidates = (0, 12)
    with pytest.raises(configs.ConfigError) as e:
        configs.validate(c)
    assert "config.data.group_size=1 is out of range" in str(e.value)
    assert "sde_candidates has steps [12] outside [0, 10)" in str(e.value)


def test_reward_entries_checked():
    c = _valid()
    configs.add_reward(c, "x", name="nope")
    c.rewards.bright.wieght = 1.0
    with pytest.raises(configs.ConfigError) as e:
        configs.validate(c)
    assert "config.rewards.x.name='nope' is not a registered reward" in str(e.value)
    assert "unknown key config.rewards.bright.wieght" in str(e.value)


def test_overrides_parse_by_field_type():
    c = _valid()
    configs.apply_override(c, "train.learning_rate", "3e-4")
    configs.apply_override(c, "train.num_epochs", "7")
    configs.apply_override(c, "data.shuffle", "false")
    configs.apply_override(c, "model.path", "/x/y")
    configs.apply_override(c, "sampling.sde_candidates", "(1, 2, 3)")
    configs.apply_override(c, "rewards.sym.name", "symmetry")
    assert c.train.learning_rate == 3e-4 and c.train.num_epochs == 7
    assert c.data.shuffle is False and c.model.path == "/x/y"
    assert c.sampling.sde_candidates == (1, 2, 3) and c.rewards.sym.name == "symmetry"
    with pytest.raises(
        configs.ConfigError,
        match="unknown key config.train.learning_rat; did you mean config.train.learning_rate",
    ):
        configs.apply_override(c, "train.learning_rat", "1")
    with pytest.raises(configs.ConfigError, match="config.train.num_epochs expects int"):
        configs.apply_override(c, "train.num_epochs", "many")
    with pytest.raises(configs.ConfigError, match="is a section"):
        configs.apply_override(c, "train", "1")
