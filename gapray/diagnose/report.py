"""The diagnosis's report: a table (Markdown + Parquet), PNG plots in the paper's form, and an
HTML page joining them with sample grids of each quadrant.

Where it sits: after `compute.diagnose`, apart from the computation: it reads only the
`Diagnosis` and the files the evaluation wrote (<set>/verdicts.jsonl and the GenEval folders),
so a report can be redrawn from a finished diagnosis folder. Every file is written atomically.

    <out>/table.md  table.parquet       one row per (set, tag or "all", judge)
    <out>/non_unification.png           non-unification by set (and model), 95% bootstrap intervals
    <out>/quadrants.png                 the four quadrants per set, one panel per judge
    <out>/quadrants/<set>_<judge>_<quadrant>.png   sample grids
    <out>/index.html                    all of it on one self-contained page (relative links)
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: cluster nodes and CI have no display

import matplotlib.pyplot as plt  # after choosing the backend
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from gapray.diagnose.compute import Diagnosis
from gapray.diagnose.stats import QUADRANT_NAMES
from gapray.eval.images import make_grid, png_bytes
from gapray.storage.atomic import atomic_path, atomic_write_bytes, atomic_write_text

QUADRANT_TITLES = {
    "both_yes": "self yes, judge yes",
    "self_yes_judge_no": "self yes, judge no (lenient self-judge)",
    "self_no_judge_yes": "self no, judge yes (misunderstanding)",
    "both_no": "self no, judge no (weak generation)",
}
QUADRANT_COLOURS = {
    "both_yes": "#4c9a2a",
    "self_yes_judge_no": "#e0a526",
    "self_no_judge_yes": "#3a78c2",
    "both_no": "#c23a3a",
}
SAMPLES_PER_QUADRANT = 8


def table_rows(diag: Diagnosis) -> list[dict[str, Any]]:
    """One row per (set, tag or "all", judge): the self-judge's non-unification with its
    interval, and that judge's quadrants, split, yes-rate and kappa with the self-judge."""
    rows = []
    for s in diag.sets:
        r = s.results
        scopes = [("all", r, {n: j for n, j in r["judges"].items()})]
        scopes += [
            (t, m, {n: j["per_tag"][t] for n, j in r["judges"].items()}) for t, m in r["per_tag"].items()
        ]
        for tag, gap, per_judge in scopes:
            ci = gap["non_unification_ci"] or [None, None]
            base = {
                "model": diag.model,
                "set": s.name,
                "tag": tag,
                "n_images": gap["n_images"],
                "non_unification": gap["non_unification"],
                "non_unification_lo": ci[0],
                "non_unification_hi": ci[1],
            }
            for judge, q in (per_judge or {None: None}).items():
                extra = {"judge": judge}
                for key in (
                    *QUADRANT_NAMES,
                    "weak_generation",
                    "misunderstanding",
                    "judge_yes_rate",
                    "kappa_self",
                ):
                    extra[key] = None if q is None else q[key]
                rows.append(base | extra)
    return rows


