"""Scaling plots of a sweep, as PNG (matplotlib, headless).

Where it sits: after the results table (gapray.sweep.table). Two kinds:

    scaling_<metric>__<axis>.png   the metric's delta (start -> final) against one swept axis,
                                   one line per value of the other swept axes (seeds averaged,
                                   error bars = the bootstrap 95% interval)
    compute_<metric>.png           the delta of every trial against its compute (GPU-hours; on a
                                   CPU-only cluster CPU-hours, as the axis label says), one
                                   colour per point of the axes other than the seed

A flat line means the axis did not change the gain within the seeds' spread (see
docs/sweeps.md). `plot_all` returns the files it wrote.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless
import matplotlib.pyplot as plt


def _num(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _label(point: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in point.items()) or "all"


def plot_scaling(grouped: Sequence[dict], metric: str, axis: str, others: Sequence[str], out: Path) -> Path:
    """One metric's mean delta against `axis`, a line per value of `others` (grouped rows)."""
    col = f"{metric}_delta"
    fig, ax = plt.subplots(figsize=(6, 4))
    lines: dict[tuple, list[dict]] = {}
    for g in grouped:
        lines.setdefault(tuple(g.get(o) for o in others), []).append(g)
    xs_all = [g[axis] for g in grouped]
    numeric = all(_num(x) for x in xs_all)
    order = sorted(set(xs_all), key=lambda x: x if numeric else str(x))
    for point, members in lines.items():
        members = sorted(members, key=lambda g: order.index(g[axis]))
        x = [g[axis] if numeric else order.index(g[axis]) for g in members]
        y = [g.get(col, math.nan) for g in members]
        lo = [g.get(f"{col}_lo", math.nan) for g in members]
        hi = [g.get(f"{col}_hi", math.nan) for g in members]
        err = [
            [0 if math.isnan(a) else m - a for m, a in zip(y, lo, strict=True)],
            [0 if math.isnan(b) else b - m for m, b in zip(y, hi, strict=True)],
        ]
        ax.errorbar(
            x, y, yerr=err, marker="o", capsize=3, label=_label(dict(zip(others, point, strict=True)))
        )
    if not numeric:
        ax.set_xticks(range(len(order)), [str(o) for o in order])
    elif len(order) > 2 and min(order) > 0 and max(order) / min(order) >= 20:
        ax.set_xscale("log")
    ax.axhline(0.0, color="grey", lw=0.8, ls="--")
    ax.set_xlabel(axis)
    ax.set_ylabel(f"Δ {metric} (final − start)")
    ax.set_title(f"{metric}: gain against {axis}", fontsize=10)
    if others:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def plot_compute(rows: Sequence[dict], metric: str, axes: Sequence[str], seed_key: str, out: Path) -> Path:
    """Each finished trial's delta against its GPU-hours (CPU-hours when no trial used a GPU)."""
    done = [r for r in rows if r.get("status") == "ok" and r.get(f"{metric}_delta") is not None]
    gpu = any((r.get("gpu_hours") or 0) > 0 for r in done)
    xkey = "gpu_hours" if gpu else "cpu_hours"
    keys = [a for a in axes if a != seed_key]
    fig, ax = plt.subplots(figsize=(6, 4))
    groups: dict[tuple, list[dict]] = {}
    for r in done:
        groups.setdefault(tuple(r.get(k) for k in keys), []).append(r)
    for point, members in groups.items():
        ax.scatter(
            [m.get(xkey, math.nan) for m in members],
            [m[f"{metric}_delta"] for m in members],
            label=_label(dict(zip(keys, point, strict=True))),
        )
    ax.axhline(0.0, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("GPU-hours" if gpu else "CPU-hours (no trial used a GPU)")
    ax.set_ylabel(f"Δ {metric}")
    ax.set_title(f"{metric}: gain against compute (one point per trial)", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def plot_all(
    rows: Sequence[dict],
    grouped: Sequence[dict],
    metrics: Sequence[str],
    axes: Sequence[str],
    seed_key: str,
    out_dir: Path,
) -> list[Path]:
    """Every scaling plot (metric x swept axis other than the seed) and every compute plot."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    swept = [a for a in axes if a != seed_key]
    files = []
    for m in metrics:
        for axis in swept:
            others = [a for a in swept if a != axis]
            files.append(plot_scaling(grouped, m, axis, others, out_dir / f"scaling_{m}__{axis}.png"))
        files.append(plot_compute(rows, m, axes, seed_key, out_dir / f"compute_{m}.png"))
    return files
