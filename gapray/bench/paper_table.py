"""The table of `gapray bench paper`: per row, mean and sd over seeds, each seed's difference from
its own base with a paired bootstrap interval, the verdict against the targets, and the Markdown.

Where it sits: called by gapray.bench.paper on every finished run (the results file is rewritten
each time); pure given the runs' records, tested on hand-made ones.
"""

from __future__ import annotations

import math

from gapray.bench.paper_spec import (
    EXACT_GAIN,
    GENEVAL_GAIN,
    INTERVAL_DRAWS,
    INTERVAL_LEVEL,
    METRICS,
    OBJECTS_RISE,
    ROW_BY_KEY,
    TARGET_ROWS,
    UNDERSTANDING_TOLERANCE,
    Plan,
    Row,
)
from gapray.types import GENEVAL_TAGS


def aggregate(plan: Plan, runs: list[dict], base_runs: list[dict]) -> dict:
    """Per row: mean and sd over seeds of every metric, its per-seed difference from base, and
    the check against the issue's targets."""
    ok = [r for r in runs if "error" not in r]
    base: dict[int, dict] = {}
    starts: dict[int, list[dict]] = {}
    for r in [*base_runs, *ok]:
        base.setdefault(r["seed"], r["start"])
        starts.setdefault(r["seed"], []).append(r["start"])
    agree = all(all(s == ss[0] for s in ss) for ss in starts.values())
    rows = {}
    for row in plan.rows:
        if row.overrides is None:
            per_seed = [{"seed": s, "values": base[s], "wall_s": None} for s in plan.seeds if s in base]
            failed = []
        else:
            mine = [r for r in runs if r["row"] == row.key]
            per_seed = [
                {"seed": r["seed"], "values": r["final"], "wall_s": r["wall_s"]}
                for r in mine
                if "error" not in r and r["seed"] in base
            ]
            failed = [{"seed": r["seed"], "error": r["error"]} for r in mine if "error" in r]
        stats = {}
        for k in METRICS:
            vals = [p["values"][k] for p in per_seed]
            deltas = [_minus(p["values"][k], base[p["seed"]][k]) for p in per_seed]
            stats[k] = _stat(vals) | {"delta": _stat(deltas) | _interval(deltas)}
        tags = {t: _stat([p["values"]["geneval_per_tag"].get(t) for p in per_seed]) for t in GENEVAL_TAGS}
        walls = [p["wall_s"] for p in per_seed if p["wall_s"] is not None]
        rows[row.key] = {
            "label": row.label,
            "paper": row.paper,
            "overrides": list(row.overrides) if row.overrides is not None else None,
            "seeds": [p["seed"] for p in per_seed],
            "failed": failed,
            "metrics": stats,
            "geneval_per_tag": tags,
            "wall_s": _stat(walls) if walls else None,
            "check": check(row, stats, len(per_seed)),
        }
    return {"rows": rows, "starts_agree": agree, "base_per_seed": base}


def check(row: Row, stats: dict, n: int) -> dict:
    """The targets on the per-seed differences from base (mean and paired bootstrap interval).
    Every trained row is checked and says plainly whether it improves; only TARGET_ROWS are
    bound by the targets."""
    if row.overrides is None:
        return {"binding": False, "met": None, "improves": None, "misses": [], "text": "-"}
    binding = row.key in TARGET_ROWS
    if n == 0:
        text = "**MISSED**: no finished run" if binding else "(not a target row) no finished run"
        return {
            "binding": binding,
            "met": False,
            "improves": None,
            "misses": ["no finished run"],
            "text": text,
        }
    ex = stats["exact_scene_overall"]["delta"]
    ob = stats["objects_per_image"]["delta"]["mean"]
    u = stats["understanding_accuracy"]["delta"]["mean"]
    misses = []
    if ex["mean"] is None or ex["mean"] < EXACT_GAIN:
        misses.append(f"exact scene {_d(ex['mean'])} (< +{EXACT_GAIN:.2f})")
    if ex.get("lo") is None:
        misses.append("exact scene: no interval (needs 2+ seeds)")
    elif ex["lo"] <= 0:
        misses.append(f"exact scene interval [{ex['lo']:+.3f}, {ex['hi']:+.3f}] not above 0")
    if ob is None or ob > OBJECTS_RISE:
        misses.append(f"objects/img {_d(ob)} (> +{OBJECTS_RISE:.1f})")
    if u is None or u < -UNDERSTANDING_TOLERANCE:
        misses.append(f"understanding {_d(u)} (< -{UNDERSTANDING_TOLERANCE:.2f})")
    met = not misses
    # "Improves": exact-scene accuracy up with its interval above 0, not by drawing more objects.
    improves = ex.get("lo") is not None and ex["lo"] > 0 and ob is not None and ob <= OBJECTS_RISE
    verdict = "improves" if improves else "does not improve"
    if binding:
        text = f"{verdict}; targets " + ("met" if met else "**MISSED**: " + "; ".join(misses))
    else:
        text = f"{verdict} (not a target row" + (
            "; would meet the targets)" if met else ": " + "; ".join(misses) + ")"
        )
    return {"binding": binding, "met": met, "improves": improves, "misses": misses, "text": text}


