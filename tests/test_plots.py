"""Curves PNG from metrics: dense, sparse (eval-only) and missing series.

PYTHONPATH=. pytest tests/test_plots.py
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import pytest
from PIL import Image

from gapray import plots
from gapray.plots import plot_curves
from gapray.storage import RunDir


def _rows():
    rows = [{"step": s, "mean_p_yes": 0.5 + 0.01 * s, "loss": 1.0 / (s + 1)} for s in range(30)]
    for r in rows[::10]:
        r["toy_geneval_overall"] = 0.3 + r["step"] / 100  # eval rows only
        r["toy_non_unification"] = None
    return rows


def test_plot_from_run_dir_sparse_and_missing(tmp_path, monkeypatch):
    run = RunDir(tmp_path)
    for r in _rows():
        run.log_metrics(r["step"], {k: v for k, v in r.items() if k != "step"})
    titles = []
    real_close = plt.close

    def spy_close(fig):
        titles.extend(ax.get_title() for ax in fig.axes if ax.get_visible())
        real_close(fig)

    monkeypatch.setattr(plots.plt, "close", spy_close)
    out = plot_curves(run.read_metrics(), tmp_path / "curves.png")
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] > 100
    assert "pass rate (judged) (no data)" in titles and "non-unification (eval=toy) (no data)" in titles
    assert "toy GenEval overall (eval=toy)" in titles and "loss" in titles
    assert not any("eval=self" in t for t in titles)  # another evaluator's panels are left out
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["curves.png"]  # no temp left


def test_plot_from_rows_custom_series(tmp_path):
    rows = [{"step": 0, "a": 1.0}, {"step": 1, "b": 2}, {"step": 2, "a": None, "b": float("nan")}]
    out = plot_curves(rows, tmp_path / "c.png", series=[("a", "A"), ("b", "B"), ("zz", "missing")])
    with Image.open(out) as im:
        im.verify()


def test_plot_empty_metrics(tmp_path):
    out = plot_curves([], tmp_path / "empty.png")
    with Image.open(out) as im:
        assert im.format == "PNG"


def test_main_writes_curves(tmp_path, capsys):
    run = RunDir(tmp_path)
    run.log_metrics(0, {"loss": 1.0})
    plots.main([str(tmp_path)])
    assert (tmp_path / "curves.png").is_file()
    with pytest.raises(SystemExit):
        plots.main([])
