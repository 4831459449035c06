"""Sigma schedules of flow-matching samplers, and timestep samplers for training.

Convention (DESIGN.md): sigma in [0, 1], x_sigma = (1 - sigma) x0 + sigma noise. A
schedule is float32[num_steps + 1], strictly decreasing, ending at 0: step i goes from
sigmas[i] to sigmas[i + 1].

The schedules reproduce Diffusers' `FlowMatchEulerDiscreteScheduler.set_timesteps`
value for value (same float32/float64 arithmetic), as FLUX.1, Qwen-Image and SD3/WAN
pipelines call it, so a sampler here walks the exact sigmas of the reference pipeline.
Everything here runs on host in NumPy: schedules are data, computed once per run.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class SchedulerConfig:
    """The fields of a Diffusers `FlowMatchEulerDiscreteScheduler` config that shape sigmas.

    Unsupported options (karras / exponential / beta sigmas, inverted sigmas) are
    rejected by `from_diffusers` rather than silently ignored.
    """

    num_train_timesteps: int = 1000
    shift: float = 1.0  # fixed shift (SD3 / WAN); unused with dynamic shifting
    use_dynamic_shifting: bool = False  # resolution-dependent shift (FLUX.1, Qwen-Image)
    base_shift: float = 0.5  # mu at base_image_seq_len tokens
    max_shift: float = 1.15  # mu at max_image_seq_len tokens
    base_image_seq_len: int = 256
    max_image_seq_len: int = 4096
    shift_terminal: float | None = None  # stretch so the last nonzero sigma equals this
    time_shift_type: str = "exponential"  # "exponential" | "linear"

    @classmethod
    def from_diffusers(cls, config: dict[str, Any]) -> SchedulerConfig:
        """Builds from a Diffusers `scheduler_config.json` dict; errors on unsupported options."""
        for flag in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas"):
            if config.get(flag):
                raise ValueError(f"scheduler option {flag}=True is not supported by ffjax")
        if config.get("invert_sigmas"):
            raise ValueError("scheduler option invert_sigmas=True is not supported by ffjax")
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in config.items() if k in names and v is not None}
        out = cls(**kwargs)
        if out.time_shift_type not in ("exponential", "linear"):
            raise ValueError(
                f"scheduler time_shift_type={out.time_shift_type!r}; allowed: 'exponential', 'linear'"
            )
        return out


# Scheduler configs of the released checkpoints (their scheduler/scheduler_config.json).
FLUX1_SCHEDULER = SchedulerConfig(
    shift=3.0,
    use_dynamic_shifting=True,
    base_shift=0.5,
    max_shift=1.15,
    base_image_seq_len=256,
    max_image_seq_len=4096,
)
QWEN_IMAGE_SCHEDULER = SchedulerConfig(
    shift=1.0,
    use_dynamic_shifting=True,
    base_shift=0.5,
    max_shift=0.9,
    base_image_seq_len=256,
    max_image_seq_len=8192,
    shift_terminal=0.02,
)


def calculate_shift(
    image_seq_len: int,
    base_seq_len: int = 256,
    max_seq_len: int = 4096,
    base_shift: float = 0.5,
    max_shift: float = 1.15,
) -> float:
    """mu for resolution-dependent shifting: linear in the image token count (FLUX.1 / SD3)."""
    m = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return image_seq_len * m + (base_shift - m * base_seq_len)


def shift_sigmas(sigmas: np.ndarray, shift: float) -> np.ndarray:
    """Fixed shift of SD3 (Esser et al. 2024, eq. 23): s' = shift s / (1 + (shift - 1) s)."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def time_shift(sigmas: np.ndarray, mu: float, kind: str = "exponential") -> np.ndarray:
    """Resolution-dependent shift: exp(mu) / (exp(mu) + (1/s - 1)) ("linear": mu for exp(mu))."""
    a = math.exp(mu) if kind == "exponential" else mu
    return a / (a + (1 / sigmas - 1))


