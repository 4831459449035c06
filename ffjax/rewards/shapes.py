"""`shapes`: a GenEval-like, download-free reward for the coloured-shapes demo.

For each image and its prompt (grammar in `ffjax/data/shapes.py`) the reward detects
the coloured shapes in the image (`detect`, NumPy + PIL only) and checks them against
the parsed prompt (`score`).

Detection:
  1. Pixel colours: a pixel p is read as a blend of the background b and a palette
     colour c: alpha_c = (p - b).(c - b) / |c - b|^2, residual rho_c = |p - b -
     alpha_c (c - b)| (RGB units). It takes the colour of least rho_c among those with
     alpha_c >= 0.5, if that rho_c <= `max_residual` = 60; else it belongs to none.
     alpha >= 0.5 cuts a blurred edge at its midpoint, so blur keeps a shape's size;
     no palette colour lies within 132 of another's blend line, so the rule is
     unambiguous on pure colours.
  2. Objects: 4-connected components of same-colour pixels with at least
     `min_area` = 1% of the image's pixels (smaller blobs are noise).
  3. Shape: the component's mask is compared (IoU) with a circle, square and upright
     triangle drawn by the renderer into the component's bounding box; the best wins
     if its IoU >= 0.6 and the box's aspect ratio is <= 1.5, else the shape is "other".

Scoring, for a prompt with groups g = (n_g objects of colour c_g and shape s_g):
  k_g = #detections of colour c_g, m_g = #detections of colour c_g and shape s_g,
  q_g = ( min(k_g, n_g) / n_g + min(m_g, n_g) / n_g + [m_g = n_g] ) / 3
        (colour present, shape right, count exact),
  R   = mean_g q_g,
  S   = R without a relation; (2 R + rel) / 3 with one, where rel = 1 if the relation
        holds (GenEval rule, `relation_words`) between the largest detection of each of
        the two groups (exact colour+shape matches, else same-colour ones), 0 otherwise
        or if either is missing,
  E   = #detections whose (colour, shape) no group asks for (other colours, unasked
        shapes, "other" blobs),
  reward = S / (1 + E / 2)  in [0, 1].
A faithful render scores 1 and a blank image 0; for "a red circle", a blue circle
scores 0 and a red square 2/9 (more cases in tests/rewards/test_shapes.py). About 2 ms
per 32-64 px image on one CPU core.

Prompts outside the grammar raise `PromptError` (a ValueError) naming the prompt: a
mis-configured prompt file should stop a run, not train on zeros. Videos raise
ValueError: this reward scores images.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
from PIL import Image, ImageDraw

from ffjax import registry
from ffjax.data.shapes import (
    BACKGROUND,
    PALETTE,
    SHAPES,
    PromptSpec,
    draw_shape,
    parse_prompt,
    relation_words,
)
from ffjax.rewards.base import Samples, call_reward

MAX_RESIDUAL = 60.0  # RGB distance from a background-colour blend line
MIN_AREA = 0.01  # smallest object, fraction of the image's pixels
MIN_IOU, MAX_ASPECT = 0.6, 1.5  # below / above these a component's shape is "other"

_COLOURS = tuple(PALETTE)
_BACKGROUND = np.array(BACKGROUND, np.float32)
_DIRECTIONS = np.array(list(PALETTE.values()), np.float32) - _BACKGROUND  # c - b


@dataclasses.dataclass(frozen=True)
class Detection:
    """One detected object. Pixel units; `box` is inclusive (x0, y0, x1, y1)."""

    colour: str
    shape: str  # one of SHAPES, or "other"
    box: tuple[int, int, int, int]
    area: int
    iou: float  # with the template of `shape` (the best template for "other")

    @property
    def centre(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.box
        return ((x0 + x1 + 1) / 2, (y0 + y1 + 1) / 2)

    def edges(self) -> tuple[int, int, int, int]:
        """The box as pixel edges (x0, y0, x1 + 1, y1 + 1), as `relation_words` takes it."""
        x0, y0, x1, y1 = self.box
        return (x0, y0, x1 + 1, y1 + 1)


def classify_pixels(image: np.ndarray, max_residual: float = MAX_RESIDUAL) -> np.ndarray:
    """int[H, W]: index into PALETTE's colours of each pixel, or -1 (background / none).

    The background-blend rule of the module docstring, step 1.
    """
    p = np.asarray(image, np.float32) - _BACKGROUND
    alpha = (p @ _DIRECTIONS.T) / (_DIRECTIONS**2).sum(-1)  # [H, W, colours]
    residual = np.linalg.norm(p[..., None, :] - alpha[..., None] * _DIRECTIONS, axis=-1)
    residual = np.where(alpha >= 0.5, residual, np.inf)
    best = residual.argmin(-1)
    keep = np.take_along_axis(residual, best[..., None], -1)[..., 0] <= max_residual
    return np.where(keep, best, -1)


def label_components(classes: np.ndarray) -> np.ndarray:
    """int[H, W]: 4-connected components of equal non-negative classes; -1 elsewhere.

    Each component is labelled by its smallest flat pixel index: min-label propagation
    between equal-class neighbours, with pointer jumping (a label is a pixel of the
    same component, so a pixel may take that pixel's label) to converge in few rounds.
    """
    h, w = classes.shape
    fg = classes >= 0
    big = h * w
    labels = np.where(fg, np.arange(big).reshape(h, w), big)
    join_x = fg[:, 1:] & (classes[:, 1:] == classes[:, :-1])
    join_y = fg[1:] & (classes[1:] == classes[:-1])
    while True:
        new = labels.copy()
        np.minimum(new[:, :-1], np.where(join_x, labels[:, 1:], big), out=new[:, :-1])
        np.minimum(new[:, 1:], np.where(join_x, labels[:, :-1], big), out=new[:, 1:])
        np.minimum(new[:-1], np.where(join_y, labels[1:], big), out=new[:-1])
        np.minimum(new[1:], np.where(join_y, labels[:-1], big), out=new[1:])
        flat = new.reshape(-1)
        on = flat < big
        flat[on] = flat[flat[on]]
        if np.array_equal(new, labels):
            return np.where(fg, labels, -1)
        labels = new


@functools.lru_cache(maxsize=1024)
def _templates(width: int, height: int) -> np.ndarray:
    """bool[len(SHAPES), height, width]: each shape drawn into a width x height box."""
    out = []
    for shape in SHAPES:
        image = Image.new("1", (width, height), 0)
        draw_shape(ImageDraw.Draw(image), shape, (0, 0, width - 1, height - 1), 1)
        out.append(np.asarray(image, bool))
    return np.stack(out)


def classify_shape(mask: np.ndarray) -> tuple[str, float]:
    """(shape, IoU) of a bool mask cropped to its bounding box; "other" if none fits."""
    h, w = mask.shape
    templates = _templates(w, h)
    inter = (templates & mask).sum((1, 2))
    union = (templates | mask).sum((1, 2))
    ious = inter / union
    best = int(ious.argmax())
    if ious[best] < MIN_IOU or max(h, w) > MAX_ASPECT * min(h, w):
        return "other", float(ious[best])
    return SHAPES[best], float(ious[best])


def detect(
    image: np.ndarray, *, max_residual: float = MAX_RESIDUAL, min_area: float = MIN_AREA
) -> list[Detection]:
    """The coloured objects of one uint8[H, W, 3] image, sorted by box (top, left).

    `min_area` is a fraction of H * W; see the module docstring for the rules.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"detect takes one RGB image (H, W, 3), got shape {image.shape}")
    classes = classify_pixels(image, max_residual)
    labels = label_components(classes)
    ids, counts = np.unique(labels[labels >= 0], return_counts=True)
    detections = []
    for label in ids[counts >= min_area * labels.size]:
        ys, xs = np.nonzero(labels == label)
        y0, y1, x0, x1 = ys.min(), ys.max(), xs.min(), xs.max()
        mask = labels[y0 : y1 + 1, x0 : x1 + 1] == label
        shape, iou = classify_shape(mask)
        colour = _COLOURS[classes.reshape(-1)[label]]
        box = (int(x0), int(y0), int(x1), int(y1))
        detections.append(Detection(colour, shape, box, len(ys), iou))
    return sorted(detections, key=lambda d: (d.box[1], d.box[0]))


