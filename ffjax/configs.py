"""The run configuration: every key with its default and meaning, and its validation.

Recipes (`configs/<recipe>.py`) start from `base_config()` and change what they need:

    def get_config(variant=""):
        config = configs.base_config()
        config.model.path = "/data/FLUX.1-dev"
        ...
        return config

`validate(config)` runs at start-up: an unknown key names the key and its nearest valid
neighbours, a bad choice lists the allowed values, a missing required value says which
key and what it is for. Choices that name registered things (models, algorithms,
rewards) come from the registries, so there is no second list of names to keep in sync.
"""

from __future__ import annotations

import ast
import difflib
import importlib
from collections.abc import Callable, Iterator
from typing import Any

import ml_collections
from ml_collections import config_dict

from ffjax import registry
from ffjax.errors import ConfigError as ConfigError  # raised here; much code imports it from here
from ffjax.flow import steps

ConfigDict = ml_collections.ConfigDict


def check_variant(recipe_file: str, variant: str, allowed: tuple[str, ...]) -> None:
    """ValueError naming the recipe and its variants unless `variant` is one of `allowed`.

    recipe_file: the recipe's `__file__` (the message shows configs/<name>.py).
    """
    if variant not in allowed:
        name = "/".join(recipe_file.replace("\\", "/").split("/")[-2:])
        raise ValueError(
            f"unknown variant {variant!r} of {name}; allowed: {', '.join(map(repr, allowed))}"
        )


