"""The diagnosis's prompt sets: the harder GenEval-style compositions (deterministic, GenEval's
schema and vocabulary), DPG-Bench's shipped prompts, the toy world's sets by difficulty.

    PYTHONPATH=. python -m pytest tests/test_diagnose_sets.py -q
"""

from __future__ import annotations

import json
from collections import Counter

import pytest

from gapray.data.geneval_hard import TAGS, geneval_hard, vocabulary
from gapray.data.prompts import PromptFileError, _parse_jsonl, builtin_names, load_prompts
from gapray.diagnose.sets import default_sets, load_sets, slug
from gapray.eval.judge_eval import TOY_DIFFICULTY, load_set


def test_geneval_hard_is_deterministic_geneval_schema_from_genevals_vocabulary():
    prompts = load_prompts("geneval_hard")
    assert prompts == geneval_hard(seed=0) and prompts != geneval_hard(seed=1)
    assert Counter(p.tag for p in prompts) == {t: 100 for t in TAGS}
    assert len({p.text for p in prompts}) == len(prompts)
    classes, colors, positions, numbers = vocabulary()
    # Each prompt survives GenEval's own line format and gapray's loader checks unchanged.
    text = "".join(json.dumps(p.to_geneval()) + "\n" for p in prompts)
    again = _parse_jsonl(text, "geneval_hard.jsonl", "geneval_hard")
    assert [(p.text, p.tag, p.include, p.exclude) for p in again] == [
        (p.text, p.tag, p.include, p.exclude) for p in prompts
    ]
    for p in prompts:
        assert all(o.cls in classes for o in (*p.include, *p.exclude))
        assert all(o.color in colors and o.cls != "person" for o in p.include if o.color)
        if p.tag == "three_object":
            assert len({o.cls for o in p.include}) == 3
        if p.tag == "colors_position":
            ref, placed = p.include
            assert placed.position[1] == 0 and placed.position[0] in positions
            assert (
                p.text
                == f"a photo of {'an' if placed.color[0] in 'aeiou' else 'a'} {placed.color} {placed.cls} "
                + (f"{placed.position[0]} {'an' if ref.color[0] in 'aeiou' else 'a'} {ref.color} {ref.cls}")
            )
        if p.tag == "counting_colors":
            (inc,), (exc,) = p.include, p.exclude
            assert 2 <= inc.count <= 4 and exc.count == inc.count + 1 and numbers[inc.count] in p.text


def test_dpg_bench_is_shipped_with_its_licence():
    prompts = load_prompts("dpg_bench")
    assert len(prompts) == 1065 and {p.tag for p in prompts} == {"dpg_bench"}
    assert prompts[0].id == "dpg_bench/00000" and prompts[0].text.startswith("An expansive field")
    assert "dpg_bench" in builtin_names() and "geneval_hard" in builtin_names()
    from importlib import resources

    assert "Apache License" in (resources.files("gapray.data") / "dpg_bench" / "LICENSE").read_text()


def test_toy_sets_cut_the_test_split_by_difficulty():
    whole = load_set("toy")
    parts = [load_set(n) for n in ("toy/easy", "toy/medium", "toy/hard")]
    assert sum(map(len, parts)) == len(whole)
    for name, part in zip(TOY_DIFFICULTY, parts, strict=True):
        assert part and {p.tag for p in part} <= set(TOY_DIFFICULTY[name])
    assert default_sets("toy") == ("toy/easy", "toy/medium", "toy/hard")
    assert default_sets("/ckpt/Janus-Pro-7B") == (
        "geneval",
        "geneval_hard",
        "t2i_compbench/complex_val",
        "dpg_bench",
    )
    assert slug("t2i_compbench/complex_val") == "t2i_compbench_complex_val"
    with pytest.raises(PromptFileError, match="share one output folder"):
        load_sets(["toy/easy", "toy_easy"])
