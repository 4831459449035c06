"""Command-line sampling: images (or videos) from a trained run's checkpoint.

    python -m ffjax.sample --config configs/demo.py:nft --checkpoint /tmp/run \
        --prompts assets/demo/prompts --out /tmp/run/sampled --num_per_prompt 4

`--checkpoint` is a run's workdir (its latest checkpoint), WORKDIR/checkpoints, or
one checkpoint WORKDIR/checkpoints/<epoch>. `--weights` picks the EMA (the default
when the checkpoint has one), the current weights, or `base`: the pretrained model
without the trained weights (no checkpoint needed). `--config` must be the recipe the
run was trained with (and its `--config.*` overrides), since it builds the model the
checkpoint is restored into.

Sampling is deterministic (`sampling.eval_solver`: Euler ODE steps, or UniPC for WAN)
with `sampling.eval_num_steps` steps, in batches of `sampling.batch_size` images (0: all
at once), rounded up to a multiple of the devices over the mesh axes (data, fsdp). Image k of prompt
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
import time
from pathlib import Path

from ffjax import configs, run_folder
from ffjax.run_folder import RunFolderError as SampleError  # a UsageError: exit 2

GRID_MAX_IMAGES = 64  # grid.png shows at most this many images (the first ones)

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


# --------------------------------------------------------------------------- sampling


def _inputs(checkpoint: str | None, prompts: str, out: Path, weights: str | None):
    """The prompts, after the checks that need no model: every argument is refused here,
    before any collective, so that each process of a multi-process job can tell the
    others (`_agreed`)."""
    import jax

    if checkpoint is None and weights != "base":
        raise SampleError("--checkpoint is required (except with --weights base)")
    if checkpoint is not None and weights != "base":
        run_folder.check_has_checkpoint(checkpoint)  # fail before loading the model
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
    never join (`rows.on_every_process`); `fn` must contain no collective."""
    from ffjax.parallel import rows as rows_lib

    return rows_lib.on_every_process(
        lambda: fn(*args),
        lambda p, message: SampleError(f"process {p}: {message}"),
        lambda e: run_folder.first_line(e) if isinstance(e, SampleError) else repr(e),
    )


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

    The run is inference-only (`ffjax.run.build(training=False)`): no optimizer, no
    training prompts, no reward (a remote reward's server need not be up), and only the
    checkpoint's weights (not its optimizer state) are read.

    Raises SampleError for unusable arguments, prompts or checkpoints (ConfigError /
    FileNotFoundError from `ffjax.run.build` for an unusable config), ModelFolderError
    for a hub ID as model.path (`ffjax.local_paths`).
    """
    import jax
    import numpy as np
    from tqdm.auto import tqdm

    from ffjax import local_paths
    from ffjax import run as run_lib
    from ffjax.logging import image_grid, save_grid
    from ffjax.parallel import rows as rows_lib
    from ffjax.parallel.mesh import maybe_initialize_distributed
    from ffjax.stages import generate

    local_paths.check(config, rewards=False)  # a hub ID: one line before anything loads
    t0 = time.perf_counter()
    maybe_initialize_distributed()  # a no-op unless this is one process of a multi-host job
    out = Path(out)
    prompt_set = _agreed(_inputs, checkpoint, prompts, out, weights)
    writer = jax.process_index() == 0
    # The run samples each call whole (`_call_rows` makes the calls); sampling.batch_size
    # of a training epoch has no meaning here.
    run_config = config.copy_and_resolve_references()
    if checkpoint is not None and weights != "base":  # a run made before some keys existed
        run_dir, _ = run_folder.locate_checkpoint(checkpoint)  # samples as it was trained
        run_folder.with_legacy_values(run_config, run_folder.config_file(run_dir / "checkpoints"))
    run_config.sampling.batch_size = 0
    run = run_lib.build(run_config, training=False)  # inference only: no optimizer, rewards
    state, source = None, "the pretrained model"
    if weights != "base":
        state, source = run_folder.restore_weights(run, checkpoint)
    params, used = run_folder.pick_weights(run, state, weights)

    c, m = run.config, run.config.model
    seed = c.seed if seed is None else seed
    items = [(i, k) for i in range(len(prompt_set)) for k in range(num_per_prompt)]
    batch = _call_rows(len(items), config.sampling.batch_size, run.mesh)
    try:
        blocks = rows_lib.row_blocks(run.mesh, batch)
    except ValueError as e:
        raise SampleError(f"config.mesh: {e}") from None
    solver = c.sampling.eval_solver  # deterministic: Euler ODE steps or UniPC (WAN)
    sigmas, levels = generate.ode_grid(run.adapter, solver, c.sampling.eval_num_steps,
                                       m.height, m.width)  # fmt: skip
    rows, grid_images, captions = [], [], []
    for start in tqdm(
        range(0, len(items), batch), desc="sampling", unit="batch",
        disable=not (progress and writer),
    ):  # fmt: skip
        chunk = items[start : start + batch]
        # Pad the last batch to the batch size: one compiled shape for every batch.
        padded = chunk + [chunk[-1]] * (batch - len(chunk))
        index, k = np.asarray(padded[blocks.local]).T  # this process's rows
        noise = generate.image_noise(run.adapter, seed, index, k, m.height, m.width)
        noise = rows_lib.put_rows(noise, run.mesh, blocks)
        made = generate.generate(
            run.gen, params, [prompt_set.prompts[i] for i in index],
            [prompt_set.metadata[i] for i in index], noise, sigmas, levels, jax.random.key(seed),
            solver=solver,
        )  # fmt: skip
        images = rows_lib.gather_rows(made.images, blocks, len(chunk))
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


if __name__ == "__main__":  # `python -m ffjax.sample`: the command line is ffjax.cli.sample
    from ffjax.cli.sample import run

    run()
