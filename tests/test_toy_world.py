"""Tests of the toy world (gapray/toy): prompts and splits, scene sampling, near misses, the
renderer and the exact detector, judged with the GenEval rule engine.

    python -m pytest tests/test_toy_world.py -q
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gapray.eval.geneval import Detection, evaluate_image, relative_position
from gapray.toy.detector import MIN_IOU, UNKNOWN, ToyDetector, scene_detections
from gapray.toy.render import SHAPE_MASKS, render, render_array, render_batch
from gapray.toy.world import (
    CELL,
    COLORS,
    COUNTS,
    GRID,
    MAX_EVAL_PROMPTS,
    MIN_TEST_PROMPTS,
    PALETTE,
    PLURALS,
    SHAPES,
    SPLITS,
    Scene,
    ToyObject,
    all_prompts,
    colour_caption,
    held_apart,
    make_splits,
    near_miss,
    prompts_for_tag,
    sample_scene,
)
from gapray.types import GENEVAL_TAGS, Prompt

GENEVAL_METADATA = Path(__file__).resolve().parents[1] / "gapray/data/geneval/evaluation_metadata.jsonl"


def _every_prompt() -> list[Prompt]:
    return [p for ps in all_prompts().values() for p in ps]


def _random_scene(rng: np.random.Generator) -> Scene:
    """Any layout, 0-16 objects: wider than what prompts produce, to stress the detector."""
    n = int(rng.integers(0, GRID * GRID + 1))
    cells = rng.choice(GRID * GRID, size=n, replace=False)
    objs = [
        ToyObject(
            SHAPES[rng.integers(len(SHAPES))],
            COLORS[rng.integers(len(COLORS))],
            int(c) // GRID,
            int(c) % GRID,
        )
        for c in cells
    ]
    return Scene(tuple(sorted(objs, key=lambda o: (o.row, o.col))))


def _blank() -> np.ndarray:
    return np.full((32, 32, 3), 255, dtype=np.uint8)


# --- prompts and splits -----------------------------------------------------------------------


def test_prompt_counts_and_unique_texts():
    sizes = {tag: len(ps) for tag, ps in all_prompts().items()}
    assert sizes == {
        "single_object": 8,
        "two_object": 56,
        "counting": 24,
        "colors": 48,
        "position": 224,
        "color_attr": 1680,
    }
    texts = [p.text for p in _every_prompt()]
    assert len(set(texts)) == len(texts)


def test_prompts_follow_geneval_schema():
    """Same templates and include/exclude layout as GenEval's evaluation_metadata.jsonl."""
    by_text = {p.text: p.to_geneval() for p in _every_prompt()}
    assert by_text["a photo of a circle"] == {
        "tag": "single_object",
        "include": [{"class": "circle", "count": 1}],
        "prompt": "a photo of a circle",
    }
    assert by_text["a photo of a circle and a square"]["include"] == [
        {"class": "circle", "count": 1},
        {"class": "square", "count": 1},
    ]
    assert by_text["a photo of three circles"] == {
        "tag": "counting",
        "include": [{"class": "circle", "count": 3}],
        "exclude": [{"class": "circle", "count": 4}],
        "prompt": "a photo of three circles",
    }
    assert by_text["a photo of four crosses"]["exclude"] == [{"class": "cross", "count": 5}]
    assert by_text["a photo of a red circle"]["include"] == [{"class": "circle", "count": 1, "color": "red"}]
    assert by_text["a photo of an orange triangle"]["tag"] == "colors"  # GenEval's "an" before a vowel
    assert by_text["a photo of a circle left of a square"] == {
        "tag": "position",
        "include": [
            {"class": "square", "count": 1},
            {"class": "circle", "count": 1, "position": ["left of", 0]},
        ],
        "prompt": "a photo of a circle left of a square",
    }
    assert by_text["a photo of a red circle and a blue square"]["include"] == [
        {"class": "circle", "count": 1, "color": "red"},
        {"class": "square", "count": 1, "color": "blue"},
    ]
    counts = {p.include[0].count for p in prompts_for_tag("counting")}
    assert counts == set(COUNTS)
    for p in prompts_for_tag("two_object") + prompts_for_tag("position") + prompts_for_tag("color_attr"):
        assert p.include[0].cls != p.include[1].cls
    for p in prompts_for_tag("color_attr"):
        assert p.include[0].color != p.include[1].color
    # Round trip through GenEval's JSON form.
    for p in _every_prompt():
        assert Prompt.from_geneval(json.loads(json.dumps(p.to_geneval())), p.id) == p


