"""Run outputs: metrics.jsonl (one object per epoch), TensorBoard events, Weights &
Biases (when `logging.wandb_project` is set), image grids.

Only process 0 writes (multi-host runs call these on every process; the others are
no-ops). Every write is flushed at once, so an interrupted run keeps all finished
epochs.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from PIL import Image, ImageDraw


def _jsonable(value: Any) -> Any:
    """Python scalars for JSON; NaN / inf become null (JSON has no NaN)."""
    if value is None:
        return None
    if isinstance(value, (str, bool)):
        return value
    value = np.asarray(value)
    if value.ndim:
        return [_jsonable(v) for v in value.tolist()]
    value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsWriter:
    """Appends one JSON object per call to WORKDIR/metrics.jsonl and mirrors it to TensorBoard.

    Args:
      workdir: run folder (created).
      tensorboard: also write event files under WORKDIR/tb.
      wandb: None, or the keyword arguments of `wandb.init` beyond `dir` and `id`
        (project, name, mode, config): also log every metric and image to Weights &
        Biases. The run id is derived from the workdir, so a resumed run continues the
        same W&B run.
    """

    def __init__(
        self,
        workdir: str | os.PathLike,
        tensorboard: bool = True,
        wandb: Mapping[str, Any] | None = None,
    ):
        self.active = jax.process_index() == 0
        self.path = os.path.join(os.fspath(workdir), "metrics.jsonl")
        self._tb = None
        self._wandb = None
        if not self.active:
            return
        os.makedirs(workdir, exist_ok=True)
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(os.fspath(workdir), "tb"))
        if wandb:
            self._wandb = _wandb_run(os.fspath(workdir), wandb)

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Writes `metrics` (scalars, None for not-applicable) for `step` (the epoch)."""
        if not self.active:
            return
        row = {k: _jsonable(v) for k, v in metrics.items()}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
        scalars = {
            k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(k, v, step)
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)

    def image(self, tag: str, step: int, image: np.ndarray) -> None:
        """Logs a uint8[H, W, 3] image to TensorBoard (of a video grid [T, H, W, 3], its
        first frame; the whole clip is the GIF under samples/)."""
        if image.ndim == 4:
            image = image[0]
        if self.active and self._tb is not None:
            self._tb.add_image(tag, image, step, dataformats="HWC")
            self._tb.flush()
        if self.active and self._wandb is not None:
            import wandb

            self._wandb.log({tag: wandb.Image(image)}, step=step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def _wandb_run(workdir: str, settings: Mapping[str, Any]):
    """A wandb run logging to `workdir`, resumable: its id is a digest of the workdir."""
    from ffjax.configs import ConfigError

    try:
        import wandb
    except ImportError:
        raise ConfigError(
            "config.logging.wandb_project is set but wandb is not installed;"
            " `pip install wandb`, or set config.logging.wandb_project=''"
        ) from None
    run_id = hashlib.sha256(os.path.abspath(workdir).encode()).hexdigest()[:16]
    return wandb.init(dir=workdir, id=run_id, resume="allow", **settings)


def read_metrics(workdir: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of WORKDIR/metrics.jsonl, in order."""
    with open(os.path.join(os.fspath(workdir), "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


GIF_FRAME_MS = 125  # video grids play at 8 frames per second


CHAR_WIDTH = 6  # pixels per character of PIL's default bitmap font
MARK_UP, MARK_DOWN = (0, 170, 0), (220, 0, 0)  # frames of tiles whose reward rose / fell


def wrap_caption(caption: str, width_px: int) -> list[str]:
    """The lines of `caption` wrapped to `width_px` pixels of PIL's default font; an
    explicit newline starts a new line, a word longer than a line is cut."""
    per_line = max(1, width_px // CHAR_WIDTH)
    lines: list[str] = []
    for paragraph in caption.split("\n"):
        line = ""
        for word in paragraph.split():
            while len(word) > per_line:  # a word wider than the tile: hard cut
                if line:
                    lines.append(line)
                    line = ""
                lines.append(word[:per_line])
                word = word[per_line:]
            if not line:
                line = word
            elif len(line) + 1 + len(word) <= per_line:
                line += " " + word
            else:
                lines.append(line)
                line = word
        lines.append(line)
    return lines


def image_grid(
    images: np.ndarray,
    captions: Sequence[str] | None = None,
    *,
    columns: int = 8,
    scale: int = 1,
    caption_height: int = 12,
    marks: Sequence[tuple[int, int, int] | None] | None = None,
) -> np.ndarray:
    """uint8[B, H, W, 3] -> one uint8 grid image, each tile optionally captioned below.

    Captions are wrapped to the tile's width (`wrap_caption`; newlines kept); every row
    of tiles gets room for the longest caption, `caption_height` pixels per line.
    `marks` (one RGB colour or None per image) frames the chosen tiles 2 pixels wide.
    Videos, uint8[B, T, H, W, 3], give one grid per frame: uint8[T, H', W', 3] (save it
    with `save_grid`, which writes it as an animated GIF). Tiny images are enlarged
    `scale` times (nearest neighbour) so they stay visible.
    """
    images = np.asarray(images)
    if images.ndim == 5 and images.shape[-1] == 3 and images.dtype == np.uint8:
        return np.stack([
            image_grid(images[:, f], captions, columns=columns, scale=scale,
                       caption_height=caption_height, marks=marks)
            for f in range(images.shape[1])
        ])  # fmt: skip
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(
            "image_grid needs uint8[B, H, W, 3] images or uint8[B, T, H, W, 3] videos,"
            f" got {images.dtype} {images.shape}"
        )
    b, h, w, _ = images.shape
    if scale > 1:
        images = images.repeat(scale, axis=1).repeat(scale, axis=2)
        h, w = h * scale, w * scale
    cols = max(1, min(columns, b))
    rows = -(-b // cols)
    lines = [wrap_caption(c, w - 2) for c in captions] if captions else []
    cap = caption_height * max(map(len, lines)) if lines else 0
    grid = Image.new("RGB", (cols * w, rows * (h + cap)), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for i in range(b):
        r, c = divmod(i, cols)
        x, y = c * w, r * (h + cap)
        grid.paste(Image.fromarray(images[i]), (x, y))
        if marks is not None and marks[i] is not None:
            draw.rectangle((x, y, x + w - 1, y + h - 1), outline=tuple(marks[i]), width=2)
        for j, line in enumerate(lines[i] if lines else []):
            draw.text((x + 1, y + h + j * caption_height), line, fill=(0, 0, 0))
    return np.asarray(grid)


def changed_most(
    before: np.ndarray, after: np.ndarray, count: int
) -> list[tuple[int, int, int] | None]:
    """`image_grid` marks for the `count` images whose reward changed most (by |after -
    before|, ties to the first): MARK_UP where it rose, MARK_DOWN where it fell; None
    for the rest and for unchanged rewards."""
    before, after = np.asarray(before, np.float64), np.asarray(after, np.float64)
    delta = after - before
    order = np.argsort(-np.abs(delta), kind="stable")[:count]
    marks: list[tuple[int, int, int] | None] = [None] * len(delta)
    for i in order:
        if delta[i] != 0:
            marks[i] = MARK_UP if delta[i] > 0 else MARK_DOWN
    return marks


def eval_captions(
    prompts: Sequence[str], rewards: np.ndarray, before: np.ndarray | None = None
) -> list[str]:
    """Captions of evaluation tiles: the reward (with `before`, "before -> now"), then the
    whole prompt on the next lines."""
    if before is None:
        return [f"reward {r:.2f}\n{p}" for p, r in zip(prompts, rewards, strict=True)]
    return [
        f"{b:.2f} -> {r:.2f} ({r - b:+.2f})\n{p}"
        for p, r, b in zip(prompts, rewards, before, strict=True)
    ]


def save_grid(path: str | os.PathLike, grid: np.ndarray) -> str:
    """Writes a uint8 grid (process 0 only), creating the folder; returns the path written.

    An image grid [H, W, 3] is written as PNG at `path`; a video grid [T, H, W, 3] as an
    animated GIF (looping, `GIF_FRAME_MS` per frame) at `path` with the suffix `.gif`.
    """
    path = os.fspath(path)
    if grid.ndim == 4:
        path = os.path.splitext(path)[0] + ".gif"
    if jax.process_index() != 0:
        return path
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    if grid.ndim == 4:
        frames = [Image.fromarray(f) for f in grid]
        frames[0].save(path, save_all=True, append_images=frames[1:], duration=GIF_FRAME_MS,
                       loop=0)  # fmt: skip
    else:
        Image.fromarray(grid).save(path)
    return path