def _interval(deltas: list) -> dict:
    """The paired bootstrap interval of the mean per-seed difference (each seed's row against
    its own base, seeds resampled with replacement); None below 2 seeds."""
    from gapray.diagnose.stats import bootstrap_interval

    vals = [float(d) for d in deltas if d is not None and math.isfinite(d)]
    if len(vals) < 2:
        return {"lo": None, "hi": None}
    lo, hi = bootstrap_interval(vals, seed=0, n_boot=INTERVAL_DRAWS, level=INTERVAL_LEVEL)
    return {"lo": lo, "hi": hi}


def _stat(vals: list) -> dict:
    vals = [float(v) for v in vals if v is not None and math.isfinite(v)]
    if not vals:
        return {"mean": None, "sd": None, "n": 0}
    mean = sum(vals) / len(vals)
    sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else None
    return {"mean": mean, "sd": sd, "n": len(vals)}


def markdown(res: dict) -> str:
    mc, b, agg = res["machine"], res["budget"], res["table"]
    rows = agg["rows"]
    lines = [
        f"## gapray bench paper: model `{res['model']}`; seeds {', '.join(map(str, res['seeds']))}; "
        f"{b['steps']} step(s) per trained row",
        "",
        f"Command: `{res['command']}`",
        "",
        f"Machine: {mc['cpu']}, {mc['cpu_count']} CPUs ({mc['cpus_usable']} usable), accelerator "
        f"{mc['accelerator']}, load average {mc['load_average_1m']} at start, {mc.get('load_average_1m_end')} "
        f"at end; python {mc['python']}, torch {mc['torch']}, ray {mc['ray']}.",
        f"Budget of every trained row: {b['steps']} steps x {b['prompts_per_step']} prompts x "
        f"{b['images_per_prompt']} images = {b['images']} images. Evaluation: toy test split, "
        f"{res['eval']['images_per_prompt']} images per prompt, "
        f"{res['eval']['limit'] or 'all'} prompts, seed = the run's seed. Common overrides: "
        f"`{' '.join(res['common_overrides']) or '(none)'}`.",
        (
            "Base = the start model, evaluated in-process (no trained row was asked for)."
            if res["base_runs"]
            else "Base = the start evaluation of each seed's trained rows; they "
            + (
                "agreed."
                if agg["starts_agree"]
                else "**DID NOT AGREE** (base is the first row of each seed)."
            )
        )
        + ("" if res["complete"] else " **Incomplete: the bench is still running or was stopped.**"),
        "",
        "Mean ± sd over seeds (sd needs 2+ seeds); Δ = mean over seeds of (row - base of that seed), "
        f"with its paired bootstrap {INTERVAL_LEVEL:.0%} interval in brackets (seeds resampled, "
        f"{INTERVAL_DRAWS} draws; 2+ seeds). A row improves when its exact-scene Δ interval lies above 0 "
        f"and it draws no more than {OBJECTS_RISE:.1f} objects per image more than base.",
        "",
        "| row | paper | seeds | exact scene | Δ [95%] | GenEval overall | Δ [95%] | objects/img | Δ [95%] "
        "| non-unif. | Δ [95%] | understanding | Δ [95%] | judge bal. acc. | wall s / run | verdict |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows.values():
        m = r["metrics"]
        trained = r["overrides"] is not None
        cells = [r["label"], r["paper"], str(len(r["seeds"]))]
        for k in (
            "exact_scene_overall",
            "geneval_overall",
            "objects_per_image",
            "non_unification",
            "understanding_accuracy",
        ):
            cells += [_pm(m[k]), _delta(m[k]["delta"]) if trained else "-"]
        cells += [_pm(m["judge_balanced_accuracy"]), _pm(r["wall_s"], digits=0) if r["wall_s"] else "-"]
        text = r["check"]["text"]
        if r["failed"]:
            text += f"; **{len(r['failed'])} run(s) FAILED**"
        cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Targets (issue 12): DPO and C-DPO at least +{EXACT_GAIN:.2f} exact-scene accuracy above base "
        f"with the {INTERVAL_LEVEL:.0%} interval above 0, objects per image no more than "
        f"+{OBJECTS_RISE:.1f} above base, understanding no more than {UNDERSTANDING_TOLERANCE:.2f} below "
        f"base. The paper's own reading (GenEval +{GENEVAL_GAIN:.2f}, non-unification below base) is "
        "in the table, not binding: on the toy world a policy that draws clutter met it. "
        + _target_summary(rows),
        "",
        "GenEval per tag (mean ± sd over seeds):",
        "",
        "| row | " + " | ".join(GENEVAL_TAGS) + " |",
        "|---|" + "---:|" * len(GENEVAL_TAGS),
    ]
    for r in rows.values():
        lines.append(
            f"| {r['label']} | " + " | ".join(_pm(r["geneval_per_tag"][t]) for t in GENEVAL_TAGS) + " |"
        )
    lines += [
        "",
        "Every run:",
        "",
        "| row | seed | GenEval start -> final | non-unif. | understanding | judge bal. acc. "
        "| exact scene | objects/img | wall s |",
        "|---|---:|---|---|---|---|---|---|---:|",
    ]
    for rec in res["base_runs"]:
        cells = [f3(rec["start"][k]) for k in METRICS]
        lines.append(f"| base | {rec['seed']} | " + " | ".join(cells) + f" | {rec['wall_s']:.0f} |")
    for rec in res["runs"]:
        label = ROW_BY_KEY[rec["row"]].label
        if "error" in rec:
            lines.append(
                f"| {label} | {rec['seed']} | **FAILED**: {rec['error']} | | | | | | {rec['wall_s']:.0f} |"
            )
            continue
        s, f = rec["start"], rec["final"]
        cells = [f"{f3(s[k])} -> {f3(f[k])}" for k in METRICS]
        lines.append(f"| {label} | {rec['seed']} | " + " | ".join(cells) + f" | {rec['wall_s']:.0f} |")
    lines.append("")
    return "\n".join(lines)


def _target_summary(rows: dict) -> str:
    out = []
    for key in TARGET_ROWS:
        label = ROW_BY_KEY[key].label
        if key not in rows:
            out.append(f"{label}: not run.")
        elif rows[key]["check"]["met"]:
            out.append(f"{label}: met.")
        else:
            out.append(f"{label}: **MISSED** ({'; '.join(rows[key]['check']['misses'])}).")
    return " ".join(out)


def _minus(a, b) -> float | None:
    return None if a is None or b is None else a - b


def f3(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _d(v) -> str:
    return "n/a" if v is None else f"{v:+.3f}"


def _delta(s: dict) -> str:
    text = _pm(s, sign=True)
    return text if s.get("lo") is None else f"{text} [{s['lo']:+.3f}, {s['hi']:+.3f}]"


def _pm(s: dict | None, sign: bool = False, digits: int = 3) -> str:
    if not s or s.get("mean") is None:
        return "n/a"
    fmt = f"{{:{'+' if sign else ''}.{digits}f}}"
    text = fmt.format(s["mean"])
    return text if s.get("sd") is None else f"{text} ± {s['sd']:.{digits}f}"
