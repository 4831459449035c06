"""Value transforms of the Flow-Factory YAML table (ffjax/ff_yaml/table.py).

Each takes (value, context) and returns {ffjax key: value}, or raises `Refused` with
the reason ffjax cannot honour the value. Sources as cited in table.py ([A0], [B3],
[MR]: X-GenGroup/Flow-Factory a0b2bc5 / b30dc00 src/flow_factory/hparams, models and
rewards registries).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ffjax.ff_yaml import rules
from ffjax.ff_yaml.rules import Refused

ALL = ("grpo", "grpo-guard", "nft", "awm")
GRPO = ("grpo", "grpo-guard")
FORWARD = ("nft", "awm")


def put(key: str, fn: Callable[[Any], Any] = lambda v: v) -> Callable[[Any, Any], dict]:
    return lambda v, ctx: {key: fn(v)}


def choice(key: str, table: dict[str, Any], what: str) -> Callable[[Any, Any], dict]:
    def apply(v, ctx):
        if str(v) not in table:
            raise Refused(f"{v!r} is not one of {', '.join(map(repr, table))} ({what})")
        return {key: table[str(v)]}

    return apply


def when(cond: Callable[[Any], bool], then: Callable[[Any, Any], dict], why: str):
    def apply(v, ctx):
        if not cond(v):
            raise Refused(why)
        return then(v, ctx)

    return apply


def nothing(v, ctx) -> dict:
    return {}


# ------------------------------------------------------------------ model families [MR]

# Flow-Factory model_type -> ffjax adapter (ffjax.registry.MODELS).
MODEL_TYPES = {"flux1": "flux1", "qwen-image": "qwen-image", "wan2_t2v": "wan2-t2v", "wan2_i2v": "wan2-i2v"}  # fmt: skip


def model_type(v, ctx):
    name = str(v).lower()
    if name not in MODEL_TYPES:
        have = ", ".join(f"{k} ({a})" for k, a in MODEL_TYPES.items())
        raise Refused(f"{v!r} is a model family ffjax does not have yet; it has: {have}")
    out = {"model.name": MODEL_TYPES[name]}
    if name.startswith("wan"):
        # Flow-Factory evaluates WAN with its UniPC scheduler's multistep solver (a0b2bc5
        # src/flow_factory/models/wan/wan2_t2v.py, scheduler/unipc_multistep.py eval mode).
        out["sampling.eval_solver"] = "unipc"
    return out


# ------------------------------------------------------------------ rewards [MR]

# PickScore's folders, as Flow-Factory hard-codes them (rewards/pick_score.py); hub IDs
# kept as given, resolved when the reward loads (ffjax/local_paths.py).
PICKSCORE = {"path": "yuvalkirstain/PickScore_v1", "processor_path": "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"}  # fmt: skip
CLIP_DEFAULT = "openai/clip-vit-large-patch14"  # rewards/clip.py DEFAULT_MODEL

# Flow-Factory reward_model (lower case) -> (ffjax reward, its args). CLIP is the plain
# cosine of the normalised embeddings (rewards/clip.py): clip_score with w 1, no clamp.
REWARD_MODELS: dict[str, tuple[str, Callable[[dict], dict]]] = {
    "pickscore": ("pickscore", lambda e: dict(PICKSCORE)),
    "pickscore_rank": ("pickscore_rank", lambda e: dict(PICKSCORE)),
    "clip": (
        "clip_score",
        lambda e: {"path": e.get("model_name_or_path", CLIP_DEFAULT), "w": 1.0, "clamp": False},
    ),  # fmt: skip
}


def reward_model(v, ctx):
    name = str(v).lower()
    if name not in REWARD_MODELS:
        have = ", ".join(sorted(REWARD_MODELS))
        raise Refused(
            f"{v!r} is a reward ffjax does not have; it has: {have} (Flow-Factory names);"
            " run any other (a VLM judge, OCR, ...) behind ffjax's `remote` reward"
            " (python -m ffjax.rewards.server, reward name 'remote')"
        )
    reward, args = REWARD_MODELS[name]
    return {f"{ctx.section}.{ctx.alias}.name": reward, **{f"{ctx.section}.{ctx.alias}.args.{k}": a for k, a in args(ctx.entry).items()}}  # fmt: skip


def reward_arg(arg: str, fn: Callable[[Any], Any] = lambda v: v):
    return lambda v, ctx: {f"{ctx.section}.{ctx.alias}.args.{arg}": fn(v)}


def reward_weight(v, ctx):
    if isinstance(v, dict) or isinstance(v, bool) or not isinstance(v, (int, float)):
        raise Refused(
            "ffjax weighs a reward with one number (per-dataset weights need one dataset)"
        )
    return {f"{ctx.section}.{ctx.alias}.weight": float(v)}


def async_reward(v, ctx):
    return {"train.async_rewards": True} if v and ctx.section == "rewards" else {}


def reward_workers(v, ctx):
    return {"train.reward_workers": int(v)} if ctx.entry.get("async_reward") else {}


# ------------------------------------------------------------------ data


def datasets(v, ctx):
    """[B3] data.datasets: ffjax trains on one prompt source (its dataset_dir)."""
    if not isinstance(v, list) or not v:
        raise Refused("must be a non-empty list of dataset entries")
    train = [d for d in v if isinstance(d, dict) and d.get("train") not in (None, False)]
    if len(train) != 1:
        raise Refused(f"{len(train)} training sources; ffjax trains on one prompt folder")
    entry = train[0]
    extra = sorted(set(entry) - {"name", "dataset_dir", "train", "eval"})
    extra += sorted(f"train.{k}" for k in set(entry.get("train") or {}) - {"weight", "max_dataset_size"})  # fmt: skip
    if extra:
        raise Refused(f"dataset entry key(s) {', '.join(extra)} are not known to ffjax's mapping")
    if "dataset_dir" not in entry:
        raise Refused("the training source has no dataset_dir")
    return {"data.path": str(entry["dataset_dir"])}


# ------------------------------------------------------------------ model / train


def finetune(v, ctx):
    if v not in ("lora", "full"):
        raise Refused(f"{v!r} is not 'lora' or 'full'")
    rank = ctx.get("model.lora_rank", 8)
    return {"train.lora_rank": 0 if v == "full" else int(rank)}


def lora_alpha(v, ctx):
    if ctx.get("model.finetune_type", "full") != "lora":
        return {}
    return {"train.lora_alpha": float(2 * ctx.get("model.lora_rank", 8) if v is None else v)}


def resolution(v, ctx):
    h, w = (v, v) if not isinstance(v, (list, tuple)) else (v[0], v[-1] if len(v) > 1 else v[0])
    return {"model.height": int(h), "model.width": int(w)}


def num_epochs(v, ctx):
    # Flow-Factory trains until stopped when max_epochs is null or negative; ffjax needs
    # a number: the recipes' "until stopped by hand" count.
    return {"train.num_epochs": 100000 if v is None or int(v) < 0 else int(v)}


def geometry(*keys: str):
    """Rows of the batch geometry: the joint result (rules.geometry), these keys of it."""
    return lambda v, ctx: {k: val for k, val in ctx.geometry().items() if k in keys}


def ema(v, ctx):
    return ctx.ema()


def ema_checked(v, ctx):
    """An EMA key read with ema_decay (its row shows the result)."""
    ctx.ema()
    return {}


def clip(scalar_key: str, pair_key: str):
    """A scalar c is (-c, c) ([B3] `_standardize_clip_range`); a symmetric pair is the
    scalar, an asymmetric one ffjax's `algorithm.<pair_key>`."""

    def apply(v, ctx):
        if isinstance(v, (list, tuple)):
            if len(v) != 2 or not float(v[0]) < float(v[1]):
                raise Refused(f"{v!r} must be a number or a pair [lo, hi] with lo < hi")
            lo, hi = float(v[0]), float(v[1])
            if lo == -hi:
                return {f"algorithm.{scalar_key}": hi}
            return {f"algorithm.{pair_key}": (lo, hi)}
        return {f"algorithm.{scalar_key}": abs(float(v))}

    return apply


