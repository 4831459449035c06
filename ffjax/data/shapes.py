"""Coloured-shape scenes: a tiny GenEval-like prompt grammar, a sampler and a renderer.

The demo task: a tiny text-to-image model learns to draw "two red circles and a blue
square" or "a red circle left of a blue square"; the `shapes` reward
(`ffjax/rewards/shapes.py`) checks the image against the parsed prompt.

Vocabulary (kept small so shapes stay recognisable at 32 x 32 pixels):

- colours: red, green, blue, yellow (`PALETTE`, pairwise RGB distance >= 187);
- shapes: circle, square, triangle (upright, isosceles, as wide as tall);
- counts: a (or one), two, three;
- relations between two single objects: left of, right of, above, below.

Grammar (lower case; `parse_prompt` also accepts upper case, extra spaces and one
trailing period):

    prompt   := groups | single RELATION single
    groups   := group (", " group)* " and " group | group
    group    := COUNT COLOUR SHAPE          COUNT in {a, one}, SHAPE singular
              | COUNT COLOUR SHAPE "s"      COUNT in {two, three}
    single   := "a" COLOUR SHAPE

Each (colour, shape) pair appears in at most one group. Scenes place every object in
an axis-aligned square box (centre and side as fractions of the image side) with a
margin to the border and a gap between boxes, so renders at >= 32 pixels never touch.
Relations follow the GenEval rule (`relation_words`).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (215, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (245, 215, 30),
}
BACKGROUND: tuple[int, int, int] = (240, 240, 240)  # light grey, far from every colour
COLOURS: tuple[str, ...] = tuple(PALETTE)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
COUNT_WORDS: dict[int, str] = {1: "a", 2: "two", 3: "three"}
_COUNTS_BY_WORD = {"a": 1, "one": 1, "two": 2, "three": 3}

MIN_SIZE, MAX_SIZE = 0.24, 0.34  # object side, fraction of the image side
MARGIN, GAP = 0.06, 0.12  # box to border, box to box (>= 1 pixel at 32 px after rounding)
POSITION_THRESHOLD = 0.1  # GenEval's relative-position threshold


@dataclasses.dataclass(frozen=True)
class SceneObject:
    """One shape: `centre` (x, y) and `size` (side) as fractions of the image side."""

    colour: str
    shape: str
    centre: tuple[float, float]
    size: float

    def box(self) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) in fractions of the image side."""
        (x, y), h = self.centre, self.size / 2
        return (x - h, y - h, x + h, y + h)


@dataclasses.dataclass(frozen=True)
class Relation:
    """`a` <word> `b`, with `a`, `b` indices into a Scene's objects or a spec's groups."""

    a: int
    word: str
    b: int


@dataclasses.dataclass(frozen=True)
class Scene:
    """What an image shows: objects, and the relation its prompt states (if any)."""

    objects: tuple[SceneObject, ...]
    relation: Relation | None = None

    def spec(self) -> PromptSpec:
        """The prompt spec this scene satisfies (groups in order of first appearance)."""
        keys: list[tuple[str, str]] = []
        for o in self.objects:
            if (o.colour, o.shape) not in keys:
                keys.append((o.colour, o.shape))
        groups = tuple(Group(sum((o.colour, o.shape) == k for o in self.objects), *k) for k in keys)
        rel = None
        if self.relation is not None:
            r, objs = self.relation, self.objects
            ga = keys.index((objs[r.a].colour, objs[r.a].shape))
            gb = keys.index((objs[r.b].colour, objs[r.b].shape))
            rel = Relation(ga, r.word, gb)
        return PromptSpec(groups, rel)


@dataclasses.dataclass(frozen=True)
class Group:
    """`count` objects of one colour and shape, as a prompt asks for them."""

    count: int
    colour: str
    shape: str


@dataclasses.dataclass(frozen=True)
class PromptSpec:
    """What a prompt requests: object groups, and optionally a relation between two."""

    groups: tuple[Group, ...]
    relation: Relation | None = None


# ------------------------------------------------------------------------------- text


def _group_text(g: Group) -> str:
    return f"{COUNT_WORDS[g.count]} {g.colour} {g.shape}{'s' if g.count > 1 else ''}"