def base_config() -> ConfigDict:
    """Every configuration key ffjax knows, with its default. Keys are documented here."""
    c = ConfigDict()
    c.seed = 0  # master seed: data order, noise, SDE windows and init derive from it

    c.model = m = ConfigDict()
    m.name = "flux1"  # registered model adapter (see ffjax.registry.MODELS) or "pkg.mod:Class"
    m.path = config_dict.placeholder(str)  # REQUIRED: Diffusers pipeline folder to load
    m.dtype = "float32"  # activation dtype: float32 | bfloat16 | float16
    m.param_dtype = "float32"  # dtype of frozen weights: float32 | bfloat16 | float16
    m.attention = "auto"  # attention kernel: auto | xla | cudnn | splash (auto picks by platform)
    m.remat = "none"  # rematerialisation of transformer blocks: none | full | save_dots
    m.height = 512  # image height in pixels (FLUX.1: multiple of 16)
    m.width = 512  # image width in pixels (FLUX.1: multiple of 16)
    m.num_frames = 1  # video frames (WAN: 4k + 1); 1 for image models
    m.max_sequence_length = 512  # text tokens of the prompt encoder (FLUX.1 T5: <= 512)
    # Negative prompt of true classifier-free guidance (Qwen-Image, WAN; FLUX.1 ignores
    # it). "" as Flow-Factory (X-GenGroup/Flow-Factory a0b2bc5
    # src/flow_factory/models/qwen_image/qwen_image.py: None -> "" when the scale > 1) and
    # WanPipeline; QwenImagePipeline's docs suggest " " (ffjax's default before 2026-12-08).
    m.negative_prompt = ""
    # WAN (wan2-t2v): the schedule's fixed shift; 0 = the pipeline folder's scheduler
    # value (WanPipeline documents 3.0 for 480p, 5.0 for 720p). Other models ignore it.
    m.flow_shift = 0.0
    # WAN 2.2 A14B: CFG scale of the low-noise expert (transformer_2); 0 = the same as
    # sampling.guidance_scale, as WanPipeline's guidance_scale_2=None.
    m.guidance_scale_2 = 0.0
    # Evaluation (Flow-Factory's eval.resolution / height / width / num_frames /
    # guidance_scale_2); 0 = the training value. ffjax.sample samples at the training ones.
    m.eval_height = 0  # evaluation image height in pixels
    m.eval_width = 0  # evaluation image width in pixels
    m.eval_num_frames = 0  # evaluation video frames (WAN: 4k + 1)
    m.eval_guidance_scale_2 = 0.0  # WAN 2.2 A14B: the low-noise expert's evaluation CFG scale

    c.sampling = s = ConfigDict()
    s.num_steps = 10  # denoising steps of a training rollout
    s.eval_num_steps = 28  # denoising steps of evaluation sampling (always ODE)
    # Evaluation guidance / CFG scale (Flow-Factory's eval.guidance_scale); 0 = guidance_scale.
    s.eval_guidance_scale = 0.0
    s.guidance_scale = 3.5  # FLUX.1 guidance embedding value / CFG scale for CFG models
    s.dynamics = "flow_sde"  # rollout step: ode | flow_sde | dance_sde | cps (ffjax.flow.steps)
    s.noise_level = 0.7  # eta of the SDE steps (0 makes every step an ODE step)
    s.sde_candidates = ()  # step indices that may be SDE steps; () = all but the last
    s.sde_num_steps = 0  # SDE steps per epoch drawn from the candidates; 0 = all candidates
    # How they are drawn: random (Flow-Factory: any k candidates) | contiguous (k
    # consecutive ones at a random start) | progressive (MixGRPO: k consecutive ones from
    # the first, window_stride later every window_interval epochs; ffjax.flow.rollout).
    s.sde_window = "random"
    s.window_interval = 25  # progressive: epochs per window position (MixGRPO iters_per_group)
    s.window_stride = 1  # progressive: candidates the window moves (MixGRPO prog_overlap_step)
    s.window_roll_back = True  # progressive: back to the first start past the last (roll_back)
    s.storage_dtype = "float32"  # dtype of stored trajectory latents: float32 | bfloat16
    s.batch_size = 0  # samples per rollout call (memory); 0 = the whole epoch at once
    # WAN's rollout sigma grid (ffjax.flow.schedule.SIGMA_GRIDS). pipeline: the grid of
    # the pipeline folder's scheduler class, as Flow-Factory picks its scheduler from it
    # (released WAN folders ship UniPCMultistepScheduler, hence unipc_flow) | unipc_flow:
    # Flow-Factory's WAN rollout grid, UniPC timesteps / 1000 (10 steps, shift 3: 0.999,
    # 0.964, 0.923, ...) | flow_match_euler: FlowMatchEulerDiscreteScheduler's (1, 0.960,
    # 0.913, ...). FLUX.1 and Qwen-Image always walk their FlowMatchEuler schedule.
    s.sigma_grid = "pipeline"
    # Evaluation sampler. euler: ODE Euler steps on the rollout grid | unipc: the pipeline's
    # UniPC multistep solver on its UniPC flow grid (ffjax.flow.unipc; WAN models), as
    # WanPipeline samples and Flow-Factory evaluates WAN.
    s.eval_solver = "euler"

    c.algorithm = a = ConfigDict()
    a.name = "grpo"  # registered algorithm (ffjax.registry.ALGORITHMS) or "pkg.mod:Name"
    # The chosen algorithm adds its own keys under `algorithm` (see its default_config()).

    # Rewards: alias -> {name, weight, args}; the training signal is their weighted
    # combination. `eval_rewards` are only measured at evaluation.
    c.rewards = ConfigDict()
    c.eval_rewards = ConfigDict()

    c.data = d = ConfigDict()
    d.path = config_dict.placeholder(str)  # prompt file or folder (train.txt / train.jsonl)
    d.group_size = 8  # K: samples per prompt; advantages are normalised within a group
    d.prompts_per_epoch = 8  # prompts (groups) sampled per epoch, over all hosts
    d.shuffle = True  # reshuffle prompts every pass (deterministic from seed)
    # Image-conditioned models (wan2-i2v): folder that relative paths in the prompt rows'
    # "image" field are resolved against; "" = Flow-Factory's default <data folder>/images,
    # then the data folder itself. Absolute paths are used as they are.
    d.image_dir = ""

    c.train = t = ConfigDict()
    t.num_epochs = 100  # rollout + optimise iterations
    t.learning_rate = 1e-4  # peak learning rate
    t.micro_batch_size = 4  # samples per gradient computation
    t.inner_epochs = 1  # passes over one epoch's samples
    t.max_grad_norm = 1.0  # global-norm gradient clipping (0 disables)
    t.weight_decay = 1e-4  # AdamW weight decay on trainable parameters
    t.lora_rank = 32  # LoRA rank; 0 trains all weights (full fine-tune)
    t.lora_alpha = 64.0  # LoRA scale numerator (scale = alpha / rank)
    t.lora_targets = ()  # regexes on Dense module paths to adapt; () = the adapter's default
    t.lora_init = "gaussian"  # LoRA A init: gaussian (std 1 / rank) | kaiming (PEFT default); B = 0
    t.grad_accum_steps = 1  # micro-batches averaged into one optimizer step
    t.lr_schedule = "constant"  # constant | linear (decay to 0) | cosine (decay to 0)
    t.warmup_steps = 0  # optimizer steps of linear warm-up from 0 to learning_rate
    t.adam_b1 = 0.9  # AdamW beta1
    t.adam_b2 = 0.999  # AdamW beta2
    t.adam_eps = 1e-8  # AdamW epsilon
    t.advantage_method = "sum"  # multi-reward advantages: sum | gdpo (ffjax.algorithms.advantages)
    t.advantage_std = "group"  # advantage normalisation: group (per prompt) | global (batch)
    # Where the references disagree (ffjax.algorithms.advantages): the std's epsilon,
    # flow_factory max(std, 1e-6) | flow_grpo std + 1e-4; and GDPO's per-reward std,
    # flow_factory (each reward by its group std, whatever advantage_std says; then the
    # batch) | advantage_std (each reward with advantage_std's mode).
    t.advantage_eps = "flow_factory"
    t.gdpo_std = "flow_factory"
    # Score chunk i's rewards in a thread pool while chunk i+1 (sampling.batch_size
    # samples) is rolled out; same scores, in order (ffjax.rewards.async_pool). Needs
    # sampling.batch_size to split the epoch; groupwise rewards wait for the whole epoch.
    t.async_rewards = False
    t.reward_workers = 2  # threads of the async reward pool (rewards must be thread-safe)
    t.eval_every = 10  # epochs between evaluations (0 disables)
    t.eval_prompts = 0  # prompts of the evaluation set (0: data.prompts_per_epoch)
    t.eval_repeats = 1  # samples per evaluation prompt (different noise each)
    # Keep the KL reference copy (a full fine-tune with algorithm.kl_beta > 0) in pinned
    # host memory; each train step streams it to the devices (ffjax.parallel.offload).
    # Saves a param_dtype copy of the denoiser per device at the price of that transfer.
    t.offload_ref = False

    # EMA of the trainable weights, stepped after the optimizer steps of every
    # update_interval-th epoch; the old policy of NFT (off-policy) / AWM's EMA-KL, and the
    # weights evaluated.
    c.ema = e = ConfigDict()
    e.schedule = "constant"  # decay schedule: see ffjax.ema.SCHEDULES
    e.decay = 0.9  # (final) decay; 0 disables EMA (evaluation then uses current weights)
    # Epochs between EMA steps: after epochs k-1, 2k-1, ..., with the schedule's decay at
    # that epoch (Flow-Factory's ema_update_interval; 1 = every epoch).
    e.update_interval = 1
    e.start_decay = 0.0  # decay at epoch 0 for ramping schedules
    e.ramp_epochs = 100  # epochs over which ramping schedules go from start_decay to decay
    e.warmup_epochs = 0  # warmup_cosine: epochs of 0 -> start_decay; power_warmup: its W
    e.power = 0.75  # power: decay = 1 - (1 + epoch / inv_gamma) ** -power in [start_decay, decay]
    e.inv_gamma = 1.0  # power schedule: inverse multiplicative factor of the epoch
    e.boundaries = ()  # piecewise_linear: epochs of the knots (increasing)
    e.decays = ()  # piecewise_linear: decay at each knot (held beyond the ends)
    # Keep the EMA in pinned host memory between uses; it visits the devices for its
    # update, evaluation, EMA sampling and EMA-KL steps (ffjax.parallel.offload). Saves a
    # float32 copy of the trainable weights per device (48 GB for a full FLUX.1-dev).
    e.offload = False

    c.mesh = h = ConfigDict()
    h.data = -1  # data-parallel axis size (-1: all devices not used by other axes)
    h.fsdp = 1  # parameter-sharding axis size
    h.tensor = 1  # tensor-parallel axis size
    h.sequence = 1  # sequence-parallel axis size

    c.checkpoint = k = ConfigDict()
    k.every_epochs = 10  # epochs between Orbax checkpoints (0 disables)
    k.keep = 3  # checkpoints kept

    c.logging = g = ConfigDict()
    g.tensorboard = True  # write TensorBoard event files under WORKDIR/tb
    g.image_grid_every = 10  # epochs between sample grids under WORKDIR/samples (0 disables)
    # Progress bars with ETA inside each epoch (rollout chunks, rewards, optimizer
    # micro-batches) for models whose epoch takes minutes; each unit is waited for, so
    # it costs a little overlap. The epoch bar is always shown.
    g.step_progress = False
    g.wandb_project = ""  # W&B project to log metrics and grids to ("" disables; pip install wandb)
    g.wandb_name = ""  # W&B run name ("": W&B picks one)
    g.wandb_mode = "online"  # online | offline (sync later with `wandb sync`) | disabled
    return c


