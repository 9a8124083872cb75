"""GenEval-style prompts harder than GenEval's own, made from GenEval's own vocabulary.

Where it sits: the second rung of `gapray diagnose`'s prompt sets (GenEval, then these, then
T2I-CompBench's complex set and DPG-Bench), loaded as the built-in set "geneval_hard". Every
prompt is in GenEval's schema (tag, include, exclude, prompt), so GenEval's own
evaluate_images.py (and gapray's rules in gapray/eval/geneval.py) score its images. Made
deterministically from a seed, with GenEval's 80 COCO classes (geneval/object_names.txt) and
its colours, relations and number words (geneval/vocab.json), following the rules of GenEval's
create_prompts.py: a coloured object is never "person", plural = name + "es" if it ends in
"s" else + "s", article "an" before a vowel. Three compositions, each one step past a GenEval
task:

- three_object: "a photo of a bench, a cat and a clock" (two_object + one);
- colors_position: "a photo of a red cat left of a blue dog" (position + colours of both);
- counting_colors: "a photo of three green apples" (counting + colour; exactly three, as
  GenEval's counting: include count 3, exclude count 4).

    prompts = geneval_hard(seed=0, per_tag=100)    # 300 Prompts, ids "geneval_hard/00000", ...
"""

from __future__ import annotations

import json
from importlib import resources

import numpy as np

from gapray.types import ObjectSpec, Prompt

TAGS = ("three_object", "colors_position", "counting_colors")


def vocabulary() -> tuple[list[str], list[str], list[str], list[str]]:
    """GenEval's classes, colours, relations and number words, from the shipped files."""
    root = resources.files("gapray.data") / "geneval"
    classes = [
        c.strip() for c in (root / "object_names.txt").read_text(encoding="utf-8").splitlines() if c.strip()
    ]
    vocab = json.loads((root / "vocab.json").read_text(encoding="utf-8"))
    return classes, list(vocab["colors"]), list(vocab["positions"]), list(vocab["numbers"])


def _a(word: str) -> str:
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


def _plural(name: str) -> str:
    return name + "es" if name.endswith("s") else name + "s"


def geneval_hard(seed: int = 0, per_tag: int = 100) -> list[Prompt]:
    """`per_tag` prompts of each composition in TAGS (in that order), no prompt text twice."""
    classes, colors, positions, numbers = vocabulary()
    colourable = [c for c in classes if c != "person"]
    rng = np.random.default_rng(seed)
    out: list[Prompt] = []
    seen: set[str] = set()

    def pick(pool: list[str], k: int) -> list[str]:
        return [pool[i] for i in rng.choice(len(pool), size=k, replace=False)]

    for tag in TAGS:
        made = 0
        while made < per_tag:
            if tag == "three_object":
                a, b, c = pick(classes, 3)
                text = f"a photo of {_a(a)}, {_a(b)} and {_a(c)}"
                include = (ObjectSpec(a), ObjectSpec(b), ObjectSpec(c))
                exclude: tuple[ObjectSpec, ...] = ()
            elif tag == "colors_position":
                a, b = pick(colourable, 2)
                ca, cb = pick(colors, 2)
                rel = positions[int(rng.integers(len(positions)))]
                text = f"a photo of {_a(ca + ' ' + a)} {rel} {_a(cb + ' ' + b)}"
                # GenEval's position schema: the reference object first, the placed one refers to it.
                include = (ObjectSpec(b, color=cb), ObjectSpec(a, color=ca, position=(rel, 0)))
                exclude = ()
            else:
                (a,) = pick(colourable, 1)
                (color,) = pick(colors, 1)
                n = int(rng.integers(2, 5))  # GenEval's counting range, 2..4
                text = f"a photo of {numbers[n]} {color} {_plural(a)}"
                include = (ObjectSpec(a, count=n, color=color),)
                exclude = (ObjectSpec(a, count=n + 1),)
            if text in seen:
                continue
            seen.add(text)
            out.append(
                Prompt(
                    id=f"geneval_hard/{len(out):05d}", text=text, tag=tag, include=include, exclude=exclude
                )
            )
            made += 1
    return out
