"""A run's folder: config.txt, resume checks, metrics rows, parameter digests, and its
checkpoints (where they are, which weights to use, restoring them).

    WORKDIR/metrics.jsonl              one row per epoch (params_digest on checkpoints)
    WORKDIR/checkpoints/config.txt     the resolved config, `key = repr(value)` lines
    WORKDIR/checkpoints/<epoch>/       Orbax checkpoints of the whole TrainState
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from ffjax import configs
from ffjax.errors import CheckpointError, UsageError

# Keys that may change when a run is resumed (length, logging and checkpoint cadence).
RESUMABLE_CHANGES = ("train.num_epochs", "train.eval_every", "checkpoint.", "logging.")
# Config keys that shape the restored weights; named when a checkpoint does not fit.
MODEL_KEYS = ("model.", "train.lora_", "ema.decay")
WEIGHTS = ("ema", "current", "base")
# Keys added after run folders were written, each with the value that reproduces such a
# run (what ffjax did before the key existed). A config.txt without one of them resumes
# and samples with that value (`with_legacy_values`). A new key whose default already
# does what ffjax did before needs no entry; one whose default differs must have one.
LEGACY_VALUES = {
    "algorithm.kl_form": "gaussian",  # 2026-12-07: default flow_factory
    "train.advantage_eps": "flow_grpo",  # 2026-12-07: default flow_factory
    "train.gdpo_std": "advantage_std",  # 2026-12-07: default flow_factory
    "sampling.sigma_grid": "flow_match_euler",  # 2026-12-07: default pipeline (UniPC for WAN)
    "sampling.eval_solver": "euler",
    "algorithm.on_policy_old": "rollout",  # 2026-12-08: NFT on-policy default flow_factory
}


class RunFolderError(UsageError, RuntimeError):
    """A run folder or checkpoint named on the command line that cannot be used (none
    there, no finished epoch, another model's weights); the message is the whole story.
    Exit 2, like any argument that does not fit."""


def first_line(e: Exception) -> str:
    """The first line of an exception's text (its repr when it has none)."""
    text = str(e).strip()
    return text.splitlines()[0] if text else repr(e)


# --------------------------------------------------------------------------- config.txt


def parse_config_text(text: str) -> dict[str, str]:
    """{key: repr(value)} of `configs.to_text` lines."""
    return dict(line.split(" = ", 1) for line in text.splitlines() if " = " in line)


def read_config_text(path: str | os.PathLike) -> dict[str, str]:
    """`parse_config_text` of a config.txt file; {} when there is none."""
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return parse_config_text(f.read())


def config_file(checkpoint_dir: str | os.PathLike) -> str:
    """Where a run's resolved config is written (beside its checkpoints)."""
    return os.path.join(os.fspath(checkpoint_dir), "config.txt")


def write_config(checkpoint_dir: str | os.PathLike, config: configs.ConfigDict) -> None:
    """Writes the resolved config of a new run."""
    with open(config_file(checkpoint_dir), "w") as f:
        f.write(configs.to_text(config) + "\n")


def with_legacy_values(config: configs.ConfigDict, path: str | os.PathLike) -> list[str]:
    """Sets, in `config`, the `LEGACY_VALUES` of keys the run's config.txt at `path` lacks
    (a run made before they existed); returns 'key = value' of those set."""
    old = read_config_text(path)
    if not old:
        return []
    applied = []
    for key, value in LEGACY_VALUES.items():
        section, name = key.split(".")
        if key not in old and name in config.get(section, {}):
            config[section][name] = value
            applied.append(f"{key} = {value!r}")
    return applied


def check_resumable(path: str | os.PathLike, config: configs.ConfigDict) -> None:
    """ConfigError naming the keys whose values differ from the checkpointed run's
    (config.txt at `path`), except those in RESUMABLE_CHANGES."""
    old = read_config_text(path)
    new = parse_config_text(configs.to_text(config))
    # A key the old run did not have yet matches if it does what ffjax did then: its
    # legacy value (`with_legacy_values`), else its default.
    default = configs.base_config()
    configs.set_algorithm(default, config.algorithm.name)
    then = parse_config_text(configs.to_text(default))
    then.update({k: repr(v) for k, v in LEGACY_VALUES.items()})
    changed = sorted(
        k
        for k in set(old) | set(new)
        if old.get(k, then.get(k)) != new.get(k) and not k.startswith(RESUMABLE_CHANGES)
    )
    if changed:
        detail = ", ".join(f"{k}: {old.get(k)} -> {new.get(k)}" for k in changed[:8])
        raise configs.ConfigError(
            f"the checkpoints in {os.path.dirname(path)} come from a run with another"
            f" config ({detail}); use a new --workdir or the same config"
        )


def model_differences(config: configs.ConfigDict, path: str | os.PathLike) -> list[str]:
    """'key: checkpoint value -> this config's value' for the keys that shape the weights."""
    old = read_config_text(path)
    if not old:
        return []
    new = parse_config_text(configs.to_text(config))
    keys = sorted(k for k in set(old) | set(new) if k.startswith(MODEL_KEYS))
    return [f"{k}: {old.get(k)} -> {new.get(k)}" for k in keys if old.get(k) != new.get(k)]


# --------------------------------------------------------------------------- metrics


def drop_rows_after(path: str, epoch: int) -> None:
    """Keeps metrics.jsonl rows of epochs before `epoch` (they will be run again)."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        rows = [line for line in f if line.strip()]
    keep = [line for line in rows if json.loads(line).get("epoch", -1) < epoch]
    with open(path + ".tmp", "w") as f:
        f.writelines(keep)
    os.replace(path + ".tmp", path)


def params_digest(tree: Any) -> str:
    """sha256 (hex, 16 chars) over the bytes of every leaf, in tree order: equal weights,
    equal digest — the resume-equality check of metrics.jsonl."""
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(tree):
        if isinstance(leaf, jax.Array) and not (
            leaf.is_fully_addressable or leaf.is_fully_replicated
        ):  # sharded over processes (e.g. fsdp): a collective, as every process digests
            leaf = multihost_utils.process_allgather(leaf, tiled=True)
        a = np.ascontiguousarray(np.asarray(jax.device_get(leaf)))
        h.update(str((a.dtype, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- checkpoints


def locate_checkpoint(path: str | os.PathLike) -> tuple[Path, int | None]:
    """(run workdir, epoch or None for the latest) of a `--checkpoint` argument."""
    p = Path(path).expanduser().resolve()
    if not p.is_dir():
        raise RunFolderError(f"checkpoint folder {p} does not exist")
    if p.name.isdigit() and p.parent.name == "checkpoints":
        return p.parent.parent, int(p.name)
    if p.name == "checkpoints":
        return p.parent, None
    if not (p / "checkpoints").is_dir():
        raise RunFolderError(
            f"no checkpoint in {p}: expected a run's workdir (holding checkpoints/),"
            " WORKDIR/checkpoints or WORKDIR/checkpoints/<epoch>"
        )
    return p, None


def check_has_checkpoint(path: str | os.PathLike) -> None:
    """RunFolderError unless `path` (see `locate_checkpoint`) holds a finished epoch."""
    workdir, epoch = locate_checkpoint(path)
    folder = workdir / "checkpoints"  # Orbax names a finished epoch's folder its number
    if epoch is None and not any(p.name.isdigit() for p in folder.iterdir()):
        raise RunFolderError(f"no checkpoint in {folder} (no finished epoch saved)")


def _leaf_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    """'trainable.fc1.a' -> shape for every leaf (the names Orbax gives saved leaves)."""

    def name(path) -> str:
        keys = (getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))) for k in path)
        return ".".join(map(str, keys))

    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {name(path): tuple(leaf.shape) for path, leaf in flat}


def _shape_mismatch(saved: dict, model: dict) -> str:
    """The first leaves whose presence or shape differs (EMA leaves aside)."""
    names = sorted(
        (k for k in set(saved) | set(model) if not k.startswith("ema.")),
        key=lambda k: (not k.startswith("trainable."), k),  # the weights first
    )
    bad = [k for k in names if saved.get(k) != model.get(k)]
    shown = [f"{k} is {saved.get(k, 'absent')} in the checkpoint, {model.get(k, 'absent')}"
             f" in the model" for k in bad[:2]]  # fmt: skip
    more = f" (+{len(bad) - 2} more)" if len(bad) > 2 else ""
    return "; ".join(shown) + more


@contextlib.contextmanager
def open_checkpoint(directory: str | os.PathLike, epoch: int | None):
    """A read-only Orbax CheckpointManager of a run's `checkpoints/` folder, for the
    checkpoint of `epoch` (None: the latest): yields (manager, epoch, its folder, its
    item metadata). RunFolderError when there is no such finished epoch,
    CheckpointError when the checkpoint cannot be read."""
    import orbax.checkpoint as ocp

    directory = Path(directory)
    manager = ocp.CheckpointManager(
        directory,
        item_handlers=ocp.PyTreeCheckpointHandler(),
        options=ocp.CheckpointManagerOptions(create=False, read_only=True),
    )
    try:
        epoch = manager.latest_step() if epoch is None else epoch
        if epoch is None:
            raise RunFolderError(f"no checkpoint in {directory} (no finished epoch saved)")
        if epoch not in manager.all_steps():
            have = ", ".join(map(str, manager.all_steps())) or "none"
            raise RunFolderError(f"no checkpoint of epoch {epoch} in {directory} (epochs: {have})")
        folder = str(directory / str(epoch))
        try:
            metadata = manager.item_metadata(epoch)
        except Exception as e:  # Orbax raises many kinds; the reason is in the message
            raise CheckpointError(f"cannot read checkpoint {folder}: {first_line(e)}") from None
        yield manager, epoch, folder, metadata
    finally:
        manager.close()


def restore_weights(run, path: str | os.PathLike) -> tuple[Any, str]:
    """(TrainState without optimizer state, checkpoint folder) of `--checkpoint` for the
    model of `run` (an inference-only `ffjax.run.build`).

    Only the counters, the trained weights and the EMA (when the checkpoint has one) are
    read, onto the shardings of `run.state_shardings.trainable`. Leaf names and shapes
    are compared from the metadata first, so a checkpoint of another model is refused
    before any array is read.
    """
    import orbax.checkpoint as ocp

    from ffjax.state import TrainState

    workdir, epoch = locate_checkpoint(path)
    directory = workdir / "checkpoints"
    with open_checkpoint(directory, epoch) as (manager, epoch, folder, metadata):
        saved = _leaf_shapes(metadata)
        saved = {k: v for k, v in saved.items() if not k.startswith("opt_state.")}
        diffs = model_differences(run.config, config_file(directory))
        detail = f"; differences (checkpoint -> config): {', '.join(diffs[:6])}" if diffs else ""
        sh = run.state_shardings
        weights = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                               run.initial.trainable, sh.trainable)  # fmt: skip
        counter = jax.ShapeDtypeStruct((), np.int32, sharding=sh.step)
        like = {"step": counter, "epoch": counter, "trainable": weights}
        if any(k.startswith("ema.") for k in saved):
            like["ema"] = weights
        if _leaf_shapes(like) != saved:
            c = run.config
            raise RunFolderError(
                f"checkpoint {folder} does not fit model {c.model.name!r} (model.path="
                f"{c.model.path!r}, train.lora_rank={c.train.lora_rank}) of --config: "
                f"{_shape_mismatch(saved, _leaf_shapes(like))}{detail}"
            )
        if diffs:  # it fits, but e.g. another lora_alpha changes what it means
            logging.warning("--config differs from the checkpoint's run%s", detail)
        args = ocp.args.PyTreeRestore(
            like, restore_args=ocp.checkpoint_utils.construct_restore_args(like),
            partial_restore=True,
        )  # fmt: skip
        got = manager.restore(epoch, args=args)
        state = TrainState(step=got["step"], epoch=got["epoch"], trainable=got["trainable"],
                           opt_state=None, ema=got.get("ema"))  # fmt: skip
        return state, folder


def pick_weights(run, state, which: str | None) -> tuple[Any, str]:
    """(trainable weights to sample with, their name) for `--weights` (WEIGHTS): the EMA
    by default when `state` has one; "base" (or no state): the pretrained model."""
    import jax.numpy as jnp

    from ffjax.run import device_copy

    if which == "base" or state is None:
        # LoRA: zero adapters give exactly the frozen model (x W + 0); full: pretrained.
        if run.lora:
            return jax.tree.map(jnp.zeros_like, run.initial.trainable), "base"
        return run.initial.trainable, "base"
    if which == "ema" and state.ema is None:
        raise RunFolderError(
            "the checkpoint has no EMA weights (trained with ema.decay=0); use --weights current"
        )
    if which == "current" or state.ema is None:
        return state.trainable, "current"
    return device_copy(state.ema), "ema"  # an offloaded EMA comes to the devices