def _f(v: Any, digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    head = (
        "| model | set | tag | images | non-unification [95% CI] | judge | both yes | self yes, judge no | "
        "self no, judge yes | both no | weak generation | misunderstanding | judge yes-rate | kappa (self, judge) |"
    )
    lines = [head, "|" + "---|" * 14]
    for r in rows:
        ci = (
            f"{_f(r['non_unification'])} [{_f(r['non_unification_lo'])}, {_f(r['non_unification_hi'])}]"
            if r["non_unification"] is not None
            else "–"
        )
        lines.append(
            f"| {Path(r['model']).name or r['model']} | {r['set']} | {r['tag']} | {r['n_images']} | {ci} | {r['judge'] or '–'} | "
            + " | ".join(_f(r[k]) for k in QUADRANT_NAMES)
            + f" | {_f(r['weak_generation'])} | {_f(r['misunderstanding'])} | {_f(r['judge_yes_rate'])} | "
            f"{_f(r['kappa_self'])} |"
        )
    return "\n".join(lines) + "\n"


def kappa_markdown(diag: Diagnosis) -> str:
    pairs = list(dict.fromkeys(k for s in diag.sets for k in s.results["kappa"]))
    lines = [
        "| set | " + " | ".join(p.replace("|", " vs ") for p in pairs) + " |",
        "|" + "---|" * (len(pairs) + 1),
    ]
    for s in diag.sets:
        lines.append(f"| {s.name} | " + " | ".join(_f(s.results["kappa"].get(p)) for p in pairs) + " |")
    return "\n".join(lines) + "\n"


def write_table(rows: Sequence[dict[str, Any]], diag: Diagnosis, out: Path) -> None:
    columns = {k: [r[k] for r in rows] for k in rows[0]} if rows else {}
    table = pa.table(columns)
    with atomic_path(out / "table.parquet") as tmp:
        pq.write_table(table, tmp)
    text = (
        f"# Diagnosis of {diag.model}\n\n{diag.images_per_prompt} images per prompt, seed {diag.seed}; "
        f"judges: {', '.join(diag.judges) or 'none'}. Non-unification: the share of the model's own "
        "images its own understanding rejects (95% bootstrap interval over prompts). Where the model "
        "says no, weak generation = the judge says no too, misunderstanding = the judge says yes.\n\n"
        + markdown_table(rows)
        + "\n## Agreement (Cohen's kappa)\n\n"
        + kappa_markdown(diag)
    )
    atomic_write_text(out / "table.md", text)


def _save(fig, path: Path) -> None:
    try:
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
    finally:
        plt.close(fig)


def plot_non_unification(diags: Sequence[Diagnosis], path: Path) -> None:
    """The paper's first figure: non-unification per set (x, in difficulty order), one bar per
    model, with 95% bootstrap intervals."""
    sets = list(dict.fromkeys(s.name for d in diags for s in d.sets))
    fig, ax = plt.subplots(figsize=(max(5.0, min(14.0, 1.3 * len(sets) * (1 + 0.4 * (len(diags) - 1)))), 3.6))
    width = 0.8 / max(1, len(diags))
    for m, d in enumerate(diags):
        by = {s.name: s.results for s in d.sets}
        xs, ys, err = [], [], [[], []]
        for i, name in enumerate(sets):
            r = by.get(name)
            if r is None or r["non_unification"] is None:
                continue
            lo, hi = r["non_unification_ci"]
            xs.append(i + (m - (len(diags) - 1) / 2) * width)
            ys.append(r["non_unification"])
            err[0].append(max(0.0, r["non_unification"] - lo))
            err[1].append(max(0.0, hi - r["non_unification"]))
        ax.bar(xs, ys, width=width, yerr=err, capsize=3, label=Path(d.model).name or d.model)
    ax.set_xticks(range(len(sets)), sets, rotation=15)
    ax.set_ylim(0, 1)
    ax.set_ylabel("non-unification (self says no)")
    ax.set_title("Internal gap by prompt set")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path)