def device(key: str):
    return choice(key, {"cuda": False, "cpu": True}, "cpu keeps it in pinned host memory")


def kl_type(v, ctx):
    if ctx.trainer in GRPO:
        return choice("algorithm.kl_type", {"v-based": "v-based", "x-based": "x-based"}, "GRPO KL")(v, ctx)  # fmt: skip
    if v != "v-based":
        raise Refused(f"{ctx.trainer} has only the 'v-based' KL")
    return {}


def off_policy(v, ctx):
    if ctx.trainer == "nft":
        return {"algorithm.off_policy": bool(v)}
    if v:
        raise Refused("ffjax's AWM samples with the current weights (off_policy false)")
    return {}


def timesteps(v, ctx):
    return {"algorithm.num_train_timesteps": rules.num_train_timesteps(ctx.train, 0.9)}


def latent_dtype(v, ctx):
    # ffjax stores float32 or bfloat16 latents; Flow-Factory's default fp16 keeps more
    # mantissa than bfloat16, so it becomes float32.
    return {"sampling.storage_dtype": "bfloat16" if v == "bf16" else "float32"}


def remat(v, ctx):
    return {"model.remat": "none" if v is False or v is None else "full"}


def optimizers(v, ctx):
    if not isinstance(v, list) or len(v) != 1 or not isinstance(v[0], dict):
        raise Refused("ffjax trains one policy: give exactly one optimizer entry")
    return {}


