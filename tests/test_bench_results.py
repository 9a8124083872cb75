"""The shared writer of benchmark result files (gapray.bench.write_results)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from gapray.bench import write_results


def test_write_results_json_and_markdown(tmp_path):
    res = {"n": np.int64(3), "x": np.float32(0.5), "rows": np.arange(3), "dir": Path("/a/b")}
    js, md = write_results(tmp_path / "out", "loop-toy-1", res, "| a |\n|---|")
    assert (js.name, md.name) == ("loop-toy-1.json", "loop-toy-1.md")
    assert json.loads(js.read_text()) == {"n": 3, "x": 0.5, "rows": [0, 1, 2], "dir": "/a/b"}
    assert md.read_text() == "| a |\n|---|\n"
    # Rewriting replaces both files whole and leaves no temporary files behind.
    write_results(tmp_path / "out", "loop-toy-1", {"n": 4}, "t\n")
    assert json.loads(js.read_text()) == {"n": 4} and md.read_text() == "t\n"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["loop-toy-1.json", "loop-toy-1.md"]
