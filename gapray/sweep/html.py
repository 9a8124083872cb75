"""The sweep's HTML page: the results table, the scaling plots and a link to each trial's report.

Where it sits: last step of `gapray sweep` (gapray.sweep.runner.write_results). Writes
`<sweep dir>/index.html`, with links relative to the sweep directory (zip it and open it
anywhere); each finished trial's own report (`gapray report`, gapray/report.py) is built into
`runs/<trial>/report/index.html` and linked from its row.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from pathlib import Path

from gapray.storage.atomic import atomic_write_text
from gapray.sweep.table import SUFFIXES


def _cell(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    if isinstance(v, float):
        return f"{v:.4g}"
    return html.escape(str(v))


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def write_page(
    sweep_dir: Path,
    name: str,
    rows: Sequence[dict],
    grouped: Sequence[dict],
    metrics: Sequence[str],
    axes: Sequence[str],
    seed_key: str,
    plots: Sequence[Path],
    reports: dict[str, Path],
) -> Path:
    """index.html joining the grouped table, the per-trial table (with report links), the plots."""
    sweep_dir = Path(sweep_dir)
    keys = [a for a in axes if a != seed_key]

    def ci(g: dict, c: str) -> str:
        if c not in g:
            return "—"
        lo, hi = g[f"{c}_lo"], g[f"{c}_hi"]
        inner = "" if math.isnan(lo) else f" <small>[{lo:.4g}, {hi:.4g}]</small>"
        return _cell(g[c]) + inner

    grouped_html = _table(
        [*keys, "n", *(f"Δ {m}" for m in metrics), "optimizer updates", "images", "GPU-h"],
        [
            [
                *(_cell(g[k]) for k in keys),
                _cell(g["n"]),
                *(ci(g, f"{m}_delta") for m in metrics),
                ci(g, "optimizer_updates"),
                ci(g, "images"),
                ci(g, "gpu_hours"),
            ]
            for g in grouped
        ],
    )
    trial_rows = []
    for r in rows:
        link = reports.get(r["trial"])
        name_cell = (
            f'<a href="{html.escape(str(link.relative_to(sweep_dir)))}">{html.escape(r["trial"])}</a>'
            if link
            else html.escape(r["trial"])
        )
        cells = [name_cell, *(_cell(r.get(a)) for a in axes), _cell(r["status"]), _cell(r["attempts"])]
        for m in metrics:
            s, f, d = (r.get(f"{m}{x}") for x in SUFFIXES)
            cells.append("—" if s is None else f"{_cell(s)} → {_cell(f)} ({_cell(d)})")
        cells += [
            _cell(r.get(c)) for c in ("optimizer_updates", "images", "pairs_per_step", "wall_s", "gpu_hours")
        ]
        cells.append(_cell(r.get("error")))
        trial_rows.append(cells)
    trials_html = _table(
        [
            "trial",
            *axes,
            "status",
            "attempts",
            *(f"{m}: start → final (Δ)" for m in metrics),
            "optimizer updates",
            "images",
            "pairs/step",
            "wall s",
            "GPU-h",
            "error",
        ],
        trial_rows,
    )
    figs = "".join(
        f'<figure><img src="{html.escape(str(p.relative_to(sweep_dir)))}" alt="{html.escape(p.stem)}">'
        f"<figcaption>{html.escape(p.stem)}</figcaption></figure>"
        for p in plots
    )
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>gapray sweep {html.escape(name)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; margin-bottom: 2em; font-size: 13px; }}
th, td {{ border: 1px solid #ccc; padding: 3px 6px; text-align: right; }}
th {{ background: #f0f0f0; }}
figure {{ display: inline-block; margin: 0.5em; }}
img {{ max-width: 600px; }}
</style></head><body>
<h1>gapray sweep: {html.escape(name)}</h1>
<p>{len(rows)} trials over {html.escape(", ".join(axes))}; the tables are also in
<a href="results.md">results.md</a> and <a href="results.parquet">results.parquet</a>.</p>
<h2>Grouped over {html.escape(seed_key)}: mean [bootstrap 95% interval]</h2>
{grouped_html}
<h2>Trials (each links to its run's report)</h2>
{trials_html}
<h2>Scaling plots</h2>
{figs}
</body></html>
"""
    out = sweep_dir / "index.html"
    atomic_write_text(out, page)
    return out
