"""Training curves as one PNG: a panel per metric against step.

Where it sits: the end of a run (and any reader of a run directory) turns the metrics that
`RunDir.log_metrics` wrote into `curves.png`. Per-step metrics (reward, pass rate, loss) are
dense lines; eval metrics appear only on eval steps (null elsewhere), so they are drawn as
markers on their non-null points. A series with no data gets an empty panel titled "(no data)"
rather than an error, so a plot of a half-finished run always comes out.

    plot_curves(RunDir("runs/toy").read_metrics(), "runs/toy/curves.png")
    python -m gapray.plots runs/toy          # writes runs/toy/curves.png
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: runs on cluster nodes and in CI without a display

import matplotlib.pyplot as plt  # after choosing the backend
import pyarrow as pa

from gapray.storage.atomic import atomic_path

DEFAULT_SERIES: list[tuple[str, str]] = [
    ("mean_p_yes", "reward (mean P(yes))"),
    ("pass_rate", "pass rate (judged)"),
    ("true_pass_rate", "true pass rate (exact verifier)"),
    ("toy_geneval_overall", "toy GenEval overall (eval=toy)"),
    ("self_non_unification", "non-unification (eval=self)"),
    ("toy_non_unification", "non-unification (eval=toy)"),
    ("loss", "loss"),
]
"""(column, panel title) drawn when `series` is None; column names as logged by the controller
(evaluation columns carry their evaluator's prefix, gapray.eval.stage)."""
EVAL_PREFIXES = ("toy_", "self_", "true_")
"""Evaluation and ground-truth columns: their panels are drawn only when the run logged them
(the evaluator it used; the verifier where its prompts have a ground truth)."""


def _columns(metrics: pa.Table | Sequence[Mapping[str, Any]]) -> dict[str, list[Any]]:
    if isinstance(metrics, pa.Table):
        return metrics.to_pydict()
    cols: dict[str, list[Any]] = {}
    for i, row in enumerate(metrics):
        for k, v in row.items():
            cols.setdefault(k, [None] * i).append(v)
        for col in cols.values():  # rows without a column get None there
            if len(col) == i:
                col.append(None)
    return cols


def _points(steps: list[Any], values: list[Any]) -> tuple[list[float], list[float]]:
    """Non-null, finite, numeric (step, value) pairs sorted by step."""
    pts = []
    for s, v in zip(steps, values, strict=True):
        if s is None or v is None or isinstance(v, (str, bytes)):
            continue
        v = float(v)
        if math.isfinite(v):
            pts.append((float(s), v))
    pts.sort()
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_curves(
    metrics: pa.Table | Sequence[Mapping[str, Any]],
    out_png: str | os.PathLike[str],
    series: Sequence[tuple[str, str]] | None = None,
) -> Path:
    """Write one PNG with a panel per (column, title) in `series` (x = step); returns its path."""
    cols = _columns(metrics)
    if series is None:
        # The evaluation panels of the evaluator this run used (its columns carry its prefix).
        series = [(c, t) for c, t in DEFAULT_SERIES if not c.startswith(EVAL_PREFIXES) or c in cols]
    series = list(series)
    steps = cols.get("step", list(range(len(next(iter(cols.values()), [])))))
    n = max(len(series), 1)
    ncols = min(n, 3)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.2 * nrows), squeeze=False)
    try:
        for ax, (column, title) in zip(axes.flat, series, strict=False):
            xs, ys = _points(steps, cols.get(column, [None] * len(steps)))
            if not xs:
                ax.set_title(f"{title} (no data)")
                ax.set_xticks([])
                ax.set_yticks([])
                continue
            # Sparse series (eval every k steps) get markers so single points stay visible.
            sparse = len(xs) < len(steps) or len(xs) <= 20
            ax.plot(xs, ys, marker="o" if sparse else None, markersize=4, linewidth=1.2)
            ax.set_title(title)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
        for ax in list(axes.flat)[len(series) :]:
            ax.set_visible(False)
        fig.tight_layout()
        out = Path(out_png)
        with atomic_path(out) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
    finally:
        plt.close(fig)  # figures are global state in pyplot; a long run must not accumulate them
    return out


def main(argv: list[str] | None = None) -> None:
    """`python -m gapray.plots RUN_DIR [OUT_PNG]`."""
    from gapray.storage import RunDir

    args = sys.argv[1:] if argv is None else argv
    if not args:
        raise SystemExit("usage: gapray.plots RUN_DIR [OUT_PNG]")
    run = RunDir(args[0], create=False)
    out = plot_curves(run.read_metrics(), args[1] if len(args) > 1 else run.path("curves.png"))
    print(out)


if __name__ == "__main__":
    main()
