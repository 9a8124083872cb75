"""The toy model's parameter count, as the docs state it, against the shipped checkpoint.

Every "<N>M param..." mention of the toy model (the model.name docstring, configs/model/toy.yaml,
README.md, the checkpoint's RECIPE.md, docs/) must round the measured count to the digits it gives.

    PYTHONPATH=. python -m pytest tests/test_toy_param_count_docs.py -q
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gapray.config import field_docs

ROOT = Path(__file__).resolve().parents[1]
MENTION = re.compile(r"(\d+(?:\.\d+)?(?:-\d+(?:\.\d+)?)?)M[- ]param")
SOURCES = [
    "configs/model/toy.yaml",
    "README.md",
    "gapray/toy/checkpoint/RECIPE.md",
    "docs/toy_recipe_notebook.md",
]


@pytest.fixture(scope="module")
def n_params() -> int:
    from gapray.models import load_model

    m = load_model("toy")
    return sum(p.numel() for p in m.model.parameters())


def _mentions() -> list[tuple[str, str]]:
    found = [("model.name docstring", x) for x in MENTION.findall(field_docs()["model.name"])]
    for rel in SOURCES:
        found += [(rel, x) for x in MENTION.findall((ROOT / rel).read_text())]
    return found


def test_documented_toy_parameter_count_matches_the_checkpoint(n_params):
    assert n_params == 2_316_843  # measured on the shipped gapray/toy/checkpoint (W3, world v2)
    mentions = _mentions()
    assert any(where == "model.name docstring" for where, _ in mentions)
    assert any(where == "configs/model/toy.yaml" for where, _ in mentions)
    for where, text in mentions:
        assert "-" not in text, f"{where}: a range ({text}M) where the count is known"
        digits = len(text.partition(".")[2])
        assert text == f"{n_params / 1e6:.{digits}f}", f"{where}: says {text}M, the model has {n_params}"