REWARD_ENTRY_KEYS = ("name", "weight", "args")

DTYPES = ("float32", "bfloat16", "float16")

# Allowed values. A tuple is a fixed set; a callable returns the current set and
# whether a "pkg.mod:Name" spec is also acceptable.
CHOICES: dict[str, tuple[str, ...] | Callable[[], tuple[list[str], bool]]] = {
    "model.name": lambda: (_registered("models").names(), True),
    "model.dtype": DTYPES,
    "model.param_dtype": DTYPES,
    "model.attention": ("auto", "xla", "cudnn", "splash"),
    "model.remat": ("none", "full", "save_dots"),
    "sampling.dynamics": steps.DYNAMICS,
    "sampling.sde_window": ("random", "contiguous", "progressive"),
    "sampling.storage_dtype": ("float32", "bfloat16"),
    "sampling.sigma_grid": ("pipeline", "flow_match_euler", "unipc_flow"),
    "sampling.eval_solver": ("euler", "unipc"),
    "train.lora_init": ("gaussian", "kaiming"),
    "logging.wandb_mode": ("online", "offline", "disabled"),
    "train.advantage_method": ("sum", "gdpo"),
    "train.advantage_std": ("group", "global"),
    "train.advantage_eps": ("flow_factory", "flow_grpo"),
    "train.gdpo_std": ("flow_factory", "advantage_std"),
    "train.lr_schedule": ("constant", "linear", "cosine"),
    "ema.schedule": (
        "constant",
        "power",
        "power_warmup",
        "linear",
        "piecewise_linear",
        "cosine",
        "warmup_cosine",
    ),
    "algorithm.name": lambda: (_registered("algorithms").names(), True),
}

