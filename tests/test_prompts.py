"""Tests for gapray/data/prompts.py: shipped sets load, round trips hold, bad files name their line.

Run: python -m pytest tests/test_prompts.py -q
"""

from __future__ import annotations

import json
from collections import Counter
from importlib import resources

import pytest

from gapray.data.prompts import PromptFileError, builtin_names, load_prompts

GENEVAL_TAGS = {
    "single_object": 80,
    "two_object": 99,
    "counting": 80,
    "colors": 94,
    "position": 100,
    "color_attr": 100,
}


def test_geneval_builtin():
    prompts = load_prompts("geneval")
    assert len(prompts) == 553
    assert Counter(p.tag for p in prompts) == GENEVAL_TAGS
    assert prompts[0].id == "geneval/00000" and prompts[552].id == "geneval/00552"
    assert len({p.id for p in prompts}) == 553


def test_geneval_round_trip():
    lines = (
        (resources.files("gapray.data") / "geneval" / "evaluation_metadata.jsonl").read_text().splitlines()
    )
    prompts = load_prompts("geneval")
    for line, prompt in zip(lines, prompts, strict=True):
        assert prompt.to_geneval() == json.loads(line)


def test_t2i_compbench():
    color = load_prompts("t2i_compbench/color_train")
    assert len(color) == 700
    assert {p.tag for p in color} == {"color"}
    assert color[0].text == "a green bench and a red car"  # CRLF stripped
    assert color[0].id == "t2i_compbench/color_train/00000"
    assert len(load_prompts("t2i_compbench/3d_spatial_val")) == 300
    assert load_prompts("t2i_compbench/non_spatial_val")[0].tag == "non_spatial"
    train = load_prompts("t2i_compbench_train")
    assert len(train) == 8 * 700
    assert len({p.id for p in train}) == len(train)
    assert Counter(p.tag for p in train) == {
        c: 700
        for c in ("color", "shape", "texture", "spatial", "non_spatial", "complex", "numeracy", "3d_spatial")
    }


def test_every_builtin_loads():
    for name in builtin_names():
        assert load_prompts(name)


def test_txt_file(tmp_path):
    f = tmp_path / "shape_val.txt"
    f.write_text("a round clock\n\n  \r\na square table\r\n")
    prompts = load_prompts(f)
    assert [p.text for p in prompts] == ["a round clock", "a square table"]
    assert [p.id for p in prompts] == ["shape_val/00000", "shape_val/00003"]
    assert {p.tag for p in prompts} == {"shape"}
    g = tmp_path / "mine.txt"
    g.write_text("hello\n")
    assert load_prompts(str(g))[0].tag == "mine"


def test_jsonl_file(tmp_path):
    f = tmp_path / "prompts.jsonl"
    rec = {"tag": "colors", "include": [{"class": "car", "count": 1, "color": "red"}], "prompt": "a red car"}
    f.write_text(json.dumps(rec) + "\n\n" + json.dumps(rec) + "\n")
    prompts = load_prompts(f)
    assert [p.id for p in prompts] == ["prompts/00000", "prompts/00002"]
    assert prompts[0].to_geneval() == rec


GOOD = json.dumps({"tag": "single_object", "include": [{"class": "cow", "count": 1}], "prompt": "a cow"})


@pytest.mark.parametrize(
    ("bad_line", "expected"),
    [
        ('{"tag": "x", "include": [', "line 3: invalid JSON"),
        (
            json.dumps({"tag": "counting", "include": [{"class": "cow", "count": 0}], "prompt": "zero cows"}),
            "line 3: field 'include[0]': field 'count' must be an integer >= 1, got 0",
        ),
        (
            json.dumps(
                {
                    "tag": "position",
                    "include": [{"class": "cow"}, {"class": "dog", "position": ["left of", 5]}],
                    "prompt": "a dog left of a cow",
                }
            ),
            "line 3: field 'include[1].position'",
        ),
        (
            json.dumps(
                {
                    "tag": "position",
                    "include": [{"class": "cow", "position": ["left of", 1]}, {"class": "dog"}],
                    "prompt": "a cow left of a dog",
                }
            ),
            "line 3: field 'include[0].position' must refer to an earlier entry",
        ),
        (json.dumps({"tag": "single_object", "include": [{"class": "cow"}]}), "line 3: field 'prompt'"),
        (json.dumps({"tag": "single_object", "include": [], "prompt": "nothing"}), "line 3: field 'include'"),
        ("[1, 2]", "line 3: expected a JSON object"),
    ],
)
def test_bad_jsonl_line(tmp_path, bad_line, expected):
    f = tmp_path / "prompts.jsonl"
    f.write_text(f"{GOOD}\n{GOOD}\n{bad_line}\n{GOOD}\n")
    with pytest.raises(PromptFileError) as info:
        load_prompts(f)
    msg = str(info.value)
    assert msg.startswith(str(f)) and expected in msg, msg


def test_error_message_format(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bad = {"tag": "counting", "include": [{"class": "cow", "count": 0}], "prompt": "zero cows"}
    (tmp_path / "prompts.jsonl").write_text("\n".join([GOOD, GOOD, json.dumps(bad)]) + "\n")
    with pytest.raises(PromptFileError) as info:
        load_prompts("prompts.jsonl")
    assert (
        str(info.value)
        == "prompts.jsonl line 3: field 'include[0]': field 'count' must be an integer >= 1, got 0"
    )


@pytest.mark.parametrize("name", ["empty.jsonl", "empty.txt"])
def test_empty_file(tmp_path, name):
    f = tmp_path / name
    f.write_text("\n  \n")
    with pytest.raises(PromptFileError, match="no prompts"):
        load_prompts(f)


def test_missing_file_and_unknown_name(tmp_path):
    with pytest.raises(PromptFileError, match=r"nope\.jsonl"):
        load_prompts(tmp_path / "nope.jsonl")
    with pytest.raises(PromptFileError, match="t2i_compbench/colour_train"):
        load_prompts("t2i_compbench/colour_train")
    assert issubclass(PromptFileError, ValueError)
