"""Schedules equal Diffusers' FlowMatchEulerDiscreteScheduler; timestep samplers."""

import numpy as np
import pytest
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.pipelines.flux.pipeline_flux import calculate_shift as diffusers_calculate_shift

from ffjax.flow import schedule


def _diffusers_sigmas(num_steps, *, pass_sigmas, image_seq_len=None, **config):
    sched = FlowMatchEulerDiscreteScheduler(**config)
    kwargs = {}
    if pass_sigmas:
        kwargs["sigmas"] = np.linspace(1.0, 1 / num_steps, num_steps)
    if config.get("use_dynamic_shifting"):
        c = sched.config
        kwargs["mu"] = diffusers_calculate_shift(
            image_seq_len, c.base_image_seq_len, c.max_image_seq_len, c.base_shift, c.max_shift
        )
    sched.set_timesteps(num_steps, **kwargs)
    return sched.sigmas.numpy()


@pytest.mark.parametrize("num_steps", [1, 4, 28])
@pytest.mark.parametrize("image_seq_len", [16, 256, 1024, 4096])
def test_flux_dynamic_shift_matches_diffusers(num_steps, image_seq_len):
    ref = _diffusers_sigmas(
        num_steps,
        pass_sigmas=True,
        image_seq_len=image_seq_len,
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    ours = schedule.flux_sigmas(num_steps, image_seq_len)
    assert ours.dtype == np.float32 and ours.shape == (num_steps + 1,)
    np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize("num_steps", [3, 10, 50])
@pytest.mark.parametrize("shift", [1.0, 3.0, 5.0])
def test_fixed_shift_matches_diffusers(num_steps, shift):
    ref = _diffusers_sigmas(num_steps, pass_sigmas=False, shift=shift)
    np.testing.assert_array_equal(schedule.fixed_shift_sigmas(num_steps, shift), ref)


@pytest.mark.parametrize("num_steps", [5, 30])
@pytest.mark.parametrize("image_seq_len", [64, 1024, 6400])
def test_qwen_image_schedule_matches_diffusers(num_steps, image_seq_len):
    ref = _diffusers_sigmas(
        num_steps,
        pass_sigmas=True,
        image_seq_len=image_seq_len,
        shift=1.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=0.9,
        base_image_seq_len=256,
        max_image_seq_len=8192,
        shift_terminal=0.02,
        time_shift_type="exponential",
    )
    ours = schedule.qwen_image_sigmas(num_steps, image_seq_len)
    np.testing.assert_array_equal(ours, ref)
    assert ours[-2] == pytest.approx(0.02, abs=1e-6)


def test_from_diffusers_config_and_rejections():
    sched = FlowMatchEulerDiscreteScheduler(shift=2.0, use_dynamic_shifting=False)
    cfg = schedule.SchedulerConfig.from_diffusers(dict(sched.config))
    assert cfg.shift == 2.0 and not cfg.use_dynamic_shifting
    with pytest.raises(ValueError, match="use_karras_sigmas"):
        schedule.SchedulerConfig.from_diffusers({"use_karras_sigmas": True})
    with pytest.raises(ValueError, match="image_seq_len"):
        schedule.flow_sigmas(4, schedule.FLUX1_SCHEDULER)
    with pytest.raises(ValueError, match="num_steps"):
        schedule.fixed_shift_sigmas(0, 3.0)


def test_calculate_shift_matches_diffusers():
    for n in (1, 256, 4096, 10000):
        assert schedule.calculate_shift(n) == pytest.approx(diffusers_calculate_shift(n), rel=1e-15)


@pytest.mark.parametrize("kind", ["uniform", "logit_normal"])
def test_continuous_samplers_stay_in_range_and_stratify(kind):
    rng = np.random.default_rng(0)
    s = schedule.sample_train_sigmas(rng, kind, 64, sigma_range=(0.1, 0.9))
    assert s.shape == (64,)
    assert np.all((s >= 0.1 - 1e-9) & (s <= 0.9 + 1e-9))
    if kind == "uniform":
        # One draw per stratum: the sorted fractions fall in consecutive bins.
        frac = np.sort((1 - s - 0.1) / 0.8)
        assert np.all(np.floor(frac * 64) == np.arange(64))


def test_logit_normal_density_concentrates_in_the_middle():
    rng = np.random.default_rng(1)
    s = schedule.sample_train_sigmas(rng, "logit_normal", 4000)
    # Logit-normal(0, 1): P(0.269 < sigma < 0.731) = P(|z| < 1) ~= 0.683.
    inside = np.mean((s > 1 / (1 + np.e)) & (s < np.e / (1 + np.e)))
    assert inside == pytest.approx(0.683, abs=0.02)


def test_discrete_samplers_use_schedule_steps():
    sig = schedule.flux_sigmas(10, 256)
    rng = np.random.default_rng(0)
    d = schedule.sample_train_sigmas(rng, "discrete", 5, schedule=sig, sigma_range=(0.0, 0.9))
    assert set(d.tolist()) <= set(sig[:-1].astype(np.float64).tolist())
    assert np.all(d >= 0.1 - 1e-6)
    w = schedule.sample_train_sigmas(rng, "discrete_with_init", 4, schedule=sig)
    assert w[0] == sig[0]
    for seed in range(20):
        wo = schedule.sample_train_sigmas(
            np.random.default_rng(seed), "discrete_wo_init", 4, schedule=sig
        )
        assert sig[0] not in wo


def test_sampler_bad_input():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="unknown timestep sampler 'gauss'"):
        schedule.sample_train_sigmas(rng, "gauss", 4)
    with pytest.raises(ValueError, match="sigma_range"):
        schedule.sample_train_sigmas(rng, "uniform", 4, sigma_range=(0.5, 0.2))
    with pytest.raises(ValueError, match="schedule"):
        schedule.sample_train_sigmas(rng, "discrete", 4)