REQUIRED: dict[str, str] = {
    "model.path": "the Diffusers pipeline folder of the model to train",
    "data.path": "the prompt file or folder (train.txt / train.jsonl) to train on",
}

# Numeric bounds: key -> (predicate, what is allowed).
BOUNDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "sampling.num_steps": (lambda v: v >= 1, ">= 1"),
    "sampling.eval_num_steps": (lambda v: v >= 1, ">= 1"),
    "sampling.noise_level": (lambda v: v >= 0, ">= 0"),
    "sampling.sde_num_steps": (lambda v: v >= 0, ">= 0 (0 = all candidates)"),
    "sampling.window_interval": (lambda v: v >= 1, ">= 1"),
    "sampling.window_stride": (lambda v: v >= 1, ">= 1"),
    "data.group_size": (lambda v: v >= 2, ">= 2 (advantages need a group)"),
    "data.prompts_per_epoch": (lambda v: v >= 1, ">= 1"),
    "train.num_epochs": (lambda v: v >= 0, ">= 0"),
    "train.learning_rate": (lambda v: v > 0, "> 0"),
    "train.micro_batch_size": (lambda v: v >= 1, ">= 1"),
    "train.inner_epochs": (lambda v: v >= 1, ">= 1"),
    "train.lora_rank": (lambda v: v >= 0, ">= 0 (0 = full fine-tune)"),
    "train.grad_accum_steps": (lambda v: v >= 1, ">= 1"),
    "train.reward_workers": (lambda v: v >= 1, ">= 1"),
    "sampling.batch_size": (lambda v: v >= 0, ">= 0 (0 = the whole epoch)"),
    "train.warmup_steps": (lambda v: v >= 0, ">= 0"),
    "train.eval_prompts": (lambda v: v >= 0, ">= 0"),
    "train.eval_repeats": (lambda v: v >= 1, ">= 1"),
    "algorithm.advantage_max": (lambda v: v >= 0, ">= 0 (0 = no rescale)"),
    "algorithm.num_train_timesteps": (lambda v: v >= 0, ">= 0 (0 = int(N (hi - lo)))"),
    "ema.decay": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "ema.start_decay": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "ema.ramp_epochs": (lambda v: v >= 1, ">= 1"),
    "ema.warmup_epochs": (lambda v: v >= 0, ">= 0"),
    "ema.update_interval": (lambda v: v >= 1, ">= 1 (1 = every epoch)"),
    "model.height": (lambda v: v >= 1, ">= 1"),
    "model.width": (lambda v: v >= 1, ">= 1"),
    "model.num_frames": (lambda v: v >= 1, ">= 1"),
    "model.flow_shift": (lambda v: v >= 0, ">= 0 (0 = the pipeline's scheduler)"),
    "model.guidance_scale_2": (lambda v: v >= 0, ">= 0 (0 = sampling.guidance_scale)"),
    "model.eval_height": (lambda v: v >= 0, ">= 0 (0 = model.height)"),
    "model.eval_width": (lambda v: v >= 0, ">= 0 (0 = model.width)"),
    "model.eval_num_frames": (lambda v: v >= 0, ">= 0 (0 = model.num_frames)"),
    "model.eval_guidance_scale_2": (lambda v: v >= 0, ">= 0 (0 = the training value)"),
    "sampling.eval_guidance_scale": (lambda v: v >= 0, ">= 0 (0 = sampling.guidance_scale)"),
    "model.max_sequence_length": (lambda v: v >= 1, ">= 1"),
    "mesh.data": (lambda v: v == -1 or v >= 1, ">= 1 or -1"),
    "mesh.fsdp": (lambda v: v == -1 or v >= 1, ">= 1 or -1"),
    "mesh.tensor": (lambda v: v == -1 or v >= 1, ">= 1 or -1"),
    "mesh.sequence": (lambda v: v == -1 or v >= 1, ">= 1 or -1"),
}

