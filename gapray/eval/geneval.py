"""GenEval's rules: decide whether one image satisfies one prompt, and aggregate the verdicts.

Where it sits: after generation, an evaluator (or a reward worker used as a detector-based
reward) runs a `Detector` on each image and hands the raw detections to `evaluate_image`
together with the image's `Prompt` (GenEval schema, see `gapray.types`). `score_geneval` turns
per-image verdicts into GenEval's task scores and overall score. No detector lives here: the
rules are pure functions over `Detection` records, so they are tested on hand-made boxes.

    correct, reasons = evaluate_image(prompt, detector.detect(image))
    scores = score_geneval([(prompt, [correct, ...]), ...])   # {"overall", "per_tag", "n_images"}

The rules follow GenEval's evaluation/evaluate_images.py and summary_scores.py
(djghosh13/geneval) with its default options: confidence 0.3 (0.9 for every class when the
prompt's tag is "counting"), at most 16 objects per class, no NMS, position threshold 0.1.
Points where its code had to be read rather than a rule stated are marked "GenEval:" below.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from gapray.types import Prompt

THRESHOLD = 0.3
"""Minimum detector confidence (strictly greater) for a detection to count."""
COUNTING_THRESHOLD = 0.9
"""The same for prompts tagged "counting", applied to every class of the prompt."""
MAX_OBJECTS = 16
"""At most this many detections per class are kept (the most confident)."""
POSITION_THRESHOLD = 0.1
"""Each axis of a centre offset shrinks by this times the two boxes' summed size on that axis."""
COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
"""GenEval's colour vocabulary (its CLIP colour classifier picks one of these per crop)."""

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Detection:
    """One detected object in one image."""

    cls: str
    """Class name (COCO names for GenEval)."""
    box: tuple[float, float, float, float]
    """x0, y0, x1, y1 in pixels; x points right, y points down."""
    score: float = 1.0
    """Detector confidence in [0, 1]."""
    color: str | None = None
    """Colour name if known (GenEval classifies the crop with CLIP), else None."""


class Detector(Protocol):
    """Anything that turns one image into a list of raw detections (all classes, unfiltered)."""

    def detect(self, image) -> list[Detection]: ...


def box_iou(a: Box, b: Box) -> float:
    """IoU in GenEval's pixel convention: a box spans x1 - x0 + 1 pixels (inclusive corners)."""

    def area(x0: float, y0: float, x1: float, y1: float) -> float:
        return max(x1 - x0 + 1, 0) * max(y1 - y0 + 1, 0)

    inter = area(max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3]))
    union = area(*a) + area(*b) - inter
    return inter / union if union else 0.0


def filter_detections(
    detections: Iterable[Detection],
    threshold: float,
    max_objects: int = MAX_OBJECTS,
    nms_iou: float | None = None,
) -> dict[str, list[Detection]]:
    """Group by class, most confident first, keeping those with score > threshold (at most
    `max_objects` per class), then optionally greedy NMS at `nms_iou`.

    GenEval: its threshold is strict (`score > 0.3`), the cap applies before NMS, and NMS is off by
    default (max_overlap=1.0); `nms_iou=None` means the same. Its sort is numpy's default
    (unstable) argsort; here ties keep the detector's order (stable sort), which only matters for
    exactly equal scores.
    """
    by_cls: dict[str, list[Detection]] = {}
    for det in detections:
        if det.score > threshold:
            by_cls.setdefault(det.cls, []).append(det)
    out: dict[str, list[Detection]] = {}
    for cls, dets in by_cls.items():
        pending = sorted(dets, key=lambda d: -d.score)[:max_objects]
        kept: list[Detection] = []
        while pending:
            best = pending.pop(0)
            kept.append(best)
            if nms_iou is not None:
                pending = [d for d in pending if box_iou(best.box, d.box) < nms_iou]
        out[cls] = kept
    return out


def relative_position(box_a: Box, box_b: Box, threshold: float = POSITION_THRESHOLD) -> set[str]:
    """Relations of box A to box B: a subset of {"left of", "right of", "above", "below"}.

    The centre offset A - B is shrunk towards zero on each axis by `threshold` x (width_a +
    width_b) (resp. heights), clipped at zero, then divided by the length of the *unshrunk*
    offset; a component below -0.5 / above +0.5 gives left of / right of (x) and above / below
    (y, pointing down). Two relations at once are possible on a diagonal; overlapping boxes give
    the empty set.
    """
    boxes = np.asarray([box_a, box_b], dtype=np.float64).reshape(2, 2, 2)  # (box, corner, xy)
    center_a, center_b = boxes.mean(axis=1)  # (2,) each
    size_a, size_b = np.abs(boxes[:, 1] - boxes[:, 0])  # (2,) each: width, height
    offset = center_a - center_b
    shrunk = np.maximum(np.abs(offset) - threshold * (size_a + size_b), 0) * np.sign(offset)
    # GenEval: a (near) zero shrunk offset means "no relation", which also avoids dividing by a
    # zero offset length when the centres coincide.
    if np.all(np.abs(shrunk) < 1e-3):
        return set()
    dx, dy = shrunk / np.linalg.norm(offset)
    rels = set()
    if dx < -0.5:
        rels.add("left of")
    if dx > 0.5:
        rels.add("right of")
    if dy < -0.5:
        rels.add("above")
    if dy > 0.5:
        rels.add("below")
    return rels