def stretch_to_terminal(sigmas: np.ndarray, terminal: float) -> np.ndarray:
    """Affine map of 1 - s so that the last entry becomes `terminal` (LTX-Video / Qwen-Image)."""
    one_minus = 1 - sigmas
    return 1 - one_minus / (one_minus[-1] / (1 - terminal))


def flow_sigmas(
    num_steps: int,
    scheduler: SchedulerConfig,
    *,
    image_seq_len: int | None = None,
    sigmas: np.ndarray | None = None,
) -> np.ndarray:
    """Sigmas exactly as `FlowMatchEulerDiscreteScheduler.set_timesteps` makes them.

    Args:
      num_steps: number of denoising steps N >= 1.
      scheduler: the scheduler config.
      image_seq_len: latent token count; required with dynamic shifting (gives mu).
      sigmas: the N unshifted sigmas a pipeline passes (FLUX.1 / Qwen-Image pass
        linspace(1, 1/N, N)); None uses the scheduler's own linspace (SD3 / WAN).

    Returns:
      float32[N + 1]: decreasing sigmas ending with 0.
    """
    if int(num_steps) < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    c = scheduler
    if sigmas is None:
        # The scheduler's constructor stores the (statically shifted) train sigmas in
        # float32; set_timesteps interpolates between their ends in float64.
        train = np.linspace(1, c.num_train_timesteps, c.num_train_timesteps, dtype=np.float32)
        train = train[::-1] / np.float32(c.num_train_timesteps)
        if not c.use_dynamic_shifting:
            train = shift_sigmas(train, np.float32(c.shift)).astype(np.float32)
        s_max, s_min = float(train[0]), float(train[-1])
        t = np.linspace(s_max * c.num_train_timesteps, s_min * c.num_train_timesteps, num_steps)
        s = t / c.num_train_timesteps
    else:
        s = np.asarray(sigmas).astype(np.float32)
        if s.shape != (num_steps,):
            raise ValueError(f"sigmas must have shape ({num_steps},), got {s.shape}")
    if c.use_dynamic_shifting:
        if image_seq_len is None:
            raise ValueError("image_seq_len is required: this scheduler uses dynamic shifting")
        mu = calculate_shift(
            image_seq_len, c.base_image_seq_len, c.max_image_seq_len, c.base_shift, c.max_shift
        )
        s = time_shift(s, mu, c.time_shift_type)
    else:
        s = shift_sigmas(s, c.shift)
    if c.shift_terminal:
        s = stretch_to_terminal(s, c.shift_terminal)
    return np.concatenate([np.asarray(s, np.float32), np.zeros(1, np.float32)])


def pipeline_sigmas(num_steps: int) -> np.ndarray:
    """The unshifted sigmas FLUX.1 and Qwen-Image pipelines pass: linspace(1, 1/N, N)."""
    return np.linspace(1.0, 1 / num_steps, num_steps)


def flux_sigmas(
    num_steps: int, image_seq_len: int, scheduler: SchedulerConfig = FLUX1_SCHEDULER
) -> np.ndarray:
    """FLUX.1 pipeline schedule: dynamic shift with mu from the packed latent token count."""
    return flow_sigmas(
        num_steps, scheduler, image_seq_len=image_seq_len, sigmas=pipeline_sigmas(num_steps)
    )


def qwen_image_sigmas(
    num_steps: int, image_seq_len: int, scheduler: SchedulerConfig = QWEN_IMAGE_SCHEDULER
) -> np.ndarray:
    """Qwen-Image pipeline schedule: dynamic shift (up to 8192 tokens) + terminal stretch."""
    return flow_sigmas(
        num_steps, scheduler, image_seq_len=image_seq_len, sigmas=pipeline_sigmas(num_steps)
    )


def fixed_shift_sigmas(num_steps: int, shift: float) -> np.ndarray:
    """SD3 / WAN style schedule: a scheduler with a fixed `shift`, set_timesteps(N)."""
    return flow_sigmas(num_steps, SchedulerConfig(shift=shift))


