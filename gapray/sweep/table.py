"""The sweep's results table: a row per trial, grouped over seeds with a bootstrap 95% interval.

Where it sits: after Tune's trials ended, `gapray.sweep.runner` calls `trial_rows` on each
trial's run directory (summary.json, metrics, trial.json) and writes, into the sweep directory,

    results.parquet       one row per trial: the swept values, status and attempts, every
                          evaluation metric's start / final / delta, optimizer updates, images
                          generated, pairs per step, wall time, CPU- and GPU-hours
    results_grouped.parquet   one row per point of the axes other than the seed: n seeds, and for
                          each number the mean with its bootstrap 95% interval (lo, hi)
    results.md            both as Markdown

The functions are pure (tables in, tables out; the bootstrap draws from a seeded RNG), so the
same code can serve any seeds x rows study.

    bootstrap_ci([0.1, 0.3, 0.2], resamples=2000, seed=0)   # (mean, lo, hi)
    grouped = group_over_seeds(rows, axes=["learner.beta"], seed_key="run.seed")
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

SUFFIXES = ("_start", "_final", "_delta")
# per-trial numbers that the grouped table summarises, besides every metric's start/final/delta
TOTALS = ("optimizer_updates", "images", "pairs_per_step", "wall_s", "cpu_hours", "gpu_hours")


def bootstrap_ci(values: Sequence[float], resamples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """(mean, lo, hi): the mean of the finite values and the percentile bootstrap 95% interval
    of the mean (2.5th and 97.5th percentiles of `resamples` means of resamples drawn with
    replacement, numpy's default_rng(seed)). One value: (v, nan, nan), no interval from one
    seed; none: all nan."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if x.size == 0:
        return (math.nan, math.nan, math.nan)
    mean = float(x.mean())
    if x.size == 1:
        return (mean, math.nan, math.nan)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(resamples, x.size))  # (resamples, n)
    means = x[idx].mean(axis=1)  # (resamples,)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return (mean, float(lo), float(hi))


def headline(metrics: Sequence[str]) -> list[str]:
    """The evaluation metrics that are not a per-tag split of another one: of "m" (as
    "self_non_unification_two_object" of "self_non_unification") or of "<p>_overall" (as
    "toy_geneval_colors" of "toy_geneval_overall")."""
    names = list(metrics)

    def split(m: str) -> bool:
        if any(m != o and m.startswith(o + "_") for o in names):
            return True
        return any(o.endswith("_overall") and m != o and m.startswith(o[: -len("overall")]) for o in names)

    return [m for m in names if not split(m)]


def trial_row(run_dir: Path, values: dict[str, Any], status: str = "ok", error: str | None = None) -> dict:
    """One trial's row from what its run wrote. A trial with no summary.json (failed) keeps its
    values, status and error, and no metrics."""
    run_dir = Path(run_dir)
    record = _json(run_dir / "trial.json") or {}
    attempts = record.get("attempts", [])
    wall = sum(a["end"] - a["start"] for a in attempts if "end" in a)
    row: dict[str, Any] = {
        "trial": run_dir.name,
        **values,
        "status": status,
        "attempts": len(attempts),
        "error": error or next((a["error"] for a in reversed(attempts) if "error" in a), None),
        "wall_s": float(wall),
    }
    summary = _json(run_dir / "summary.json")
    cfg = _yaml(run_dir / "config.yaml")
    if cfg:
        # the roles' reservations, as gapray.config.resources_per_role counts them
        g, r, ln = cfg["generation"], cfg["reward"], cfg["learner"]
        row["cpus"] = float(
            g["num_workers"] * g["cpus_per_worker"]
            + r["num_workers"] * r["cpus_per_worker"]
            + ln["num_ranks"] * ln["cpus_per_rank"]
        )
        row["gpus"] = float(
            g["num_workers"] * g["gpus_per_worker"]
            + r["num_workers"] * r["gpus_per_worker"]
            + ln["num_ranks"] * ln["gpus_per_rank"]
        )
        row["cpu_hours"] = row["cpus"] * wall / 3600.0
        row["gpu_hours"] = row["gpus"] * wall / 3600.0
    if summary is None:
        return row
    row["steps"] = int(summary["steps"])
    for k, v in summary["start"].items():
        row[f"{k}_start"] = _float(v)
        row[f"{k}_final"] = _float(summary["final"].get(k))
        row[f"{k}_delta"] = _float(summary["delta"].get(k))
    metrics = _metrics(run_dir)
    steps = [r for r in metrics if r.get("step", 0) >= 1]
    row["optimizer_updates"] = float(max((r.get("optimizer_updates") or 0 for r in metrics), default=0))
    row["images"] = float(sum(r.get("images") or 0 for r in steps))
    pairs = [r.get("pairs", r.get("sft_examples")) for r in steps]
    row["pairs_per_step"] = float(np.mean([p for p in pairs if p is not None])) if steps else math.nan
    return row