def describe(scene: Scene | PromptSpec) -> str:
    """The prompt of a scene or spec: "two red circles and a blue square",
    "a red circle, a blue square and a green triangle", "a red circle left of a blue square".
    """
    spec = scene.spec() if isinstance(scene, Scene) else scene
    parts = [_group_text(g) for g in spec.groups]
    if spec.relation is not None:
        r = spec.relation
        return f"{parts[r.a]} {r.word} {parts[r.b]}"
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


_GROUP_RE = re.compile(rf"^(a|one|two|three) ({'|'.join(COLOURS)}) ({'|'.join(SHAPES)})(s?)$")
_RELATION_RE = re.compile(rf"^(.+?) ({'|'.join(RELATIONS)}) (.+)$")
_EXAMPLES = "e.g. 'two red circles and a blue square' or 'a red circle left of a blue square'"


class PromptError(ValueError):
    """A prompt outside the shapes grammar; the message says which part and why."""


def _parse_group(text: str, prompt: str) -> Group:
    m = _GROUP_RE.match(text)
    if m is None:
        raise PromptError(
            f"prompt {prompt!r} is outside the shapes grammar: cannot read {text!r} as"
            f" '<a|one|two|three> <{'|'.join(COLOURS)}> <{'|'.join(SHAPES)}>[s]' ({_EXAMPLES})"
        )
    count, plural = _COUNTS_BY_WORD[m[1]], bool(m[4])
    if plural != (count > 1):
        raise PromptError(
            f"prompt {prompt!r} is outside the shapes grammar: {text!r} mixes a count"
            f" and a {'plural' if plural else 'singular'} noun"
        )
    return Group(count, m[2], m[3])


@functools.lru_cache(maxsize=4096)
def parse_prompt(prompt: str) -> PromptSpec:
    """The spec a prompt requests. Raises PromptError for prompts outside the grammar."""
    text = " ".join(str(prompt).lower().split()).removesuffix(".").strip()
    rel = _RELATION_RE.match(text)
    if rel is not None:
        a, b = _parse_group(rel[1], prompt), _parse_group(rel[3], prompt)
        if a.count != 1 or b.count != 1:
            raise PromptError(
                f"prompt {prompt!r} is outside the shapes grammar: a relation joins two"
                f" single objects ('a <colour> <shape>')"
            )
        groups, relation = (a, b), Relation(0, rel[2], 1)
    else:
        head, sep, last = text.rpartition(" and ")
        pieces = ([p.strip() for p in head.split(",")] if sep else []) + [last]
        groups, relation = tuple(_parse_group(p, prompt) for p in pieces), None
    pairs = [(g.colour, g.shape) for g in groups]
    if len(set(pairs)) != len(pairs):
        raise PromptError(
            f"prompt {prompt!r} is outside the shapes grammar: a colour and shape appears"
            f" in two groups (say 'two red circles', not 'a red circle and a red circle')"
        )
    return PromptSpec(groups, relation)


# --------------------------------------------------------------------------- geometry


def relation_words(box_a: Sequence[float], box_b: Sequence[float]) -> set[str]:
    """Where box A lies relative to box B: a subset of {left of, right of, above, below}.

    The GenEval rule (Ghosh et al. 2023, `evaluate_images.py: relative_position`):
    o = c_A - c_B (box centres, y down); o'_i = sign(o_i) max(|o_i| - t (d_A,i + d_B,i), 0)
    with box sides d and t = 0.1; none if o' = 0, else with (dx, dy) = o' / |o|:
    left of if dx < -0.5, right of if dx > 0.5, above if dy < -0.5, below if dy > 0.5.
    Boxes are (x0, y0, x1, y1) in any one unit.
    """
    a = np.asarray(box_a, np.float64).reshape(2, 2)
    b = np.asarray(box_b, np.float64).reshape(2, 2)
    offset = a.mean(0) - b.mean(0)
    dims = np.abs(a[1] - a[0]) + np.abs(b[1] - b[0])
    revised = np.maximum(np.abs(offset) - POSITION_THRESHOLD * dims, 0) * np.sign(offset)
    if np.all(np.abs(revised) < 1e-3):
        return set()
    dx, dy = revised / np.linalg.norm(offset)
    words = {"left of": dx < -0.5, "right of": dx > 0.5, "above": dy < -0.5, "below": dy > 0.5}
    return {w for w, holds in words.items() if holds}


