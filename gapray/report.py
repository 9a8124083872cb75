"""An HTML report of one run directory: what changed from the first to the last evaluation.

Where it sits: after `gapray run` (or on any run directory copied elsewhere), `gapray report
RUN_DIR` reads what the run wrote (config.yaml, metrics, evals/step_NNNNNNN/ with results.json,
verdicts.jsonl and the GenEval sample folders, curves.png, summary.json) and writes a
self-contained folder, `<run_dir>/report/` by default:

    index.html             title, the start -> final table of the eval measures with deltas,
                           the per-tag GenEval table, the curves, the before/after images,
                           a compact per-step table and config.yaml
    curves.png             the run's curves (copied, or re-plotted when the run has none)
    evals.png              the eval measures and GenEval per tag over the eval steps
    before_after.png       the same prompts and seeds at the first and the last eval, each
                           image framed green / red by the verifier's verdict

Links are relative, so the folder can be zipped and opened anywhere without gapray. Every file
is written atomically (temp file, then rename). A run with a single evaluation still renders
(the "final" columns say there is none); a folder without config.yaml or metrics is refused
with a one-line error (exit code 2 from the command).

    gapray report runs/toy                       # -> runs/toy/report/index.html
    build_report("runs/toy", out="/tmp/toy-report")
"""

from __future__ import annotations

import argparse
import html
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless

import matplotlib.pyplot as plt  # after choosing the backend
from PIL import Image, ImageDraw, ImageFont

from gapray.eval.images import grid_rows, make_grid
from gapray.storage import RunDir
from gapray.storage.atomic import atomic_path, atomic_write_bytes, atomic_write_text

EVAL_MEASURES: list[tuple[str, str, bool]] = [
    ("exact_scene_overall", "exact-scene accuracy (asked objects, nothing else)", True),
    ("geneval_overall", "GenEval overall", True),
    ("non_unification", "non-unification (own images rejected)", False),
    ("understanding_accuracy", "understanding accuracy", True),
    ("judge_balanced_accuracy", "self-judge balanced accuracy", True),
    ("mean_p_yes", "mean P(yes) of own images", True),
]
"""(key, label, higher is better) of the start -> final table; keys as in results.json (an
evaluator reports some of them: toy all but the last, self non-unification and mean P(yes))."""
COUNT_MEASURES: list[tuple[str, str]] = [("objects_per_image", "objects per image")]
"""Measures that are neither better nor worse when they grow: shown in the table, uncoloured."""
EVALUATORS = ("toy", "self")
"""Prefixes of the evaluation columns in metrics.parquet (toy_geneval_overall, self_...)."""
STEP_COLUMNS = ("step", "mean_p_yes", "pass_rate", "pairs", "loss", "time_step")
"""Columns of the per-step table (those the run logged)."""
MAX_STEP_ROWS = 40
"""The per-step table shows every k-th step (plus the last) when the run is longer."""
COMPARE_ROWS = 12
"""Prompts in before_after.png (spread over the tags)."""
TILE_PX = 128
"""Target tile size in before_after.png: images are upscaled (nearest) by an integer factor."""
MAX_IMAGES = 4
"""Images per prompt per side in before_after.png."""


class NotARunDirError(ValueError):
    """RUN_DIR lacks what every run directory has (config.yaml, metrics)."""


# --- reading the run --------------------------------------------------------------------------


def _check_run_dir(root: Path) -> None:
    if not root.is_dir():
        raise NotARunDirError(f"{root} is not a run directory: the folder does not exist")
    missing = []
    if not (root / "config.yaml").is_file():
        missing.append("config.yaml")
    has_parts = (root / "metrics").is_dir() and any((root / "metrics").glob("step_*.parquet"))
    if not has_parts and not (root / "metrics.parquet").is_file():
        missing.append("metrics (metrics/step_*.parquet or metrics.parquet)")
    if missing:
        raise NotARunDirError(f"{root} is not a run directory: missing {' and '.join(missing)}")