def evaluate_image(
    prompt: Prompt,
    detections: list[Detection],
    *,
    threshold: float = THRESHOLD,
    counting_threshold: float = COUNTING_THRESHOLD,
    max_objects: int = MAX_OBJECTS,
    nms_iou: float | None = None,
    position_threshold: float = POSITION_THRESHOLD,
) -> tuple[bool, list[str]]:
    """GenEval's verdict for one image: (correct, reasons it failed; empty when correct).

    `detections` are the detector's raw output for the image; thresholds are applied here.
    Include entries are ANDed, exclude entries ORed; every failing clause adds a reason.
    """
    # GenEval: the counting threshold depends on the prompt's tag, not on the entry, so in a
    # counting prompt every class (include and exclude) needs confidence > 0.9.
    thr = counting_threshold if prompt.tag == "counting" else threshold
    objects = filter_detections(detections, thr, max_objects, nms_iou)
    correct = True
    reasons: list[str] = []
    # matched[i]: the top-count objects of include entry i if that entry passed all its checks,
    # else None; position entries are checked against these groups.
    matched: list[list[Detection] | None] = []
    for i, req in enumerate(prompt.include):
        # "Top count" = the `count` most confident detections of the class: colour and position
        # are judged on these only, extra detections are ignored.
        found = objects.get(req.cls, [])[: req.count]
        ok = True
        if len(found) < req.count:
            ok = False
            reasons.append(f"expected {req.cls}>={req.count}, found {len(found)}")
        else:
            if req.color is not None:
                # A detection without a colour (None) never matches: the caller's colour
                # classifier did not say it is the target colour.
                colors = [d.color for d in found]
                n_ok = colors.count(req.color)
                if n_ok < req.count:
                    ok = False
                    seen = ", ".join(f"{colors.count(c)} {c}" for c in dict.fromkeys(colors))
                    reasons.append(
                        f"expected {req.color} {req.cls}>={req.count}, found {n_ok}; colours: {seen}"
                    )
            if req.position is not None and ok:
                rel, target = req.position
                # GenEval indexes its list of groups built so far, so a reference to this entry
                # or a later one crashes there; here it is a clear error instead.
                if target >= i:
                    raise ValueError(
                        f"prompt {prompt.id!r}: include[{i}] position refers to entry {target}; "
                        "GenEval only supports references to earlier entries"
                    )
                group = matched[target]
                if group is None:
                    ok = False
                    reasons.append(f"no target for {req.cls} to be {rel}")
                else:
                    # Every one of this entry's top objects must stand in the relation to every
                    # object of the target group; the first violation ends the check.
                    for obj in found:
                        for tgt in group:
                            true_rels = relative_position(obj.box, tgt.box, position_threshold)
                            if rel not in true_rels:
                                ok = False
                                got = " and ".join(sorted(true_rels)) or "no relation to"
                                reasons.append(f"expected {req.cls} {rel} target, found {got} target")
                                break
                        if not ok:
                            break
        correct = correct and ok
        matched.append(found if ok else None)
    for req in prompt.exclude:
        # "Exactly N" in counting prompts is include count=N plus exclude count=N+1. The count
        # here is after thresholding and the per-class cap, as in GenEval.
        n = len(objects.get(req.cls, []))
        if n >= req.count:
            correct = False
            reasons.append(f"expected {req.cls}<{req.count}, found {n}")
    return correct, reasons


def score_geneval(results: Sequence[tuple[Prompt, Sequence[bool]]]) -> dict:
    """GenEval's summary: {"overall": float, "per_tag": {tag: float}, "n_images": int}.

    `results` pairs each prompt with the verdicts of its images (GenEval uses 4 per prompt). A tag
    scores the mean correctness over all its images (so prompts weigh by their image count);
    overall is the unweighted mean of the tag scores present. n_images counts every image.

    GenEval: its pandas groupby drops rows whose tag is missing, so prompts with tag None count
    in n_images but in no tag score; a tag with no images is absent rather than scored 0.
    """
    by_tag: dict[str, list[bool]] = {}
    n_images = 0
    for prompt, verdicts in results:
        n_images += len(verdicts)
        if prompt.tag is not None and len(verdicts):
            by_tag.setdefault(prompt.tag, []).extend(bool(v) for v in verdicts)
    if not by_tag:
        raise ValueError("score_geneval: no tagged images to score")
    per_tag = {tag: float(np.mean(v)) for tag, v in by_tag.items()}
    return {"overall": float(np.mean(list(per_tag.values()))), "per_tag": per_tag, "n_images": n_images}
