"""Hand-worked cases for the GenEval rule engine (gapray/eval/geneval.py); no detector, no torch.

Run: python -m pytest tests/test_geneval_rules.py -q
"""

from __future__ import annotations

import math

import pytest

from gapray.eval.geneval import (
    Detection,
    box_iou,
    evaluate_image,
    filter_detections,
    relative_position,
    score_geneval,
)
from gapray.types import Prompt


def P(record: dict, id: str = "t/00000") -> Prompt:
    return Prompt.from_geneval(record, id=id)


def D(cls: str, box=(0, 0, 10, 10), score: float = 1.0, color: str | None = None) -> Detection:
    return Detection(cls=cls, box=tuple(float(v) for v in box), score=score, color=color)


# ---- relative_position -------------------------------------------------------------------------


def test_shrink_changes_the_answer():
    # A: centre (100, 100), 10 wide, 40 tall -> (95, 80, 105, 120)
    # B: centre (110, 108), 10 wide, 20 tall -> (105, 98, 115, 118)
    # offset A - B = (-10, -8), length sqrt(164) = 12.806
    # unshrunk: (-10, -8) / 12.806 = (-0.781, -0.625) -> left of AND above
    # shrink x by 0.1 * (10 + 10) = 2 -> -8;  shrink y by 0.1 * (40 + 20) = 6 -> -2
    # shrunk / 12.806 = (-0.625, -0.156) -> left of only (|-0.156| < 0.5)
    a, b = (95, 80, 105, 120), (105, 98, 115, 118)
    assert relative_position(a, b, threshold=0.0) == {"left of", "above"}
    assert relative_position(a, b) == {"left of"}
    # and from B's side: (+0.625, +0.156) -> right of only
    assert relative_position(b, a) == {"right of"}


def test_shrink_can_remove_every_relation():
    # A (0, 0, 10, 10), B (12, 0, 22, 10): centres 5 and 17, offset (-12, 0), length 12.
    # shrink x by 0.1 * (10 + 10) = 2 -> -10 -> dx = -10/12 = -0.833: still left of.
    assert relative_position((0, 0, 10, 10), (12, 0, 22, 10)) == {"left of"}
    # Big boxes: A (0, 0, 40, 40), B (12, 0, 52, 40): offset (-12, 0),
    # shrink 0.1 * 80 = 8 -> -4 -> dx = -4/12 = -0.333: no relation (unshrunk it would be -1).
    assert relative_position((0, 0, 40, 40), (12, 0, 52, 40)) == set()
    assert relative_position((0, 0, 40, 40), (12, 0, 52, 40), threshold=0.0) == {"left of"}


def test_diagonal_gives_two_relations():
    # centres (5, 5) and (95, 95): offset (-90, -90), length 127.28; shrink 2 on each axis
    # -> (-88, -88) / 127.28 = (-0.691, -0.691): left of and above (y points down).
    a, b = (0, 0, 10, 10), (90, 90, 100, 100)
    assert relative_position(a, b) == {"left of", "above"}
    assert relative_position(b, a) == {"right of", "below"}


def test_same_centre_is_no_relation():
    assert relative_position((0, 0, 10, 10), (0, 0, 10, 10)) == set()
    assert relative_position((0, 0, 10, 10), (2, 2, 8, 8)) == set()


def test_vertical():
    # centres (5, 5) and (5, 55): offset (0, -50), shrink 2 -> -48 / 50 = -0.96: above
    assert relative_position((0, 0, 10, 10), (0, 50, 10, 60)) == {"above"}


# ---- include / thresholds ----------------------------------------------------------------------

SINGLE = {"tag": "single_object", "include": [{"class": "cow", "count": 1}], "prompt": "a photo of a cow"}


def test_single_object():
    assert evaluate_image(P(SINGLE), [D("cow")]) == (True, [])
    ok, reasons = evaluate_image(P(SINGLE), [D("dog")])
    assert not ok and reasons == ["expected cow>=1, found 0"]


def test_confidence_threshold_is_strict_0_3():
    assert not evaluate_image(P(SINGLE), [D("cow", score=0.3)])[0]
    assert evaluate_image(P(SINGLE), [D("cow", score=0.31)])[0]


TWO_CLOCKS = {
    "tag": "counting",
    "include": [{"class": "clock", "count": 2}],
    "exclude": [{"class": "clock", "count": 3}],
    "prompt": "a photo of two clocks",
}