def test_same_keys_and_key_order_as_geneval_metadata():
    reference = {}
    for line in GENEVAL_METADATA.read_text().splitlines():
        d = json.loads(line)
        reference.setdefault(d["tag"], d)
    for tag, ps in all_prompts().items():
        ours, theirs = ps[0].to_geneval(), reference[tag]
        assert list(ours) == list(theirs)
        assert [list(e) for e in ours["include"]] == [list(e) for e in theirs["include"]]


def test_splits_disjoint_cover_all_tags_and_seeded():
    splits = make_splits(seed=0)
    assert list(splits) == list(SPLITS)
    texts = {k: {p.text for p in ps} for k, ps in splits.items()}
    assert not texts["train"] & texts["val"] and not texts["train"] & texts["test"]
    assert not texts["val"] & texts["test"]
    assert set().union(*texts.values()) <= {p.text for p in _every_prompt()}
    for split, ps in splits.items():
        assert {p.tag for p in ps} == set(GENEVAL_TAGS)
        assert [p.id for p in ps] == [f"toy-{split}/{i:05d}" for i in range(len(ps))]
    for tag, every in all_prompts().items():
        n = {k: sum(p.tag == tag for p in ps) for k, ps in splits.items()}
        # Every tag of test has at least MIN_TEST_PROMPTS distinct prompts; eval splits are capped.
        assert MIN_TEST_PROMPTS <= n["test"] <= MAX_EVAL_PROMPTS
        assert 1 <= n["val"] <= MAX_EVAL_PROMPTS and n["train"] >= 1
        assert n["val"] == min(MAX_EVAL_PROMPTS, max(1, round(0.2 * len(every))), len(every) - n["test"] - 1)
    assert make_splits(seed=0) == splits
    assert make_splits(seed=0)["train"] is not splits["train"]  # fresh lists: callers may edit theirs
    assert {p.text for p in make_splits(seed=1)["test"]} != texts["test"]


def test_held_apart_compositions_never_in_train():
    for seed in (0, 1):
        apart = held_apart(seed)
        splits = make_splits(seed)
        # One colour for each shape, four disjoint shape pairs.
        assert sorted(s for s, _ in apart.colour_shapes) == sorted(SHAPES)
        assert len(apart.shape_pairs) == 4 and len(set().union(*apart.shape_pairs)) == 8
        train_pairs = {(o.cls, o.color) for p in splits["train"] for o in p.include}
        train_shape_sets = [{o.cls for o in p.include} for p in splits["train"]]
        assert not train_pairs & apart.colour_shapes
        assert not any(pair <= shapes for pair in apart.shape_pairs for shapes in train_shape_sets)
        for split in ("val", "test"):
            held = [p for p in splits[split] if apart.holds(p)]
            assert len(held) <= len(splits[split]) // 2 + len(GENEVAL_TAGS)
            # Both kinds of composition are measured on each eval split.
            assert any(p.tag == "colors" for p in held) and any(p.tag == "two_object" for p in held)
    # holds() on hand-made prompts: a held-apart colour on a shape, a held-apart shape pair.
    (shape, colour) = sorted(held_apart(0).colour_shapes)[0]
    pair = sorted(sorted(p) for p in held_apart(0).shape_pairs)[0]
    by_text = {p.text: p for p in _every_prompt()}
    assert held_apart(0).holds(by_text[f"a photo of {_article(colour)} {colour} {shape}"])
    assert held_apart(0).holds(
        by_text[f"a photo of {_article(pair[0])} {pair[0]} and {_article(pair[1])} {pair[1]}"]
    )
    assert not held_apart(0).holds(by_text[f"a photo of two {PLURALS[shape]}"])


