"""The epoch loop (DESIGN.md section 1): the only place that sequences the stages.

    run builder (`ffjax.run.build`) -> per epoch: generate (`stages.generate`: encode ->
    noise -> chunked rollout -> decode) -> score (`stages.score`: rewards, gathered ->
    advantages, host float64) -> optimize (`stages.optimize`: training rows -> shuffled
    micro-batches x inner epochs -> train_step, donated state) -> EMA -> eval (ODE,
    EMA weights) -> checkpoint (`ffjax.run_folder`) -> metrics.jsonl

With `train.async_rewards` (and `sampling.batch_size` splitting the epoch) the rewards
of rollout chunk i are scored in a thread pool while chunk i+1 is sampled
(`stages.score.generate_and_score`): same scores, in order; `time/reward_s` is then
the wait after the last chunk, `time/reward_busy_s` the time spent scoring.

Multi-process (`ffjax.parallel.rows`): each process holds the rows on its devices,
whole prompt groups, and encodes, draws noise for, rolls out, decodes and scores only
those; the scores are gathered here, at the edge of the score stage, so every process
computes the same (group-normalised) advantages and the run is the 1-process run's.
`sampling.batch_size` is per process (a chunk takes that many rows of every process).
Reward models with `place` run on the process's devices. Process 0 writes metrics and
grids (of gathered images); every process writes its shards of each checkpoint.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

import jax
import numpy as np
from absl import logging
from tqdm.auto import tqdm

from ffjax import configs, run_folder
from ffjax import ema as ema_lib
from ffjax.algorithms.spec import REQUIRED_METRICS, Frozen
from ffjax.checkpoint import Checkpointer
from ffjax.errors import FfjaxError
from ffjax.flow import rollout as rollout_lib
from ffjax.logging import MetricsWriter, changed_most, eval_captions, image_grid, save_grid
from ffjax.parallel import rows as rows_lib
from ffjax.parallel.mesh import maybe_initialize_distributed
from ffjax.plots import write_reward_curve
from ffjax.rewards.base import Samples
from ffjax.run import Run, build, device_copy, sde_window
from ffjax.run_folder import params_digest
from ffjax.stages import TrainingError, generate, on_every_process, optimize, score
from ffjax.state import TrainState

__all__ = ["Interrupted", "Run", "TrainingError", "evaluate", "params_digest", "run_epoch",
           "setup", "summary_table", "train"]  # fmt: skip

EVAL_SEED_OFFSET = 1_000_003  # eval noise is fixed for the whole run: compare epochs
EVAL_GRID_IMAGES = 64  # images of an eval grid (the first repeat of each prompt first)
EVAL_MARKED = 8  # tiles framed on eval grids: the largest reward changes since epoch 0

setup = build  # the training run (`ffjax.run.build`), under its historical name


class Interrupted(FfjaxError, RuntimeError):
    """SIGTERM / SIGINT arrived; the epoch in flight was finished and checkpointed.
    Exit 143, as a process killed by SIGTERM."""

    exit_code = 143


class _StopSignals:
    """Turns SIGTERM / SIGINT into a flag checked between epochs (preemption-safe stop).

    A second signal of the same kind restores the default handler's behaviour.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.received: int | None = None
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.received is not None:  # asked twice: stop now
            signal.signal(signum, self._old.get(signum, signal.SIG_DFL))
            signal.raise_signal(signum)
        self.received = signum
        logging.warning("signal %d: finishing this epoch, checkpointing, then stopping", signum)

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False


# --------------------------------------------------------------------------- one epoch