# ---------------------------------------------------------------------------------------
# UniPC flow sigmas: the grid of Diffusers' `UniPCMultistepScheduler(use_flow_sigmas=True)`,
# the scheduler WanPipeline releases ship. Its N start points are shift(linspace(1, 1/T,
# N + 1)[:-1]) (T = num_train_timesteps), where FlowMatchEuler's are shift(linspace(1,
# shift^-1(1/T), N)): N = 10, shift 3 gives 0.964, 0.923, ... here, 0.960, 0.913, ...
# there.

# Rollout grids a config may name (`config.sampling.sigma_grid`, WAN adapters):
#   pipeline          the grid of the pipeline folder's scheduler class, as Flow-Factory
#                     picks its SDE scheduler from it (UniPCMultistepScheduler: unipc_flow;
#                     FlowMatchEulerDiscreteScheduler: flow_match_euler).
#   flow_match_euler  `fixed_shift_sigmas` (FlowMatchEulerDiscreteScheduler.set_timesteps).
#   unipc_flow        `unipc_flow_rollout_sigmas`: Flow-Factory's WAN rollout grid.
SIGMA_GRIDS = ("pipeline", "flow_match_euler", "unipc_flow")

# UniPCMultistepScheduler moves a first sigma of 1 down by this much: at sigma = 1 its
# log-SNR lambda = log(1 - sigma) - log(sigma) would be -inf.
_UNIPC_FIRST_SIGMA_EPS = 1e-6


def _unipc_flow_start_points(
    num_steps: int, shift: float, num_train_timesteps: int = 1000
) -> np.ndarray:
    """float64[N]: the N shifted sigmas the steps start from, before any float32 cast."""
    if int(num_steps) < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if not shift > 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    base = np.linspace(1.0, 1.0 / num_train_timesteps, int(num_steps) + 1)[:-1]
    s = shift_sigmas(base, float(shift))
    if abs(s[0] - 1.0) < _UNIPC_FIRST_SIGMA_EPS:
        s[0] -= _UNIPC_FIRST_SIGMA_EPS
    return s


def unipc_flow_sigmas(num_steps: int, shift: float, num_train_timesteps: int = 1000) -> np.ndarray:
    """The sigmas UniPC multistep solves on: `UniPCMultistepScheduler(use_flow_sigmas=True,
    flow_shift=shift, final_sigmas_type="zero").set_timesteps(N).sigmas`, value for value.

    Returns float32[N + 1]: shift(linspace(1, 1/T, N + 1)[:-1]) (SD3's shift, eq. 23 of
    Esser et al. 2024) with the first entry 1 - 1e-6, then 0.
    """
    s = _unipc_flow_start_points(num_steps, shift, num_train_timesteps)
    return np.concatenate([s, [0.0]]).astype(np.float32)


def unipc_flow_timesteps(
    num_steps: int, shift: float, num_train_timesteps: int = 1000
) -> np.ndarray:
    """int64[N]: the scheduler's `timesteps`, T * sigma truncated to integers (the values
    WanPipeline feeds its transformer while the solver uses `unipc_flow_sigmas`)."""
    s = _unipc_flow_start_points(num_steps, shift, num_train_timesteps)
    return (s * num_train_timesteps).astype(np.int64)


def unipc_flow_rollout_sigmas(
    num_steps: int, shift: float, num_train_timesteps: int = 1000
) -> np.ndarray:
    """Flow-Factory's WAN rollout grid: `unipc_flow_timesteps / T` in float32, then 0.

    Flow-Factory's WAN adapter steps its UniPC scheduler's integer timesteps t with
    sigma = t / 1000 (and feeds t to the transformer), so its rollouts walk 0.999, 0.964,
    0.923, ... (N = 10, shift 3) rather than the solver's 0.999999, 0.96432, 0.92317.
    Returns float32[N + 1].
    """
    t = unipc_flow_timesteps(num_steps, shift, num_train_timesteps).astype(np.float32)
    s = t / np.float32(num_train_timesteps)
    return np.concatenate([s, np.zeros(1, np.float32)])


# ---------------------------------------------------------------------------------------
# Training-time samplers for decoupled algorithms (DiffusionNFT, AWM): which sigmas to
# train on this epoch. `sigma_range=(lo, hi)` is a fraction along the denoising axis
# (0 = pure noise, 1 = clean): sigma = 1 - frac, so (0, 0.9) keeps sigma in [0.1, 1].

