"""The FLUX.1 recipes (configs/flux_{grpo,nft,awm}.py): every variant validates, its batch
sizes divide an epoch into the references' optimizer steps, and the defaults keep the
model folder required."""

import importlib.util
from pathlib import Path

import pytest

from ffjax import configs, ema, registry, trainer

ROOT = Path(__file__).resolve().parents[1]
# recipe -> (algorithm, optimizer steps per epoch in its references)
RECIPES = {"flux_grpo.py": ("grpo", 2), "flux_nft.py": ("nft", 1), "flux_awm.py": ("awm", 1)}


def _module(name):
    spec = importlib.util.spec_from_file_location(name[:-3], ROOT / "configs" / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MODULES = {name: _module(name) for name in RECIPES}
CASES = [(name, v) for name, m in MODULES.items() for v in m.VARIANTS]
FULL_SIZE = [(name, v) for name, v in CASES if v != "tiny"]


def _with_paths(config):
    """The config with the user-supplied folders filled in where a variant leaves them."""
    if config.model.path is None:
        config.model.path = "/data/FLUX.1-dev"
    if config.data.path is None:
        config.data.path = "/data/pickscore"
    return config


def test_variant_lists():
    assert MODULES["flux_grpo.py"].VARIANTS == ("", "fast", "flow_factory", "tiny")
    assert MODULES["flux_nft.py"].VARIANTS == ("", "tiny")
    assert MODULES["flux_awm.py"].VARIANTS == ("", "tiny")


@pytest.mark.parametrize("name,variant", CASES)
def test_validates_once_paths_are_set(name, variant):
    config = configs.validate(_with_paths(MODULES[name].get_config(variant)))
    assert config.algorithm.name == RECIPES[name][0]
    assert config.rewards, "a recipe must train on at least one reward"


@pytest.mark.parametrize("name,variant", CASES)
def test_epoch_divides_into_reference_optimizer_steps(name, variant):
    config = _with_paths(MODULES[name].get_config(variant))
    spec = registry.ALGORITHMS.get(config.algorithm.name)
    rows = trainer._check_run_shapes(config, spec, 1)  # raises when the sizes do not divide
    trainer._check_algorithm_needs(config, spec)  # e.g. NFT's EMA old policy is on
    t = config.train
    assert rows // (t.micro_batch_size * t.grad_accum_steps) == RECIPES[name][1]
    assert config.sampling.noise_level > 0 or spec.record != "sde_steps"


@pytest.mark.parametrize("name,variant", FULL_SIZE)
def test_full_size_variants_require_model_path(name, variant):
    config = MODULES[name].get_config(variant)
    assert config.model.path is None and config.data.path is None
    with pytest.raises(configs.ConfigError, match=r"missing required value config\.model\.path"):
        configs.validate(config)


@pytest.mark.parametrize("name", RECIPES)
def test_unknown_variant_lists_variants(name):
    with pytest.raises(ValueError, match=r"unknown variant 'nope'.*allowed: '', .*'tiny'"):
        MODULES[name].get_config("nope")


@pytest.mark.parametrize("name", RECIPES)
def test_tiny_is_the_default_algorithm_at_toy_size(name):
    default, tiny = (MODULES[name].get_config(v) for v in ("", "tiny"))
    assert tiny.algorithm.to_dict() == default.algorithm.to_dict()
    assert tiny.ema.to_dict() == default.ema.to_dict()
    assert tiny.sampling.dynamics == default.sampling.dynamics
    assert tiny.model.path == str(ROOT / "assets" / "demo")
    assert tiny.data.path == str(ROOT / "assets" / "demo" / "prompts")
    assert (tiny.model.height, tiny.model.width, tiny.model.max_sequence_length) == (32, 32, 16)
    assert (tiny.sampling.num_steps, tiny.sampling.eval_num_steps) == (8, 8)
    assert (tiny.data.group_size, tiny.data.prompts_per_epoch) == (4, 4)
    assert 4 <= tiny.train.lora_rank <= 8 and tiny.train.num_epochs <= 5
    assert tiny.logging.tensorboard
    assert [r.name for r in tiny.rewards.values()] == ["shapes"]


def test_grpo_ema_matches_decay_point_nine_every_four_epochs():
    """1 - d_epoch = (1 - 0.9) / 4 at the end, 1 - 0.9 / 4 at the start (see the recipe)."""
    e = MODULES["flux_grpo.py"].get_config().ema
    assert ema.ema_decay(e, 0) == pytest.approx(0.775)
    assert ema.ema_decay(e, 10_000) == pytest.approx(0.975)
    decays = [ema.ema_decay(e, t) for t in range(200)]
    assert decays == sorted(decays)


def test_nft_ema_ramps_like_flow_factory():
    """piecewise_linear: min(0.001 t, 0.5) (Flow-Factory flat_steps 0, ramp_rate 0.001)."""
    e = MODULES["flux_nft.py"].get_config().ema
    for t in (0, 100, 499, 500, 2000):
        assert ema.ema_decay(e, t) == pytest.approx(min(0.001 * t, 0.5))