def _eval_folders(root: Path) -> dict[int, Path]:
    """step -> evals/step_NNNNNNN folder, for the folders with a results.json (a killed eval
    leaves none and is skipped)."""
    found = {}
    for d in sorted((root / "evals").glob("step_*")):
        try:
            step = int(d.name.removeprefix("step_"))
        except ValueError:
            continue
        if (d / "results.json").is_file():
            found[step] = d
    return found


def _eval_results(folders: dict[int, Path], metrics: dict[str, list]) -> dict[int, dict]:
    """step -> eval metrics: results.json of each eval folder; eval rows of the metrics table
    fill in steps whose folder is gone (<evaluator>_geneval_<tag> columns become
    geneval_per_tag)."""
    evals = {s: json.loads((d / "results.json").read_text()) for s, d in folders.items()}
    steps = metrics.get("step", [])
    marks = [c for c in (f"{e}_non_unification" for e in EVALUATORS) if c in metrics]
    for i, s in enumerate(steps):
        if s is None or int(s) in evals or all(metrics[c][i] is None for c in marks):
            continue
        row = {}
        for k in metrics:
            name = next((k.removeprefix(f"{e}_") for e in EVALUATORS if k.startswith(f"{e}_")), None)
            if name is not None:
                row[name] = metrics[k][i]
        tags = {k.removeprefix("geneval_"): v for k, v in row.items() if k.startswith("geneval_")}
        tags.pop("overall", None)
        evals[int(s)] = {**row, "geneval_per_tag": {t: v for t, v in tags.items() if v is not None}}
    return dict(sorted(evals.items()))


def _read_verdicts(folder: Path) -> dict[int, list[dict]]:
    """index -> that prompt's verdict records, ordered by sample."""
    path = folder / "verdicts.jsonl"
    if not path.is_file():
        return {}
    out: dict[int, list[dict]] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            out.setdefault(int(rec["index"]), []).append(rec)
    for recs in out.values():
        recs.sort(key=lambda r: int(r["sample"]))
    return out


# --- pictures ---------------------------------------------------------------------------------


def _num(v: Any) -> float | None:
    if v is None or isinstance(v, (str, bytes, bool)):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def plot_pass_rates(metrics: dict[str, list], out_png: Path) -> Path:
    """Per step: the judge's pass rate, the exact verifier's (exact scene and GenEval's rule)
    on the same training rollouts, and objects per image on a second axis."""
    fig, ax = plt.subplots(figsize=(8, 3.6))
    try:
        steps = metrics.get("step", [])
        for key, label in (
            ("pass_rate", "judged (own understanding)"),
            ("true_pass_rate", "true: exact scene"),
            ("true_pass_rate_geneval", "true: GenEval's rule"),
        ):
            pts = [(s, _num(v)) for s, v in zip(steps, metrics.get(key, [None] * len(steps)), strict=True)]
            pts = [(s, v) for s, v in pts if s is not None and v is not None]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], label=label, linewidth=1.3)
        ax.set_xlabel("step")
        ax.set_ylabel("pass rate")
        ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3)
        objs = [
            (s, _num(v)) for s, v in zip(steps, metrics.get("rollout_objects_per_image", []), strict=False)
        ]
        objs = [(s, v) for s, v in objs if s is not None and v is not None]
        if objs:
            twin = ax.twinx()
            twin.plot(
                [p[0] for p in objs], [p[1] for p in objs], color="gray", linestyle=":", label="objects/img"
            )
            twin.set_ylabel("objects per image", color="gray")
        ax.legend(fontsize=8, loc="upper left")
        fig.tight_layout()
        with atomic_path(out_png) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
    finally:
        plt.close(fig)
    return out_png


