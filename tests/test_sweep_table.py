"""gapray/sweep/table.py, plots.py, html.py on hand-made trials: the bootstrap interval worked
out by hand, grouping over seeds, a trial's row from its run directory, the Markdown, the PNGs
(each opens) and the page. Pure: no Ray.

    PYTHONPATH=. python -m pytest tests/test_sweep_table.py -q
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from gapray.config import load_config, to_dict
from gapray.storage import RunDir
from gapray.sweep import html, plots, table


def test_bootstrap_ci_by_hand():
    # Two values 0 and 1: a resample of two draws has mean 0 (p 1/4), 0.5 (1/2) or 1 (1/4), so
    # with 4000 resamples the 2.5th percentile is 0 and the 97.5th is 1; the mean is 0.5.
    assert table.bootstrap_ci([0.0, 1.0], resamples=4000, seed=0) == (0.5, 0.0, 1.0)
    # identical values: a zero-width interval
    assert table.bootstrap_ci([2.0, 2.0, 2.0]) == (2.0, 2.0, 2.0)
    mean, lo, hi = table.bootstrap_ci([3.0])  # one seed: no interval
    assert mean == 3.0 and math.isnan(lo) and math.isnan(hi)
    assert all(math.isnan(v) for v in table.bootstrap_ci([None, float("nan")]))
    # the same draws as numpy's seeded generator makes them
    x = np.array([0.1, 0.4, 0.2])
    idx = np.random.default_rng(7).integers(0, 3, size=(500, 3))
    want = np.percentile(x[idx].mean(axis=1), [2.5, 97.5])
    got = table.bootstrap_ci(list(x), resamples=500, seed=7)
    assert got[0] == pytest.approx(0.7 / 3) and got[1:] == pytest.approx(tuple(want))


def test_headline_drops_per_tag_splits():
    names = ["self_mean_p_yes", "self_mean_p_yes_two_object", "toy_geneval_overall", "toy_geneval_colors"]
    assert table.headline([*names, "toy_non_unification"]) == [
        "self_mean_p_yes",
        "toy_geneval_overall",
        "toy_non_unification",
    ]


ROWS = [
    # beta 0.1: deltas 0.1 and 0.3 over two seeds; beta 0.2: 0.0 and 0.0
    {
        "trial": "a",
        "learner.beta": 0.1,
        "run.seed": 0,
        "status": "ok",
        "attempts": 1,
        "m_start": 0.5,
        "m_final": 0.6,
        "m_delta": 0.1,
        "optimizer_updates": 4.0,
        "images": 32.0,
        "wall_s": 10.0,
        "gpu_hours": 0.0,
    },
    {
        "trial": "b",
        "learner.beta": 0.1,
        "run.seed": 1,
        "status": "ok",
        "attempts": 2,
        "m_start": 0.5,
        "m_final": 0.8,
        "m_delta": 0.3,
        "optimizer_updates": 6.0,
        "images": 32.0,
        "wall_s": 30.0,
        "gpu_hours": 0.0,
    },
    {
        "trial": "c",
        "learner.beta": 0.2,
        "run.seed": 0,
        "status": "ok",
        "attempts": 1,
        "m_start": 0.5,
        "m_final": 0.5,
        "m_delta": 0.0,
        "optimizer_updates": 4.0,
        "images": 32.0,
        "wall_s": 10.0,
        "gpu_hours": 0.0,
    },
    {
        "trial": "d",
        "learner.beta": 0.2,
        "run.seed": 1,
        "status": "error",
        "attempts": 2,
        "error": "boom",
        "wall_s": 5.0,
    },
]


def test_group_over_seeds_by_hand():
    grouped = table.group_over_seeds(ROWS, ["learner.beta", "run.seed"], "run.seed", resamples=4000)
    assert [g["learner.beta"] for g in grouped] == [0.1, 0.2]
    g1, g2 = grouped
    assert (g1["n"], g1["trials"]) == (2, 2) and (g2["n"], g2["trials"]) == (1, 2)  # the failed one
    # mean 0.2; resample means 0.1, 0.2, 0.3 with p 1/4, 1/2, 1/4 -> [0.1, 0.3]
    assert g1["m_delta"] == pytest.approx(0.2)
    assert (g1["m_delta_lo"], g1["m_delta_hi"]) == pytest.approx((0.1, 0.3))
    assert g1["wall_s"] == 20.0 and g1["optimizer_updates"] == 5.0
    assert g2["m_delta"] == 0.0 and math.isnan(g2["m_delta_lo"])
    md = table.markdown(ROWS, grouped, ["learner.beta", "run.seed"], "run.seed")
    assert "| 0.1 | 2 | 0.200 [0.100, 0.300] |" in md
    assert "| d | 0.2 | 1 | error | 2 | — |" in md
    t = table.to_arrow(ROWS)
    assert t.num_rows == 4 and t.column("learner.beta").to_pylist() == [0.1, 0.1, 0.2, 0.2]
    assert t.column("error").to_pylist() == [None, None, None, "boom"]


def _fake_run(root, seed: int, delta: float) -> RunDir:
    run = RunDir(root)
    run.write_config(to_dict(load_config(["model=tiny", "learner.num_ranks=2", "learner.gpus_per_rank=1"])))
    run.log_metrics(0, {"step": 0, "optimizer_updates": 0, "self_mean_p_yes": 0.4})
    run.log_metrics(1, {"step": 1, "images": 16, "pairs": 3, "optimizer_steps": 1, "optimizer_updates": 1})
    run.log_metrics(2, {"step": 2, "images": 16, "pairs": 5, "optimizer_steps": 2, "optimizer_updates": 3})
    run.write_summary(
        {
            "steps": 2,
            "start": {"self_mean_p_yes": 0.4},
            "final": {"self_mean_p_yes": 0.4 + delta},
            "delta": {"self_mean_p_yes": delta},
        }
    )
    run.write_text(
        "trial.json",
        json.dumps(
            {"attempts": [{"start": 0.0, "end": 1800.0, "error": "x"}, {"start": 5000.0, "end": 6800.0}]}
        ),
    )
    return run


def test_trial_row_from_a_run_directory(tmp_path):
    run = _fake_run(tmp_path / "learner.beta=0.1,run.seed=0", 0, 0.05)
    row = table.trial_row(run.root, {"learner.beta": 0.1, "run.seed": 0})
    assert row["trial"] == "learner.beta=0.1,run.seed=0" and row["attempts"] == 2 and row["status"] == "ok"
    assert row["self_mean_p_yes_start"] == 0.4 and row["self_mean_p_yes_delta"] == 0.05
    assert row["optimizer_updates"] == 3 and row["images"] == 32 and row["pairs_per_step"] == 4.0
    # two attempts of 1800 s; GPUs: 2 learner ranks x 1 -> 2 GPU x 1 h = 2 GPU-hours
    assert row["wall_s"] == 3600.0 and row["gpus"] == 2.0 and row["gpu_hours"] == pytest.approx(2.0)
    assert row["cpus"] == 1.0 + 0.5 + 2 * 0.5 and row["cpu_hours"] == pytest.approx(2.5)  # 2.5 CPU x 1 h
    failed = table.trial_row(tmp_path / "never-ran", {"learner.beta": 0.2}, "error", "RayTaskError: x")
    assert failed["status"] == "error" and failed["error"] == "RayTaskError: x" and "images" not in failed


def test_plots_open_and_the_page_links_them(tmp_path):
    axes = ["learner.beta", "run.seed"]
    grouped = table.group_over_seeds(ROWS, axes, "run.seed")
    files = plots.plot_all(ROWS, grouped, ["m"], axes, "run.seed", tmp_path / "plots")
    assert [f.name for f in files] == ["scaling_m__learner.beta.png", "compute_m.png"]
    for f in files:
        with Image.open(f) as im:
            im.load()
            assert im.format == "PNG" and im.size[0] > 100
    report = tmp_path / "runs" / "a" / "report" / "index.html"
    report.parent.mkdir(parents=True)
    report.write_text("<html></html>")
    page = html.write_page(tmp_path, "s", ROWS, grouped, ["m"], axes, "run.seed", files, {"a": report})
    text = page.read_text()
    assert 'href="runs/a/report/index.html"' in text
    assert all(f'src="plots/{f.name}"' in text for f in files)
    assert "boom" in text and "0.2 <small>[" in text


def test_two_keys_group_per_point_and_plot_per_key(tmp_path):
    # 2 x 2 points (learner.beta x learner.beta_per_token) x 2 seeds: one group per point, each
    # the mean of its two seeds; one scaling plot per swept key (the end-to-end sweep in
    # test_sweep.py sweeps one key, to keep the suite short).
    rows = [
        {
            "trial": f"{b}-{t}-{s}",
            "learner.beta": b,
            "learner.beta_per_token": t,
            "run.seed": s,
            "status": "ok",
            "attempts": 1,
            "m_delta": delta + 0.1 * s,
            "wall_s": 1.0,
            "gpu_hours": 0.0,
        }
        for (b, t, delta) in ((0.1, False, 0.0), (0.1, True, 0.2), (0.2, False, 0.4), (0.2, True, 0.6))
        for s in (0, 1)
    ]
    axes = ["learner.beta", "learner.beta_per_token", "run.seed"]
    grouped = table.group_over_seeds(rows, axes, "run.seed")
    points = {(g["learner.beta"], g["learner.beta_per_token"]): g for g in grouped}
    assert sorted(points) == [(0.1, False), (0.1, True), (0.2, False), (0.2, True)]
    assert all(g["n"] == 2 for g in grouped)
    assert points[(0.2, True)]["m_delta"] == pytest.approx(0.65)  # (0.6 + 0.7) / 2
    files = plots.plot_all(rows, grouped, ["m"], axes, "run.seed", tmp_path / "plots")
    assert sorted(f.name for f in files) == [
        "compute_m.png",
        "scaling_m__learner.beta.png",
        "scaling_m__learner.beta_per_token.png",
    ]