def test_colour_captions_hold_no_held_apart_composition_and_no_split_text():
    for seed in (0, 1):
        apart = held_apart(seed)
        texts = {p.text for split in make_splits(seed).values() for p in split}
        rng = np.random.default_rng(3)
        captions = [colour_caption(rng, seed) for _ in range(300)]
        for c in captions:
            shapes = [o.cls for o in c.include]
            colours = [o.color for o in c.include]
            assert len(shapes) in (3, 4) and len(set(shapes)) == len(shapes) == len(set(colours))
            assert c.text == "a photo of " + " and ".join(
                f"{_article(col)} {col} {shape}" for shape, col in zip(shapes, colours, strict=True)
            )
            assert not apart.holds(c) and c.text not in texts and c.id == "caption"
            assert all(o.count == 1 for o in c.include) and c.exclude == ()
        assert {len(c.include) for c in captions} == {3, 4}
        assert len({c.text for c in captions}) > 250  # many distinct texts, not a few repeated
        # Every shape and every colour the held-apart rule leaves free shows up.
        assert {o.cls for c in captions for o in c.include} == set(SHAPES)
        assert {o.color for c in captions for o in c.include} == set(COLORS)
    a, b = np.random.default_rng(9), np.random.default_rng(9)
    assert [colour_caption(a).text for _ in range(5)] == [colour_caption(b).text for _ in range(5)]
    # A caption's scene has exactly its objects, each asked colour on its shape.
    scene = sample_scene(captions[0], np.random.default_rng(0))
    assert sorted((o.shape, o.color) for o in scene.objects) == sorted(
        (o.cls, o.color) for o in captions[0].include
    )


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def test_shape_masks_span_their_box_and_stay_apart():
    assert set(SHAPE_MASKS) == set(SHAPES)
    for name, mask in SHAPE_MASKS.items():
        assert mask.shape == (6, 6) and mask.any(0).all() and mask.any(1).all(), name
        assert mask.sum() >= 16, name
    for a in SHAPES:
        for b in SHAPES:
            if a < b:
                inter = (SHAPE_MASKS[a] & SHAPE_MASKS[b]).sum()
                union = (SHAPE_MASKS[a] | SHAPE_MASKS[b]).sum()
                # Below the detector's MIN_IOU, so no shape is credited as another.
                assert inter / union <= 2 / 3 + 1e-9 < MIN_IOU, (a, b)


# --- scenes and near misses -------------------------------------------------------------------


def test_sample_scene_satisfies_prompt():
    rng = np.random.default_rng(0)
    det = ToyDetector()
    for p in _every_prompt():
        for _ in range(2):
            scene = sample_scene(p, rng)
            # Only the prompt's objects are drawn, exactly `count` of each entry.
            assert len(scene.objects) == sum(o.count for o in p.include)
            ok, reasons = evaluate_image(p, det.detect(render(scene)))
            assert ok, (p.text, scene, reasons)
            if p.tag == "position":
                # Only the stated relation holds, so any other relation is a sure near miss.
                a, b = (
                    next(o for o in scene.objects if o.shape == e.cls) for e in (p.include[1], p.include[0])
                )
                assert relative_position(a.box, b.box) == {p.include[1].position[0]}


def test_sample_scene_is_seeded():
    p = prompts_for_tag("color_attr")[7]
    assert sample_scene(p, np.random.default_rng(3)) == sample_scene(p, np.random.default_rng(3))