def plot_quadrants(diag: Diagnosis, path: Path) -> None:
    """The four quadrants per set as stacked shares, one panel per judge."""
    judges = diag.judges or [None]
    fig, axes = plt.subplots(
        1, len(judges), figsize=(max(6.5, 1.6 * len(diag.sets)) * len(judges), 4.4), squeeze=False
    )
    for ax, judge in zip(axes[0], judges, strict=True):
        names = [s.name for s in diag.sets]
        bottom = [0.0] * len(names)
        for q in QUADRANT_NAMES:
            shares = []
            for s in diag.sets:
                j = s.results["judges"].get(judge) if judge else None
                shares.append(j[q] / j["n_images"] if j and j["n_images"] else 0.0)
            ax.bar(
                range(len(names)), shares, bottom=bottom, color=QUADRANT_COLOURS[q], label=QUADRANT_TITLES[q]
            )
            bottom = [b + v for b, v in zip(bottom, shares, strict=True)]
        ax.set_xticks(range(len(names)), names, rotation=15)
        ax.set_ylim(0, 1)
        ax.set_title(f"judge: {judge}")
        ax.set_ylabel("share of images")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=2, frameon=False)
    fig.tight_layout(rect=(0, 0.14, 1, 1))  # room for the legend under the panels
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def quadrant_grids(diag: Diagnosis, out: Path) -> dict[tuple[str, str, str], str]:
    """Up to SAMPLES_PER_QUADRANT images of each (set, judge, quadrant) in one grid each, read
    from the set's verdicts.jsonl and GenEval folders. Returns the relative path per key."""
    made: dict[tuple[str, str, str], str] = {}
    for s in diag.sets:
        lines = (out / s.folder / "verdicts.jsonl").read_text().splitlines()
        records = [json.loads(line) for line in lines if line.strip()]
        for judge in diag.judges:
            for q in QUADRANT_NAMES:
                mine = [r for r in records if quadrant_of(r["judge_yes"], r["external"][judge]["yes"]) == q]
                mine = mine[:SAMPLES_PER_QUADRANT]
                if not mine:
                    continue
                rows = []
                for r in mine:
                    path = out / s.folder / f"{r['index']:05d}" / "samples" / f"{r['sample']:04d}.png"
                    with Image.open(path) as im:
                        image = im.convert("RGB")
                    scale = max(1, 96 // image.width)
                    image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
                    if image.width > 192:
                        image = image.resize((192, 192 * image.height // image.width), Image.BOX)
                    text = r["prompt"] if len(r["prompt"]) <= 60 else r["prompt"][:57] + "..."
                    rows.append((text, [image], [q in ("both_yes", "self_no_judge_yes")]))
                rel = f"quadrants/{s.folder}_{judge}_{q}.png"
                atomic_write_bytes(out / rel, png_bytes(make_grid(rows)))
                made[(s.name, judge, q)] = rel
    return made


def quadrant_of(self_yes: bool, judge_yes: bool) -> str:
    if self_yes:
        return "both_yes" if judge_yes else "self_yes_judge_no"
    return "self_no_judge_yes" if judge_yes else "both_no"


def write_html(diag: Diagnosis, rows: Sequence[dict[str, Any]], grids: dict, out: Path) -> None:
    e = html.escape
    head = [
        "model", "set", "tag", "images", "non-unification", "95% CI", "judge",
        *[QUADRANT_TITLES[q] for q in QUADRANT_NAMES],
        "weak generation", "misunderstanding", "judge yes-rate", "kappa (self, judge)",
    ]  # fmt: skip
    body = []
    for r in rows:
        cells = [
            Path(r["model"]).name or r["model"], r["set"], r["tag"], r["n_images"], _f(r["non_unification"]),
            f"[{_f(r['non_unification_lo'])}, {_f(r['non_unification_hi'])}]", r["judge"] or "–",
            *[_f(r[q]) for q in QUADRANT_NAMES],
            _f(r["weak_generation"]), _f(r["misunderstanding"]), _f(r["judge_yes_rate"]), _f(r["kappa_self"]),
        ]  # fmt: skip
        body.append("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in cells) + "</tr>")
    pairs = list(dict.fromkeys(k for s in diag.sets for k in s.results["kappa"]))
    kappa_rows = "".join(
        f"<tr><td>{e(s.name)}</td>"
        + "".join(f"<td>{_f(s.results['kappa'].get(p))}</td>" for p in pairs)
        + "</tr>"
        for s in diag.sets
    )
    kappa = (
        "<h2>Agreement between raters (Cohen's kappa)</h2><table><tr><th>set</th>"
        + "".join(f"<th>{e(p.replace('|', ' vs '))}</th>" for p in pairs)
        + f"</tr>{kappa_rows}</table>"
    )
    samples = []
    for s in diag.sets:
        for judge in diag.judges:
            figs = []
            for q in QUADRANT_NAMES:
                rel = grids.get((s.name, judge, q))
                inner = f'<img src="{e(rel)}" alt="{e(q)}">' if rel else "<p>(no images)</p>"
                figs.append(f"<figure><figcaption>{e(QUADRANT_TITLES[q])}</figcaption>{inner}</figure>")
            samples.append(f"<h3>{e(s.name)}, judge {e(judge)}</h3><div class='row'>{''.join(figs)}</div>")
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>gapray diagnosis: {e(diag.model)}</title>
<style>body{{font-family:sans-serif;margin:2em;}} table{{border-collapse:collapse;font-size:12px}}
td,th{{border:1px solid #ccc;padding:2px 6px;text-align:right}} .row{{display:flex;gap:1em;flex-wrap:wrap}}
figure{{margin:0}} figcaption{{font-size:12px}}</style></head><body>
<h1>Diagnosis of {e(diag.model)}</h1>
<p>{diag.images_per_prompt} images per prompt with fixed seeds (seed {diag.seed}); external judges:
{e(", ".join(f"{n} ({s})" for n, s in zip(diag.judges, diag.judge_specs, strict=True)) or "none")}.
Non-unification is the share of the model's own images its own understanding rejects. Where it
says no, the judge's no means weak generation, its yes misunderstanding. Images per set in
GenEval's folder layout: {", ".join(f'<a href="{e(s.folder)}/">{e(s.name)}</a>' for s in diag.sets)};
the table as <a href="table.md">Markdown</a> and <a href="table.parquet">Parquet</a>.</p>
<img src="non_unification.png" alt="non-unification by set"> <img src="quadrants.png" alt="quadrants per set">
<h2>Table</h2><table><tr>{"".join(f"<th>{e(h)}</th>" for h in head)}</tr>{"".join(body)}</table>
{kappa}
<h2>Samples of each quadrant</h2>{"".join(samples)}
</body></html>
"""
    atomic_write_text(out / "index.html", page)


def load_diagnosis(folder: str | Path) -> Diagnosis:
    """A finished diagnosis read back from its folder (summary.json and each set's
    results.json), e.g. another model's, to draw beside this one (`--compare`)."""
    from gapray.diagnose.compute import SetResult
    from gapray.diagnose.sets import slug

    folder = Path(folder)
    try:
        summary = json.loads((folder / "summary.json").read_text())
        sets = [
            SetResult(name, slug(name), json.loads((folder / slug(name) / "results.json").read_text()), 0.0)
            for name in summary["sets"]
        ]
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"{folder}: not a finished gapray diagnosis ({type(err).__name__}: {err})") from None
    return Diagnosis(
        model=summary["model"],
        judges=list(summary["judges"]),
        judge_specs=list(summary["judges"].values()),
        sets=sets,
        images_per_prompt=summary["images_per_prompt"],
        seed=int(sets[0].results["seed"]) if sets else 0,
    )


def write_report(diag: Diagnosis, out: Path, compare: Sequence[Diagnosis] = ()) -> dict[str, str]:
    """Every report file under `out`; returns name -> path. `compare`: other models'
    diagnoses, drawn beside this one in non_unification.png (the paper's figure: by set and
    model) and listed under the table."""
    out = Path(out)
    rows = table_rows(diag)
    for other in compare:
        rows += [r for r in table_rows(other) if r["tag"] == "all"]
    write_table(rows, diag, out)
    plot_non_unification([diag, *compare], out / "non_unification.png")
    plot_quadrants(diag, out / "quadrants.png")
    grids = quadrant_grids(diag, out)
    write_html(diag, rows, grids, out)
    return {
        "table_md": str(out / "table.md"),
        "table_parquet": str(out / "table.parquet"),
        "non_unification_png": str(out / "non_unification.png"),
        "quadrants_png": str(out / "quadrants.png"),
        "html": str(out / "index.html"),
    }
