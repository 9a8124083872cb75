"""`gapray bench loop` end to end at the smallest size: both loops, every stage, both files."""

from __future__ import annotations

import json

import pytest

from gapray.bench import main
from gapray.bench.loop import STAGES

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_one_step_tiny_bench_times_every_stage_of_both_loops(tmp_path, capsys):
    pytest.importorskip("ray")
    argv = ["loop", "--model", "tiny", "--steps", "1", "--prompts-per-step", "2", "--images-per-prompt", "2"]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    [js] = tmp_path.glob("loop-tiny-*.json")
    assert js.with_suffix(".md").is_file()
    res = json.loads(js.read_text())
    assert res["steps"] == 1 and res["warmup"] == 1
    for name in ("pooled", "sequential"):
        loop = res[name]
        assert [r["warmup"] for r in loop["rows"]] == [True, False]
        assert all(loop["seconds_per_step"][s] > 0 for s in STAGES), (name, loop["seconds_per_step"])
        assert all(v is not None and v > 0 for v in loop["throughput"].values()), (name, loop["throughput"])
        assert loop["images"] == 4 and loop["pairs"] == 2 and loop["syncs"] == 1
    # Same config, prompts and seeds through the same controller: the same images; the pooled
    # sync sends the changed tensors only, the in-memory copy every trainable one.
    assert res["same_images"]
    assert 0 < res["pooled"]["throughput"]["sync_mb"] <= res["sequential"]["throughput"]["sync_mb"]
    assert res["pooled"]["sync_detail"]["receiver_peak_extra_mb"] is not None
    assert set(res["speedup"]) >= {f"time_{s}" for s in STAGES}
    assert res["machine"]["cpu_count"] >= 1
    # Both loops' median sync beside the means, and who ran at which priority.
    for name in ("pooled", "sequential"):
        thr = res[name]["throughput"]
        assert thr["sync_ms_median"] == pytest.approx(thr["sync_ms"])  # one sync: its own figure
    assert isinstance(res["machine"]["niceness"], int)
    assert set(res["pooled"]["worker_niceness"]) == {"generation", "reward", "learner"}
    assert all(-20 <= v <= 19 for v in res["pooled"]["worker_niceness"].values())
    table = capsys.readouterr().out
    assert "| whole step |" in table and "images generated / s" in table and "sync MB / s" in table
    assert "sync MB / s, median sync" in table and "Scheduling priority (nice)" in table
    # sync.transport=auto on one learner rank and the sync pipeline: the compiled graph ran
    assert res["sync_transport"] == "compiled_graph" and "sync.transport=compiled_graph" in table