_REGISTRY_PACKAGES = {
    "models": ("ffjax.models", registry.MODELS),
    "algorithms": ("ffjax.algorithms", registry.ALGORITHMS),
    "rewards": ("ffjax.rewards", registry.REWARDS),
}


def _registered(kind: str) -> registry.Registry:
    """The registry of `kind`, after importing the package whose modules fill it."""
    package, reg = _REGISTRY_PACKAGES[kind]
    try:
        importlib.import_module(package)
    except ModuleNotFoundError as e:
        if e.name != package:  # a broken import inside the package is a real error
            raise
    return reg


def validate(config: ConfigDict) -> ConfigDict:
    """Checks `config` against the schema; returns it unchanged or raises ConfigError.

    Checks, in order: unknown keys (with nearest valid keys), missing required values,
    choices, numeric bounds, reward entries, the algorithm's own section, and
    cross-key constraints. All problems are reported together.
    """
    problems: list[str] = []
    schema = base_config()
    algo_section = _algorithm_section(config, problems)
    if algo_section is not None:
        for key, value in algo_section.items():
            schema.algorithm[key] = value
    problems += _unknown_keys(config, schema, "")
    for path, purpose in REQUIRED.items():
        if _get(config, path) is None:
            problems.append(f"missing required value config.{path} ({purpose})")
    for path, allowed in CHOICES.items():
        value = _get(config, path)
        if value is None:
            continue
        if callable(allowed):
            names, specs_ok = allowed()
            if value in names or (specs_ok and ":" in str(value)):
                continue
            extra = " or 'package.module:Name'" if specs_ok else ""
            problems.append(
                f"config.{path}={value!r} is not allowed; allowed: {', '.join(names) or '(none registered)'}{extra}"
            )
        elif value not in allowed:
            problems.append(
                f"config.{path}={value!r} is not allowed; allowed: {', '.join(allowed)}"
            )
    for path, (ok, allowed) in BOUNDS.items():
        value = _get(config, path)
        if value is not None and not ok(value):
            problems.append(f"config.{path}={value!r} is out of range; allowed: {allowed}")
    for section in ("rewards", "eval_rewards"):
        problems += _reward_problems(config.get(section, ConfigDict()), section)
    problems += _cross_key_problems(config)
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))
    return config


