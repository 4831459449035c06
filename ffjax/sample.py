"""Command-line sampling: images (or videos) from a trained run's checkpoint.

    python -m ffjax.sample --config configs/demo.py:nft --checkpoint /tmp/run \
        --prompts assets/demo/prompts --out /tmp/run/sampled --num_per_prompt 4

`--checkpoint` is a run's workdir (its latest checkpoint), WORKDIR/checkpoints, or
one checkpoint WORKDIR/checkpoints/<epoch>. `--weights` picks the EMA (the default
when the checkpoint has one), the current weights, or `base`: the pretrained model
without the trained weights (no checkpoint needed). `--config` must be the recipe the
run was trained with (and its `--config.*` overrides), since it builds the model the
checkpoint is restored into.

Sampling is the deterministic ODE (noise level 0) with `sampling.eval_num_steps`
steps, in batches of `sampling.batch_size` images (0: all at once), rounded up to a
multiple of the devices over the mesh axes (data, fsdp). Image k of prompt
`index` starts from `adapter.init_noise(fold_in(fold_in(key(seed), index), k), 1, ...)`,
so it depends on the seed, the weights and its own prompt only: not on the batch size
or the other prompts in the file.

Outputs in `--out`: `{index:05d}_{k}.png` per image (`.gif` per video), `prompts.jsonl`
(one object per image: index, k, prompt, file, and the prompt's metadata if any) and
`grid.png` (the first images, captioned; `grid.gif` for videos).

Multi-process (the same command on every host, `jax.distributed` initialised from the
environment as for training): every process builds the run and restores the
checkpoint, then encodes, samples and decodes its block of each batch
(`ffjax.parallel.rows`); process 0 gathers the images and alone writes `--out`, so
only its host needs the folder. The batches and the noise do not depend on the process
count: on the same mesh (devices over (data, fsdp)) the files are those of one process,
byte for byte. Arguments are checked on every process before the first collective, and
a process that refuses them makes every process exit with its message.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from absl import app, flags, logging

from ffjax import configs
from ffjax import train as train_cli

WEIGHTS = ("ema", "current", "base")
GRID_MAX_IMAGES = 64  # grid.png shows at most this many images (the first ones)
# Config keys that shape the restored weights; named when a checkpoint does not fit.
_MODEL_KEYS = ("model.", "train.lora_", "ema.decay")

_FLAGS: dict[str, flags.FlagHolder] = {}


class SampleError(RuntimeError):
    """A bad argument or an unusable checkpoint; the message is the whole story."""


def _define_flags() -> None:
    """Defines the sampling flags once (--config comes from ffjax.train)."""
    if _FLAGS:
        return
    _FLAGS["checkpoint"] = flags.DEFINE_string(
        "checkpoint",
        None,
        "Run workdir (latest checkpoint), WORKDIR/checkpoints, or WORKDIR/checkpoints/<epoch>.",
    )
    _FLAGS["prompts"] = flags.DEFINE_string(
        "prompts",
        None,
        "Prompt file (.txt/.jsonl), dataset folder (split 'test', else 'train') or tfds: spec.",
    )
    _FLAGS["out"] = flags.DEFINE_string("out", None, "Output folder for the images.")
    _FLAGS["weights"] = flags.DEFINE_enum(
        "weights",
        None,
        list(WEIGHTS),
        "Which weights: ema (default if the checkpoint has one), current, or base (pretrained).",
    )
    _FLAGS["num_per_prompt"] = flags.DEFINE_integer(
        "num_per_prompt", 1, "Images per prompt.", lower_bound=1
    )
    _FLAGS["seed"] = flags.DEFINE_integer(
        "seed", None, "Noise seed (default: config.seed).", lower_bound=0
    )
    flags.mark_flags_as_required(["prompts", "out"])


# --------------------------------------------------------------------------- inputs


def load_sample_prompts(spec: str):
    """`load_prompts(spec)` with split "test" for a folder, falling back to "train"."""
    from ffjax.data.prompts import load_prompts

    try:
        return load_prompts(spec, "test")
    except FileNotFoundError:
        if not os.path.isdir(os.path.expanduser(spec)):
            raise
        return load_prompts(spec, "train")


def locate_checkpoint(path: str | os.PathLike) -> tuple[Path, int | None]:
    """(run workdir, epoch or None for the latest) of a `--checkpoint` argument."""
    p = Path(path).expanduser().resolve()
    if not p.is_dir():
        raise SampleError(f"checkpoint folder {p} does not exist")
    if p.name.isdigit() and p.parent.name == "checkpoints":
        return p.parent.parent, int(p.name)
    if p.name == "checkpoints":
        return p.parent, None
    if not (p / "checkpoints").is_dir():
        raise SampleError(
            f"no checkpoint in {p}: expected a run's workdir (holding checkpoints/),"
            " WORKDIR/checkpoints or WORKDIR/checkpoints/<epoch>"
        )
    return p, None


def _read_config_text(path: str) -> dict[str, str]:
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return dict(line.split(" = ", 1) for line in f.read().splitlines() if " = " in line)


def _model_differences(config: configs.ConfigDict, config_file: str) -> list[str]:
    """'key: checkpoint value -> this config's value' for the keys that shape the weights."""
    old = _read_config_text(config_file)
    if not old:
        return []
    new = dict(line.split(" = ", 1) for line in configs.to_text(config).splitlines())
    keys = sorted(k for k in set(old) | set(new) if k.startswith(_MODEL_KEYS))
    return [f"{k}: {old.get(k)} -> {new.get(k)}" for k in keys if old.get(k) != new.get(k)]