def plot_evals(evals: dict[int, dict], out_png: Path) -> Path:
    """Two panels over the eval steps: the four eval measures, and GenEval per tag."""
    fig, axes = plt.subplots(1, 2, figsize=(13, 3.8), squeeze=False)
    try:
        steps = list(evals)
        panels = [
            (
                axes[0, 0],
                "eval measures",
                [(k, label) for k, label, _ in EVAL_MEASURES],
                lambda e, k: e.get(k),
            ),
            (
                axes[0, 1],
                "GenEval per tag",
                [
                    (t, t)
                    for t in dict.fromkeys(t for e in evals.values() for t in e.get("geneval_per_tag") or {})
                ],
                lambda e, k: (e.get("geneval_per_tag") or {}).get(k),
            ),
        ]
        for ax, title, series, get in panels:
            drawn = False
            for key, label in series:
                pts = [(s, _num(get(evals[s], key))) for s in steps]
                pts = [(s, v) for s, v in pts if v is not None]
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=4, label=label)
                    drawn = True
            ax.set_title(title if drawn else f"{title} (no data)")
            ax.set_xlabel("step")
            ax.set_ylim(-0.03, 1.03)
            ax.grid(alpha=0.3)
            if drawn:
                ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
        fig.tight_layout()
        with atomic_path(out_png) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
    finally:
        plt.close(fig)
    return out_png


def _prompt_images(folder: Path, index: int, limit: int) -> list[Image.Image]:
    paths = sorted((folder / f"{index:05d}" / "samples").glob("*.png"))[:limit]
    images = []
    for p in paths:
        with Image.open(p) as im:
            images.append(im.convert("RGB"))
    return images


def _ok(record: dict) -> bool:
    """The verdict that colours an image's frame: the evaluator's `ok` (toy: the verifier,
    self: the model's own judge); runs written before it existed have `correct` only."""
    return bool(record.get("ok", record.get("correct")))


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1: a scalable default font
    except TypeError:
        return ImageFont.load_default()