def opt_type(v, ctx):
    if str(v).lower() != "adamw":
        raise Refused(f"{v!r}: ffjax's optimizer is AdamW")
    return {}


def betas(v, ctx):
    return {"train.adam_b1": float(v[0]), "train.adam_b2": float(v[1])}


def dynamics(v, ctx):
    table = {"Flow-SDE": "flow_sde", "Dance-SDE": "dance_sde", "CPS": "cps", "ODE": "ode"}
    out = choice("sampling.dynamics", table, "scheduler.dynamics_type")(v, ctx)
    if v == "ODE":  # [A0] SchedulerArguments: ODE zeroes the SDE fields
        out.update({"sampling.noise_level": 0.0, "sampling.sde_candidates": (), "sampling.sde_num_steps": 0})  # fmt: skip
    return out


def not_ode(key: str, fn: Callable[[Any], Any]):
    return lambda v, ctx: {} if ctx.get("scheduler.dynamics_type", "Flow-SDE") == "ODE" else {key: fn(v)}  # fmt: skip


def _hw(ctx, section: str, default: tuple[int, int]) -> tuple[int, int]:
    """(height, width) of a section's resolution / height / width, as Flow-Factory
    resolves them (height and width override the resolution's)."""
    v = ctx.get(f"{section}.resolution", default)
    h, w = (v, v) if not isinstance(v, (list, tuple)) else (v[0], v[-1] if len(v) > 1 else v[0])
    h, w = ctx.get(f"{section}.height") or h, ctx.get(f"{section}.width") or w
    return int(h), int(w)


def eval_size(v, ctx):
    """eval.resolution / height / width ([A0] and 6c7882b hparams EvaluationArguments,
    default 1024 x 1024; the training default 512 x 512):
    model.eval_height / eval_width where they differ from the training size."""
    (h, w), (th, tw) = _hw(ctx, "eval", (1024, 1024)), _hw(ctx, "train", (512, 512))
    return {} if (h, w) == (th, tw) else {"model.eval_height": h, "model.eval_width": w}


def eval_value(key: str, train_key: str, train_default: Any, cast: Callable = float):
    """An evaluation setting: `key` where it differs from the training value."""

    def apply(v, ctx):
        if v is None or v == ctx.get(train_key, train_default):
            return {}
        return {key: cast(v)}

    return apply


def logging_backend(v, ctx):
    if v == "wandb":
        return {"logging.wandb_project": str(ctx.get("log.project", "Flow-Factory"))}
    if v in (None, "none", "tensorboard"):
        return {"logging.tensorboard": True}
    raise Refused(f"{v!r}: ffjax logs to TensorBoard and W&B (wandb)")


def target_modules(v, ctx):
    """LoRA layers: 'default' (or '<component>.default', Wan 2.2's spelling) is the
    adapter's own list; a full fine-tune reads none."""
    if ctx.get("model.finetune_type", "full") != "lora":
        return {}
    if isinstance(v, str) and v.rpartition(".")[2] == "default":
        return {}
    raise Refused(
        "ffjax adapts its adapter's default layers; name others as regexes on ffjax's"
        " module paths with --config.train.lora_targets"
    )


EXPERTS = ("transformer", "transformer_2")


def target_components(v, ctx):
    """ffjax trains every expert of the pipeline folder (Wan 2.2 A14B: both)."""
    parts = [v] if isinstance(v, str) else list(v)
    if not parts or any(p not in EXPERTS for p in parts) or "transformer" not in parts:
        raise Refused("ffjax trains 'transformer' (and 'transformer_2' where the folder has one)")
    if parts == ["transformer"] and str(ctx.get("model.model_type", "")).startswith("wan"):
        ctx.notes.append(
            "model.target_components 'transformer': on a Wan 2.2 A14B folder ffjax trains"
            " both experts; for the high-noise one alone set --config.train.lora_targets as"
            " configs/wan_t2v_grpo.py:a14b does"
        )
    return {}


def other_trainer(v, ctx):
    """A key of another trainer: Flow-Factory keeps it in extra_kwargs, unread."""
    ctx.notes.append(f"a key of another trainer has no effect on {ctx.trainer}")
    return {}


def mixed_precision(v, ctx):
    """Flow-Factory's compute dtype; an unquoted `no` arrives as False."""
    table = {"no": "float32", "fp16": "float16", "bf16": "bfloat16"}
    return choice("model.dtype", table, "compute dtype")("no" if v in (False, None) else v, ctx)