def _apart(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    """True if two boxes are at least GAP apart along some axis."""
    return a[2] + GAP <= b[0] or b[2] + GAP <= a[0] or a[3] + GAP <= b[1] or b[3] + GAP <= a[1]


# --------------------------------------------------------------------------- sampling


def sample_spec(rng: np.random.Generator, *, max_objects: int = 3) -> PromptSpec:
    """A random prompt spec; one of three GenEval-like tasks, equally likely:

    counting ("three blue triangles"; 1..max_objects objects), two groups ("two red
    circles and a blue square"; at most max_objects objects), position ("a red circle
    left of a blue square").
    """
    if not 2 <= max_objects <= 3:
        raise ValueError(f"max_objects must be 2 or 3, got {max_objects}")
    pairs = [(c, s) for c in COLOURS for s in SHAPES]
    i, j = rng.choice(len(pairs), size=2, replace=False)
    (ca, sa), (cb, sb) = pairs[i], pairs[j]
    task = rng.integers(3)
    if task == 0:
        return PromptSpec((Group(int(rng.integers(1, max_objects + 1)), ca, sa),))
    if task == 1:
        counts = [(n, m) for n in (1, 2, 3) for m in (1, 2, 3) if n + m <= max_objects]
        n, m = counts[rng.integers(len(counts))]
        return PromptSpec((Group(n, ca, sa), Group(m, cb, sb)))
    word = RELATIONS[rng.integers(len(RELATIONS))]
    return PromptSpec((Group(1, ca, sa), Group(1, cb, sb)), Relation(0, word, 1))


def scene_for_spec(
    spec: PromptSpec | str, rng: np.random.Generator, *, max_tries: int = 1000
) -> Scene:
    """A random placement of the objects `spec` (or a prompt) asks for.

    Sides are uniform in [MIN_SIZE, MAX_SIZE]; boxes keep MARGIN to the border and GAP
    between each other; a relation is the only GenEval relation between its two
    objects, clearly (`_clearly`) so that it survives pixel rounding. Rejection sampling; raises RuntimeError if `max_tries` layouts all fail.
    """
    if isinstance(spec, str):
        spec = parse_prompt(spec)
    kinds = [(g.colour, g.shape) for g in spec.groups for _ in range(g.count)]
    for _ in range(max_tries):
        objects: list[SceneObject] = []
        for colour, shape in kinds:
            size = float(rng.uniform(MIN_SIZE, MAX_SIZE))
            lo, hi = MARGIN + size / 2, 1 - MARGIN - size / 2
            obj = SceneObject(colour, shape, tuple(map(float, rng.uniform(lo, hi, 2))), size)
            if not all(_apart(obj.box(), o.box()) for o in objects):
                break
            objects.append(obj)
        else:
            rel = spec.relation
            # groups of a relation are single objects, so group index = object index
            if rel is None or _clearly(rel.word, objects[rel.a], objects[rel.b]):
                return Scene(tuple(objects), rel)
    raise RuntimeError(f"no layout for {describe(spec)!r} in {max_tries} tries")


def _clearly(word: str, a: SceneObject, b: SceneObject) -> bool:
    """True if `word` is A's only relation to B, with room to survive pixel rounding:
    |offset| >= 0.3 along the relation's axis and <= 0.4 times that across it.
    """
    axis = 0 if word in ("left of", "right of") else 1
    offset = np.subtract(a.centre, b.centre)
    along, across = abs(offset[axis]), abs(offset[1 - axis])
    return along >= 0.3 and across <= 0.4 * along and relation_words(a.box(), b.box()) == {word}


def sample_scene(rng: np.random.Generator, *, max_objects: int = 3) -> Scene:
    """A random scene: `sample_spec` then `scene_for_spec`."""
    return scene_for_spec(sample_spec(rng, max_objects=max_objects), rng)


# -------------------------------------------------------------------------- rendering


def pixel_box(obj: SceneObject, size: int) -> tuple[int, int, int, int]:
    """Inclusive pixel box (x0, y0, x1, y1) of `obj` in a size x size image.

    Sides are odd (2r + 1) so triangles have a pixel-centred apex.
    """
    r = max(2, round(obj.size * size / 2))
    cx, cy = (round(c * size - 0.5) for c in obj.centre)
    return (cx - r, cy - r, cx + r, cy + r)


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: Sequence[int], fill) -> None:
    """Draws `shape` filling the inclusive pixel box (x0, y0, x1, y1), no antialiasing.

    The detector fits its templates with this same function.
    """
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=fill)
    elif shape == "square":
        draw.rectangle((x0, y0, x1, y1), fill=fill)
    elif shape == "triangle":
        draw.polygon([(x0, y1), (x1, y1), ((x0 + x1) / 2, y0)], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")


def render(scene: Scene, size: int) -> np.ndarray:
    """uint8[size, size, 3]: the scene's shapes in PALETTE colours on BACKGROUND.

    Objects do not touch for size >= 32 (scenes from `scene_for_spec`).
    """
    image = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        draw_shape(draw, obj.shape, pixel_box(obj, size), PALETTE[obj.colour])
    return np.array(image, np.uint8)


# ---------------------------------------------------------------------------- prompts


def specs_by_task(max_objects: int = 3) -> dict[str, list[PromptSpec]]:
    """Every spec of the grammar that `sample_spec` can draw, by task, in a fixed order.

    For max_objects=3: 36 counting, 396 two-group and 528 position specs (960 in all).
    """
    pairs = [(c, s) for c in COLOURS for s in SHAPES]
    distinct = [(a, b) for a in pairs for b in pairs if a != b]
    counts = [(n, m) for n in (1, 2, 3) for m in (1, 2, 3) if n + m <= max_objects]
    return {
        "counting": [PromptSpec((Group(n, *a),)) for a in pairs for n in range(1, max_objects + 1)],
        "two groups": [
            PromptSpec((Group(n, *a), Group(m, *b))) for a, b in distinct for n, m in counts
        ],
        "position": [
            PromptSpec((Group(1, *a), Group(1, *b)), Relation(0, w, 1))
            for a, b in distinct
            for w in RELATIONS
        ],
    }


def make_prompt_set(n: int, seed: int, *, max_objects: int = 3) -> list[str]:
    """`n` distinct prompts, deterministic in `seed`; a smaller `n` gives a prefix.

    Each prompt picks a task uniformly among those with prompts left, then the next
    prompt of that task's seeded shuffle (so, like `sample_spec`, tasks are equally
    common until one runs out). Raises ValueError if n exceeds the grammar's size.
    """
    tasks = [
        [specs[i] for i in np.random.default_rng([seed, t]).permutation(len(specs))]
        for t, specs in enumerate(specs_by_task(max_objects).values())
    ]
    total = sum(map(len, tasks))
    if not 0 <= n <= total:
        raise ValueError(f"cannot draw {n} distinct prompts: the grammar has {total}")
    rng, taken, prompts = np.random.default_rng(seed), [0] * len(tasks), []
    for _ in range(n):
        open_tasks = [t for t, specs in enumerate(tasks) if taken[t] < len(specs)]
        t = open_tasks[rng.integers(len(open_tasks))]
        prompts.append(describe(tasks[t][taken[t]]))
        taken[t] += 1
    return prompts


def write_prompt_files(
    folder: str, n_train: int, n_test: int, seed: int = 0, *, max_objects: int = 3
) -> tuple[str, str]:
    """Writes Flow-Factory style `train.txt` and `test.txt` (one prompt per line).

    The two sets are disjoint: `make_prompt_set(n_train + n_test, seed)` split in order.
    Returns the two paths.
    """
    prompts = make_prompt_set(n_train + n_test, seed, max_objects=max_objects)
    os.makedirs(folder, exist_ok=True)
    paths = []
    for name, part in (("train.txt", prompts[:n_train]), ("test.txt", prompts[n_train:])):
        path = os.path.join(folder, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write("".join(p + "\n" for p in part))
        paths.append(path)
    return paths[0], paths[1]
