"""Tests of the exact-scene near misses (gapray/toy/world.py `near_miss_scene`) and the recipe's
yes/no labels under the exact-scene rule (gapray/toy/pretrain_lm.py `question_scene`): hand-made
scenes with an extra object, a count off by one, a wrong colour or a swapped relation fail the
exact-scene rule while the exact scene passes; every seeded near-miss kind fails it for every tag.

    python -m pytest tests/test_near_miss.py -q
"""

from __future__ import annotations

import numpy as np
import pytest

from gapray.eval.exact_scene import exact_scene
from gapray.eval.geneval import evaluate_image
from gapray.toy.detector import scene_detections
from gapray.toy.pretrain_lm import DEFAULT_NEGATIVES, parse_weights, question_scene
from gapray.toy.world import (
    NEAR_MISS_KINDS,
    Scene,
    ToyObject,
    all_prompts,
    make_splits,
    near_miss,
    near_miss_kinds,
    near_miss_scene,
    prompts_for_tag,
    sample_scene,
)
from gapray.types import GENEVAL_TAGS


def _prompt(tag: str, text: str):
    return next(p for p in prompts_for_tag(tag) if p.text == text)


def _exact(prompt, scene: Scene) -> bool:
    return exact_scene(prompt, scene_detections(scene))[0]


def _lenient(prompt, scene: Scene) -> bool:
    return evaluate_image(prompt, scene_detections(scene))[0]


# --- hand-made scenes -------------------------------------------------------------------------


def test_hand_made_extra_object_fails_exact_but_passes_geneval():
    p = _prompt("colors", "a photo of a red circle")
    exact = Scene((ToyObject("circle", "red", 1, 1),))
    clutter = Scene((ToyObject("circle", "red", 1, 1), ToyObject("square", "blue", 3, 3)))
    assert _exact(p, exact) and _lenient(p, exact)
    assert _lenient(p, clutter) and not _exact(p, clutter)  # the gap the recipe's old labels had


def test_hand_made_count_off_by_one_fails():
    p = _prompt("counting", "a photo of three squares")
    three = Scene(tuple(ToyObject("square", "green", 0, c) for c in range(3)))
    two = Scene(tuple(ToyObject("square", "green", 0, c) for c in range(2)))
    four = Scene(tuple(ToyObject("square", "green", 0, c) for c in range(4)))
    assert _exact(p, three)
    assert not _exact(p, two) and not _exact(p, four)
    # A two-object prompt with one object duplicated: GenEval passes it, the exact rule does not.
    q = _prompt("two_object", "a photo of a circle and a cross")
    dup = Scene(
        (ToyObject("circle", "red", 0, 0), ToyObject("cross", "blue", 2, 2), ToyObject("cross", "blue", 3, 0))
    )
    assert _lenient(q, dup) and not _exact(q, dup)


def test_hand_made_wrong_colour_fails():
    p = _prompt("color_attr", "a photo of a red circle and a blue square")
    right = Scene((ToyObject("circle", "red", 0, 0), ToyObject("square", "blue", 2, 2)))
    wrong = Scene((ToyObject("circle", "red", 0, 0), ToyObject("square", "green", 2, 2)))
    swapped = Scene((ToyObject("circle", "blue", 0, 0), ToyObject("square", "red", 2, 2)))
    assert _exact(p, right)
    assert not _exact(p, wrong) and not _exact(p, swapped)


def test_hand_made_swapped_relation_fails():
    p = _prompt("position", "a photo of a circle left of a square")
    right = Scene((ToyObject("circle", "red", 1, 0), ToyObject("square", "blue", 1, 3)))
    swapped = Scene((ToyObject("square", "blue", 1, 0), ToyObject("circle", "red", 1, 3)))
    assert _exact(p, right)
    assert not _exact(p, swapped)


# --- the seeded near-miss scenes ---------------------------------------------------------------


def test_near_miss_kinds_per_tag():
    kinds = {tag: near_miss_kinds(prompts_for_tag(tag)[0]) for tag in GENEVAL_TAGS}
    assert kinds["single_object"] == ("extra_object", "count_off_by_one", "wrong_shape")
    assert kinds["counting"] == ("extra_object", "count_off_by_one", "wrong_shape")
    assert kinds["position"] == ("extra_object", "count_off_by_one", "swapped_relation", "wrong_shape")
    assert "wrong_colour" in kinds["colors"] and "wrong_colour" in kinds["color_attr"]
    assert set().union(*kinds.values()) == set(NEAR_MISS_KINDS)


def test_every_kind_fails_exact_for_every_tag_and_seed():
    checked = {kind: 0 for kind in NEAR_MISS_KINDS}
    for tag, prompts in all_prompts().items():
        for i, p in enumerate(prompts[:24]):
            for seed in range(8):
                assert _exact(p, sample_scene(p, np.random.default_rng([seed, i]))), p.text
                for kind in near_miss_kinds(p):
                    scene = near_miss_scene(p, np.random.default_rng([seed, i, 1]), kind)
                    ok, reasons = exact_scene(p, scene_detections(scene))
                    assert not ok and reasons, (tag, p.text, kind, scene)
                    checked[kind] += 1
    assert all(n >= 100 for n in checked.values()), checked


