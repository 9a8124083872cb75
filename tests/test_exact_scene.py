"""The exact-scene rule (gapray/eval/exact_scene.py) on hand-made scenes: the exact scene passes;
an extra object, a count off by one, a wrong colour, a swapped relation each fail, while
GenEval's lenient include rule passes the extra object and the extra count.

    PYTHONPATH=. python -m pytest tests/test_exact_scene.py -q
"""

from __future__ import annotations

import pytest

from gapray.eval.exact_scene import exact_scene, objects_in
from gapray.eval.geneval import Detection, evaluate_image
from gapray.types import ObjectSpec, Prompt


def cell(row: int, col: int) -> tuple[float, float, float, float]:
    """The box of a 6x6 object in cell (row, col) of the toy world's 4x4 grid of 8 px cells."""
    return (col * 8 + 1.0, row * 8 + 1.0, col * 8 + 7.0, row * 8 + 7.0)


def obj(cls: str, row: int, col: int, color: str = "red") -> Detection:
    return Detection(cls=cls, box=cell(row, col), score=1.0, color=color)


RED_CIRCLE_GREEN_SQUARE = Prompt(
    id="t/0",
    text="a photo of a red circle and a green square",
    tag="color_attr",
    include=(ObjectSpec("circle", 1, "red"), ObjectSpec("square", 1, "green")),
)
THREE_SQUARES = Prompt(
    id="t/1",
    text="a photo of three squares",
    tag="counting",
    include=(ObjectSpec("square", 3),),
    exclude=(ObjectSpec("square", 4),),
)
CIRCLE_RIGHT_OF_SQUARE = Prompt(
    id="t/2",
    text="a photo of a circle right of a square",
    tag="position",
    include=(ObjectSpec("square", 1), ObjectSpec("circle", 1, position=("right of", 0))),
)
A_TRIANGLE = Prompt(
    id="t/3", text="a photo of a triangle", tag="single_object", include=(ObjectSpec("triangle"),)
)


def test_the_exact_scene_passes():
    assert exact_scene(RED_CIRCLE_GREEN_SQUARE, [obj("circle", 0, 0), obj("square", 2, 3, "green")]) == (
        True,
        [],
    )
    assert exact_scene(THREE_SQUARES, [obj("square", 0, c, "blue") for c in range(3)]) == (True, [])
    assert exact_scene(CIRCLE_RIGHT_OF_SQUARE, [obj("square", 1, 0), obj("circle", 1, 3)]) == (True, [])
    assert exact_scene(A_TRIANGLE, [obj("triangle", 3, 3, "purple")]) == (True, [])


def test_an_extra_object_fails_but_passes_geneval():
    scene = [obj("triangle", 0, 0), obj("square", 1, 1), obj("square", 2, 2), obj("?", 3, 3)]
    assert evaluate_image(A_TRIANGLE, scene)[0]  # GenEval's include rule does not mind
    ok, reasons = exact_scene(A_TRIANGLE, scene)
    assert not ok and reasons == ["extra objects: 1 ?, 2 square"]


def test_a_second_object_of_an_asked_class_fails_but_passes_geneval():
    scene = [obj("triangle", 0, 0), obj("triangle", 1, 1)]
    assert evaluate_image(A_TRIANGLE, scene)[0]
    assert exact_scene(A_TRIANGLE, scene) == (False, ["expected exactly 1 triangle, found 2"])


@pytest.mark.parametrize("n", [2, 4])
def test_a_count_off_by_one_fails(n):
    ok, reasons = exact_scene(THREE_SQUARES, [obj("square", 0, c) for c in range(n)])
    assert not ok and f"expected exactly 3 square, found {n}" in reasons


def test_a_wrong_colour_fails():
    ok, reasons = exact_scene(
        RED_CIRCLE_GREEN_SQUARE, [obj("circle", 0, 0, "blue"), obj("square", 2, 3, "green")]
    )
    assert not ok and "expected the circle colours asked for, found 1 blue" in reasons


def test_a_swapped_relation_fails():
    ok, reasons = exact_scene(CIRCLE_RIGHT_OF_SQUARE, [obj("square", 1, 3), obj("circle", 1, 0)])
    assert not ok and reasons == ["expected circle right of target, found left of target"]


def test_colours_are_a_multiset_and_an_uncoloured_entry_takes_any():
    two = Prompt(
        id="t/4",
        text="a photo of a red circle and a circle",
        tag="two_object",
        include=(ObjectSpec("circle", 1, "red"), ObjectSpec("circle", 1)),
    )
    assert exact_scene(two, [obj("circle", 0, 0, "red"), obj("circle", 0, 3, "blue")])[0]
    assert not exact_scene(two, [obj("circle", 0, 0, "blue"), obj("circle", 0, 3, "blue")])[0]


def test_objects_in_counts_after_genevals_thresholds():
    weak = Detection(cls="square", box=cell(0, 0), score=0.5, color="red")
    assert objects_in(A_TRIANGLE, [obj("triangle", 1, 1), weak]) == 2  # 0.5 > 0.3
    assert objects_in(THREE_SQUARES, [obj("square", 1, 1), weak]) == 1  # counting: > 0.9