def _leaf_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    """'trainable.fc1.a' -> shape for every leaf (the names Orbax gives saved leaves)."""
    import jax

    def name(path) -> str:
        keys = (getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))) for k in path)
        return ".".join(map(str, keys))

    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {name(path): tuple(leaf.shape) for path, leaf in flat}


def _saved_shapes(directory: str, epoch: int) -> dict[str, tuple[int, ...]]:
    """Leaf shapes of checkpoint `epoch` from its metadata, reading no array."""
    import orbax.checkpoint as ocp

    manager = ocp.CheckpointManager(
        directory,
        item_handlers=ocp.StandardCheckpointHandler(),
        options=ocp.CheckpointManagerOptions(create=False),
    )
    try:
        return _leaf_shapes(manager.item_metadata(epoch))
    finally:
        manager.close()


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


def restore(run, path: str | os.PathLike) -> tuple[Any, str]:
    """(TrainState, checkpoint folder) of `--checkpoint` for the model of `run`.

    The state is restored like `run.initial`; a checkpoint written with the EMA on
    while this config has it off (or the reverse) is restored with its own layout.
    Leaf names and shapes are compared from the metadata first, so a checkpoint of
    another model is refused before any array is read.
    """
    import jax
    import jax.numpy as jnp

    from ffjax.checkpoint import Checkpointer

    workdir, epoch = locate_checkpoint(path)
    ckpt = Checkpointer(workdir, every=0, keep=1)  # never saves, so never deletes
    try:
        epoch = ckpt.latest() if epoch is None else epoch
        if epoch is None:
            raise SampleError(f"no checkpoint in {ckpt.directory} (no finished epoch saved)")
        folder = os.path.join(ckpt.directory, str(epoch))
        try:
            saved = _saved_shapes(ckpt.directory, epoch)
        except Exception as e:  # Orbax raises many kinds; the reason is in the message
            raise SampleError(f"cannot read checkpoint {folder}: {_first_line(e)}") from None
        diffs = _model_differences(run.config, os.path.join(ckpt.directory, "config.txt"))
        detail = f"; differences (checkpoint -> config): {', '.join(diffs[:6])}" if diffs else ""
        like = run.initial
        other = like.replace(
            ema=None if like.ema is not None else jax.tree.map(jnp.copy, like.trainable)
        )
        for target in (like, other):
            if _leaf_shapes(target) == saved:
                if diffs:  # it fits, but e.g. another lora_alpha changes what it means
                    logging.warning("--config differs from the checkpoint's run%s", detail)
                return ckpt.restore(epoch, target), folder
        c = run.config
        raise SampleError(
            f"checkpoint {folder} does not fit model {c.model.name!r} (model.path="
            f"{c.model.path!r}, train.lora_rank={c.train.lora_rank}) of --config: "
            f"{_shape_mismatch(saved, _leaf_shapes(like))}{detail}"
        )
    finally:
        ckpt.close()


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else repr(e)


def pick_weights(run, state, which: str | None) -> tuple[Any, str]:
    """(trainable weights to sample with, their name) for `--weights`."""
    import jax
    import jax.numpy as jnp

    from ffjax import trainer

    if which == "base" or state is None:
        # LoRA: zero adapters give exactly the frozen model (x W + 0); full: pretrained.
        if run.lora:
            return jax.tree.map(jnp.zeros_like, run.initial.trainable), "base"
        return run.initial.trainable, "base"
    if which == "ema" and state.ema is None:
        raise SampleError(
            "the checkpoint has no EMA weights (trained with ema.decay=0); use --weights current"
        )
    if which == "current" or state.ema is None:
        return state.trainable, "current"
    return trainer.device_copy(state.ema), "ema"  # an offloaded EMA comes to the devices


