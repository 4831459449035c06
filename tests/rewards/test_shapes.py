"""The `shapes` reward: detector precision / recall, scoring formula, failure cases."""

import numpy as np
import pytest
from PIL import Image, ImageFilter

from ffjax import registry
from ffjax.data import shapes as S
from ffjax.data.shapes import PromptError, Scene, SceneObject
from ffjax.rewards import shapes as R
from ffjax.rewards.base import Samples


def _match(scene: Scene, detections, size: int) -> int:
    """True positives: a detection of the right colour and shape centred in a free box."""
    free = [(o.colour, o.shape, S.pixel_box(o, size)) for o in scene.objects]
    hits = 0
    for d in detections:
        cx, cy = d.centre
        for j, (colour, shape, (x0, y0, x1, y1)) in enumerate(free):
            if (colour, shape) == (d.colour, d.shape) and x0 <= cx <= x1 + 1 and y0 <= cy <= y1 + 1:
                hits += 1
                del free[j]
                break
    return hits


def _degrade(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A generator-like image: Gaussian blur (0.8 px at 32 px) and noise (sigma 8)."""
    radius = 0.8 * image.shape[0] / 32
    blurred = np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(radius)))
    return np.clip(blurred + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("degraded", [False, True], ids=["clean", "blur-noise"])
def test_detector_precision_recall(size, degraded):
    rng = np.random.default_rng(size)
    hits = n_detected = n_true = 0
    for _ in range(200):
        scene = S.sample_scene(rng)
        image = S.render(scene, size)
        detections = R.detect(_degrade(image, rng) if degraded else image)
        hits += _match(scene, detections, size)
        n_detected, n_true = n_detected + len(detections), n_true + len(scene.objects)
    precision, recall = hits / max(n_detected, 1), hits / n_true
    print(f"size {size} {'blur+noise' if degraded else 'clean'}: P={precision:.4f} R={recall:.4f}")
    # measured 1.0000 / 1.0000 in all four settings
    assert precision >= (0.95 if degraded else 0.99) and recall >= (0.95 if degraded else 0.99)


@pytest.mark.parametrize("size", [32, 48, 64])
def test_perfect_renders_score_one(size):
    rng = np.random.default_rng(10 + size)
    scenes = [S.sample_scene(rng) for _ in range(200)]
    samples = Samples(
        prompts=[S.describe(s) for s in scenes],
        images=np.stack([S.render(s, size) for s in scenes]),
    )
    rewards = registry.REWARDS.get("shapes")()(samples)
    assert rewards.dtype == np.float32 and rewards.shape == (200,)
    np.testing.assert_array_equal(rewards, 1.0)


def _image(*objects, size=32):
    return S.render(Scene(tuple(SceneObject(*o) for o in objects)), size)


RED_CIRCLE = ("red", "circle", (0.25, 0.5), 0.3)
BLUE_SQUARE = ("blue", "square", (0.75, 0.5), 0.3)


@pytest.mark.parametrize(
    "prompt, objects, want",
    [
        # q_red = q_blue = 1, relation holds
        ("a red circle left of a blue square", [RED_CIRCLE, BLUE_SQUARE], 1.0),
        # nothing detected: every term 0
        ("a red circle left of a blue square", [], 0.0),
        # swapped relation: R = 1, rel = 0 -> 2/3
        ("a blue square left of a red circle", [RED_CIRCLE, BLUE_SQUARE], 2 / 3),
        # wrong colour: q_red = 0, q_blue = 1, rel = 0 (no red), one extra -> (1/3) / 1.5
        (
            "a red circle left of a blue square",
            [("green", "circle", (0.25, 0.5), 0.3), BLUE_SQUARE],
            2 / 9,
        ),
        # wrong shape: q_red = 1/3, rel via the red square holds, one extra -> (7/9) / 1.5
        (
            "a red circle left of a blue square",
            [("red", "square", (0.25, 0.5), 0.3), BLUE_SQUARE],
            14 / 27,
        ),
        ("a red circle", [("red", "triangle", (0.5, 0.5), 0.3)], 2 / 9),
        ("a red circle", [("blue", "circle", (0.5, 0.5), 0.3)], 0.0),
        # counts: one of two -> (1/2 + 1/2 + 0) / 3; three of two -> (1 + 1 + 0) / 3
        ("two red circles", [RED_CIRCLE], 1 / 3),
        (
            "two red circles",
            [
                RED_CIRCLE,
                ("red", "circle", (0.75, 0.25), 0.25),
                ("red", "circle", (0.75, 0.75), 0.25),
            ],
            2 / 3,
        ),
        # a requested group missing: mean of 1 and 0
        ("a red circle and a blue square", [RED_CIRCLE], 0.5),
        # an unrequested object: 1 / (1 + 1/2)
        ("a red circle", [RED_CIRCLE, BLUE_SQUARE], 2 / 3),
    ],
)
def test_scores_of_wrong_images(prompt, objects, want):
    for size in (32, 64):
        samples = Samples(prompts=[prompt], images=_image(*objects, size=size)[None])
        assert R.ShapesReward()(samples)[0] == pytest.approx(want, abs=1e-6)


def test_detect_reports_boxes_areas_and_ignores_off_palette_and_tiny_blobs():
    image = _image(RED_CIRCLE, BLUE_SQUARE, size=64)
    image[2:4, 2:4] = S.PALETTE["green"]  # 4 pixels < 1% of 64 * 64: noise
    image[50:60, 20:30] = (128, 128, 128)  # grey: no palette colour
    detections = R.detect(image)
    assert [(d.colour, d.shape) for d in detections] == [("red", "circle"), ("blue", "square")]
    red, blue = detections
    assert blue.box == S.pixel_box(SceneObject(*BLUE_SQUARE), 64) and blue.iou == 1.0
    side = blue.box[2] - blue.box[0] + 1
    assert blue.area == side * side
    assert R.detect(np.full((32, 48, 3), 240, np.uint8)) == []  # non-square works too


def test_label_components_matches_scipy():
    ndimage = pytest.importorskip("scipy.ndimage")
    rng = np.random.default_rng(3)
    for _ in range(20):
        classes = rng.integers(-1, 3, (23, 31))
        ours = R.label_components(classes)
        for k in range(3):
            theirs, n = ndimage.label(classes == k)
            mine = ours[classes == k]
            pairs = set(zip(mine.tolist(), theirs[classes == k].tolist(), strict=True))
            assert len(pairs) == n == len(set(mine.tolist()))  # same partition
        assert (ours[classes < 0] == -1).all()


def test_reward_is_deterministic_and_registered():
    assert registry.REWARDS.get("shapes") is R.ShapesReward
    reward = registry.REWARDS.get("shapes")()
    assert (reward.name, reward.kind) == ("shapes", "pointwise")
    rng = np.random.default_rng(4)
    images = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    images[:2] = [S.render(S.sample_scene(rng), 32) for _ in range(2)]
    images[2] = _degrade(images[2], rng)
    samples = Samples(prompts=[S.describe(S.sample_scene(rng)) for _ in range(4)], images=images)
    first = reward(samples)
    np.testing.assert_array_equal(first, R.ShapesReward()(samples))
    assert ((0 <= first) & (first <= 1)).all()


def test_bad_inputs_raise_clear_errors():
    reward = R.ShapesReward()
    images = np.full((2, 32, 32, 3), 240, np.uint8)
    with pytest.raises(PromptError, match="'a purple circle' is outside the shapes grammar"):
        reward(Samples(prompts=["a red circle", "a purple circle"], images=images))
    with pytest.raises(ValueError, match="one RGB image"):
        R.detect(images)