def before_after(
    first: Path, last: Path, out_png: Path, labels: tuple[str, str], max_rows: int = COMPARE_ROWS
) -> tuple[Path, int] | None:
    """The same prompts (same seeds) at two evals side by side: rows = prompts (up to `max_rows`,
    round-robin over the tags), left block the `first` eval's images, right block the `last`
    one's, each framed by its verifier verdict. Returns (path, rows) or None when the two evals
    share no prompt with images and verdicts."""
    va, vb = _read_verdicts(first), _read_verdicts(last)
    common = [
        i
        for i in sorted(set(va) & set(vb))
        if va[i][0].get("prompt") == vb[i][0].get("prompt")
        and (first / f"{i:05d}" / "samples").is_dir()
        and (last / f"{i:05d}" / "samples").is_dir()
    ]
    if not common:
        return None
    fake_prompts = [SimpleNamespace(tag=va[i][0].get("tag")) for i in common]
    chosen = [common[k] for k in grid_rows(fake_prompts, max_rows)]
    left_rows, right_rows = [], []
    for i in chosen:
        imgs_a = _prompt_images(first, i, MAX_IMAGES)
        imgs_b = _prompt_images(last, i, MAX_IMAGES)
        n = min(len(imgs_a), len(imgs_b), len(va[i]), len(vb[i]))
        if n == 0:
            continue
        text = f"[{va[i][0].get('tag')}] {va[i][0].get('prompt')}"
        left_rows.append((text, imgs_a[:n], [_ok(r) for r in va[i][:n]]))
        right_rows.append(("", imgs_b[:n], [_ok(r) for r in vb[i][:n]]))
    if not left_rows:
        return None
    size = max(left_rows[0][1][0].size)
    scale = max(1, TILE_PX // size)
    left, right = make_grid(left_rows, scale=scale), make_grid(right_rows, scale=scale)
    head, sep = 28, 16
    canvas = Image.new(
        "RGB", (left.width + sep + right.width, head + max(left.height, right.height)), "white"
    )
    canvas.paste(left, (0, head))
    canvas.paste(right, (left.width + sep, head))
    draw = ImageDraw.Draw(canvas)
    draw.line((left.width + sep // 2, 0, left.width + sep // 2, canvas.height), fill=(150, 150, 150), width=2)
    font = _font(16)
    label_w = left.width - right.width  # make_grid's prompt-text column (the right block has none)
    draw.text(((label_w + left.width) // 2, head // 2), labels[0], fill="black", anchor="mm", font=font)
    draw.text(
        (left.width + sep + right.width // 2, head // 2), labels[1], fill="black", anchor="mm", font=font
    )
    with atomic_path(out_png) as tmp:
        canvas.save(tmp, format="PNG")
    return out_png, len(left_rows)


# --- HTML -------------------------------------------------------------------------------------

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 0.9em; }
td, th { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f3f3f3; } td.l, th.l { text-align: left; }
.good { color: #080; } .bad { color: #c00; } .note { color: #666; font-style: italic; }
img { max-width: 100%; border: 1px solid #ddd; }
pre { background: #f7f7f7; padding: 1em; overflow-x: auto; font-size: 0.85em; }
dl { display: grid; grid-template-columns: max-content auto; gap: 2px 1em; } dt { font-weight: bold; }
"""


def _fmt(v: Any) -> str:
    f = _num(v)
    if f is None:
        return "—" if v is None else html.escape(str(v))
    if isinstance(v, int):
        return str(v)
    return f"{f:.3f}"


def _delta_cell(a: Any, b: Any, higher_is_better: bool | None) -> str:
    """A delta cell, green/red by `higher_is_better` (None: uncoloured)."""
    fa, fb = _num(a), _num(b)
    if fa is None or fb is None:
        return "<td>—</td>"
    d = fb - fa
    if higher_is_better is None:
        return f"<td>{d:+.3f}</td>"
    cls = "" if abs(d) < 5e-4 else ("good" if (d > 0) == higher_is_better else "bad")
    return f'<td class="{cls}">{d:+.3f}</td>' if cls else f"<td>{d:+.3f}</td>"


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """rows: already-rendered <td> cells (strings)."""
    h = "".join(
        f'<th class="l">{html.escape(x)}</th>' if i == 0 else f"<th>{html.escape(x)}</th>"
        for i, x in enumerate(head)
    )
    body = "".join(f"<tr>{''.join(r)}</tr>" for r in rows)
    return f"<table><tr>{h}</tr>{body}</table>"


def _ordinal(k: int) -> str:
    suffix = "th" if 10 <= k % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(k % 10, "th")
    return f"{k}{suffix}"


def _step_rows(metrics: dict[str, list]) -> tuple[list[str], list[list[str]], int]:
    cols = [c for c in STEP_COLUMNS if c in metrics]
    n = len(metrics.get("step", []))
    k = max(1, math.ceil(n / MAX_STEP_ROWS))
    idx = list(range(0, n, k))
    if n and idx[-1] != n - 1:
        idx.append(n - 1)
    rows = [[f"<td>{_fmt(metrics[c][i])}</td>" for c in cols] for i in idx]
    return cols, rows, k


def build_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the report folder (`<run_dir>/report/` unless `out`) and return its index.html.
    Raises NotARunDirError when run_dir has no config.yaml or no metrics."""
    root = Path(run_dir)
    _check_run_dir(root)
    run = RunDir(root, create=False)
    out_dir = Path(out) if out is not None else root / "report"
    out_dir.mkdir(parents=True, exist_ok=True)

    config_text = (root / "config.yaml").read_text()
    try:
        import yaml

        config = yaml.safe_load(config_text) or {}
    except Exception:  # a hand-edited config still gets a report; only the header loses fields
        config = {}
    metrics = run.read_metrics().to_pydict()
    summary = run.read_json("summary.json") if (root / "summary.json").is_file() else {}
    folders = _eval_folders(root)
    evals = _eval_results(folders, metrics)
    if not evals and summary.get("start"):
        evals = {0: summary["start"]}
        if summary.get("final"):
            evals[int(summary.get("steps") or 1)] = summary["final"]

    steps_logged = [int(s) for s in metrics.get("step", []) if s is not None]
    last_step = max(steps_logged, default=0)
    planned = (config.get("run") or {}).get("steps") if isinstance(config, dict) else None
    model = (config.get("model") or {}).get("name") if isinstance(config, dict) else None
    algo = (config.get("learner") or {}).get("algorithm") if isinstance(config, dict) else None

    parts: list[str] = []
    title = f"gapray run report: {root.resolve().name}"
    parts.append(f"<h1>{html.escape(title)}</h1>")
    info = [
        ("run dir", str(root.resolve())),
        ("steps", f"{last_step} logged" + (f" of {planned} planned" if planned is not None else "")),
        ("model", str(model) if model is not None else "—"),
        ("algorithm", str(algo) if algo is not None else "—"),
        ("evals at steps", ", ".join(map(str, evals)) or "none"),
    ]
    parts.append(
        "<dl>" + "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in info) + "</dl>"
    )

    # start -> final
    parts.append("<h2>Start → final</h2>")
    s_first = min(evals) if evals else None
    s_last = max(evals) if len(evals) > 1 else None
    if s_first is None:
        parts.append('<p class="note">This run has no evaluation yet.</p>')
    else:
        start = evals[s_first]
        final = evals[s_last] if s_last is not None else {}
        if s_last is None:
            parts.append(
                f'<p class="note">Only one evaluation (step {s_first}); there is no final one to compare.</p>'
            )
        fin_head = f"final (step {s_last})" if s_last is not None else "final"
        rows = [
            [
                f'<td class="l">{html.escape(label)}</td>',
                f"<td>{_fmt(start.get(k))}</td>",
                f"<td>{_fmt(final.get(k))}</td>",
                _delta_cell(start.get(k), final.get(k), hib),
            ]
            for k, label, hib in EVAL_MEASURES
        ]
        rows += [
            [
                f'<td class="l">{html.escape(label)}</td>',
                f"<td>{_fmt(start.get(k))}</td>",
                f"<td>{_fmt(final.get(k))}</td>",
                _delta_cell(start.get(k), final.get(k), None),
            ]
            for k, label in COUNT_MEASURES
        ]
        parts.append(_table(["measure", f"start (step {s_first})", fin_head, "delta"], rows))
        parts.append('<p class="note">green: better, red: worse (non-unification: lower is better).</p>')

        parts.append("<h2>GenEval per tag</h2>")
        tag_a = start.get("geneval_per_tag") or {}
        tag_b = final.get("geneval_per_tag") or {}
        tags = list(dict.fromkeys([*tag_a, *tag_b]))
        if tags:
            rows = [
                [
                    f'<td class="l">{html.escape(t)}</td>',
                    f"<td>{_fmt(tag_a.get(t))}</td>",
                    f"<td>{_fmt(tag_b.get(t))}</td>",
                    _delta_cell(tag_a.get(t), tag_b.get(t), True),
                ]
                for t in tags
            ]
            rows.append(
                [
                    '<td class="l"><b>overall</b></td>',
                    f"<td>{_fmt(start.get('geneval_overall'))}</td>",
                    f"<td>{_fmt(final.get('geneval_overall'))}</td>",
                    _delta_cell(start.get("geneval_overall"), final.get("geneval_overall"), True),
                ]
            )
            parts.append(_table(["tag", f"start (step {s_first})", fin_head, "delta"], rows))
        else:
            parts.append('<p class="note">No per-tag GenEval scores were recorded.</p>')

    # curves
    parts.append("<h2>Curves</h2>")
    curves = out_dir / "curves.png"
    if (root / "curves.png").is_file():
        atomic_write_bytes(curves, (root / "curves.png").read_bytes())
    else:
        from gapray.plots import plot_curves

        plot_curves(run.read_metrics(), curves)
    parts.append('<p><img src="curves.png" alt="training curves"></p>')
    if evals:
        plot_evals(evals, out_dir / "evals.png")
        parts.append('<p><img src="evals.png" alt="eval measures over the eval steps"></p>')

    # the judge watched: judged vs true pass rate of the training rollouts
    if any(v is not None for v in metrics.get("true_pass_rate", [])):
        parts.append("<h2>Judged vs true pass rate (training rollouts)</h2>")
        plot_pass_rates(metrics, out_dir / "pass_rates.png")
        parts.append('<p><img src="pass_rates.png" alt="judged and true pass rate per step"></p>')
        for w in summary.get("warnings") or []:
            until = f" until step {w['until']}" if w.get("until") is not None else ""
            parts.append(
                f'<p class="bad"><b>Warning, from step {w["step"]}{until}:</b> {html.escape(w["text"])}</p>'
            )
        if not summary.get("warnings"):
            parts.append(
                '<p class="note">No judge-gaming warning: the true pass rate (exact verifier) did not '
                "stay flat while the judged one rose.</p>"
            )

    # before / after
    parts.append("<h2>Same prompts, same seeds: before and after</h2>")
    made = None
    if s_first in folders and s_last in folders:
        made = before_after(
            folders[s_first],
            folders[s_last],
            out_dir / "before_after.png",
            (f"start (step {s_first})", f"final (step {s_last})"),
        )
    if made:
        parts.append(
            f'<p class="note">{made[1]} test prompts spread over the tags; left: step {s_first}, right: '
            f"step {s_last}; frame green = the evaluator said yes (eval=toy: the exact verifier; eval=self: the model's own judge), red = no.</p>"
            '<p><img src="before_after.png" alt="before and after images"></p>'
        )
    elif s_first in folders and s_last is None:
        grid = folders[s_first] / "grid.png"
        if grid.is_file():
            atomic_write_bytes(out_dir / "eval_grid.png", grid.read_bytes())
            parts.append(
                f'<p class="note">Only one evaluation (step {s_first}); its images:</p>'
                '<p><img src="eval_grid.png" alt="eval grid"></p>'
            )
        else:
            parts.append(f'<p class="note">Only one evaluation (step {s_first}) and it has no grid.</p>')
    else:
        parts.append('<p class="note">No pair of eval folders with images and verdicts to compare.</p>')

    # per step
    cols, rows, k = _step_rows(metrics)
    parts.append("<h2>Per step</h2>")
    if k > 1:
        parts.append(f'<p class="note">every {_ordinal(k)} step (and the last) of {len(steps_logged)}.</p>')
    parts.append(_table(cols, rows))

    parts.append("<h2>Configuration (config.yaml)</h2>")
    parts.append(f"<pre>{html.escape(config_text)}</pre>")

    doc = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head>\n<body>\n"
        + "\n".join(parts)
        + "\n</body></html>\n"
    )
    index = out_dir / "index.html"
    atomic_write_text(index, doc)
    return index


def main(argv: list[str] | None = None) -> int:
    """`gapray report RUN_DIR [--out FOLDER]`: write the report, print the index.html path.
    Exit code 2 (one line on stderr) when RUN_DIR is not a run directory."""
    parser = argparse.ArgumentParser(
        prog="gapray report", description="An HTML report of a run (tables, curves, before/after images)."
    )
    parser.add_argument("run_dir", help="a run directory written by `gapray run`")
    parser.add_argument("--out", help="output folder (default RUN_DIR/report)")
    args = parser.parse_args(argv)
    try:
        index = build_report(args.run_dir, args.out)
    except NotARunDirError as err:
        print(f"gapray report: {err}", file=sys.stderr)
        return 2
    print(index)
    return 0


if __name__ == "__main__":
    sys.exit(main())