def test_near_miss_scene_shapes_of_change():
    rng = np.random.default_rng(0)
    p = _prompt("counting", "a photo of four crosses")
    counts = {len(near_miss_scene(p, rng, "count_off_by_one").objects) for _ in range(40)}
    assert counts == {3, 5}
    q = _prompt("colors", "a photo of a red circle")
    extra = near_miss_scene(q, rng, "extra_object")
    assert len(extra.objects) == 2 and ToyObject("circle", "red", 0, 0).shape in {
        o.shape for o in extra.objects
    }
    r = _prompt("position", "a photo of a circle above a square")
    swapped = near_miss_scene(r, np.random.default_rng(3), "swapped_relation")
    exact = sample_scene(r, np.random.default_rng(3))
    assert {(o.row, o.col) for o in swapped.objects} == {(o.row, o.col) for o in exact.objects}
    assert [o.shape for o in swapped.objects] != [o.shape for o in exact.objects]


def test_near_miss_scene_is_seeded():
    p = _prompt("color_attr", "a photo of a red circle and a blue square")
    for kind in near_miss_kinds(p):
        a = near_miss_scene(p, np.random.default_rng(7), kind)
        b = near_miss_scene(p, np.random.default_rng(7), kind)
        assert a == b


def test_near_miss_scene_errors_name_the_kind():
    p = _prompt("single_object", "a photo of a circle")
    with pytest.raises(ValueError, match="swapped_relation"):
        near_miss_scene(p, np.random.default_rng(0), "swapped_relation")
    with pytest.raises(ValueError, match="clutter"):
        near_miss_scene(p, np.random.default_rng(0), "clutter")
    with pytest.raises(ValueError, match="'color'"):
        near_miss(p, np.random.default_rng(0), change="color")


def test_near_miss_default_draw_unchanged_by_change_argument():
    # The eval's prompt near-miss questions must stay the same questions as before.
    p = make_splits(0)["test"][5]
    assert near_miss(p, np.random.default_rng(3)) == near_miss(p, np.random.default_rng(3), change=None)


# --- the recipe's labels ------------------------------------------------------------------------


def test_question_scene_exact_labels():
    rng = np.random.default_rng(0)
    labels = {tag: [] for tag in GENEVAL_TAGS}
    for tag, prompts in all_prompts().items():
        for k in range(60):
            p = prompts[k % len(prompts)]
            scene, label = question_scene(p, rng, distractor_p=0.3, labels="exact")
            assert label == _exact(p, scene)
            labels[tag].append(label)
    for tag, ls in labels.items():
        assert 0.35 < np.mean(ls) < 0.65, (tag, np.mean(ls))  # balanced


def test_question_scene_extra_object_is_no():
    p = _prompt("colors", "a photo of a red circle")
    rng = np.random.default_rng(1)
    seen = lenient_yes = 0
    for _ in range(80):
        scene, label = question_scene(p, rng, 0.0, labels="exact", negatives={"extra_object": 1.0})
        if len(scene.objects) > 1:
            seen += 1
            assert label is False
            lenient_yes += _lenient(p, scene)  # an extra object of another shape: GenEval says yes
        else:
            assert label is True
    assert seen > 20 and lenient_yes > 10


def test_question_scene_geneval_labels_kept_on_request():
    p = _prompt("colors", "a photo of a red circle")
    rng = np.random.default_rng(2)
    clutter_yes = 0
    for _ in range(200):
        scene, label = question_scene(p, rng, 1.0, labels="geneval")
        assert label == _lenient(p, scene)
        clutter_yes += label and len(scene.objects) > 1
    assert clutter_yes > 0  # the old rule labels clutter yes
    with pytest.raises(ValueError, match="labels"):
        question_scene(p, rng, 0.0, labels="lenient")


def test_question_scene_negatives_without_a_kind_for_the_tag():
    p = _prompt("counting", "a photo of two circles")
    with pytest.raises(ValueError, match="counting"):
        for seed in range(20):
            question_scene(
                p, np.random.default_rng(seed), 0.0, labels="exact", negatives={"swapped_relation": 1.0}
            )


def test_parse_weights():
    assert parse_weights("extra_object=2,wrong_shape=0", NEAR_MISS_KINDS, "--negatives") == {
        "extra_object": 2.0,
        "wrong_shape": 0.0,
    }
    assert set(DEFAULT_NEGATIVES) == set(NEAR_MISS_KINDS)
    with pytest.raises(ValueError, match=r"--negatives.*clutter"):
        parse_weights("clutter=1", NEAR_MISS_KINDS, "--negatives")
    with pytest.raises(ValueError, match="not a number"):
        parse_weights("extra_object=x", NEAR_MISS_KINDS, "--negatives")
    with pytest.raises(ValueError, match=">= 0"):
        parse_weights("extra_object=-1", NEAR_MISS_KINDS, "--negatives")