def image_noise(adapter, seed: int, index, k, height: int, width: int):
    """Initial noise of images (index[j], k[j]): one key per image (module docstring)."""
    import jax
    import jax.numpy as jnp

    root = jax.random.key(seed)

    def one(i, j):
        key = jax.random.fold_in(jax.random.fold_in(root, i), j)
        return adapter.init_noise(key, 1, height, width)[0]

    return jax.vmap(one)(jnp.asarray(index, jnp.uint32), jnp.asarray(k, jnp.uint32))


# --------------------------------------------------------------------------- sampling


def _inputs(checkpoint: str | None, prompts: str, out: Path, weights: str | None):
    """The prompts, after the checks that need no model: every argument is refused here,
    before any collective, so that each process of a multi-process job can tell the
    others (`_agreed`)."""
    import jax

    if checkpoint is None and weights != "base":
        raise SampleError("--checkpoint is required (except with --weights base)")
    if checkpoint is not None and weights != "base":
        workdir, epoch = locate_checkpoint(checkpoint)  # fail before loading the model
        folder = workdir / "checkpoints"  # Orbax names a finished epoch's folder its number
        if epoch is None and not any(p.name.isdigit() for p in folder.iterdir()):
            raise SampleError(f"no checkpoint in {folder} (no finished epoch saved)")
    try:
        prompt_set = load_sample_prompts(prompts)
    except (FileNotFoundError, ValueError) as e:
        raise SampleError(str(e)) from None
    if jax.process_index() == 0:  # the only writer
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise SampleError(f"cannot create --out {out}: {e}") from None
    return prompt_set


def _agreed(fn, *args):
    """`fn(*args)` on every process, which then all raise if it raised on any: its own
    error where it did, SampleError naming the first failed process and its message
    elsewhere, so that none goes on into a collective that a process which quit will
    never join. A collective (one all-gather); `fn` must contain none."""
    from ffjax.parallel import rows as rows_lib

    result, error, mine = None, None, ""
    try:
        result = fn(*args)
    except Exception as e:  # any kind: the others must hear of it, then it is re-raised
        error, mine = e, _first_line(e) if isinstance(e, SampleError) else repr(e)
    messages = rows_lib.process_messages(mine)
    if error is not None:
        raise error
    failed = [(p, m) for p, m in enumerate(messages) if m]
    if failed:
        p, message = failed[0]
        raise SampleError(f"process {p}: {message}")
    return result


