"""Sync vs async pipeline on the same Ray roles: images per second per whole step, and overlap.

One set of actors (`build_roles`: the same workers, the same torch threads per actor) and one
controller run blocks of steps alternately with `run.pipeline=sync` and `run.pipeline=async`
(`run.max_staleness=k`), so both modes see the same machine, the same learner and the same
load drift; the controller's `make_pipeline` is the only thing switched between blocks. Each
block's first step is the switch (async refills its pipeline there) and is not counted; the first
block of each mode is a warm-up. A block ends with nothing launched past it.

Reported per mode: mean whole-step seconds, images per second per whole step, each stage's span
(generate: launch to the images collected, which in async begins a step earlier; reward: first
scoring call to last verdict; learn; sync), and the overlap efficiency = whole step / slowest
stage, the slowest stage's duration taken from the sync steps, where each stage runs alone
(1.0: the step takes as long as its slowest stage, everything else hidden behind it; a sync
step spends the sum of its stages). The speed-up is async's
images/s over sync's, measured side by side in this one run.

    python -m gapray.bench.pipeline                           # the toy run, k = 1
    python -m gapray.bench.pipeline --blocks 3 --block-steps 5 --k 2 run.threads_per_actor=1
    compare_pipelines(cfg, k=1, blocks=3, block_steps=5)      # from `gapray bench loop`

Prints a Markdown table and writes <out>/pipeline-<model>-<timestamp>.json and .md.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from gapray.bench import write_results
from gapray.config import Config, load_config, to_dict

MODES = ("sync", "async")
SPANS = ("generate", "reward", "learn", "sync")


def compare_pipelines(cfg: Config, k: int = 1, blocks: int = 3, block_steps: int = 5) -> dict:
    """Run `blocks` measured blocks per mode (plus one warm-up block each), alternating sync
    and async on one controller over one set of roles; rows of every step and a summary."""
    import ray

    from gapray.controller import Controller
    from gapray.placement import check_resources, connect_ray
    from gapray.run import build_roles
    from gapray.storage import RunDir

    if block_steps < 2:
        raise ValueError("block_steps must be >= 2 (a block's first step is not counted)")
    where, roles, rows = None, None, []
    with tempfile.TemporaryDirectory(prefix="gapray-bench-pipeline-") as tmp:
        try:
            t0 = time.perf_counter()
            where = connect_ray(cfg)
            check_resources(cfg, ray.cluster_resources())
            roles = build_roles(cfg)
            ctl = Controller(cfg, RunDir(tmp), roles)
            setup_s = time.perf_counter() - t0
            step = 0
            for b in range(2 * (blocks + 1)):  # sync, async, sync, async, ...: block 0 and 1 warm up
                mode = MODES[b % 2]
                first, last = step + 1, step + block_steps
                ctl.rollouts = ctl.make_pipeline(mode, k, last)
                for step in range(first, last + 1):
                    print(f"gapray bench pipeline: {mode} step {step}", file=sys.stderr)
                    row = ctl.step(step)
                    counted = b >= 2 and step > first
                    rows.append({"mode": mode, "block": b, "counted": counted, **_plain(row)})
                assert not ctl.rollouts.launched  # nothing in flight past the block
        finally:
            if roles is not None:
                roles.shutdown()
            if where == "local":
                ray.shutdown()
    summary = {m: summarize([r for r in rows if r["mode"] == m and r["counted"]]) for m in MODES}
    s, a = summary["sync"], summary["async"]
    # The stages' own durations are the sync steps' (each runs alone there); async's spans
    # include time spent queued beside other stages.
    slowest = s["slowest_stage"]
    for mode in summary.values():
        mode["overlap_efficiency"] = mode["seconds"]["step"] / s["seconds"][slowest]
    return {
        "setup_s": setup_s,
        "k": k,
        "blocks": blocks,
        "block_steps": block_steps,
        "rows": rows,
        **summary,
        "speedup": a["images_per_s"] / s["images_per_s"],
        "ray": where,
    }


def summarize(rows: list[dict]) -> dict:
    """Means over the counted steps of one mode."""
    n = len(rows)
    mean = {name: sum(r[f"time_{name}"] for r in rows) / n for name in (*SPANS, "rollouts", "step")}
    slowest = max(SPANS, key=lambda name: mean[name])
    images = sum(r["images"] for r in rows)
    return {
        "steps": n,
        "seconds": mean,
        "images_per_step": images / n,
        "images_per_s": images / sum(r["time_step"] for r in rows),
        "slowest_stage": slowest,
        "sum_of_stages_over_slowest": sum(mean[s] for s in SPANS) / mean[slowest],
        "staleness_mean": sum(r["staleness_mean"] for r in rows) / n,
        "staleness_max": max(r["staleness_max"] for r in rows),
    }


def markdown(res: dict) -> str:
    p, s, a = res["pipeline"], res["pipeline"]["sync"], res["pipeline"]["async"]
    m = res["machine"]
    lines = [
        f"## gapray bench pipeline: model `{res['model']}`, sync vs async (k = {p['k']}) on the same roles",
        "",
        f"Machine: {m['cpu']}, {m['cpus_usable']} CPUs usable, load average {m['load_average_1m_start']} at start, "
        f"{m['load_average_1m_end']} at end; torch threads per actor: {res['threads']}; actors: "
        f"{res['actors']}.",
        f"{p['blocks']} measured blocks of {p['block_steps']} steps per mode, alternating (plus one warm-up block "
        f"each); each block's first step not counted: {s['steps']} sync and {a['steps']} async steps; "
        f"{s['images_per_step']:g} images per step.",
        "",
        "| seconds per step (mean) | sync | async |",
        "|---|---:|---:|",
    ]
    names = {
        "generate": "generate (launch to images collected; async: launched a step before)",
        "reward": "reward (first scoring call to last verdict)",
        "learn": "learn (DPO update)",
        "sync": "sync (async: waits for the generation in flight)",
        "rollouts": "the step's wait for its images and verdicts",
        "step": "whole step",
    }
    for k, label in names.items():
        lines.append(f"| {label} | {s['seconds'][k]:.3f} | {a['seconds'][k]:.3f} |")
    lines += [
        "",
        "| | sync | async |",
        "|---|---:|---:|",
        f"| images / s, whole step | {s['images_per_s']:.1f} | {a['images_per_s']:.1f} |",
        f"| slowest stage (its own span in the mode) | {s['slowest_stage']} | {a['slowest_stage']} |",
        f"| overlap efficiency (whole step / slowest stage, {s['slowest_stage']} alone as in sync: "
        f"{s['seconds'][s['slowest_stage']]:.3f} s) | {s['overlap_efficiency']:.2f} | {a['overlap_efficiency']:.2f} |",
        f"| sum of stages / slowest stage | {s['sum_of_stages_over_slowest']:.2f} | "
        f"{a['sum_of_stages_over_slowest']:.2f} |",
        f"| staleness mean / max (versions) | {s['staleness_mean']:.2f} / {s['staleness_max']:g} | "
        f"{a['staleness_mean']:.2f} / {a['staleness_max']:g} |",
        "",
        f"**async / sync, images per second per whole step: {p['speedup']:.2f}x** (target >= 1.3x).",
        "",
        f"Setup (not timed): {p['setup_s']:.1f} s. Overlap efficiency 1.0 = the step lasts as long as its "
        "slowest stage. Async stages run at once and share the machine's cores, so each of them is slower "
        "than alone; with as many busy threads as cores, overlap buys little. Per-step rows are in the JSON.",
        "",
    ]
    return "\n".join(lines)


def bench(args: argparse.Namespace) -> dict:
    from gapray.bench.loop import machine
    from gapray.run import _threads

    overrides = [*args.overrides, "run.progress=false"]
    cfg = load_config(overrides)
    info = machine()
    info["load_average_1m_start"] = round(os.getloadavg()[0], 2)
    res = compare_pipelines(cfg, k=args.k, blocks=args.blocks, block_steps=args.block_steps)
    info["load_average_1m_end"] = round(os.getloadavg()[0], 2)
    return {
        "benchmark": "pipeline",
        "timestamp": time.strftime("%Y%m%d-%H%M%S"),
        "model": Path(cfg.model.name).name or "model",
        "overrides": overrides,
        "machine": info,
        "threads": {
            "generation": _threads(cfg, cfg.generation.cpus_per_worker),
            "reward": _threads(cfg, cfg.reward.cpus_per_worker),
            "learner": _threads(cfg, cfg.learner.cpus_per_rank),
        },
        "actors": {
            "generation": cfg.generation.num_workers,
            "reward": cfg.reward.num_workers,
            "learner": cfg.learner.num_ranks,
        },
        "pipeline": res,
        "config": to_dict(cfg),
    }


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="gapray bench pipeline",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--k", type=int, default=1, help="run.max_staleness of the async blocks (default 1)")
    ap.add_argument("--blocks", type=int, default=3, help="measured blocks per mode (default 3)")
    ap.add_argument(
        "--block-steps", type=int, default=5, help="steps per block, the first not counted (default 5)"
    )
    ap.add_argument("--out", default="benchmarks/results", help="results folder (default benchmarks/results)")
    ap.add_argument("overrides", nargs="*", help="config overrides, as for `gapray run`")
    args = ap.parse_args(argv)
    if args.k < 1:
        ap.error("--k must be >= 1 (k = 0 is the sync run)")
    if args.blocks < 1 or args.block_steps < 2:
        ap.error("--blocks must be >= 1 and --block-steps >= 2")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    res = bench(args)
    table = markdown(res)
    print(table)
    js, md = write_results(Path(args.out), f"pipeline-{res['model']}-{res['timestamp']}", res, table)
    print(f"wrote {js} and {md}", file=sys.stderr)
    return 0


def _plain(row: dict) -> dict:
    return {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}


if __name__ == "__main__":
    raise SystemExit(main())