def run_epoch(run: Run, state: TrainState) -> tuple[TrainState, dict[str, Any], np.ndarray]:
    """One rollout + optimisation epoch; returns (state, metrics, this process's epoch
    images)."""
    c = run.config
    m, t, k = c.model, c.train, c.data.group_size
    epoch = int(state.epoch)
    key = jax.random.fold_in(jax.random.key(c.seed), epoch)
    t0 = time.perf_counter()

    # Generate. This process's rows of the epoch, whole groups (`build` checks): it
    # encodes, rolls out, decodes and scores only those; the scores are then gathered.
    prompt_idx, group_ids = run.sampler.samples(epoch)
    n = len(prompt_idx)
    blocks = rows_lib.row_blocks(run.mesh, n)
    mine = blocks.local
    prompts = [run.prompts.prompts[i] for i in prompt_idx[mine]]
    metadata = [run.prompts.metadata[i] for i in prompt_idx[mine]]
    sigmas = run.adapter.sigmas(c.sampling.num_steps, m.height, m.width)
    window = sde_window(c, epoch)  # random, contiguous or MixGRPO's progressive window
    noise_levels = rollout_lib.noise_levels_for(
        c.sampling.num_steps, window, c.sampling.noise_level
    )
    record = window if run.spec.record == "sde_steps" else None
    noise = generate.init_noise(run.adapter, jax.random.fold_in(key, 0), n, m.height, m.width,
                                run.mesh)  # fmt: skip
    snapshot = None
    if run.spec.wants("needs_snapshot", c.algorithm):
        snapshot = jax.tree.map(jax.numpy.copy, state.trainable)  # the state is donated below
    sample_weights = state.trainable
    if run.spec.wants("sample_with_ema", c.algorithm):
        sample_weights = device_copy(state.ema)

    def gen(on_images=None) -> generate.Generated:
        return generate.generate(
            run.gen, sample_weights, prompts, metadata, noise, sigmas, noise_levels,
            jax.random.fold_in(key, 1), record, group_size=k, on_images=on_images,
        )  # fmt: skip

    # Score. group_ids: a groupwise reward scores within the sampler's groups.
    def samples_of(images: np.ndarray, start: int | None) -> Samples:
        sl = slice(None) if start is None else slice(start, start + len(images))
        return Samples.of(prompts[sl], images, metadata=metadata[sl],
                          group_ids=np.asarray(group_ids)[mine][sl])  # fmt: skip

    if t.async_rewards and 0 < c.sampling.batch_size < blocks.size:
        out, raw, times = on_every_process(
            "rewards",
            lambda: score.generate_and_score(gen, run.rewards, t.reward_workers, samples_of),
        )
        t_rollout, t_reward, t_reward_busy = (
            times["rollout_s"], times["reward_s"], times["reward_busy_s"]
        )  # fmt: skip
    else:
        out = gen()
        t_rollout = time.perf_counter() - t0
        t1 = time.perf_counter()
        raw = on_every_process(
            "rewards",
            lambda: score.score(run.rewards, samples_of(out.images, None), c.logging.step_progress),
        )
        t_reward = t_reward_busy = time.perf_counter() - t1
    # Every process gets every row's scores, so all compute the same advantages.
    raw = {a: rows_lib.gather_rows(v, blocks) for a, v in raw.items()}
    weights = score.weights_of(run.rewards)
    combined = score.combine(raw, weights)
    adv = score.advantages(raw, weights, group_ids, k, t.advantage_method, t.advantage_std, epoch,
                           eps=t.advantage_eps, gdpo_std=t.gdpo_std)  # fmt: skip

    # Optimize.
    t2 = time.perf_counter()
    rng = np.random.default_rng([c.seed, epoch, 7])
    rows = optimize.make_rows(run.spec.record, out.traj, np.nan_to_num(adv.values), noise_levels,
                              rng, sigmas, c.algorithm, run.train_timesteps)  # fmt: skip
    rows = optimize.commit_rows(rows, run.mesh)
    valid_rows = np.nonzero(np.asarray(adv.valid)[np.asarray(rows["sample"])])[0]
    state, step_metrics = optimize.optimize(
        run.train_step, state, Frozen(base=run.base, ref=run.ref, ema=None, snapshot=snapshot),
        {"cond": out.cond, "x0": out.final}, rows, valid_rows,
        micro_batch_size=t.micro_batch_size, grad_accum_steps=t.grad_accum_steps,
        inner_epochs=t.inner_epochs,
        row_expert=run.adapter.experts_of(np.asarray(rows["sigma"])),  # None: one expert
        key=key, rng=rng, epoch=epoch, progress=c.logging.step_progress,
    )  # fmt: skip
    if state.ema is not None and ema_lib.due(c.ema, epoch):  # every ema.update_interval
        decay = ema_lib.ema_decay(c.ema, epoch)
        state = state.replace(ema=run.ema_step(state.ema, state.trainable, float(decay)))
    state = state.replace(epoch=state.epoch + 1)
    jax.block_until_ready(state.trainable)
    t_train = time.perf_counter() - t2

    valid = adv.valid
    summary = optimize.summarise(step_metrics)
    metrics: dict[str, Any] = {
        "epoch": epoch,
        "reward_mean": float(np.mean(combined[valid])),
        "reward_std": float(np.std(combined[valid])),
    }
    for a in raw:
        metrics[f"reward/{a}"] = float(np.nanmean(raw[a])) if np.isfinite(raw[a]).any() else None
    metrics["num_dropped"] = int(adv.num_dropped)
    for key_name in REQUIRED_METRICS:
        metrics[key_name] = summary.pop(key_name, None)
    metrics["grad_norm"] = summary.pop("grad_norm")
    metrics["lr"] = float(run.lr_fn(int(state.step) // t.grad_accum_steps))
    metrics.update(summary)
    metrics["time/rollout_s"] = t_rollout
    metrics["time/reward_s"] = t_reward  # async_rewards: the wait after the last chunk
    metrics["time/reward_busy_s"] = t_reward_busy  # time spent scoring (summed over workers)
    metrics["time/train_s"] = t_train
    metrics["time/epoch_s"] = time.perf_counter() - t0
    metrics["samples_per_s"] = n / metrics["time/epoch_s"]
    return state, metrics, out.images


def evaluate(
    run: Run, state: TrainState
) -> tuple[dict[str, float], np.ndarray, list[str], np.ndarray]:
    """ODE samples of the eval prompts with the EMA (or current) weights.

    Returns ({"eval/reward_mean": ..., "eval/reward/<alias>": ...}, uint8 images of the
    first EVAL_GRID_IMAGES samples, captions, the combined rewards of those images
    (float, one per image)). Each process samples and scores its rows
    (`ffjax.parallel.rows`); scores and grid images are gathered.
    """
    c = run.config
    g = run.eval_gen  # the evaluation guidance / size / frames (run.gen when not set)
    prompts = run.eval_prompts.prompts
    blocks = rows_lib.row_blocks(run.mesh, len(prompts))
    mine = blocks.local
    metadata = run.eval_prompts.metadata[mine]
    key = jax.random.key(c.seed + EVAL_SEED_OFFSET)
    noise = generate.init_noise(g.adapter, key, len(prompts), g.height, g.width, run.mesh)
    solver = c.sampling.eval_solver
    sigmas, levels = generate.ode_grid(g.adapter, solver, c.sampling.eval_num_steps,
                                       g.height, g.width)  # fmt: skip
    weights = device_copy(state.ema) if state.ema is not None else state.trainable
    out = generate.generate(g, weights, prompts[mine], metadata, noise, sigmas, levels, key,
                            solver=solver)  # fmt: skip
    raw = on_every_process(
        "eval rewards",
        lambda: score.score(run.eval_rewards, Samples.of(prompts[mine], out.images,
                                                         metadata=metadata)),
    )  # fmt: skip
    raw = {a: rows_lib.gather_rows(v, blocks) for a, v in raw.items()}
    images = rows_lib.gather_rows(out.images, blocks, EVAL_GRID_IMAGES)
    combined = score.combine(raw, score.weights_of(run.eval_rewards))
    metrics = {"eval/reward_mean": float(np.nanmean(combined))}
    metrics.update({f"eval/reward/{a}": float(np.nanmean(v)) for a, v in raw.items()})
    captions = [f"{combined[i]:.2f} {p}" for i, p in enumerate(prompts)]
    return metrics, images, captions, np.asarray(combined)[: len(images)]


# --------------------------------------------------------------------------- the loop


def train(
    config: configs.ConfigDict,
    workdir: str | os.PathLike,
    *,
    progress: bool = True,
    resume: bool = True,
):
    """Runs epochs until `config.train.num_epochs`; writes everything under `workdir`.

    Outputs: metrics.jsonl (one row per epoch; `params_digest` on checkpoint epochs),
    tb/ (TensorBoard), samples/ (eval grids, epoch 0 = before training), checkpoints/
    (Orbax, every `checkpoint.every_epochs` and at the end). With `resume` and a
    checkpoint in `workdir`, the run continues from the latest one (same config
    required, except the keys in RESUMABLE_CHANGES) and ends with the parameters of an
    uninterrupted run. Returns the metric rows of the epochs run by this call.
    """
    maybe_initialize_distributed()  # a no-op unless this is one process of a multi-host job
    workdir = os.fspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    ckpt = Checkpointer(workdir, config.checkpoint.every_epochs, config.checkpoint.keep)
    config_file = run_folder.config_file(ckpt.directory)
    latest = ckpt.latest() if resume else None
    if latest is not None and os.path.exists(config_file):
        # A run made before some keys existed resumes with what ffjax did then; any other
        # difference stops here, before anything is loaded.
        config = config.copy_and_resolve_references()
        for line in run_folder.with_legacy_values(config, config_file):
            logging.info("resuming a run made before %s existed", line)
        run_folder.check_resumable(config_file, config)
    run = build(config)
    c = run.config
    state = run.initial
    if latest is not None:
        state = ckpt.restore(latest, run.initial)
        if jax.process_index() == 0:  # the only writer of metrics.jsonl
            run_folder.drop_rows_after(os.path.join(workdir, "metrics.jsonl"), latest)
        logging.info("resumed from %s/%d", ckpt.directory, latest)
    elif jax.process_index() == 0:
        run_folder.write_config(ckpt.directory, c)
    wandb = None
    if c.logging.wandb_project:
        wandb = dict(project=c.logging.wandb_project, mode=c.logging.wandb_mode,
                     name=c.logging.wandb_name or None, config=c.to_dict())  # fmt: skip
    writer = MetricsWriter(workdir, tensorboard=c.logging.tensorboard, wandb=wandb)
    history: list[dict[str, Any]] = []

    grids: dict[str, Any] = {}  # the evaluation before training, to mark what changed

    def do_eval(epoch: int) -> dict[str, float]:
        metrics, images, _, rewards = evaluate(run, state)
        n = min(len(images), EVAL_GRID_IMAGES)
        prompts, scale = list(run.eval_prompts.prompts[:n]), max(1, 128 // c.model.width)
        before = grids.get("before")  # None after a resume: no marks then
        if epoch == 0:
            grids["before"] = (images[:n], rewards[:n])
        if before is None:
            grid = image_grid(images[:n], eval_captions(prompts, rewards[:n]), scale=scale)
        else:  # frame the EVAL_MARKED tiles that changed most, on this and the before grid
            marks = changed_most(before[1], rewards[:n], EVAL_MARKED)
            grid = image_grid(images[:n], eval_captions(prompts, rewards[:n], before[1]),
                              scale=scale, marks=marks)  # fmt: skip
            first = image_grid(before[0], eval_captions(prompts, before[1]), scale=scale,
                               marks=marks)  # fmt: skip
            save_grid(os.path.join(workdir, "samples", "eval_epoch_0000.png"), first)
        save_grid(os.path.join(workdir, "samples", f"eval_epoch_{epoch:04d}.png"), grid)
        writer.image("eval/samples", epoch, grid)
        return metrics

    def draw_curve() -> None:
        if jax.process_index() == 0:
            write_reward_curve(workdir, title=f"{c.algorithm.name}, seed {c.seed}")

    stop = _StopSignals()
    try:
        stop.__enter__()
        start = int(state.epoch)
        if c.train.eval_every and start == 0:
            before = do_eval(0)
            logging.info("before training: %s", before)
            writer.write(0, {"epoch": -1, **before})
            draw_curve()
        bar = tqdm(
            range(start, c.train.num_epochs),
            desc="epochs",
            disable=not progress,
            unit="epoch",
            initial=start,
            total=c.train.num_epochs,
        )
        for epoch in bar:
            state, metrics, images = run_epoch(run, state)
            done = epoch + 1
            if c.train.eval_every and (
                done % c.train.eval_every == 0 or done == c.train.num_epochs
            ):
                metrics.update(do_eval(done))
            if c.logging.image_grid_every and done % c.logging.image_grid_every == 0:
                k = c.data.group_size
                blocks = rows_lib.row_blocks(run.mesh, run.sampler.prompts_per_epoch * k)
                shown = rows_lib.gather_rows(images, blocks, 4 * k)  # the first 4 groups
                grid = image_grid(shown, columns=k)
                save_grid(os.path.join(workdir, "samples", f"train_epoch_{done:04d}.png"), grid)
            # Every process stops after the same epoch, whichever got the signal.
            stopping = rows_lib.any_process(stop.received is not None)
            last = done == c.train.num_epochs or stopping
            if ckpt.maybe_save(done, state, force=last):
                metrics["params_digest"] = params_digest(state.trainable)
            writer.write(done, metrics)
            history.append(metrics)
            if "eval/reward_mean" in metrics:
                draw_curve()
            bar.set_postfix(reward=f"{metrics['reward_mean']:.4f}", loss=f"{metrics['loss']:.4g}")
            if stopping and done < c.train.num_epochs:
                raise Interrupted(
                    f"stopped by signal {stop.received or 'on another process'} after epoch"
                    f" {done}; checkpoint"
                    f" {ckpt.directory}/{done} written; run the same command to resume"
                )
    finally:
        stop.__exit__()
        writer.close()
        ckpt.close()
    draw_curve()  # with the last epoch's training reward
    return history


def summary_table(history: list[dict[str, Any]], eval_before: float | None = None) -> str:
    """A fixed-width table of reward (and eval reward) per epoch; with `eval_before`
    (the evaluation before training) a first row "before" and a closing line with the
    change of the evaluation reward."""
    lines = [f"{'epoch':>6}  {'reward_mean':>11}  {'reward_std':>10}  {'eval_reward':>11}"]
    if eval_before is not None:
        lines.append(f"{'before':>6}  {'':>11}  {'':>10}  {eval_before:>11.4f}")
    for row in history:
        ev = row.get("eval/reward_mean")
        lines.append(
            f"{row['epoch']:>6}  {row['reward_mean']:>11.4f}  {row['reward_std']:>10.4f}  "
            + (f"{ev:>11.4f}" if ev is not None else f"{'':>11}")
        )
    last = next((r["eval/reward_mean"] for r in reversed(history) if "eval/reward_mean" in r), None)
    if eval_before is not None and last is not None:
        lines.append(
            f"eval reward: {eval_before:.4f} before training -> {last:.4f} after"
            f" ({last - eval_before:+.4f})"
        )
    return "\n".join(lines)