def _algorithm_section(config: ConfigDict, problems: list[str]) -> ConfigDict | None:
    """The registered algorithm's default section, if the name resolves."""
    name = _get(config, "algorithm.name")
    if name is None:
        return None
    reg = _registered("algorithms")
    try:
        spec = reg.get(name)
    except registry.RegistryError:
        return None  # reported by the choices check
    default_config = getattr(spec, "default_config", None)
    if default_config is None:
        problems.append(f"config.algorithm.name={name!r} has no default_config()")
        return None
    for key, allowed in getattr(spec, "choices", {}).items():
        value = config.algorithm.get(key)
        if value is not None and value not in allowed:
            problems.append(
                f"config.algorithm.{key}={value!r} is not allowed for {name}; allowed: {', '.join(allowed)}"
            )
    return default_config()


def _unknown_keys(config: Any, schema: ConfigDict, prefix: str) -> list[str]:
    out = []
    if not isinstance(config, (ConfigDict, dict)):
        return out
    for key in config.keys():
        path = f"{prefix}{key}"
        if path in ("rewards", "eval_rewards"):
            continue  # open maps, checked by _reward_problems
        if key not in schema:
            nearby = difflib.get_close_matches(key, list(schema.keys()), n=3, cutoff=0.5)
            hint = (
                f"; did you mean {', '.join(f'config.{prefix}{n}' for n in nearby)}?"
                if nearby
                else f"; valid keys here: {', '.join(sorted(schema.keys()))}"
            )
            out.append(f"unknown key config.{path}{hint}")
        elif isinstance(schema[key], ConfigDict):
            out += _unknown_keys(config[key], schema[key], f"{path}.")
    return out


def _reward_problems(rewards: Any, section: str) -> list[str]:
    out = []
    names = _registered("rewards")
    for alias, entry in rewards.items():
        where = f"config.{section}.{alias}"
        if not isinstance(entry, (ConfigDict, dict)):
            out.append(f"{where} must be a dict with keys {', '.join(REWARD_ENTRY_KEYS)}")
            continue
        for key in entry.keys():
            if key not in REWARD_ENTRY_KEYS:
                out.append(f"unknown key {where}.{key}; allowed: {', '.join(REWARD_ENTRY_KEYS)}")
        name = entry.get("name", alias)
        if not names.is_valid(name):
            out.append(
                f"{where}.name={name!r} is not a registered reward; allowed: "
                f"{', '.join(names.names()) or '(none registered)'} or 'package.module:Name'"
            )
        args = entry.get("args", None)
        if isinstance(args, (ConfigDict, dict)):
            for key, value in args.items():
                if value is None:
                    out.append(
                        f"missing required value {where}.args.{key} (a local folder of the"
                        f" reward's weights; ffjax never downloads weights): pass"
                        f" --config.{section}.{alias}.args.{key}=/path"
                    )
        weight = entry.get("weight", 1.0)
        if not isinstance(weight, (int, float)):
            out.append(f"{where}.weight must be a number, got {weight!r}")
    return out


def _cross_key_problems(config: ConfigDict) -> list[str]:
    out = []
    if isinstance(config.get("ema"), ConfigDict):
        from ffjax import ema

        try:
            ema.validate(config.ema)
        except ValueError as e:
            out.append(str(e))
    out += _clip_pair_problems(config)
    out += _wan_only_problems(config)
    n = _get(config, "sampling.num_steps")
    cand = _get(config, "sampling.sde_candidates")
    if isinstance(n, int) and cand:
        bad = [i for i in cand if not 0 <= i < n]
        if bad:
            out.append(f"config.sampling.sde_candidates has steps {bad} outside [0, {n})")
    k = _get(config, "sampling.sde_num_steps")
    if isinstance(n, int) and isinstance(k, int) and k > (len(cand) if cand else max(n - 1, 1)):
        out.append(
            f"config.sampling.sde_num_steps={k} exceeds the number of candidate steps "
            f"({len(cand) if cand else max(n - 1, 1)})"
        )
    return out