def test_near_miss_changes_one_attribute_and_fails():
    rng = np.random.default_rng(1)
    det = ToyDetector()
    by_tag = all_prompts()
    kinds_seen: dict[str, set[str]] = {tag: set() for tag in GENEVAL_TAGS}
    for tag, ps in by_tag.items():
        texts = {p.text for p in ps}
        for p in ps[:: max(1, len(ps) // 24)]:
            for _ in range(4):
                nm = near_miss(p, rng)
                assert nm.tag == p.tag and nm.text in texts and nm.text != p.text
                # Exactly one attribute differs: compare the entries' (class, colour, count, relation).
                diffs = [
                    (k, x, y)
                    for a, b in zip(p.include, nm.include, strict=True)
                    for k, x, y in (
                        ("shape", a.cls, b.cls),
                        ("color", a.color, b.color),
                        ("count", a.count, b.count),
                        ("relation", a.position, b.position),
                    )
                    if x != y
                ]
                assert len(diffs) == 1, (p.text, nm.text, diffs)
                kinds_seen[tag].add(diffs[0][0])
                ok, _ = evaluate_image(nm, det.detect(render(sample_scene(p, rng))))
                assert not ok, (p.text, nm.text)
    assert kinds_seen["counting"] == {"shape", "count"}
    assert kinds_seen["position"] == {"shape", "relation"}
    assert kinds_seen["color_attr"] == {"shape", "color"}
    assert kinds_seen["colors"] == {"shape", "color"}


# --- rendering --------------------------------------------------------------------------------


def test_render_deterministic_and_batch():
    rng = np.random.default_rng(2)
    scenes = [_random_scene(rng) for _ in range(8)]
    batch = render_batch(scenes)
    assert batch.shape == (8, 32, 32, 3) and batch.dtype == np.uint8
    for scene, arr in zip(scenes, batch, strict=True):
        img = render(scene)
        assert img.size == (32, 32) and img.mode == "RGB"
        assert np.array_equal(np.asarray(img), arr)
        assert np.array_equal(render_array(scene), arr)
    assert render_batch([]).shape == (0, 32, 32, 3)
    # Crisp: every pixel is white or exactly a palette colour.
    allowed = {(255, 255, 255), *PALETTE.values()}
    assert {tuple(px) for px in batch.reshape(-1, 3)} <= allowed


def test_render_draws_mask_in_cell_centre():
    img = render_array(Scene((ToyObject("triangle", "blue", 2, 1),)))
    fg = (img != 255).any(-1)
    assert np.array_equal(fg[17:23, 9:15], SHAPE_MASKS["triangle"])
    assert fg.sum() == SHAPE_MASKS["triangle"].sum()
    assert tuple(img[22, 9]) == PALETTE["blue"]


def test_scene_and_object_validation():
    with pytest.raises(ValueError):
        ToyObject("hexagon", "red", 0, 0)
    with pytest.raises(ValueError):
        ToyObject("circle", "pink", 0, 0)
    with pytest.raises(ValueError):
        ToyObject("circle", "red", 4, 0)
    with pytest.raises(ValueError):
        Scene((ToyObject("circle", "red", 0, 0), ToyObject("square", "blue", 0, 0)))


# --- detector ---------------------------------------------------------------------------------


def test_detector_exact_on_rendered_scenes():
    rng = np.random.default_rng(3)
    det = ToyDetector()
    prompts = _every_prompt()
    for tag in GENEVAL_TAGS:
        ps = [p for p in prompts if p.tag == tag]
        for i in range(50):
            scene = sample_scene(ps[i % len(ps)], rng)
            assert det.detect(render(scene)) == scene_detections(scene)
    scenes = [_random_scene(rng) for _ in range(200)]
    got = det.detect_batch(render_batch(scenes))
    assert got == [scene_detections(s) for s in scenes]


def test_detector_box_and_fields():
    (d,) = ToyDetector().detect(render(Scene((ToyObject("cross", "purple", 3, 2),))))
    assert d == Detection(cls="cross", box=(17.0, 25.0, 23.0, 31.0), score=1.0, color="purple")


def test_detector_robust_to_noise_and_colour_shift():
    rng = np.random.default_rng(4)
    det = ToyDetector()
    for _ in range(100):
        scene = _random_scene(rng)
        img = render_array(scene).astype(np.float32)
        for o in scene.objects:  # a slight colour shift per object, as a VQ decoder might make
            cell = img[o.row * CELL : (o.row + 1) * CELL, o.col * CELL : (o.col + 1) * CELL]
            fg = (cell != 255).any(-1)
            cell[fg] += rng.uniform(-25, 25, size=3)
        img += rng.normal(0, 20, size=img.shape)  # sigma 20 pixel noise
        noisy = np.clip(np.rint(img), 0, 255).astype(np.uint8)
        assert det.detect(noisy) == scene_detections(scene)
        assert det.detect(Image.fromarray(noisy)) == scene_detections(scene)


def test_detector_tolerates_one_pixel_offset():
    img = _blank()
    img[9:15, 2:8][SHAPE_MASKS["circle"]] = PALETTE["green"]  # cell (1, 0), one pixel right
    assert ToyDetector().detect(img) == [Detection("circle", (2.0, 9.0, 8.0, 15.0), 1.0, "green")]


@pytest.mark.parametrize(
    "blob",
    [
        np.s_[1:7, 3:5],  # a vertical bar
        np.s_[2:5, 2:5],  # a 3x3 block
        np.s_[0:8, 0:8],  # the whole cell
        np.s_[1:3, 1:7],  # a horizontal bar
    ],
)
def test_non_shape_blob_is_unknown(blob):
    img = _blank()
    cell = img[8:16, 16:24]  # (8, 8, 3) view: cell (1, 2)
    cell[blob] = PALETTE["red"]
    (d,) = ToyDetector().detect(img)
    assert d.cls == UNKNOWN and d.score == 1.0 and d.color == "red"
    # "unknown" never satisfies a prompt about a shape.
    ok, _ = evaluate_image(prompts_for_tag("single_object")[0], [d])
    assert not ok


def test_speckle_is_ignored():
    img = _blank()
    img[3, 3] = img[20, 28] = img[12, 5] = PALETTE["blue"]  # isolated pixels
    img[25:27, 25:27] = PALETTE["red"]  # a 4-pixel clump: below MIN_PIXELS
    assert ToyDetector().detect(img) == []
    with pytest.raises(ValueError):
        ToyDetector().detect(np.zeros((16, 16, 3), dtype=np.uint8))