def test_exclude_exactly_n():
    boxes = [(0, 0, 10, 10), (20, 0, 30, 10), (40, 0, 50, 10)]
    assert evaluate_image(P(TWO_CLOCKS), [D("clock", b, 0.95) for b in boxes[:2]]) == (True, [])
    ok, reasons = evaluate_image(P(TWO_CLOCKS), [D("clock", b, 0.95) for b in boxes])
    assert not ok and reasons == ["expected clock<3, found 3"]


def test_counting_threshold_0_9():
    # The third clock at 0.5 (and a fourth at exactly 0.9) are below the counting threshold:
    # two clocks counted, the prompt passes.
    dets = [D("clock", score=0.95), D("clock", score=0.91), D("clock", score=0.5), D("clock", score=0.9)]
    assert evaluate_image(P(TWO_CLOCKS), dets) == (True, [])
    # 0.85 would count in a non-counting prompt, not here.
    ok, reasons = evaluate_image(P(TWO_CLOCKS), [D("clock", score=0.95), D("clock", score=0.85)])
    assert not ok and reasons == ["expected clock>=2, found 1"]


def test_counting_threshold_applies_to_every_class_of_a_counting_prompt():
    rec = dict(TWO_CLOCKS, include=[{"class": "clock", "count": 1}], exclude=[{"class": "cat", "count": 1}])
    # a cat at 0.8 is not counted in a counting prompt, so the exclude does not fire
    assert evaluate_image(P(rec), [D("clock"), D("cat", score=0.8)])[0]
    assert not evaluate_image(P(rec), [D("clock"), D("cat", score=0.95)])[0]


def test_max_objects_caps_counts():
    dets = [D("clock", (i * 20, 0, i * 20 + 10, 10)) for i in range(20)]
    assert len(filter_detections(dets, 0.3)["clock"]) == 16
    rec = dict(
        TWO_CLOCKS, include=[{"class": "clock", "count": 1}], exclude=[{"class": "clock", "count": 17}]
    )
    assert evaluate_image(P(rec), dets)[0]  # 20 found, but only 16 survive the cap


def test_filter_sorts_and_optional_nms():
    dets = [D("cat", (0, 0, 10, 10), 0.5), D("cat", (0, 0, 10, 10), 0.9), D("cat", (50, 50, 60, 60), 0.7)]
    assert [d.score for d in filter_detections(dets, 0.3)["cat"]] == [0.9, 0.7, 0.5]
    assert [d.score for d in filter_detections(dets, 0.3, nms_iou=0.5)["cat"]] == [0.9, 0.7]
    # GenEval's inclusive-pixel IoU: (0,0,9,9) is a 10x10 box; half overlap -> 50 / 150
    assert box_iou((0, 0, 9, 9), (5, 0, 14, 9)) == pytest.approx(50 / 150)


# ---- colour ------------------------------------------------------------------------------------


def test_colour_of_the_top_object():
    rec = {"tag": "colors", "include": [{"class": "car", "count": 1, "color": "red"}], "prompt": "a red car"}
    # the most confident car is blue; a less confident red car does not rescue it
    ok, reasons = evaluate_image(
        P(rec), [D("car", score=0.5, color="red"), D("car", score=0.9, color="blue")]
    )
    assert not ok and reasons[0].startswith("expected red car>=1, found 0")
    assert evaluate_image(P(rec), [D("car", score=0.9, color="red"), D("car", score=0.5, color="blue")])[0]
    # no colour from the classifier never matches
    assert not evaluate_image(P(rec), [D("car")])[0]


def test_colour_all_of_top_count():
    rec = {
        "tag": "colors",
        "include": [{"class": "car", "count": 2, "color": "red"}],
        "prompt": "two red cars",
    }
    top_red = [
        D("car", score=0.9, color="red"),
        D("car", score=0.8, color="red"),
        D("car", score=0.4, color="blue"),
    ]
    assert evaluate_image(P(rec), top_red)[0]  # the blue one is third, outside the top 2
    mixed = [
        D("car", score=0.9, color="red"),
        D("car", score=0.8, color="blue"),
        D("car", score=0.7, color="red"),
    ]
    assert not evaluate_image(P(rec), mixed)[0]


def test_color_attr_two_entries():
    rec = {
        "tag": "color_attr",
        "include": [
            {"class": "car", "count": 1, "color": "red"},
            {"class": "bench", "count": 1, "color": "green"},
        ],
        "prompt": "a photo of a red car and a green bench",
    }
    assert evaluate_image(P(rec), [D("car", color="red"), D("bench", color="green")])[0]
    ok, reasons = evaluate_image(P(rec), [D("car", color="green"), D("bench", color="red")])
    assert not ok and len(reasons) == 2


