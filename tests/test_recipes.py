"""The FLUX.1 and Qwen-Image recipes (configs/{flux,qwen_image}_{grpo,nft,awm}.py): every
variant validates, its batch sizes divide an epoch into the references' optimizer steps,
and the defaults keep the model folder required."""

import importlib.util
from pathlib import Path

import pytest

from ffjax import configs, ema, registry
from ffjax import run as run_lib

ROOT = Path(__file__).resolve().parents[1]
# recipe -> (algorithm, optimizer steps per epoch in its references)
RECIPES = {
    "flux_grpo.py": ("grpo", 2),
    "flux_nft.py": ("nft", 1),
    "flux_awm.py": ("awm", 1),
    "qwen_image_grpo.py": ("grpo", 2),
    "qwen_image_nft.py": ("nft", 1),
    "qwen_image_awm.py": ("awm", 1),
}
FLUX = [name for name in RECIPES if name.startswith("flux_")]
QWEN_IMAGE = [name for name in RECIPES if name.startswith("qwen_image_")]


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
    for section in ("rewards", "eval_rewards"):  # reward weights (PickScore's folder)
        for entry in config[section].values():
            for key, value in (entry.get("args") or {}).items():
                if value is None:
                    entry.args[key] = "/data/PickScore_v1"
    return config


def test_variant_lists():
    assert MODULES["flux_grpo.py"].VARIANTS == ("", "fast", "flow_factory", "tiny")
    assert MODULES["flux_nft.py"].VARIANTS == ("", "tiny")
    assert MODULES["flux_awm.py"].VARIANTS == ("", "tiny")
    for name in QWEN_IMAGE:
        assert MODULES[name].VARIANTS == ("", "tiny")


@pytest.mark.parametrize("name,variant", CASES)
def test_validates_once_paths_are_set(name, variant):
    config = configs.validate(_with_paths(MODULES[name].get_config(variant)))
    assert config.algorithm.name == RECIPES[name][0]
    assert config.rewards, "a recipe must train on at least one reward"


@pytest.mark.parametrize("name,variant", CASES)
def test_epoch_divides_into_reference_optimizer_steps(name, variant):
    config = _with_paths(MODULES[name].get_config(variant))
    spec = registry.ALGORITHMS.get(config.algorithm.name)
    rows = run_lib.check_run_shapes(config, spec, 1)  # raises when the sizes do not divide
    run_lib.check_algorithm_needs(config, spec)  # e.g. NFT's EMA old policy is on
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


@pytest.mark.parametrize("name", FLUX)
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


@pytest.mark.parametrize("name", QWEN_IMAGE)
def test_qwen_image_tiny_is_the_default_algorithm_on_the_tiny_pipeline(name):
    """The tiny variants keep the default's algorithm, EMA, dynamics and guidance and
    leave model.path to the tiny QwenImagePipeline's folder (tests/test_trainer_qwen_image.py)."""
    default, tiny = (MODULES[name].get_config(v) for v in ("", "tiny"))
    assert default.model.name == tiny.model.name == "qwen-image"
    assert tiny.algorithm.to_dict() == default.algorithm.to_dict()
    assert tiny.ema.to_dict() == default.ema.to_dict()
    assert tiny.sampling.dynamics == default.sampling.dynamics
    assert tiny.sampling.guidance_scale == default.sampling.guidance_scale
    assert tiny.model.path is None and tiny.data.path is None
    assert (tiny.model.height, tiny.model.width, tiny.model.dtype) == (32, 32, "float32")
    assert tiny.model.remat == "none" and tiny.train.num_epochs <= 5
    assert [r.name for r in tiny.rewards.values()] == ["brightness"]
    assert [r.name for r in default.rewards.values()] != ["brightness"]


def test_qwen_image_nft_follows_flow_factory():
    """examples/nft/lora/qwen_image/rational_rewards_t2i.yaml: 30 steps without true CFG,
    10 training sigmas in [0, 0.5], 32 x 16 samples, lr 2e-4, gdpo."""
    c = MODULES["qwen_image_nft.py"].get_config()
    assert (c.sampling.num_steps, c.sampling.eval_num_steps, c.sampling.guidance_scale) == (
        30, 40, 1.0)  # fmt: skip
    assert (c.algorithm.num_train_timesteps, tuple(c.algorithm.sigma_range)) == (10, (0.0, 0.5))
    assert (c.data.prompts_per_epoch, c.data.group_size) == (32, 16)
    assert c.train.learning_rate == 2e-4 and c.train.advantage_method == "gdpo"


def test_qwen_image_awm_is_the_flux_awm_algorithm_with_true_cfg():
    """No Qwen-Image AWM setting is published: configs/flux_awm.py's algorithm, batch and
    EMA, with the Qwen-Image example's true CFG scale 4."""
    flux, qwen = MODULES["flux_awm.py"].get_config(), MODULES["qwen_image_awm.py"].get_config()
    assert qwen.algorithm.to_dict() == flux.algorithm.to_dict()
    assert qwen.ema.to_dict() == flux.ema.to_dict()
    for section in ("data", "train"):
        assert qwen[section].to_dict() == flux[section].to_dict()
    assert qwen.sampling.guidance_scale == 4.0 and qwen.model.remat == "full"


def test_grpo_ema_matches_decay_point_nine_every_four_epochs():
    """Flow-Factory: steps after epochs 3, 7, 11, ... with min(0.9, (1 + t) / (10 + t))."""
    e = MODULES["flux_grpo.py"].get_config().ema
    assert [t for t in range(12) if ema.due(e, t)] == [3, 7, 11]
    assert ema.ema_decay(e, 3) == pytest.approx(4 / 13)
    assert ema.ema_decay(e, 10_000) == pytest.approx(0.9)
    decays = [ema.ema_decay(e, t) for t in range(200)]
    assert decays == sorted(decays)


def test_nft_ema_ramps_like_flow_factory():
    """piecewise_linear: min(0.001 t, 0.5) (Flow-Factory flat_steps 0, ramp_rate 0.001)."""
    e = MODULES["flux_nft.py"].get_config().ema
    for t in (0, 100, 499, 500, 2000):
        assert ema.ema_decay(e, t) == pytest.approx(min(0.001 * t, 0.5))