def group_over_seeds(
    rows: Sequence[dict], axes: Sequence[str], seed_key: str, resamples: int = 2000, seed: int = 0
) -> list[dict]:
    """One row per point of `axes` less `seed_key` (in first-seen order): `n` (trials that
    finished), and for every number of the trial rows (metric start/final/delta, TOTALS) its
    mean, `_lo` and `_hi` (bootstrap 95% interval over the seeds, `bootstrap_ci`)."""
    keys = [a for a in axes if a != seed_key]
    numbers = [c for c in _columns(rows) if c.endswith(SUFFIXES) or c in TOTALS]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(_hashable(r.get(k)) for k in keys), []).append(r)
    out = []
    for point, members in groups.items():
        done = [m for m in members if m.get("status") == "ok"]
        g: dict[str, Any] = {**dict(zip(keys, point, strict=True)), "n": len(done), "trials": len(members)}
        for c in numbers:
            mean, lo, hi = bootstrap_ci([m.get(c, math.nan) for m in done], resamples, seed)
            g[c], g[f"{c}_lo"], g[f"{c}_hi"] = mean, lo, hi
        out.append(g)
    return out


def markdown(rows: Sequence[dict], grouped: Sequence[dict], axes: Sequence[str], seed_key: str) -> str:
    """results.md: the grouped table (mean [95% interval] of each headline metric's delta and
    of the compute columns), then one line per trial."""
    metrics = headline(sorted({c[: -len("_delta")] for c in _columns(rows) if c.endswith("_delta")}))
    keys = [a for a in axes if a != seed_key]
    lines = [f"## Grouped over {seed_key} (mean [bootstrap 95% interval])", ""]
    head = [*keys, "n", *(f"Δ {m}" for m in metrics), "optimizer updates", "images", "GPU-h"]
    lines += [_row(head), _row(["---"] * len(head))]
    for g in grouped:
        cells = [*(str(g[k]) for k in keys), str(g["n"])]
        cells += [_ci(g, f"{m}_delta") for m in metrics]
        cells += [_ci(g, "optimizer_updates", 0), _ci(g, "images", 0), _ci(g, "gpu_hours", 4)]
        lines.append(_row(cells))
    lines += ["", "## Trials", ""]
    head = ["trial", *axes, "status", "attempts", *(f"{m} start → final (Δ)" for m in metrics)]
    head += ["optimizer updates", "images", "pairs/step", "wall s", "GPU-h"]
    lines += [_row(head), _row(["---"] * len(head))]
    for r in rows:
        cells = [r["trial"], *(str(r.get(a)) for a in axes), r["status"], str(r["attempts"])]
        for m in metrics:
            s, f, d = (r.get(f"{m}{x}") for x in SUFFIXES)
            cells.append("—" if s is None else f"{_f(s)} → {_f(f)} ({_f(d, signed=True)})")
        cells += [_f(r.get("optimizer_updates"), 0), _f(r.get("images"), 0), _f(r.get("pairs_per_step"), 2)]
        cells += [_f(r.get("wall_s"), 0), _f(r.get("gpu_hours"), 4)]
        lines.append(_row(cells))
    return "\n".join(lines) + "\n"


def to_arrow(rows: Sequence[dict]):
    """A pyarrow table of dict rows (columns: the union, in first-seen order; values mixed
    across rows, e.g. a swept value 0.1 and 1, become the wider type)."""
    import pyarrow as pa

    cols = _columns(rows)
    data = {}
    for c in cols:
        vals = [r.get(c) for r in rows]
        if any(isinstance(v, float) for v in vals) and all(
            isinstance(v, int | float) or v is None for v in vals
        ):
            vals = [None if v is None else float(v) for v in vals]
        elif not all(isinstance(v, int | float | bool) or v is None for v in vals):
            vals = [None if v is None else str(v) for v in vals]
        data[c] = vals
    return pa.table(data)


def _columns(rows: Sequence[dict]) -> list[str]:
    return list(dict.fromkeys(c for r in rows for c in r))


def _hashable(v: Any) -> Any:
    return v if isinstance(v, int | float | str | bool) or v is None else str(v)


def _float(v: Any) -> float | None:
    return None if v is None else float(v)


def _f(v: Any, digits: int = 3, signed: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"


def _ci(g: dict, c: str, digits: int = 3) -> str:
    if c not in g:
        return "—"
    mean, lo, hi = g[c], g[f"{c}_lo"], g[f"{c}_hi"]
    if math.isnan(lo):
        return _f(mean, digits)
    return f"{_f(mean, digits)} [{_f(lo, digits)}, {_f(hi, digits)}]"


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def _json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def _yaml(path: Path) -> Any:
    import yaml

    return yaml.safe_load(path.read_text()) if path.is_file() else None


def _metrics(run_dir: Path) -> list[dict]:
    from gapray.storage import RunDir

    try:
        return RunDir(run_dir, create=False).read_metrics().to_pylist()
    except (FileNotFoundError, OSError):
        return []