def score(detections: list[Detection], spec: PromptSpec | str) -> float:
    """The reward of detections for a spec (or prompt); formula in the module docstring."""
    if isinstance(spec, str):
        spec = parse_prompt(spec)
    quality = []
    for g in spec.groups:
        k = sum(d.colour == g.colour for d in detections)
        m = sum(d.colour == g.colour and d.shape == g.shape for d in detections)
        quality.append((min(k, g.count) / g.count + min(m, g.count) / g.count + (m == g.count)) / 3)
    s = float(np.mean(quality))
    if spec.relation is not None:
        r = spec.relation
        a, b = _representative(detections, spec, r.a), _representative(detections, spec, r.b)
        holds = a is not None and b is not None and r.word in relation_words(a.edges(), b.edges())
        s = (2 * s + float(holds)) / 3
    asked = {(g.colour, g.shape) for g in spec.groups}
    extra = sum((d.colour, d.shape) not in asked for d in detections)
    return s / (1 + extra / 2)


def _representative(detections: list[Detection], spec: PromptSpec, i: int) -> Detection | None:
    """The largest detection matching group i (colour and shape, else colour), or None."""
    g = spec.groups[i]
    exact = [d for d in detections if d.colour == g.colour and d.shape == g.shape]
    candidates = exact or [d for d in detections if d.colour == g.colour]
    return max(candidates, key=lambda d: d.area, default=None)


@registry.REWARDS.register("shapes")
class ShapesReward:
    """Pointwise GenEval-like score of coloured-shape images against their prompts.

    Args:
      max_residual: RGB distance from a background-to-colour blend line within which
        a pixel takes that colour.
      min_area: smallest object as a fraction of the image's pixels.
    """

    name = "shapes"
    kind = "pointwise"
    video = "frames"  # a video scores the mean of its frames (ffjax.rewards.base)

    def __init__(self, max_residual: float = MAX_RESIDUAL, min_area: float = MIN_AREA):
        self.max_residual = max_residual
        self.min_area = min_area

    def __call__(self, samples: Samples) -> np.ndarray:
        if samples.videos is not None:
            return call_reward(self, samples).astype(np.float32)
        specs = [parse_prompt(p) for p in samples.prompts]  # fail before any work
        out = [
            score(detect(img, max_residual=self.max_residual, min_area=self.min_area), spec)
            for img, spec in zip(samples.images, specs, strict=True)
        ]
        return np.asarray(out, np.float32)