TIMESTEP_SAMPLERS = (
    "uniform",
    "logit_normal",
    "discrete",
    "discrete_with_init",
    "discrete_wo_init",
)


def sample_train_sigmas(
    rng: np.random.Generator,
    kind: str,
    num: int,
    *,
    sigma_range: tuple[float, float] = (0.0, 1.0),
    schedule: np.ndarray | None = None,
    time_shift_value: float = 1.0,
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
) -> np.ndarray:
    """Draws `num` training sigmas, stratified so one epoch covers the range evenly.

    Args:
      rng: NumPy generator (host-side, deterministic from seed and epoch).
      kind: one of TIMESTEP_SAMPLERS.
        - uniform: stratified uniform fractions in `sigma_range`, optionally shifted.
        - logit_normal: stratified logit-normal (SD3 training density), shifted by
          `time_shift_value`, clamped to [0.01, 1 - 1e-6], mapped into `sigma_range`.
        - discrete: stratified indices into the rollout `schedule` within the range.
        - discrete_with_init: as discrete, always including the first (noisiest) step.
        - discrete_wo_init: as discrete, never including the first step.
      num: how many sigmas (>= 1).
      sigma_range: (lo, hi) fractions in [0, 1], lo < hi.
      schedule: the rollout sigmas (float32[N + 1]); required for the discrete kinds.

    Returns:
      float64[num] sigmas in (0, 1], in shuffled order.
    """
    if kind not in TIMESTEP_SAMPLERS:
        raise ValueError(
            f"unknown timestep sampler {kind!r}; allowed: {', '.join(TIMESTEP_SAMPLERS)}"
        )
    lo, hi = map(float, sigma_range)
    if not 0.0 <= lo < hi <= 1.0:
        raise ValueError(f"sigma_range must satisfy 0 <= lo < hi <= 1, got {sigma_range}")
    if num < 1:
        raise ValueError(f"num must be >= 1, got {num}")
    strata = (np.arange(num) + rng.random(num)) / num
    if kind == "uniform":
        frac = lo + rng.permutation(strata) * (hi - lo)
        if abs(time_shift_value - 1.0) > 1e-6:
            frac = shift_sigmas(frac, time_shift_value)
        return 1.0 - frac
    if kind == "logit_normal":
        from scipy.special import ndtri  # inverse normal CDF

        u = ndtri(np.clip(strata, 1e-7, 1 - 1e-7))[rng.permutation(num)]
        raw = 1 / (1 + np.exp(-(u * logit_std + logit_mean)))
        raw = np.clip(shift_sigmas(raw, time_shift_value), 0.01, 1 - 1e-6)
        return 1.0 - (lo + raw * (hi - lo))
    if schedule is None:
        raise ValueError(f"timestep sampler {kind!r} needs the rollout schedule")
    steps = np.asarray(schedule, np.float64)[:-1]  # the sigmas a step starts from
    inside = np.nonzero((steps >= 1 - hi - 1e-6) & (steps <= 1 - lo + 1e-6))[0]
    if inside.size == 0:
        raise ValueError(f"no schedule step has sigma within 1 - {sigma_range}")
    first, last = int(inside.min()), int(inside.max())
    if kind == "discrete_with_init":
        rest = _stratified_indices(rng, num - 1, first + 1, last) if num > 1 else []
        idx = np.concatenate([[first], rest]).astype(int)
    else:
        start = first if kind == "discrete" else first + 1
        idx = _stratified_indices(rng, num, start, last)
    return steps[np.clip(idx, 0, len(steps) - 1)]


def _stratified_indices(rng: np.random.Generator, num: int, start: int, end: int) -> np.ndarray:
    """`num` integer indices, one from each of `num` equal strata of [start, end]."""
    bounds = np.linspace(start, end, num + 1)
    lower, upper = bounds[:-1].astype(int), bounds[1:].astype(int)
    return lower + (rng.random(num) * (upper - lower)).astype(int)