# Values only WAN adapters implement (ffjax.models.wan.adapter: `sigmas`, `unipc_sigmas`).
_WAN_ONLY = {"sampling.sigma_grid": ("unipc_flow",), "sampling.eval_solver": ("unipc",)}


def _wan_only_problems(config: ConfigDict) -> list[str]:
    """The UniPC grid and solver need a WAN model (a "pkg.mod:Class" model is not checked)."""
    name = _get(config, "model.name")
    if not isinstance(name, str) or ":" in name:
        return []
    try:
        family = registry.family_of(name).name
    except registry.RegistryError:
        return []  # reported by the model.name choice
    wan = registry.FAMILIES.get("wan")
    out = []
    for path, values in _WAN_ONLY.items():
        value = _get(config, path)
        if value in values and family != wan.name:
            out.append(
                f"config.{path}={value!r} needs a WAN model"
                f" ({', '.join(m.name for m in wan.models)}), got model.name={name!r}: the UniPC"
                " grid and solver are those of WAN pipelines' UniPCMultistepScheduler"
            )
    return out


def _clip_pair_problems(config: ConfigDict) -> list[str]:
    """Flow-Factory's asymmetric clip pairs (algorithm.clip_bounds / adv_clip_bounds)."""
    from ffjax.algorithms import common

    out = []
    for key, scalar, ratio in (
        ("clip_bounds", "clip_range", True),
        ("adv_clip_bounds", "adv_clip_max", False),
    ):
        pair = _get(config, f"algorithm.{key}")
        if pair is None:
            continue
        try:
            common.bounds(
                f"config.algorithm.{key}",
                _get(config, f"algorithm.{scalar}") or 0.0,
                pair,
                ratio=ratio,
            )
        except (ValueError, TypeError) as e:
            out.append(str(e))
    return out


def _get(config: Any, path: str) -> Any:
    node = config
    for part in path.split("."):
        if not isinstance(node, (ConfigDict, dict)) or part not in node:
            return None
        node = node[part]
    return node