# ---- position ----------------------------------------------------------------------------------

DOG_RIGHT_OF_BEAR = {
    "tag": "position",
    "include": [
        {"class": "teddy bear", "count": 1},
        {"class": "dog", "count": 1, "position": ["right of", 0]},
    ],
    "prompt": "a photo of a dog right of a teddy bear",
}


def test_position_holds_and_fails():
    bear, dog_right, dog_left = (0, 0, 10, 10), (50, 0, 60, 10), (-50, 0, -40, 10)
    assert evaluate_image(P(DOG_RIGHT_OF_BEAR), [D("teddy bear", bear), D("dog", dog_right)]) == (True, [])
    ok, reasons = evaluate_image(P(DOG_RIGHT_OF_BEAR), [D("teddy bear", bear), D("dog", dog_left)])
    assert not ok and reasons == ["expected dog right of target, found left of target"]


def test_position_uses_the_shrunk_offset():
    # the first shrink case above: the dog is left of and (unshrunk) above the bear; after the
    # shrink only "left of" holds, so "above" fails and "left of" passes.
    bear, dog = (105, 98, 115, 118), (95, 80, 105, 120)
    above = dict(
        DOG_RIGHT_OF_BEAR, include=[{"class": "teddy bear"}, {"class": "dog", "position": ["above", 0]}]
    )
    left = dict(
        DOG_RIGHT_OF_BEAR, include=[{"class": "teddy bear"}, {"class": "dog", "position": ["left of", 0]}]
    )
    assert not evaluate_image(P(above), [D("teddy bear", bear), D("dog", dog)])[0]
    assert evaluate_image(P(left), [D("teddy bear", bear), D("dog", dog)])[0]


def test_position_missing_target_group():
    ok, reasons = evaluate_image(P(DOG_RIGHT_OF_BEAR), [D("dog", (50, 0, 60, 10))])
    assert not ok
    assert reasons == ["expected teddy bear>=1, found 0", "no target for dog to be right of"]


def test_position_target_failed_its_colour_is_missing_target():
    rec = {
        "tag": "position",
        "include": [{"class": "teddy bear", "color": "red"}, {"class": "dog", "position": ["right of", 0]}],
        "prompt": "a dog right of a red teddy bear",
    }
    ok, reasons = evaluate_image(P(rec), [D("teddy bear", color="blue"), D("dog", (50, 0, 60, 10))])
    assert not ok and reasons[-1] == "no target for dog to be right of"


def test_position_only_top_objects_matter():
    # a second, less confident bear to the right of the dog is not in the target group (count 1)
    dets = [
        D("teddy bear", (0, 0, 10, 10), 0.9),
        D("teddy bear", (100, 0, 110, 10), 0.5),
        D("dog", (50, 0, 60, 10)),
    ]
    assert evaluate_image(P(DOG_RIGHT_OF_BEAR), dets)[0]


def test_position_reference_must_be_earlier():
    rec = {
        "tag": "position",
        "include": [{"class": "dog", "position": ["right of", 1]}, {"class": "teddy bear"}],
        "prompt": "x",
    }
    with pytest.raises(ValueError, match="earlier"):
        evaluate_image(P(rec), [D("dog"), D("teddy bear")])


# ---- aggregation -------------------------------------------------------------------------------


def test_score_geneval_table():
    so1 = P({"tag": "single_object", "include": [{"class": "cow"}], "prompt": "a cow"}, "t/0")
    so2 = P({"tag": "single_object", "include": [{"class": "dog"}], "prompt": "a dog"}, "t/1")
    cnt = P(TWO_CLOCKS, "t/2")
    untagged = Prompt(id="t/3", text="free text")
    results = [
        (so1, [True, True, False, False]),
        (so2, [True, True]),  # fewer images: the tag mean is over images, not over prompts
        (cnt, [False, False, False, True]),
        (untagged, [True]),  # counted in n_images, in no tag (GenEval's groupby drops a null tag)
    ]
    s = score_geneval(results)
    # single_object: 4 correct of 6 images = 0.6667 (the mean of prompt means would be 0.75)
    # counting: 1 of 4 = 0.25;  overall = (0.6667 + 0.25) / 2 = 0.4583
    assert s["per_tag"] == pytest.approx({"single_object": 4 / 6, "counting": 0.25})
    assert math.isclose(s["overall"], (4 / 6 + 0.25) / 2)
    assert s["n_images"] == 11


def test_score_geneval_empty():
    with pytest.raises(ValueError):
        score_geneval([])