def _call_rows(n: int, batch_size: int, mesh) -> int:
    """Images per sampling call: `batch_size` (0: all n) rounded up to a multiple of the
    mesh's devices over (data, fsdp), so that every device holds its rows, and every
    process its block (`ffjax.parallel.rows`). The same for any process count."""
    import math

    from ffjax.parallel.sharding import BATCH_AXES

    devices = math.prod(mesh.shape[a] for a in BATCH_AXES)
    return -(-(batch_size or n) // devices) * devices


def sample(
    config: configs.ConfigDict,
    *,
    checkpoint: str | None,
    prompts: str,
    out: str | os.PathLike,
    weights: str | None = None,
    num_per_prompt: int = 1,
    seed: int | None = None,
    progress: bool = True,
) -> str:
    """Writes the images of `prompts` x `num_per_prompt` to `out`; returns a summary line.

    One process of a multi-process job (`jax.distributed`, initialised from the
    environment as for training) builds the same run, restores the checkpoint with the
    others, and encodes, samples and decodes its rows of each call (`ffjax.parallel.rows`);
    process 0 gathers the images and alone writes the files, the same files as one
    process on the same mesh.

    Raises SampleError for unusable arguments, prompts or checkpoints (ConfigError /
    FileNotFoundError from `trainer.setup` for an unusable config).
    """
    import jax
    import numpy as np
    from tqdm.auto import tqdm

    from ffjax import trainer
    from ffjax.logging import image_grid, save_grid
    from ffjax.parallel import rows as rows_lib
    from ffjax.parallel.mesh import maybe_initialize_distributed

    t0 = time.perf_counter()
    maybe_initialize_distributed()  # a no-op unless this is one process of a multi-host job
    out = Path(out)
    prompt_set = _agreed(_inputs, checkpoint, prompts, out, weights)
    writer = jax.process_index() == 0
    # The run samples each call whole (`_call_rows` makes the calls); sampling.batch_size
    # of a training epoch, checked by `setup`, has no meaning here.
    run_config = config.copy_and_resolve_references()
    run_config.sampling.batch_size = 0
    run = trainer.setup(run_config, training=False)
    state, source = None, "the pretrained model"
    if weights != "base":
        state, source = restore(run, checkpoint)
    params, used = pick_weights(run, state, weights)

    c, m = run.config, run.config.model
    seed = c.seed if seed is None else seed
    items = [(i, k) for i in range(len(prompt_set)) for k in range(num_per_prompt)]
    batch = _call_rows(len(items), config.sampling.batch_size, run.mesh)
    try:
        blocks = rows_lib.row_blocks(run.mesh, batch)
    except ValueError as e:
        raise SampleError(f"config.mesh: {e}") from None
    sigmas = run.adapter.sigmas(c.sampling.eval_num_steps, m.height, m.width)
    levels = np.zeros(c.sampling.eval_num_steps, np.float32)  # ODE
    rows, grid_images, captions = [], [], []
    for start in tqdm(
        range(0, len(items), batch), desc="sampling", unit="batch",
        disable=not (progress and writer),
    ):  # fmt: skip
        chunk = items[start : start + batch]
        # Pad the last batch to the batch size: one compiled shape for every batch.
        padded = chunk + [chunk[-1]] * (batch - len(chunk))
        index, k = np.asarray(padded[blocks.local]).T  # this process's rows
        cond = trainer.encode_prompts(
            run.adapter, [prompt_set.prompts[i] for i in index], m.height, m.width,
            [prompt_set.metadata[i] for i in index],
        )  # fmt: skip
        noise = image_noise(run.adapter, seed, index, k, m.height, m.width)
        cond, noise = rows_lib.put_rows((cond, noise), run.mesh, blocks)
        final, _ = trainer._sample(
            run, params, cond, noise, sigmas, levels, jax.random.key(seed), None
        )
        images = rows_lib.gather_rows(trainer._decode(run, final), blocks, len(chunk))
        if not writer:
            continue
        for (i, j), image in zip(chunk, images, strict=True):
            # An image [H, W, 3] becomes a PNG, a video [T, H, W, 3] an animated GIF.
            name = os.path.basename(save_grid(out / f"{i:05d}_{j}.png", image))
            row = {"index": i, "k": j, "prompt": prompt_set.prompts[i], "file": name}
            if prompt_set.metadata[i]:
                row["metadata"] = prompt_set.metadata[i]
            rows.append(row)
            if len(grid_images) < GRID_MAX_IMAGES:
                grid_images.append(image)
                captions.append(f"{i} {prompt_set.prompts[i]}")
    processes = f" ({jax.process_count()} processes)" if jax.process_count() > 1 else ""
    if not writer:
        return (
            f"sampled this process's rows of {len(items)} images{processes}; process 0 wrote them"
        )
    with open(out / "prompts.jsonl", "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    columns = num_per_prompt if 1 < num_per_prompt <= 8 else 8
    grid = image_grid(
        np.stack(grid_images), captions, columns=columns, scale=max(1, 128 // m.width)
    )
    save_grid(out / "grid.png", grid)
    dt = time.perf_counter() - t0
    kind = "videos" if np.ndim(grid_images[0]) == 4 else "images"
    return (
        f"wrote {len(rows)} {kind} ({len(prompt_set)} prompts x {num_per_prompt}) with the"
        f" {used} weights of {source}, seed {seed}, to {out} in {dt:.1f}s{processes}"
    )


# --------------------------------------------------------------------------- CLI


def _fail(message: str, code: int = 2) -> None:
    sys.stderr.write(f"ffjax.sample: {message}\n")
    sys.exit(code)


def _parse_flags(argv: list[str]) -> list[str]:
    try:
        config, remaining = train_cli.load_config(argv, _parse_flags.overrides)
    except configs.ConfigError as e:
        _fail(str(e))
    except flags.Error as e:
        _fail(f"{e}\nPass --helpfull to see the flags.")
    _parse_flags.config = config
    return remaining


_parse_flags.overrides = []


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:  # Orbax logs every restore at INFO
        logging.set_verbosity(logging.WARNING)
    try:
        summary = sample(
            _parse_flags.config,
            checkpoint=_FLAGS["checkpoint"].value,
            prompts=_FLAGS["prompts"].value,
            out=_FLAGS["out"].value,
            weights=_FLAGS["weights"].value,
            num_per_prompt=_FLAGS["num_per_prompt"].value,
            seed=_FLAGS["seed"].value,
        )
    except (SampleError, configs.ConfigError, FileNotFoundError) as e:
        _fail(str(e))
    print(summary)


def run() -> None:
    """Console-script entry point."""
    # config_flags reads `--config.*` from sys.argv itself; ffjax applies them instead.
    try:
        sys.argv, _parse_flags.overrides = train_cli.split_overrides(list(sys.argv))
    except configs.ConfigError as e:
        _fail(str(e))
    _define_flags()
    train_cli._define_flags()
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    run()