def _walk(config: ConfigDict, prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in config.items():
        if isinstance(value, ConfigDict):
            yield from _walk(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def apply_override(config: ConfigDict, path: str, raw: str) -> None:
    """Sets `config.<path>` from a command-line string, parsed by the field's type.

    Raises ConfigError for an unknown key (naming the nearest ones) or a value that
    does not parse as the field's type. Keys under `rewards` / `eval_rewards` and the
    algorithm section may be created.
    """
    parts = path.split(".")
    node = config
    for i, part in enumerate(parts[:-1]):
        if part not in node:
            if parts[0] in ("rewards", "eval_rewards", "algorithm"):
                node[part] = ConfigDict()
            else:
                raise ConfigError(_unknown_message(node, ".".join(parts[: i + 1]), part))
        node = node[part]
        if not isinstance(node, ConfigDict):
            raise ConfigError(f"config.{'.'.join(parts[: i + 1])} is a value, not a section")
    leaf = parts[-1]
    open_section = parts[0] in ("rewards", "eval_rewards", "algorithm")
    if leaf not in node and not open_section:
        raise ConfigError(_unknown_message(node, path, leaf))
    if leaf in node and isinstance(node[leaf], ConfigDict):
        raise ConfigError(f"config.{path} is a section; set one of its keys instead")
    field_type = node.get_type(leaf) if leaf in node else None
    value = _parse_value(raw, field_type, path)
    try:
        node[leaf] = value
    except TypeError as e:
        raise ConfigError(f"config.{path}: cannot set {raw!r}: {e}") from None


def _unknown_message(node: ConfigDict, path: str, key: str) -> str:
    prefix = path.rsplit(".", 1)[0] + "." if "." in path else ""
    nearby = difflib.get_close_matches(key, list(node.keys()), n=3, cutoff=0.5)
    if nearby:
        return f"unknown key config.{path}; did you mean {', '.join(f'config.{prefix}{n}' for n in nearby)}?"
    return f"unknown key config.{path}; valid keys here: {', '.join(sorted(node.keys()))}"


def _parse_value(raw: str, field_type: type | None, path: str) -> Any:
    if field_type is str:
        return raw
    if field_type is bool:
        lowered = raw.lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise ConfigError(f"config.{path} expects true/false, got {raw!r}")
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        if field_type in (None, type(None)):
            return raw  # a new string-valued key, e.g. a reward name
        raise ConfigError(f"config.{path} expects {field_type.__name__}, got {raw!r}") from None
    if field_type is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if field_type in (tuple, list) and isinstance(value, (tuple, list)):
        value = field_type(value)
    if field_type not in (None, type(None)) and not isinstance(value, field_type):
        raise ConfigError(f"config.{path} expects {field_type.__name__}, got {raw!r}")
    return value


def to_text(config: ConfigDict) -> str:
    """The resolved config as sorted `key = value` lines."""
    return "\n".join(f"{k} = {v!r}" for k, v in sorted(_walk(config)))


def set_algorithm(config: ConfigDict, name: str) -> ConfigDict:
    """Sets `config.algorithm` to algorithm `name` with its registered defaults."""
    spec = _registered("algorithms").get(name)
    section = spec.default_config()
    section.name = name
    config.algorithm = section
    return config


# --------------------------------------------------------------------------- recipe pieces
# Flow-Factory's EMA settings, shared by the recipes that follow them (configs/*.py).


def ema_every_4_epochs(config: ConfigDict) -> ConfigDict:
    """Flow-Factory's GRPO EMA: decay 0.9 every 4 epochs, warm-up min(0.9, (1+t)/(10+t)).

    X-GenGroup/Flow-Factory a0b2bc5 examples/grpo/lora/*/default.yaml: ema_decay 0.9,
    ema_update_interval 4 (epochs), ema_decay_schedule "power" = min(d, (1 + t) / (10 + t))
    with t the epoch (ema/ema_utils.py `power_warmup_decay`, warmup_steps 10); ffjax's
    `power_warmup` schedule with `update_interval` 4 is the same EMA. Flow-GRPO SD3:
    EMAModuleWrapper(decay=0.9, update_step_interval=8) with the same warm-up counted in
    optimizer steps, i.e. also every 4 epochs at 2 steps per epoch. (ffjax before
    2026-12-08 stepped every epoch with a per-epoch "power" of the same horizon.)
    """
    e = config.ema
    e.schedule, e.decay, e.warmup_epochs, e.update_interval = "power_warmup", 0.9, 10, 4
    return config


def ema_nft(config: ConfigDict) -> ConfigDict:
    """Flow-Factory's DiffusionNFT old policy (and sampler), the EMA: ema_decay_schedule
    "piecewise_linear", flat_steps 0, ramp_rate 0.001, ema_decay 0.5, updated every
    epoch: decay 0 at epoch 0 rising by 0.001 an epoch to 0.5 at epoch 500."""
    e = config.ema
    e.schedule, e.boundaries, e.decays = "piecewise_linear", (0, 500), (0.0, 0.5)
    e.decay = 0.5  # the held value; > 0 keeps the EMA on
    return config


def ema_awm(config: ConfigDict) -> ConfigDict:
    """Flow-Factory's AWM EMA (of the EMA-KL): ema_decay_schedule "linear", ema_decay
    0.3, initial decay 0, warmup_steps 300, updated every epoch."""
    e = config.ema
    e.schedule, e.start_decay, e.decay, e.ramp_epochs = "linear", 0.0, 0.3, 300
    return config


def required_arg() -> Any:
    """A reward arg the user must set (a weights folder): None until set, typed str so
    `--config.rewards.<alias>.args.<key>=/path` parses; `validate` names it when unset."""
    return config_dict.placeholder(str)


def add_reward(
    config: ConfigDict,
    alias: str,
    name: str | None = None,
    weight: float = 1.0,
    section: str = "rewards",
    **args: Any,
) -> ConfigDict:
    """Adds reward entry `config.<section>.<alias>` = {name, weight, args}."""
    config[section][alias] = ConfigDict(
        {"name": name or alias, "weight": float(weight), "args": args}
    )
    return config
