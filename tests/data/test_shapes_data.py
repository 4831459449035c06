"""Coloured-shape scenes: grammar round trips, rejections, rendering, prompt files."""

import numpy as np
import pytest

from ffjax.data import shapes as S
from ffjax.data.shapes import Group, PromptError, PromptSpec, Relation


def test_describe_and_parse_round_trip():
    rng = np.random.default_rng(0)
    for _ in range(300):
        scene = S.sample_scene(rng)
        assert S.parse_prompt(S.describe(scene)) == scene.spec()
        assert S.describe(scene.spec()) == S.describe(scene)


@pytest.mark.parametrize(
    "prompt, spec",
    [
        ("a yellow triangle", PromptSpec((Group(1, "yellow", "triangle"),))),
        ("One yellow triangle.", PromptSpec((Group(1, "yellow", "triangle"),))),
        ("three blue squares", PromptSpec((Group(3, "blue", "square"),))),
        (
            "Two red  circles and a blue square",
            PromptSpec((Group(2, "red", "circle"), Group(1, "blue", "square"))),
        ),
        (
            "a red circle, a blue square and a green triangle",
            PromptSpec(
                (
                    Group(1, "red", "circle"),
                    Group(1, "blue", "square"),
                    Group(1, "green", "triangle"),
                )
            ),
        ),
        (
            "a red circle left of a blue square",
            PromptSpec(
                (Group(1, "red", "circle"), Group(1, "blue", "square")), Relation(0, "left of", 1)
            ),
        ),
        (
            "a green square below a green circle",
            PromptSpec(
                (Group(1, "green", "square"), Group(1, "green", "circle")), Relation(0, "below", 1)
            ),
        ),
    ],
)
def test_parse_examples(prompt, spec):
    assert S.parse_prompt(prompt) == spec


@pytest.mark.parametrize(
    "prompt",
    [
        "",
        "a purple circle",
        "a red hexagon",
        "two red circle",
        "a red circles",
        "four red circles",
        "a red circle and a red circle",
        "a red circle and two red circles",
        "two red circles left of a blue square",
        "a red circle next to a blue square",
        "a photo of a red circle",
        "a red circle and",
    ],
)
def test_parse_rejects_prompts_outside_the_grammar(prompt):
    with pytest.raises(PromptError, match="outside the shapes grammar"):
        S.parse_prompt(prompt)
    assert issubclass(PromptError, ValueError)


def test_relation_words_follow_geneval():
    unit = lambda x, y: (x - 0.05, y - 0.05, x + 0.05, y + 0.05)  # noqa: E731
    assert S.relation_words(unit(0.2, 0.5), unit(0.8, 0.5)) == {"left of"}
    assert S.relation_words(unit(0.8, 0.5), unit(0.2, 0.5)) == {"right of"}
    assert S.relation_words(unit(0.5, 0.2), unit(0.5, 0.8)) == {"above"}  # y points down
    assert S.relation_words(unit(0.5, 0.8), unit(0.5, 0.2)) == {"below"}
    assert S.relation_words(unit(0.2, 0.2), unit(0.8, 0.8)) == {"left of", "above"}
    # |offset| within 0.1 * (sum of sides) on both axes: no relation
    assert S.relation_words(unit(0.5, 0.5), unit(0.51, 0.5)) == set()


@pytest.mark.parametrize("size", [32, 48, 64])
def test_render_draws_separated_palette_shapes(size):
    rng = np.random.default_rng(1)
    allowed = {S.BACKGROUND, *S.PALETTE.values()}
    for _ in range(100):
        scene = S.sample_scene(rng)
        image = S.render(scene, size)
        assert image.shape == (size, size, 3) and image.dtype == np.uint8
        assert {tuple(c) for c in image.reshape(-1, 3)} <= allowed
        boxes = [S.pixel_box(o, size) for o in scene.objects]
        for obj, (x0, y0, x1, y1) in zip(scene.objects, boxes, strict=True):
            assert 0 <= x0 and 0 <= y0 and x1 < size and y1 < size
            crop = image[y0 : y1 + 1, x0 : x1 + 1]
            assert (crop == S.PALETTE[obj.colour]).all(-1).any()
        for i, a in enumerate(boxes):  # at least one background pixel between boxes
            for b in boxes[:i]:
                assert a[2] < b[0] - 1 or b[2] < a[0] - 1 or a[3] < b[1] - 1 or b[3] < a[1] - 1
        if scene.relation is not None:
            r = scene.relation
            words = S.relation_words(boxes[r.a], boxes[r.b])
            assert (
                words == {r.word} == S.relation_words(*(scene.objects[i].box() for i in (r.a, r.b)))
            )


def test_scene_for_spec_places_the_requested_objects():
    rng = np.random.default_rng(2)
    scene = S.scene_for_spec("three blue triangles", rng)
    assert [(o.colour, o.shape) for o in scene.objects] == [("blue", "triangle")] * 3
    scene = S.scene_for_spec("a red circle above a yellow square", rng)
    assert scene.relation == Relation(0, "above", 1)
    assert S.describe(scene) == "a red circle above a yellow square"
    with pytest.raises(ValueError, match="max_objects"):
        S.sample_spec(rng, max_objects=5)


def test_make_prompt_set_is_deterministic_and_distinct():
    a, b = S.make_prompt_set(200, seed=3), S.make_prompt_set(200, seed=3)
    assert a == b and len(set(a)) == 200
    assert a != S.make_prompt_set(200, seed=4)
    assert S.make_prompt_set(50, seed=3) == a[:50]  # a prefix: growing n keeps old prompts
    for p in a:
        S.parse_prompt(p)
    everything = S.make_prompt_set(960, seed=0)  # the whole grammar
    assert len(set(everything)) == 960
    assert {S.describe(sp) for v in S.specs_by_task().values() for sp in v} == set(everything)
    rng = np.random.default_rng(0)
    assert {S.describe(S.sample_spec(rng)) for _ in range(300)} <= set(everything)
    with pytest.raises(ValueError, match="the grammar has 960"):
        S.make_prompt_set(961, seed=0)


def test_write_prompt_files(tmp_path):
    train, test = S.write_prompt_files(str(tmp_path / "shapes"), 100, 20, seed=5)
    train_lines = open(train, encoding="utf-8").read().splitlines()
    test_lines = open(test, encoding="utf-8").read().splitlines()
    assert (len(train_lines), len(test_lines)) == (100, 20)
    assert not set(train_lines) & set(test_lines)
    assert train_lines + test_lines == S.make_prompt_set(120, seed=5)
