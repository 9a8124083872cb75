"""The exact-scene rule: the image shows what the prompt asks and nothing else.

Where it sits: beside GenEval's rules (`geneval.py`), everywhere a verifier scores images (the
toy evaluation, the judge-gaming monitor on training rollouts). GenEval's `include` rule is
lenient: "a red circle" passes with ten other objects around it, so a policy can raise GenEval
(and fool a presence-only judge) by drawing everything everywhere. This rule is strict:

- GenEval's verdict must hold (classes, counts, colours of the top objects, relations);
- each asked class is present exactly as often as the prompt asks (the counts of its include
  entries added up), and its detected colours are exactly the asked ones (an entry without a
  colour takes any colour);
- no object of any other class (an unrecognised blob counts as another class).

Thresholds are GenEval's (`filter_detections`), so "present" means the same in both rules.

    ok, reasons = exact_scene(prompt, detections)     # (False, ["extra objects: 2 square"])
"""

from __future__ import annotations

from collections import Counter

from gapray.eval.geneval import (
    COUNTING_THRESHOLD,
    MAX_OBJECTS,
    THRESHOLD,
    Detection,
    evaluate_image,
    filter_detections,
)
from gapray.types import Prompt


def exact_scene(
    prompt: Prompt,
    detections: list[Detection],
    *,
    threshold: float = THRESHOLD,
    counting_threshold: float = COUNTING_THRESHOLD,
) -> tuple[bool, list[str]]:
    """(correct, reasons it failed; empty when correct) under the exact-scene rule."""
    ok, reasons = evaluate_image(
        prompt, detections, threshold=threshold, counting_threshold=counting_threshold
    )
    thr = counting_threshold if prompt.tag == "counting" else threshold
    objects = filter_detections(detections, thr, MAX_OBJECTS)
    asked: dict[str, list[tuple[int, str | None]]] = {}
    for req in prompt.include:
        asked.setdefault(req.cls, []).append((req.count, req.color))
    extra = {cls: len(found) for cls, found in objects.items() if cls not in asked and found}
    if extra:
        ok = False
        reasons.append("extra objects: " + ", ".join(f"{n} {cls}" for cls, n in sorted(extra.items())))
    for cls, entries in asked.items():
        found = objects.get(cls, [])
        want = sum(count for count, _ in entries)
        if len(found) != want:
            ok = False
            reasons.append(f"expected exactly {want} {cls}, found {len(found)}")
            continue
        # Colours as a multiset: each coloured entry takes its count of that colour, the rest of
        # the detections fill the entries without a colour.
        colours = Counter(d.color for d in found)
        for count, colour in entries:
            if colour is not None:
                colours[colour] -= count
        wrong = {c: n for c, n in colours.items() if n > 0 and not any(col is None for _, col in entries)}
        missing = {c: -n for c, n in colours.items() if n < 0}
        if wrong or missing:
            ok = False
            seen = ", ".join(f"{n} {c}" for c, n in Counter(d.color for d in found).items())
            reasons.append(f"expected the {cls} colours asked for, found {seen}")
    return ok, reasons


def objects_in(prompt: Prompt, detections: list[Detection]) -> int:
    """Objects an image shows, as both rules count them (after GenEval's thresholds)."""
    thr = COUNTING_THRESHOLD if prompt.tag == "counting" else THRESHOLD
    return sum(len(v) for v in filter_detections(detections, thr, MAX_OBJECTS).values())
